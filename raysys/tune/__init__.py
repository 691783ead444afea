"""Hyperparameter sweeps with Ray Tune: every trial a Ray Train run, every trial in MLflow.

Imported on first use (they need Ray, MLflow and Optuna), so ``raysys tune --help`` stays fast.
"""

from __future__ import annotations

from raysys._lazy import lazy_exports
_LAZY = {
    "SweepConfig": "raysys.tune.config",
    "default_config_path": "raysys.tune.config",
    "load_sweep_config": "raysys.tune.config",
    "materialize_detector": "raysys.tune.export",
    "SweepResult": "raysys.tune.sweep",
    "finalize_sweep": "raysys.tune.sweep",
    "run_sweep": "raysys.tune.sweep",
    "train_driver_fn": "raysys.tune.trial",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = list(_LAZY)
