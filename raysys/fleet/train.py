"""Train every asset of a fleet in parallel on the Ray cluster: one Ray task per asset (Ray's many-models
pattern), each fitting its asset's detector set in-process (:func:`raysys.fleet.asset.train_asset`).

Why tasks: a TorchTrainer costs ~20 s of fixed start-up, far more than a small asset's fit; a Tune
trial per asset adds its own per-trial bookkeeping, and ``groupby().map_groups`` moves every asset's rows
through the object store and retries a whole block of assets on one failure. A task reads its own
asset's files, so the driver never holds the data; it returns the asset's ensemble files (tens of KB) and
the driver, the one writer, lays them out and updates the manifest. docs/fleet.md#training (measured).

Failures are isolated (an asset's exception is its ``FAILED`` result; a dead worker is retried
``max_retries`` times, then recorded), the manifest is flushed as results arrive, and ``resume`` trains
only the assets that are missing or ``FAILED``.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from raysys.data.fleet import FleetDataset, load_fleet
from raysys.data.io import atomic_directory
from raysys.fleet.asset import FAILED, AssetResult, train_asset
from raysys.fleet.config import FleetConfig
from raysys.fleet.manifest import AssetEntry, FleetManifest, read_manifest
from raysys.layout import FLEET_MANIFEST, fleet_asset_dir

logger = logging.getLogger(__name__)

#: Seconds between manifest flushes while results arrive (a crash loses at most this much bookkeeping:
#: the assets trained since are trained again by ``--resume``).
FLUSH_EVERY_S = 2.0
#: Asset tasks in flight per cluster slot when ``max_concurrent`` is not set (keeps results flowing
#: without queueing a thousand tasks' arguments at once).
IN_FLIGHT_PER_SLOT = 2


@dataclass
class FleetRun:
    """What :func:`train_fleet` did.

    Args:
        directory: The fleet directory (``fleet.json``, ``assets.csv``, ``plots/``, ``assets/<id>/``).
        manifest: Its manifest.
        trained: The assets this call trained (all, or on resume the missing and failed ones).
        run_id: The fleet's MLflow run (None without tracking).
        version: The registered fleet model version (None when not registered).
        wall_s: Seconds from the first task submitted to the last result.
    """

    directory: Path
    manifest: FleetManifest
    trained: list[str]
    run_id: str | None
    version: str | None
    wall_s: float

    def summary(self) -> str:
        counts = self.manifest.counts()
        line = (f"fleet {self.directory}: {counts['succeeded']} served, {counts['gate_failed']} failed a gate, "
                f"{counts['failed']} failed, of {counts['total']} assets ({len(self.trained)} trained now, "
                f"{self.wall_s:.1f}s)")
        failed = [f"  {a}: {e.reason}" for a, e in sorted(self.manifest.assets.items()) if e.status == FAILED]
        return "\n".join([line, *failed[:20], *(["  ..."] if len(failed) > 20 else [])])


def _select(fleet: FleetDataset, assets: Iterable[str] | None) -> list[str]:
    ids = fleet.assets
    if assets is None:
        return ids
    chosen = list(dict.fromkeys(assets))
    missing = [a for a in chosen if a not in ids]
    if missing:
        raise ValueError(f"{fleet.path}: no asset {', '.join(map(repr, missing))} in this fleet (it has {len(ids)})")
    return chosen


def _open(out: Path, fleet: FleetDataset, config: FleetConfig, resume: bool) -> FleetManifest:
    """A new manifest for a fresh fleet directory, or the existing one to resume (its config kept)."""
    if resume:
        manifest = read_manifest(out)
        if manifest.config.training_fields() != config.training_fields():
            logger.info("Resuming with the fleet's own model settings (%s); scheduling settings from this call",
                        manifest.config.training_fields())
        manifest.config = manifest.config.model_copy(update=config.model_dump(include={
            "num_cpus", "num_gpus", "max_concurrent", "max_retries"}))
        if manifest.data and Path(manifest.data) != fleet.path.resolve():
            logger.warning("Resuming fleet trained on %s with data from %s", manifest.data, fleet.path)
        return manifest
    if (out / FLEET_MANIFEST).exists():
        raise FileExistsError(f"{out}: a fleet is there already; resume it (--resume {out}) or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: directory exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    return FleetManifest(data=str(fleet.path.resolve()), sensors=fleet.sensors, config=config)


def _store(out: Path, result: AssetResult) -> str | None:
    """Write an asset's ensemble files into ``assets/<id>/`` (replacing an older one whole); returns its
    path relative to the fleet, or None for a failed asset (whose old directory is removed)."""
    final = fleet_asset_dir(out, result.asset_id)
    if result.status == FAILED:
        shutil.rmtree(final, ignore_errors=True)
        return None
    with atomic_directory(final, overwrite=True) as tmp:
        for name, data in result.files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return str(final.relative_to(out))


def _failure(asset_id: str, exc: BaseException) -> AssetResult:
    """The result of an asset whose task never returned (its worker died past its retries)."""
    cause = getattr(exc, "cause", None) or exc
    return AssetResult(asset_id, FAILED, f"task died: {type(cause).__name__}: {str(cause).splitlines()[0][:300]}")


def run_tasks(data: str | os.PathLike, asset_ids: list[str], config: FleetConfig,
              on_result: Callable[[AssetResult], None]) -> None:
    """Run :func:`train_asset` for each asset as a Ray task with ``config``'s resources, at most
    ``max_concurrent`` (default: twice what the cluster fits) in flight; ``on_result`` gets each result as
    it arrives, in completion order."""
    import ray

    task = ray.remote(train_asset).options(**config.resources, max_retries=config.max_retries,
                                          retry_exceptions=False, name="raysys-fleet-asset")
    limit = config.max_concurrent
    if limit is None:
        slots = ray.cluster_resources().get("GPU" if config.num_gpus else "CPU", 1.0)
        limit = max(1, int(slots / (config.num_gpus or config.num_cpus)) * IN_FLIGHT_PER_SLOT)
    data = str(Path(data).resolve())
    pending: dict[Any, str] = {}
    queue = iter(asset_ids)
    while True:
        for asset_id in itertools.islice(queue, max(0, limit - len(pending))):
            pending[task.remote(data, asset_id, config)] = asset_id
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1)
        asset_id = pending.pop(done[0])
        try:
            result = ray.get(done[0])
        except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            result = _failure(asset_id, exc)
        on_result(result)


def train_fleet(data: str | os.PathLike, out: str | os.PathLike, config: FleetConfig | None = None, *,
                assets: Iterable[str] | None = None, resume: bool = False, tracking: bool = True,
                tracking_uri: str | None = None, experiment: str | None = None, register: str | None = None,
                per_asset_runs: bool = False, progress: bool = True) -> FleetRun:
    """Train the fleet dataset ``data``'s assets into the fleet directory ``out``.

    Args:
        data: A fleet dataset (``raysys generate --assets``, ``raysys prepare --asset-column``).
        out: The fleet directory; must be new unless ``resume``.
        config: What to train per asset and with which resources (default :class:`FleetConfig`).
        assets: Only these asset ids (default: all).
        resume: Continue the fleet in ``out``: train only the assets missing from it or ``FAILED``, with its
            stored model settings, logging to its MLflow run.
        tracking: Log the fleet's MLflow run (and register it as ``register``).
        tracking_uri, experiment: MLflow store and experiment.
        register: Registered fleet model name (default ``raysys-fleet``); ``""`` registers nothing.
        per_asset_runs: Also log one child MLflow run per asset (for small fleets).
        progress: Show assets done / failed / total with an ETA.
    """
    from raysys.cluster import init_ray
    from raysys.fleet.tracking import DEFAULT_FLEET_MODEL, finish_fleet_run, start_fleet_run
    from raysys.tracking import DEFAULT_EXPERIMENT

    fleet = load_fleet(data)
    chosen = _select(fleet, assets)
    out = Path(out)
    manifest = _open(out, fleet, config or FleetConfig(), resume)
    config = manifest.config
    todo = [a for a in chosen if a not in manifest.assets or manifest.assets[a].status == FAILED]
    if resume:
        logger.info("Resuming %s: %d of %d assets to train (missing or failed)", out, len(todo), len(chosen))
    run_id = start_fleet_run(manifest, tracking_uri, experiment or DEFAULT_EXPERIMENT) if tracking else None
    manifest.run_id = run_id
    manifest.save(out / FLEET_MANIFEST)
    init_ray()

    trained: list[str] = []
    last_flush = time.monotonic()

    def record(result: AssetResult) -> None:
        nonlocal last_flush
        manifest.assets[result.asset_id] = AssetEntry.from_result(result, _store(out, result), run_id)
        trained.append(result.asset_id)
        if result.status == FAILED:
            logger.warning("asset %s FAILED: %s", result.asset_id, result.reason)
        if time.monotonic() - last_flush > FLUSH_EVERY_S:
            manifest.save(out / FLEET_MANIFEST)
            last_flush = time.monotonic()

    started = time.perf_counter()
    interrupted = False
    try:
        with _progress(len(todo), progress) as advance:
            run_tasks(fleet.path, todo, config, lambda r: (record(r), advance(r)))
    except BaseException:  # Ctrl-C or a driver error: the run is marked KILLED and nothing is registered
        interrupted = True
        raise
    finally:
        wall = time.perf_counter() - started
        manifest.save(out / FLEET_MANIFEST)
        version = None
        if run_id is not None:
            version = finish_fleet_run(manifest, out, run_id, trained, tracking_uri,
                                       DEFAULT_FLEET_MODEL if register is None else register, per_asset_runs,
                                       interrupted)
        else:
            from raysys.fleet.report import write_summary

            write_summary(manifest, out)
    return FleetRun(out, manifest, trained, run_id, version, wall)


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[AssetResult], None]]:
    """A rich progress bar over assets: done / total, failed so far, ETA; yields what advances it."""
    if not enabled:
        yield lambda result: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    failed = 0
    with Progress(TextColumn("assets"), BarColumn(), MofNCompleteColumn(), TextColumn("failed {task.fields[failed]}"),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("assets", total=total, failed=0)

        def advance(result: AssetResult) -> None:
            nonlocal failed
            failed += result.status == FAILED
            bar.update(task, advance=1, failed=failed)

        yield advance
