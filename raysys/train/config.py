"""The typed configuration of one training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from raysys.data.source import public_options
from raysys.evaluation import THRESHOLD_METHODS
from raysys.models import FAMILY_NAMES
from raysys.train.ingest import INGEST_MODES


@dataclass
class TrainConfig:
    """What ``raysys train`` runs.

    Args:
        data: The data set: a prepared directory (``raysys generate`` / ``raysys prepare``), a directory of
            Parquet splits (``train/`` ... , Hive-partitioned or not), or the same in an object store (``s3://``,
            ``gs://``, ``abfs://``): ``raysys.data.source``.
        ingest: ``memory``, ``stream`` (Ray Data into the workers) or ``auto``: ``raysys.train.ingest``.
        storage_options: Keyword arguments of the object store's pyarrow filesystem (endpoint, region,
            credentials); keys naming secrets are never written to the run record or MLflow.
        model: Detector family (``raysys.models.FAMILY_NAMES``: ``ae``, ``vae``, ``lstm``, ``conv``).
        params: Detector parameters (architecture, lr, ``epochs``, ``patience``, ``batch_size`` (the
            global batch, split across workers), ...; see ``raysys.models``). The one place a
            training knob is set: ``raysys train --max-epochs`` / ``--patience`` write into it.
        num_workers: Ray Train workers (data-parallel replicas).
        use_gpu: One GPU per worker.
        cpus_per_worker: CPUs each worker holds (fractions allowed). A streamed run must leave Ray Data a CPU
            (``raysys.train.ingest.DATA_CPUS``): 2 workers on 2 CPUs stream with 0.5 each.
        storage_path: Where Ray Train keeps runs and checkpoints (shared storage on a cluster).
        run_name: Ray Train run name; reusing it resumes that run from its latest checkpoint.
        threshold_method: ``best_f1``, ``percentile`` or ``far`` on the validation split (None:
            ``best_f1`` with validation labels, ``far`` without).
        percentile: Percentile of validation normal scores for ``percentile``.
        target_far: False-alarm rate for ``far``.
        max_failures: Worker-group restarts Ray Train attempts before giving up.
        tracking_uri: MLflow tracking URI (``None``: ``$MLFLOW_TRACKING_URI`` or ./mlruns).
        experiment: MLflow experiment name.
    """

    data: str
    ingest: str = "auto"
    storage_options: dict[str, Any] = field(default_factory=dict)
    model: str = "ae"
    params: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "runs/train"
    run_name: str | None = None
    threshold_method: str | None = None
    percentile: float = 99.0
    target_far: float = 0.01
    max_failures: int = 1
    tracking_uri: str | None = None
    experiment: str = "raysys"

    def __post_init__(self) -> None:
        if self.model not in FAMILY_NAMES:
            raise ValueError(f"model must be one of {sorted(FAMILY_NAMES)}, got {self.model!r}")
        if self.ingest not in INGEST_MODES:
            raise ValueError(f"ingest must be one of {INGEST_MODES}, got {self.ingest!r}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.threshold_method is not None and self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, got {self.threshold_method!r}")
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile must be in (0, 100), got {self.percentile!r}")
        if not 0 < self.target_far < 1:
            raise ValueError(f"target_far must be in (0, 1), got {self.target_far!r}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures!r}")
        # fail before any Ray work on an unknown or out-of-range detector parameter
        detector = self.detector()
        if detector.batch_size < self.num_workers:
            raise ValueError(f"batch_size ({detector.batch_size}) must be >= num_workers ({self.num_workers}): "
                             "it is the global batch, split across workers")

    def detector(self):
        """The unfitted detector this run trains (its parameters validated)."""
        from raysys.models import build_detector  # torch: only when a config is built, not for --help

        return build_detector(self.model, **self.params)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, without secret storage options (what the run record and MLflow keep)."""
        return {**asdict(self), "storage_options": public_options(self.storage_options)}
