"""Hyperparameter sweeps with Ray Tune: every trial a Ray Train run, every trial in MLflow."""

from raysys.tune.config import SweepConfig, default_config_path, load_sweep_config
from raysys.tune.export import materialize_detector
from raysys.tune.sweep import SweepResult, finalize_sweep, run_sweep
from raysys.tune.trial import train_driver_fn

__all__ = ["SweepConfig", "SweepResult", "default_config_path", "finalize_sweep", "load_sweep_config",
           "materialize_detector", "run_sweep", "train_driver_fn"]
