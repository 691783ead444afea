"""Where ensemble members come from: a sweep's ``best.json``, MLflow training runs, detector directories."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from raysys.layout import DETECTOR_CONFIG, DETECTOR_DIR, SWEEP_BEST
from raysys.models import BaseDeepDetector, load_detector

logger = logging.getLogger(__name__)

#: A sweep's summary: family -> {"checkpoint": detector dir, "run_id", "config", "metric"}.


@dataclass
class Member:
    """A fitted detector and where it came from (logged with the ensemble).

    Args:
        name: Member name in the ensemble (its family, suffixed ``_2``, ``_3``... when repeated).
        detector: The fitted detector.
        source: Provenance, e.g. ``{"kind": "run", "run_id": ...}``.
    """

    name: str
    detector: BaseDeepDetector = field(repr=False)
    source: dict[str, Any]


def _detector_dir(path: str | os.PathLike) -> Path:
    """``path`` itself, or its ``detector/`` subfolder (a training checkpoint)."""
    root = Path(path)
    nested = root / DETECTOR_DIR
    return nested if not (root / DETECTOR_CONFIG).exists() and (nested / DETECTOR_CONFIG).exists() else root


def from_directory(path: str | os.PathLike) -> tuple[BaseDeepDetector, dict[str, Any]]:
    """A detector saved by ``BaseDeepDetector.save`` (or a checkpoint holding one in ``detector/``)."""
    directory = _detector_dir(path)
    return load_detector(directory), {"kind": "detector", "path": str(directory.resolve())}


def from_run(run_id: str, tracking_uri: str | None = None) -> tuple[BaseDeepDetector, dict[str, Any]]:
    """The detector a training run logged as artifact ``detector``."""
    import mlflow

    from raysys.tracking import resolve_tracking_uri

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=DETECTOR_DIR,
                                                    tracking_uri=resolve_tracking_uri(tracking_uri))
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(
            f"MLflow run {run_id!r}: cannot download its {DETECTOR_DIR!r} artifact: {exc}") from exc
    return load_detector(local), {"kind": "run", "run_id": run_id}


def from_sweep(sweep_dir: str | os.PathLike, tracking_uri: str | None = None
               ) -> list[tuple[BaseDeepDetector, dict[str, Any]]]:
    """The best detector of each family in a sweep's ``best.json``.

    A family whose checkpoint directory is not reachable from here is taken from its MLflow run.
    """
    path = Path(sweep_dir) / SWEEP_BEST
    if not path.exists():
        raise FileNotFoundError(f"{sweep_dir}: no {SWEEP_BEST}; not a finished sweep directory")
    best = json.loads(path.read_text())
    if not best:
        raise ValueError(f"{path}: lists no model family")
    found = []
    for family, entry in best.items():
        checkpoint, run_id = entry.get("checkpoint"), entry.get("run_id")
        if checkpoint and Path(checkpoint).exists():
            detector, source = from_directory(checkpoint)
        elif run_id:
            logger.info("%s: checkpoint %s not found here; downloading from MLflow run %s", family, checkpoint, run_id)
            detector, source = from_run(run_id, tracking_uri)
        else:
            raise FileNotFoundError(f"{path}: {family} checkpoint {checkpoint!r} not found and no run_id given")
        if detector.family != family:
            raise ValueError(f"{path}: entry {family!r} holds a {detector.family!r} detector")
        found.append((detector, {**source, "sweep": str(Path(sweep_dir).resolve()), "run_id": run_id,
                                 "config": entry.get("config"), "metric": entry.get("metric")}))
    return found


def load_members(sweep: str | os.PathLike | None = None, run_ids: Iterable[str] = (),
                 detector_dirs: Iterable[str | os.PathLike] = (), tracking_uri: str | None = None) -> list[Member]:
    """Members from any mix of sources, named after their family (``ae``, ``ae_2``, ...)."""
    found = [] if sweep is None else from_sweep(sweep, tracking_uri)
    found += [from_run(run_id, tracking_uri) for run_id in run_ids]
    found += [from_directory(path) for path in detector_dirs]
    if not found:
        raise ValueError("no ensemble members: give a sweep directory, MLflow run ids or detector directories")
    members: list[Member] = []
    for detector, source in found:
        repeats = sum(m.detector.family == detector.family for m in members)
        members.append(Member(detector.family if not repeats else f"{detector.family}_{repeats + 1}", detector, source))
    return members
