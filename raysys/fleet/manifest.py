"""A fleet's manifest (``fleet.json``): its config, data, MLflow run, and one entry per asset.

The same document is the fleet directory's index (``model_uri`` of an asset: its directory, relative to
the fleet) and the registered fleet model (``model_uri``: the ``runs:/`` URI of the asset's ensemble in the
MLflow run that logged it). Serving reads only this file up front and loads an asset's ensemble when a
request first names it. docs/fleet.md#layout.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raysys.fleet.asset import FAILED, STATUSES, SUCCEEDED, TABLE_METRICS, AssetResult
from raysys.fleet.config import FleetConfig
from raysys.layout import FLEET_MANIFEST, check_asset_id

FORMAT = "raysys-fleet"
FORMAT_VERSION = 1


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class AssetEntry(BaseModel):
    """One asset in the manifest.

    Args:
        status: ``SUCCEEDED`` (served), ``GATE_FAILED`` (trained, not served) or ``FAILED`` (no model).
        reason: Why it failed, else None.
        model_uri: Its ensemble: a path relative to the fleet directory, or a ``runs:/`` URI.
        run_id: The MLflow run that logged its ensemble (the fleet's, or a promotion's).
        threshold: Its calibrated threshold.
        metrics: Its test and held-out metrics (``raysys.fleet.asset.TABLE_METRICS``).
        gates_failed: Names of the gates it failed.
        data: Rows per split, first and last timestamp.
        fit_s: Seconds its task spent in-process.
        trained_at: When it was trained (or promoted).
    """

    model_config = ConfigDict(extra="forbid")

    status: Literal["SUCCEEDED", "GATE_FAILED", "FAILED"]
    reason: str | None = None
    model_uri: str | None = None
    run_id: str | None = None
    threshold: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    gates_failed: list[str] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)
    fit_s: float | None = None
    trained_at: str = Field(default_factory=_now)

    @classmethod
    def from_result(cls, result: AssetResult, model_uri: str | None, run_id: str | None) -> "AssetEntry":
        gates = (result.gates or {}).get("gates", [])
        return cls(status=result.status, reason=result.reason, model_uri=model_uri if result.status != FAILED else None,
                   run_id=run_id, threshold=result.threshold, metrics=result.metrics,
                   gates_failed=[g["name"] for g in gates if not g["passed"]],
                   data={k: v for k, v in result.data.items() if k != "traceback"}, fit_s=round(result.fit_s, 3))

    @property
    def servable(self) -> bool:
        return self.status == SUCCEEDED and self.model_uri is not None


class FleetManifest(BaseModel):
    """``fleet.json``: what :func:`raysys.fleet.train.train_fleet` wrote and the registry holds."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["raysys-fleet"] = FORMAT
    format_version: int = FORMAT_VERSION
    data: str | None = None
    sensors: list[str]
    config: FleetConfig
    run_id: str | None = None
    created_at: str = Field(default_factory=_now)
    updated_at: str = Field(default_factory=_now)
    assets: dict[str, AssetEntry] = Field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """``total`` assets and how many per status (``succeeded``, ``gate_failed``, ``failed``)."""
        out = {status.lower(): sum(e.status == status for e in self.assets.values()) for status in STATUSES}
        return {"total": len(self.assets), **out}

    def servable(self) -> list[str]:
        """The assets a fleet endpoint answers for: trained, gates passed."""
        return [a for a, e in self.assets.items() if e.servable]

    def entry(self, asset_id: str) -> AssetEntry:
        """Asset ``asset_id``'s entry; ``KeyError`` naming it (and how many the fleet has) when absent."""
        if asset_id not in self.assets:
            raise KeyError(f"no asset {asset_id!r} in this fleet ({len(self.assets)} assets)")
        return self.assets[asset_id]

    def table(self) -> pd.DataFrame:
        """One row per asset: status, reason, threshold, metrics, failed gates, data range (``assets.csv``)."""
        rows = []
        for asset_id, e in sorted(self.assets.items()):
            rows.append({"asset_id": asset_id, "status": e.status, "reason": e.reason, "threshold": e.threshold,
                         **{m: e.metrics.get(m) for m in TABLE_METRICS},
                         "gates_failed": ",".join(e.gates_failed), "rows_train": e.data.get("rows", {}).get("train"),
                         "start": e.data.get("start"), "end": e.data.get("end"), "fit_s": e.fit_s,
                         "run_id": e.run_id, "model_uri": e.model_uri, "trained_at": e.trained_at})
        return pd.DataFrame(rows)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a reader never sees half a manifest)."""
        self.updated_at = _now()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        os.replace(tmp, path)
        return path


def read_manifest(path: str | os.PathLike) -> FleetManifest:
    """A fleet's manifest from its directory or from the ``fleet.json`` file itself.

    Raises:
        FileNotFoundError: no manifest there. ValueError: not a fleet manifest, naming the fields.
    """
    path = Path(path)
    file = path / FLEET_MANIFEST if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{path}: not a fleet (no {FLEET_MANIFEST}); run `raysys fleet train`")
    try:
        manifest = FleetManifest.model_validate(json.loads(file.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ValueError(f"{file}: not a raysys fleet manifest: {exc}") from None
    for asset_id in manifest.assets:
        check_asset_id(asset_id)
    return manifest
