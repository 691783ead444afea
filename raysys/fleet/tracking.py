"""A fleet in MLflow: one run for the whole fleet, and one registered model whose versions are manifests.

The fleet run logs its config, the per-asset table (``assets.csv``), the distribution plots, the summary
metrics (assets per status; median and tail of each per-asset metric), every trained asset's ensemble
(``assets/<asset_id>/``) and the registered manifest (``registry/<n>/fleet.json``, one per registration
of the run; each asset's ``model_uri`` is the ``runs:/`` URI of its ensemble). Not one run per asset unless asked
(``per_asset_runs``: child runs, for small fleets).

A version of the registered fleet model (``raysys-fleet``) is that manifest: ``models:/raysys-fleet@champion``
resolves to ``registry/<n>/`` of the run that logged it. :func:`promote_asset` makes a new version that
changes one asset: it logs that asset's ensemble in a small run of its own and a manifest copied from
the champion's with that one entry replaced; every other entry still points where it did, so nothing
else is retrained, copied or re-registered. docs/fleet.md#registry.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from raysys.ensemble.registry import CHAMPION, promote_version
from raysys.fleet.manifest import AssetEntry, FleetManifest, read_manifest
from raysys.fleet.report import summary_metrics, write_summary
from raysys.layout import FLEET_ASSETS_DIR, FLEET_MANIFEST, FLEET_PLOTS, FLEET_TABLE, fleet_asset_dir
from raysys.tracking import DEFAULT_EXPERIMENT, get_experiment_id, resolve_tracking_uri

logger = logging.getLogger(__name__)

DEFAULT_FLEET_MODEL = "raysys-fleet"
#: Where a run keeps the manifest a registered version points at.
REGISTRY_ARTIFACT = "registry"
#: Tag of every version of a fleet model (``raysys serve`` tells a fleet from a single ensemble by it).
KIND_TAG, FLEET_KIND = "raysys.kind", "fleet"


def start_fleet_run(manifest: FleetManifest, tracking_uri: str | None, experiment: str = DEFAULT_EXPERIMENT,
                    run_name: str = "fleet") -> str:
    """Create the fleet's run (or reopen ``manifest.run_id`` on resume); returns its id."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    if manifest.run_id:
        client.update_run(manifest.run_id, status="RUNNING")
        return manifest.run_id
    run = client.create_run(get_experiment_id(client.tracking_uri, experiment), run_name=run_name,
                            tags={"raysys.stage": "fleet"})
    params = {**manifest.config.model_dump(exclude={"params", "gates"}), "data": manifest.data,
              "params": json.dumps(manifest.config.params), "gates": json.dumps(manifest.config.gates)}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def log_asset_run(client: MlflowClient, fleet_run_id: str, asset_id: str, entry: AssetEntry) -> None:
    """A child run of the fleet's for one asset (``per_asset_runs``): its status, threshold and metrics."""
    parent = client.get_run(fleet_run_id)
    run = client.create_run(parent.info.experiment_id, run_name=asset_id,
                            tags={"mlflow.parentRunId": fleet_run_id, "raysys.stage": "fleet-asset",
                                  "raysys.asset_id": asset_id, "raysys.status": entry.status})
    client.log_param(run.info.run_id, "threshold", entry.threshold)
    for name, value in entry.metrics.items():
        client.log_metric(run.info.run_id, f"test_{name}", value)
    client.set_terminated(run.info.run_id, "FINISHED" if entry.status != "FAILED" else "FAILED")


def registered_manifest(manifest: FleetManifest, run_id: str) -> FleetManifest:
    """``manifest`` as the registry holds it: assets trained in this fleet directory point at their ensemble
    in run ``run_id`` (``runs:/<run>/assets/<asset_id>``); promoted ones keep their own URI."""
    out = manifest.model_copy(deep=True)
    for asset_id, entry in out.assets.items():
        if entry.model_uri and "://" not in entry.model_uri and not entry.model_uri.startswith("runs:/"):
            entry.model_uri = f"runs:/{run_id}/{FLEET_ASSETS_DIR}/{asset_id}"
    return out


def _log_manifest(client: MlflowClient, run_id: str, manifest: FleetManifest) -> str:
    """Log ``manifest`` under a new ``registry/<n>/`` of run ``run_id`` (a resumed fleet run registers again,
    and a registered version's artifacts never change); returns that artifact path."""
    path = f"{REGISTRY_ARTIFACT}/{len(client.list_artifacts(run_id, REGISTRY_ARTIFACT)) + 1}"
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / FLEET_MANIFEST
        file.write_text(manifest.model_dump_json(indent=2))
        client.log_artifact(run_id, str(file), path)
    return path


def _new_version(client: MlflowClient, name: str, run_id: str, path: str, tags: dict[str, str]) -> str:
    """Register artifact ``path`` (a manifest's folder) of ``run_id`` as a new version of ``name``, make it
    ``champion`` (the one it replaces keeps ``previous``); returns the version."""
    try:
        client.create_registered_model(name, tags={KIND_TAG: FLEET_KIND})
    except mlflow.exceptions.MlflowException:
        if client.get_registered_model(name).tags.get(KIND_TAG) != FLEET_KIND:
            raise ValueError(f"registered model {name!r} exists and is not a raysys fleet; choose another --name")
    version = client.create_model_version(name, source=f"runs:/{run_id}/{path}", run_id=run_id,
                                          tags={KIND_TAG: FLEET_KIND, **tags})
    promote_version(client, name, str(version.version))
    return str(version.version)


