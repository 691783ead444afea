"""Distributed training with Ray Train: the worker function, the driver, evaluation.

Imported on first use (they need Ray, torch and MLflow), so ``raysys train --help`` stays fast.
"""

from __future__ import annotations

from raysys._lazy import lazy_exports
_LAZY = {
    "TrainConfig": "raysys.train.config",
    "MlflowEpochLogger": "raysys.train.driver",
    "TrainResult": "raysys.train.driver",
    "build_trainer": "raysys.train.driver",
    "train": "raysys.train.driver",
    "Evaluation": "raysys.train.evaluate",
    "evaluate_detector": "raysys.train.evaluate",
    "train_fn_per_worker": "raysys.train.worker",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = list(_LAZY)
