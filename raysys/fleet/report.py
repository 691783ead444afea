"""A fleet's summary files beside its manifest: the per-asset table and the distribution plots."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from raysys.fleet.asset import FAILED
from raysys.fleet.manifest import FleetManifest
from raysys.layout import FLEET_PLOTS, FLEET_TABLE

#: The per-asset metrics plotted, when the assets measured them.
PLOTTED = ("f1", "roc_auc", "false_alarm_rate", "heldout_false_alarm_rate")


def summary_metrics(manifest: FleetManifest) -> dict[str, float]:
    """The fleet's MLflow metrics: assets per status, and the median and 10th percentile over trained assets
    of each per-asset metric (``f1_median``, ``f1_p10``, ...; 90th percentile for false-alarm rates)."""
    out: dict[str, float] = {f"assets_{k}": float(v) for k, v in manifest.counts().items()}
    trained = [e for e in manifest.assets.values() if e.status != FAILED]
    for name in PLOTTED + ("heldout_far_ratio",):
        values = np.array([e.metrics[name] for e in trained if e.metrics.get(name) is not None], dtype=float)
        if len(values):
            tail = 90 if "false_alarm" in name or name.endswith("ratio") else 10
            out[f"{name}_median"] = float(np.median(values))
            out[f"{name}_p{tail}"] = float(np.percentile(values, tail))
    return out


def write_summary(manifest: FleetManifest, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``assets.csv`` and ``plots/metrics.png`` into the fleet directory; returns their paths."""
    from raysys.evaluation.plots import fleet_distributions

    out = Path(out_dir)
    table = manifest.table()
    table.to_csv(out / FLEET_TABLE, index=False)
    trained = table[table["status"] != FAILED]
    values = {name: trained[name].to_numpy(dtype=float) for name in PLOTTED}
    plot = fleet_distributions(values, manifest.config.target_far, out / FLEET_PLOTS / "metrics.png",
                               title=f"{len(trained)} trained assets of {len(table)}")
    return [out / FLEET_TABLE, plot]
