"""``run_pipeline``: data -> sweep -> ensemble (gates, registry) -> report [-> serve], one MLflow parent run;
for a fleet (``assets``, or a fleet dataset), data -> fleet (one detector set per asset) -> report [-> serve]."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mlflow.tracking import MlflowClient
from rich.console import Console

from raysys.data import generate_dataset, load_dataset
from raysys.data.fleet import is_fleet_dataset
from raysys.train.ingest import evaluation_dataset
from raysys.ensemble.gates import DEFAULT_GATES
from raysys.ensemble.workflow import EnsembleResult, run_ensemble
from raysys.interrupts import INTERRUPTED, STATUS_TAG, mlflow_status
from raysys.pipeline.config import PipelineConfig
from raysys.pipeline.report import write_pipeline_report
from raysys.pipeline.state import PipelineState
from raysys.tracking import get_experiment_id, resolve_tracking_uri
from raysys.tune import SweepConfig, SweepResult, load_sweep_config, run_sweep

logger = logging.getLogger(__name__)
STAGES = ["data", "sweep", "ensemble", "report"]
FLEET_STAGES = ["data", "fleet", "report"]
PARENT_TAG = "mlflow.parentRunId"


@dataclass
class PipelineResult:
    """Where a finished pipeline left everything.

    Args:
        run_dir: The pipeline's run directory (``pipeline.json``, data, sweep, ensemble, report).
        parent_run_id: The MLflow parent run holding every stage as a child run.
        model_uri: The registered champion (``models:/NAME@champion``), None if a gate failed.
        report: The HTML report.
        ensemble: The ensemble stage's result (metrics, gates, registration); None on the fleet path.
        sweep: The sweep stage's result (leaderboard, best trial per family); None on the fleet path.
        endpoint: The endpoint's base URL when ``serve`` was asked for.
        fleet: The fleet stage's result on the fleet path.
    """

    run_dir: Path
    parent_run_id: str
    model_uri: str | None
    report: Path
    ensemble: EnsembleResult | None
    sweep: SweepResult | None
    endpoint: str | None = None
    fleet: Any = None


def _sweep_config(cfg: PipelineConfig, run_dir: Path, tracking_uri: str) -> SweepConfig:
    overrides = {"seed": cfg.seed, **cfg.sweep, "name": "sweep", "storage_path": str(run_dir),
                 "tracking_uri": tracking_uri, "experiment": cfg.experiment}
    if cfg.sweep_config:
        return load_sweep_config(cfg.sweep_config, **overrides)
    return SweepConfig.quick(**overrides) if cfg.quick else SweepConfig.default(**overrides)


def _child_run(client: MlflowClient, experiment_id: str, parent: str, stage: str) -> str:
    run = client.create_run(experiment_id, run_name=stage, tags={PARENT_TAG: parent, "raysys.stage": stage})
    return run.info.run_id


def _log_report(client: MlflowClient, experiment_id: str, parent: str, report: Path) -> str:
    """Log the report's folder as the ``report`` child run and the HTML on the parent; returns the child's id."""
    child = _child_run(client, experiment_id, parent, "report")
    client.log_artifacts(child, str(report.parent))
    client.set_terminated(child, "FINISHED")
    client.log_artifact(parent, str(report))
    return child


def run_pipeline(cfg: PipelineConfig, console: Console | None = None) -> PipelineResult:
    """Run every stage in order; a failing stage raises ``StageError`` naming it, with earlier
    stages' outputs kept and marked done in ``pipeline.json``."""
    console = console or Console()
    uri = resolve_tracking_uri(cfg.tracking_uri)
    client = MlflowClient(uri)
    experiment_id = get_experiment_id(uri, cfg.experiment)
    run_dir = Path(cfg.output_dir).resolve() / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    fleet = cfg.assets is not None or (cfg.data is not None and is_fleet_dataset(cfg.data))
    state = PipelineState(run_dir, (FLEET_STAGES if fleet else STAGES) + (["serve"] if cfg.serve else []),
                          cfg.to_dict())
    parent = client.create_run(experiment_id, run_name=f"pipeline-{run_dir.name}",
                               tags={"raysys.stage": "pipeline", "raysys.run_dir": str(run_dir)}).info.run_id
    client.log_dict(parent, cfg.to_dict(), "pipeline_config.json")
    try:
        stages = _run_fleet_stages if fleet else _run_stages
        result = stages(cfg, state, client, experiment_id, parent, run_dir, uri, console)
    except BaseException as exc:
        client.log_artifact(parent, str(state.path))
        if not isinstance(exc, Exception):
            client.set_tag(parent, STATUS_TAG, INTERRUPTED)
        client.set_terminated(parent, mlflow_status(exc))
        raise
    state.complete()
    client.log_artifact(parent, str(state.path))
    client.set_terminated(parent, "FINISHED")
    return result


