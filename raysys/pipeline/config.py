"""The pipeline's configuration: a YAML file, with flags on top."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from raysys.data.profiles import PROFILES
from raysys.data.source import public_options
from raysys.evaluation import THRESHOLD_METHODS


@dataclass
class PipelineConfig:
    """What ``raysys pipeline`` runs.

    Args:
        data: The data set (a prepared directory, split directories, or an object-store URI: see
            ``raysys.train.ingest``); when empty, data is generated from ``profile``.
        ingest: How the sweep's trials read ``data`` (``auto``, ``memory``, ``stream``).
        storage_options: The object store's filesystem arguments (secrets are never written out).
        profile: Facility profile of generated data.
        rows: Rows of generated data.
        seed: Seed of generated data and of every stage.
        quick: Few trials and epochs (minutes on 2 CPU cores) instead of a real sweep.
        sweep_config: A sweep YAML (``raysys tune --config``); default: the packaged sweep.
        sweep: Overrides of sweep settings (e.g. ``num_samples``, ``max_epochs``).
        model_name: Registered MLflow model name.
        threshold_method: Ensemble threshold on validation: ``best_f1``, ``percentile`` or ``far``
            (None: ``best_f1`` on labelled data, ``far`` without labels).
        target_far: False-alarm rate when ``threshold_method`` is ``far``.
        smoothing: Rows in the trailing mean of the ensemble score (1: none).
        cva: Add the CVA member (``cva``) to the ensemble: for continuous processes under
            feedback control (docs/detection.md).
        gates: Quality gate overrides over :data:`raysys.ensemble.gates.DEFAULT_GATES` (gate name to limit).
        output_dir: Parent directory of pipeline run directories.
        tracking_uri: MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI`` or ./mlruns).
        experiment: MLflow experiment.
        serve: After registering, start the endpoint and send one request.
        serve_port: HTTP port of the endpoint when ``serve`` is set.
        assets: Run the fleet path instead (docs/fleet.md): a generated fleet of this many assets (``rows``
            each), or the fleet dataset ``data``; one detector set per asset, registered as ``model_name``
            (default then ``raysys-fleet``); the report gets a fleet section.
        fleet: Settings of :class:`raysys.fleet.config.FleetConfig` for the fleet path (e.g. ``families``,
            ``params``, ``classical``); ``quick`` trains 3 epochs.
    """

    data: str | None = None
    ingest: str = "auto"
    storage_options: dict[str, Any] = field(default_factory=dict)
    profile: str = "water_treatment"
    rows: int = 20_000
    seed: int = 0
    quick: bool = False
    sweep_config: str | None = None
    sweep: dict[str, Any] = field(default_factory=dict)
    model_name: str = "raysys-detector"
    threshold_method: str | None = None
    target_far: float = 0.01
    smoothing: int = 1
    cva: bool = False
    gates: dict[str, float] = field(default_factory=dict)
    output_dir: str = "runs/pipeline"
    tracking_uri: str | None = None
    experiment: str = "raysys"
    serve: bool = False
    serve_port: int = 8000
    assets: int | None = None
    fleet: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {self.profile!r}")
        if self.threshold_method is not None and self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, got {self.threshold_method!r}")
        if self.rows < 500:
            raise ValueError(f"rows must be >= 500, got {self.rows}")
        if isinstance(self.smoothing, bool) or not isinstance(self.smoothing, int) or self.smoothing < 1:
            raise ValueError(f"smoothing must be an int >= 1, got {self.smoothing!r}")
        if self.assets is not None and self.assets < 1:
            raise ValueError(f"assets must be >= 1, got {self.assets}")

    def fleet_config(self) -> Any:
        """The :class:`raysys.fleet.config.FleetConfig` of the fleet path."""
        from raysys.fleet.config import FleetConfig

        settings = {"seed": self.seed, "target_far": self.target_far, **self.fleet}
        if self.threshold_method:
            settings.setdefault("threshold_method", self.threshold_method)
        if self.quick:
            settings["params"] = {"epochs": 3, **settings.get("params", {})}
        return FleetConfig.model_validate(settings)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, without secret storage options (what pipeline.json and MLflow keep)."""
        return {**asdict(self), "storage_options": public_options(self.storage_options)}


def load_pipeline_config(path: str | os.PathLike | None, **overrides: Any) -> PipelineConfig:
    """Read a pipeline YAML (unknown keys are an error naming the key) and apply ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of pipeline settings, got {type(loaded).__name__}")
        known = {f.name for f in fields(PipelineConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"{path}: unknown pipeline setting(s) {unknown}; expected some of {sorted(known)}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PipelineConfig(**values)
