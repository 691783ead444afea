"""Distributed training with Ray Train: the worker function, the driver, evaluation."""

from raysys.train.config import TrainConfig
from raysys.train.driver import MlflowEpochLogger, TrainResult, build_trainer, train
from raysys.train.evaluate import Evaluation, evaluate_detector
from raysys.train.worker import DETECTOR_DIR, train_fn_per_worker

__all__ = ["DETECTOR_DIR", "Evaluation", "MlflowEpochLogger", "TrainConfig", "TrainResult", "build_trainer",
           "evaluate_detector", "train", "train_fn_per_worker"]