def _run_stages(cfg: PipelineConfig, state: PipelineState, client: MlflowClient, experiment_id: str, parent: str,
                run_dir: Path, uri: str, console: Console) -> PipelineResult:
    console.rule("[bold]1/4 data")
    with state.stage("data") as out:
        if cfg.data:  # a streamed data set: its bounded sample (the trials stream the whole of it)
            dataset = evaluation_dataset(cfg.data, cfg.ingest, cfg.storage_options)
        else:
            dataset = load_dataset(generate_dataset(run_dir / "data", cfg.profile, cfg.rows, cfg.seed))
        child = _child_run(client, experiment_id, parent, "data")
        client.log_dict(child, dataset.metadata, "metadata.json")
        client.set_terminated(child, "FINISHED")
        out.update(path=str(dataset.path), rows=dataset.metadata["rows"], sensors=dataset.sensors, mlflow_run_id=child)
        console.print(f"dataset {dataset.path}: {dataset.metadata['rows']} rows, sensors {dataset.sensors}")

    console.rule("[bold]2/4 sweep")
    with state.stage("sweep") as out:
        sweep = run_sweep(_sweep_config(cfg, run_dir, uri), cfg.data or dataset.path, console=console,
                          ingest=cfg.ingest, storage_options=cfg.storage_options)
        client.set_tag(sweep.parent_run_id, PARENT_TAG, parent)
        if not sweep.best:
            raise RuntimeError(f"no trial of the sweep finished; see {sweep.sweep_dir}")
        out.update(sweep_dir=str(sweep.sweep_dir), mlflow_run_id=sweep.parent_run_id,
                   best={k: v["checkpoint"] for k, v in sweep.best.items()})

    console.rule("[bold]3/4 ensemble")
    with state.stage("ensemble") as out:
        ensemble = run_ensemble(dataset, sweep=sweep.sweep_dir, out_dir=run_dir / "ensemble", name=cfg.model_name,
                                gates={**DEFAULT_GATES, **cfg.gates}, threshold_method=cfg.threshold_method,
                                target_far=cfg.target_far, tracking_uri=uri, experiment=cfg.experiment,
                                seed=cfg.seed, parent_run_id=parent, smoothing=cfg.smoothing, cva=cfg.cva)
        console.print(ensemble.gates.summary())
        model_uri = f"models:/{cfg.model_name}@champion" if ensemble.version else None
        out.update(ensemble_dir=str(ensemble.ensemble_dir), gates_passed=ensemble.gates.passed,
                   version=ensemble.version, model_uri=model_uri,
                   mlflow_run_id=ensemble.registration.run_id if ensemble.registration else None)

    console.rule("[bold]4/4 report")
    with state.stage("report") as out:
        report = write_pipeline_report(run_dir / "report", dataset, sweep, ensemble, client, cfg.model_name)
        out.update(report=str(report), mlflow_run_id=_log_report(client, experiment_id, parent, report))
    for key, value in ensemble.metrics["ensemble"].items():
        if isinstance(value, float):
            client.log_metric(parent, f"ensemble_test_{key}", value)

    endpoint = _serve_stage(state, console, model_uri, "no champion was registered (a quality gate failed), so there "
                            "is nothing to serve", lambda m: _serve_and_probe(m, dataset, cfg, uri, console)
                            ) if cfg.serve else None
    return PipelineResult(run_dir, parent, model_uri, report, ensemble, sweep, endpoint)


