"""The typed configuration of one training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from raysys.evaluation import THRESHOLD_METHODS
from raysys.models import FAMILIES, build_detector


@dataclass
class TrainConfig:
    """What ``raysys train`` runs.

    Args:
        data: A prepared dataset directory (``raysys generate`` / ``raysys prepare``).
        model: Detector family: ``ae``, ``vae`` or ``lstm``.
        params: Detector parameters (architecture, lr, batch_size, ...; see ``raysys.models``).
        num_workers: Ray Train workers (data-parallel replicas).
        use_gpu: One GPU per worker.
        max_epochs: Upper bound on epochs; early stopping may end sooner.
        patience: Epochs without validation improvement before stopping.
        storage_path: Where Ray Train keeps runs and checkpoints (shared storage on a cluster).
        run_name: Ray Train run name; reusing it resumes that run from its latest checkpoint.
        threshold_method: ``best_f1``, ``percentile`` or ``far`` on the validation split.
        percentile: Percentile of validation normal scores for ``percentile``.
        target_far: False-alarm rate for ``far``.
        max_failures: Worker-group restarts Ray Train attempts before giving up.
        tracking_uri: MLflow tracking URI (``None``: ``$MLFLOW_TRACKING_URI`` or ./mlruns).
        experiment: MLflow experiment name.
    """

    data: str
    model: str = "ae"
    params: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 2
    use_gpu: bool = False
    max_epochs: int = 30
    patience: int = 5
    storage_path: str = "runs/train"
    run_name: str | None = None
    threshold_method: str = "best_f1"
    percentile: float = 99.0
    target_far: float = 0.01
    max_failures: int = 1
    tracking_uri: str | None = None
    experiment: str = "raysys"

    def __post_init__(self) -> None:
        if self.model not in FAMILIES:
            raise ValueError(f"model must be one of {sorted(FAMILIES)}, got {self.model!r}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, got {self.threshold_method!r}")
        # fail before any Ray work on an unknown detector parameter
        build_detector(self.model, **self.params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
