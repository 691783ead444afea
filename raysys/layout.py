"""The on-disk layout of everything raysys writes: datasets, detectors, runs, sweeps, ensembles.

Every file and directory name another stage reads lives here, so a stage never globs or
re-spells a name that another one owns. Only the standard library: the production runtime
(``raysys.ensemble.runtime``, no torch) imports it too.

::

    <dataset>/                      raysys generate / prepare
        train.parquet val.parquet test.parquet metadata.json
    <fleet dataset>/                raysys generate --assets N (Hive-partitioned by asset)
        metadata.json {train,val,test}/asset_id=<id>/part-0.parquet
    <detector>/                     BaseDeepDetector.save
        detector.json model.pt scaler.json
    <storage>/<run>/                raysys train (one Ray Train run)
        raysys_run.json
        epoch-0001/ ... epoch-NNNN/ train_state.pt [detector/]
    <sweep>/                        raysys tune
        raysys_sweep.json best.json best/<family>/ leaderboard.csv leaderboard.png
        train/trial_<id>/           a trial's Ray Train run: raysys_trial.json epoch-*/ ...
    <ensemble>/                     raysys ensemble
        ensemble.json *.onnx
    <ensemble>/../evaluation/       metrics.json gate_report.json plots/
    <pipeline run>/pipeline.json    raysys pipeline
    <fleet>/                        raysys fleet train (one detector set per asset)
        fleet.json assets.csv plots/ assets/<asset_id>/ensemble.json *.onnx
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# -- datasets ---------------------------------------------------------------------------------
#: Time-ordered splits of a prepared dataset, one Parquet file each.
SPLITS = ("train", "val", "test")
DATASET_METADATA = "metadata.json"


def split_file(root: str | os.PathLike, split: str) -> Path:
    """The Parquet file of ``split`` in the prepared dataset ``root``."""
    return Path(root) / f"{split}.parquet"


#: Partition key of a fleet dataset: ``<fleet>/<split>/asset_id=<id>/part-0.parquet`` (Hive style, so
#: pyarrow and Ray Data read ``asset_id`` back as a column).
ASSET_ID = "asset_id"
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_asset_id(asset_id: str) -> str:
    """``asset_id`` if it is a plain name (letters, digits, ``.``, ``_``, ``-``: safe as a directory name).

    Raises:
        ValueError: naming the id.
    """
    if not isinstance(asset_id, str) or not _ASSET.match(asset_id):
        raise ValueError(f"asset id {asset_id!r} must start with a letter or digit and hold only letters, digits, "
                         "'.', '_' and '-'")
    return asset_id


def asset_split_file(root: str | os.PathLike, split: str, asset_id: str) -> Path:
    """The Parquet file of ``split`` for asset ``asset_id`` in the fleet dataset ``root``."""
    return Path(root) / split / f"{ASSET_ID}={check_asset_id(asset_id)}" / "part-0.parquet"


# -- a fitted detector ------------------------------------------------------------------------
#: Where a fitted detector sits inside a training checkpoint and a training run's MLflow artifacts.
DETECTOR_DIR = "detector"
DETECTOR_CONFIG = "detector.json"
#: The network's ``state_dict`` and extra fitted arrays, read with ``torch.load(weights_only=True)``.
DETECTOR_WEIGHTS = "model.pt"
#: The fitted scaler as JSON (never a pickle).
DETECTOR_SCALER = "scaler.json"

# -- a training run ---------------------------------------------------------------------------
#: The run's config and MLflow run id, beside its checkpoints (what ``--resume`` reads).
RUN_RECORD = "raysys_run.json"
#: The training state inside every checkpoint (weights, optimizer, early stopping, history).
TRAIN_STATE = "train_state.pt"
_CHECKPOINT = re.compile(r"^epoch-(\d{4,})$")


def checkpoint_name(epoch: int) -> str:
    """The checkpoint directory name of ``epoch`` (1-based): ``epoch-0007``."""
    return f"epoch-{epoch:04d}"


def checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(epoch, directory) of every checkpoint directory in a Train run directory, newest first."""
    root = Path(run_dir)
    found = [(int(m.group(1)), p) for p in root.glob("epoch-*") if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found, reverse=True)


# -- a sweep ----------------------------------------------------------------------------------
SWEEP_RECORD = "raysys_sweep.json"
#: The Ray Train runs of a sweep's trials, one per trial (``trial_<id>``).
SWEEP_TRAIN_DIR = "train"
#: The best trial per family: detector directory, MLflow run id, config (what ``raysys ensemble`` reads).
SWEEP_BEST = "best.json"
SWEEP_BEST_DIR = "best"
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_PLOT = "leaderboard.png"
#: Per-trial record beside the trial's Train run: MLflow run id, status, final metrics.
TRIAL_RECORD = "raysys_trial.json"
#: Placement groups of a trial's Train worker groups, one id per line.
TRIAL_PLACEMENT_GROUPS = "placement_groups.txt"
#: The last epoch a trial's driver call forwarded to Tune.
TRIAL_LAST_REPORT = "last_report.json"


def trial_run_name(trial_id: str) -> str:
    """The Ray Train run name (and directory under ``train/``) of sweep trial ``trial_id``."""
    return f"trial_{trial_id}"


# -- an ensemble ------------------------------------------------------------------------------
ENSEMBLE_SPEC = "ensemble.json"
#: Where the ensemble directory lies inside a logged MLflow model (``<model>/artifacts/ensemble``).
ENSEMBLE_MODEL_ARTIFACT = "ensemble"
#: Beside an ensemble directory (``<ensemble>/../evaluation``): test metrics, gate report, plots.
EVALUATION_DIR = "evaluation"
METRICS_FILE = "metrics.json"
GATE_REPORT = "gate_report.json"

# -- a pipeline run ---------------------------------------------------------------------------
PIPELINE_STATE = "pipeline.json"

# -- a fleet ----------------------------------------------------------------------------------
#: The fleet's manifest: its config, data, MLflow run, and every asset's status, metrics and model path.
FLEET_MANIFEST = "fleet.json"
#: One row per asset: status, reason, threshold, metrics, gates, data range (also logged to MLflow).
FLEET_TABLE = "assets.csv"
FLEET_PLOTS = "plots"
FLEET_ASSETS_DIR = "assets"


def fleet_asset_dir(root: str | os.PathLike, asset_id: str) -> Path:
    """The ensemble directory of asset ``asset_id`` in the fleet ``root``."""
    return Path(root) / FLEET_ASSETS_DIR / check_asset_id(asset_id)