def _run_fleet_stages(cfg: PipelineConfig, state: PipelineState, client: MlflowClient, experiment_id: str,
                      parent: str, run_dir: Path, uri: str, console: Console) -> PipelineResult:
    from raysys.data.fleet import generate_fleet, load_fleet
    from raysys.ensemble.registry import DEFAULT_MODEL_NAME
    from raysys.fleet.report import summary_metrics
    from raysys.fleet.tracking import DEFAULT_FLEET_MODEL
    from raysys.fleet.train import train_fleet
    from raysys.pipeline.report import write_fleet_report

    console.rule("[bold]1/3 data")
    with state.stage("data") as out:
        path = Path(cfg.data) if cfg.data else generate_fleet(run_dir / "data", int(cfg.assets or 0), cfg.profile,
                                                              cfg.rows, cfg.seed)
        fleet = load_fleet(path)
        child = _child_run(client, experiment_id, parent, "data")
        client.log_dict(child, fleet.metadata, "metadata.json")
        client.set_terminated(child, "FINISHED")
        out.update(path=str(fleet.path), assets=len(fleet.assets), sensors=fleet.sensors, mlflow_run_id=child)
        console.print(f"fleet dataset {fleet.path}: {len(fleet.assets)} assets, sensors {fleet.sensors}")

    console.rule("[bold]2/3 fleet")
    name = DEFAULT_FLEET_MODEL if cfg.model_name == DEFAULT_MODEL_NAME else cfg.model_name
    with state.stage("fleet") as out:
        run = train_fleet(fleet.path, run_dir / "fleet", cfg.fleet_config(), tracking_uri=uri,
                          experiment=cfg.experiment, register=name)
        client.set_tag(run.run_id, PARENT_TAG, parent)
        console.print(run.summary())
        model_uri = f"models:/{name}@champion" if run.version else None
        out.update(fleet_dir=str(run.directory), assets=run.manifest.counts(), version=run.version,
                   model_uri=model_uri, mlflow_run_id=run.run_id)

    console.rule("[bold]3/3 report")
    with state.stage("report") as out:
        report = write_fleet_report(run_dir / "report", run, name)
        out.update(report=str(report), mlflow_run_id=_log_report(client, experiment_id, parent, report))
    for key, value in summary_metrics(run.manifest).items():
        client.log_metric(parent, f"fleet_{key}", value)

    first = (run.manifest.servable() or [""])[0]
    endpoint = _serve_stage(state, console, model_uri, "no asset passed its gates, so no fleet was registered and "
                            "nothing can be served", lambda m: _serve_and_probe(
                                m, fleet.asset(first), cfg, uri, console, f"/v1/assets/{first}/predict")
                            ) if cfg.serve else None
    return PipelineResult(run_dir, parent, model_uri, report, None, None, endpoint, fleet=run)


def _serve_stage(state: PipelineState, console: Console, model_uri: str | None, why_none: str,
                 serve: Callable[[str], str]) -> str:
    """The ``serve`` stage: ``serve(model_uri)`` deploys and probes; fails with ``why_none`` when nothing was
    registered. Returns the endpoint."""
    console.rule("[bold]serve")
    with state.stage("serve") as out:
        if model_uri is None:
            raise RuntimeError(why_none)
        endpoint = serve(model_uri)
        out.update(endpoint=endpoint)
    return endpoint


def _serve_and_probe(model_uri: str, dataset: Any, cfg: PipelineConfig, uri: str, console: Console,
                     route: str = "/v1/predict") -> str:
    """Deploy the champion with Ray Serve and show one request to ``route`` answering."""
    import httpx

    from raysys.serve.deploy import deploy

    url = deploy(model_uri, tracking_uri=uri, port=cfg.serve_port)
    row = dataset.test[dataset.sensors].iloc[0].to_dict()
    response = httpx.post(f"{url}{route}", json={"readings": [row]}, timeout=30)
    response.raise_for_status()
    console.print(f"POST {url}{route} {row}\n-> {response.json()}")
    return url



def summary_lines(result: PipelineResult, tracking_uri: str) -> list[str]:
    """What the user needs next: where things are and how to look at them."""
    if result.fleet is not None:
        lines = [f"run directory : {result.run_dir}", f"report        : {result.report}",
                 f"MLflow        : parent run {result.parent_run_id} (browse: mlflow ui --backend-store-uri "
                 f"{tracking_uri})", *result.fleet.summary().splitlines(),
                 f"model         : {result.model_uri or 'not registered (no asset passed its gates)'}"
                 + (f" (version {result.fleet.version})" if result.fleet.version else "")]
        return lines + ([f"endpoint      : {result.endpoint}/v1/assets/<asset_id>/predict"] if result.endpoint else [])
    lines = [
        f"run directory : {result.run_dir}",
        f"report        : {result.report}",
        f"MLflow        : parent run {result.parent_run_id} (browse: mlflow ui --backend-store-uri {tracking_uri})",
        f"sweep         : {result.sweep.sweep_dir} (best per family: {', '.join(sorted(result.sweep.best))})",
        f"ensemble test : {result.ensemble.summary()}",
        f"quality gates : {'passed' if result.ensemble.gates.passed else 'FAILED'}"
        + (f" ({len(result.ensemble.gates.skipped)} skipped: {', '.join(n for n, _ in result.ensemble.gates.skipped)})"
           if result.ensemble.gates.skipped else ""),
        f"model         : {result.model_uri or 'not registered (gate failed)'}"
        + (f" (version {result.ensemble.version})" if result.ensemble.version else ""),
    ]
    if result.endpoint:
        lines.append(f"endpoint      : {result.endpoint}/v1/predict")
    return lines
