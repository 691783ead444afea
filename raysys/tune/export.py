"""The sweep's output for the ensemble step: the best trial per family as a loadable detector.

A trial that ran to its own end has a fitted detector in its last checkpoint (``detector/``).
A trial stopped by ASHA (or the time budget) has only ``train_state.pt``; its detector is
rebuilt from the best weights in that state (:func:`materialize_detector`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import average_precision_score

from raysys.data import SensorDataset
from raysys.data.preprocessing import scaler_from_dict
from raysys.layout import DETECTOR_CONFIG, DETECTOR_DIR, SWEEP_BEST_DIR, TRAIN_STATE
from raysys.models import build_detector, load_detector
from raysys.models.base import load_weights
from raysys.tune.leaderboard import COMPLETED, STOPPED


def materialize_detector(checkpoint_dir: str | os.PathLike, family: str, params: dict[str, Any],
                         dataset: SensorDataset, out_dir: str | os.PathLike) -> Path:
    """Write the fitted detector of a Train checkpoint to ``out_dir``.

    Copies the checkpoint's ``detector/`` when it has one; otherwise takes the scaler the run trained with
    (a streamed run's, saved in ``train_state.pt``) or fits it on ``dataset``'s training split as the worker
    did, loads the best weights from ``train_state.pt`` and computes the fitted state (threshold, latent
    statistics) like the worker's last epoch, on ``dataset`` (the data set, or a streamed one's sample).
    """
    checkpoint_dir, out = Path(checkpoint_dir), Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    if (checkpoint_dir / DETECTOR_DIR / DETECTOR_CONFIG).exists():
        shutil.copytree(checkpoint_dir / DETECTOR_DIR, out)
        return out
    state_path = checkpoint_dir / TRAIN_STATE
    if not state_path.exists():
        raise FileNotFoundError(f"{checkpoint_dir}: neither {DETECTOR_DIR}/ nor {TRAIN_STATE}; not a raysys checkpoint")
    state = load_weights(state_path)
    X, y = dataset.features("train"), dataset.known_labels("train")
    detector = build_detector(family, **params)
    if state.get("scaler") is not None:
        detector.init_module(X.shape[1], scaler_from_dict(state["scaler"], f"{state_path} scaler"))
    else:
        detector.init_fit(X, y)
    best = state["best_module"] if state.get("best_module") is not None else state["module"]
    detector.finish_fit(X, y, best).save(out)
    return out


def val_pr_auc(detector_dir: str | os.PathLike, dataset: SensorDataset) -> float:
    """PR AUC of a saved detector on the labelled validation split."""
    labels = dataset.labels("val")
    if not labels.any():
        return float("nan")
    scores = load_detector(detector_dir).decision_function(dataset.features("val"))
    return float(average_precision_score(labels, scores))


def best_per_family(leaderboard: pd.DataFrame, metric: str, mode: str) -> dict[str, pd.Series]:
    """The best completed-or-stopped trial with a finite ``metric`` and a checkpoint, per family."""
    has_checkpoint = leaderboard["checkpoint_path"].notna() | leaderboard["latest_checkpoint"].notna()
    usable = leaderboard[leaderboard["status"].isin([COMPLETED, STOPPED]) & has_checkpoint
                         & leaderboard[metric].map(lambda v: isinstance(v, float) and math.isfinite(v))]
    best: dict[str, pd.Series] = {}
    for family, group in usable.groupby("family", sort=False):
        index = group[metric].idxmax() if mode == "max" else group[metric].idxmin()
        best[family] = group.loc[index]
    return best


def export_best(leaderboard: pd.DataFrame, metric: str, mode: str, dataset: SensorDataset,
                sweep_dir: str | os.PathLike, families: list[str]) -> dict[str, dict[str, Any]]:
    """Write ``<sweep_dir>/best/<family>/`` detectors; returns the ``best.json`` entries.

    ``metric`` in an entry describes the exported detector: its validation PR AUC (recomputed
    on the saved detector, which holds the trial's best-validation-loss weights) or its best
    validation loss. ``trial_metric`` is what Tune ranked the trial by (its last report).
    """
    out_root = Path(sweep_dir).resolve() / SWEEP_BEST_DIR
    best: dict[str, dict[str, Any]] = {}
    for family, row in sorted(best_per_family(leaderboard, metric, mode).items(),
                              key=lambda item: families.index(item[0]) if item[0] in families else 99):
        params = json.loads(row["params"]) if isinstance(row["params"], str) else dict(row["params"])
        # the checkpoint Tune saw last; a stopped trial's may have been rotated out since (num_to_keep)
        source = row["checkpoint_path"]
        if not (isinstance(source, str) and Path(source).exists()):
            source = row["latest_checkpoint"]
        detector_dir = materialize_detector(source, family, params, dataset, out_root / family)
        value = val_pr_auc(detector_dir, dataset) if metric == "val_pr_auc" else float(row["best_val_loss"])
        best[family] = {"checkpoint": str(detector_dir), "run_id": row["run_id"], "trial_id": row["trial_id"],
                        "config": {"family": family, "params": params}, "metric": value, "metric_name": metric,
                        "trial_metric": float(row[metric]), "status": row["status"], "epochs": int(row["epochs"])}
    return best