def finish_fleet_run(manifest: FleetManifest, out_dir: str | os.PathLike, run_id: str, trained: list[str],
                     tracking_uri: str | None, register: str | None = DEFAULT_FLEET_MODEL,
                     per_asset_runs: bool = False, interrupted: bool = False) -> str | None:
    """Log the fleet run's summary and the ensembles of ``trained`` (this call's assets), then register the
    manifest as a new version of ``register`` if any asset is servable; returns the version (or None)."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)  # never MLflow's process-wide registry URI
    out = Path(out_dir)
    write_summary(manifest, out)
    for asset_id in trained:
        entry = manifest.assets[asset_id]
        if entry.model_uri:
            client.log_artifacts(run_id, str(fleet_asset_dir(out, asset_id)), f"{FLEET_ASSETS_DIR}/{asset_id}")
        if per_asset_runs:
            log_asset_run(client, run_id, asset_id, entry)
    client.log_artifact(run_id, str(out / FLEET_TABLE))
    client.log_artifacts(run_id, str(out / FLEET_PLOTS), FLEET_PLOTS)
    client.log_artifact(run_id, str(out / FLEET_MANIFEST))
    for key, value in summary_metrics(manifest).items():
        client.log_metric(run_id, key, value)
    failed_gates = sorted(a for a, e in manifest.assets.items() if e.status == "GATE_FAILED")
    client.set_tag(run_id, "raysys.assets_gate_failed", ",".join(failed_gates)[:4900] or "none")
    version = None
    if register and manifest.servable() and not interrupted:
        path = _log_manifest(client, run_id, registered_manifest(manifest, run_id))
        version = _new_version(client, register, run_id, path, {"assets_servable": str(len(manifest.servable()))})
    client.set_terminated(run_id, "KILLED" if interrupted else "FINISHED")
    return version


def fleet_version(model_uri: str, tracking_uri: str | None = None) -> tuple[FleetManifest, dict[str, Any]]:
    """The manifest a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` fleet URI points at, and what it
    resolved to (``name``, ``version``, ``run_id``, ``uri``)."""
    from raysys.serve._internal.model import parse_models_uri

    name, alias, number = parse_models_uri(model_uri)
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    if version.tags.get(KIND_TAG) != FLEET_KIND:
        raise ValueError(f"{model_uri}: version {version.version} of {name!r} is not a raysys fleet")
    local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=uri)
    return read_manifest(local), {"name": name, "version": str(version.version), "run_id": version.run_id,
                                  "uri": f"models:/{name}/{version.version}", "alias": alias}


def promote_asset(asset_id: str, source: str | os.PathLike, name: str = DEFAULT_FLEET_MODEL,
                  tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Make a new version of fleet model ``name`` in which asset ``asset_id`` uses the ensemble trained in the
    fleet directory ``source`` (e.g. ``raysys fleet train --assets ID --out DIR``); every other asset keeps its
    entry. Returns the new version (now ``champion``).

    Raises:
        ValueError: ``source`` holds no servable model for the asset, or ``name`` has no champion.
    """
    uri = resolve_tracking_uri(tracking_uri)
    fresh = read_manifest(source).entry(asset_id)
    if not fresh.servable:
        raise ValueError(f"{source}: asset {asset_id!r} is {fresh.status} ({fresh.reason}); only an asset that "
                         "trained and passed its gates can be promoted")
    champion, ref = fleet_version(f"models:/{name}@{CHAMPION}", uri)
    client = MlflowClient(uri, registry_uri=uri)
    run = client.create_run(get_experiment_id(uri, experiment), run_name=f"fleet-promote-{asset_id}",
                            tags={"raysys.stage": "fleet-promote", "raysys.asset_id": asset_id,
                                  "raysys.replaces_version": ref["version"]})
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:  # the asset's ensemble only, under its fleet path
        staged = shutil.copytree(fleet_asset_dir(source, asset_id), Path(tmp) / asset_id)
        client.log_artifacts(run_id, str(staged), f"{FLEET_ASSETS_DIR}/{asset_id}")
    entry = fresh.model_copy(update={"model_uri": f"runs:/{run_id}/{FLEET_ASSETS_DIR}/{asset_id}", "run_id": run_id})
    for key, value in entry.metrics.items():
        client.log_metric(run_id, f"test_{key}", value)
    champion.assets[asset_id] = entry
    path = _log_manifest(client, run_id, champion)
    version = _new_version(client, name, run_id, path, {"promoted_asset": asset_id, "replaces_version": ref["version"]})
    client.set_terminated(run_id)
    logger.info("%s version %s: asset %s from %s (run %s); the other %d assets unchanged", name, version, asset_id,
                source, run_id, len(champion.assets) - 1)
    return version
