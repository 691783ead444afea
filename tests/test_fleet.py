"""Fleets on real parts: a 20-asset generated fleet trained as Ray tasks on the session's local cluster,
tracked and registered in a real MLflow store, served by Ray Serve over HTTP on 127.0.0.1.

One module-scoped fleet: trained with one asset's data corrupt (it fails alone), then resumed after the
file is fixed (only that asset trains); the tests read what those two calls left.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import start_serve
from mlflow.tracking import MlflowClient

from raysys.cli import main
from raysys.data.fleet import generate_fleet, load_fleet
from raysys.ensemble.runtime import load_runtime
from raysys.fleet import FAILED, GATE_FAILED, SUCCEEDED, FleetConfig, read_manifest
from raysys.layout import FLEET_PLOTS, FLEET_TABLE, asset_split_file

httpx = pytest.importorskip("httpx")

ASSETS = 20
BROKEN = "asset-0007"
#: Small and fast per asset; no gates, so every asset with good data is served (gates are tested apart).
CONFIG = FleetConfig(params={"epochs": 3, "hidden_dims": [16], "latent_dim": 4}, gates={})


def registry(uri: str) -> MlflowClient:
    """A client of ``uri``'s tracking store and registry (never MLflow's process-wide registry URI, which other
    test modules set)."""
    return MlflowClient(uri, registry_uri=uri)


@dataclass
class Trained:
    data: Path
    out: Path
    tracking_uri: str
    first: object
    resumed: object


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory) -> Trained:
    from raysys.fleet.train import train_fleet

    tmp = tmp_path_factory.mktemp("fleet")
    data = generate_fleet(tmp / "data", assets=ASSETS, rows=600, seed=3)
    file = asset_split_file(data, "train", BROKEN)
    shutil.copy(file, tmp / "good.parquet")
    frame = pd.read_parquet(file)
    frame["pressure"] = np.nan
    frame.to_parquet(file)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    first = train_fleet(data, tmp / "fleet", CONFIG, tracking_uri=uri, progress=False)
    shutil.copy(tmp / "good.parquet", file)
    resumed = train_fleet(data, tmp / "fleet", FleetConfig(max_concurrent=1), resume=True, tracking_uri=uri,
                          progress=False)
    return Trained(data, tmp / "fleet", uri, first, resumed)


def test_a_corrupt_asset_fails_alone_with_its_reason(trained):
    manifest = trained.first.manifest
    assert manifest.counts() == {"total": ASSETS, "succeeded": ASSETS - 1, "gate_failed": 0, "failed": 1}
    entry = manifest.assets[BROKEN]
    assert entry.status == FAILED and entry.model_uri is None
    assert BROKEN in entry.reason and "pressure" in entry.reason and "NaN" in entry.reason
    table = pd.read_csv(trained.out / FLEET_TABLE)
    assert len(table) == ASSETS and (trained.out / FLEET_PLOTS / "metrics.png").stat().st_size > 0
    # the version the first call registered serves the 19 others and lists the broken one with its reason
    version = registry(trained.tracking_uri).get_model_version("raysys-fleet", trained.first.version)
    registered = read_manifest(mlflow.artifacts.download_artifacts(artifact_uri=version.source,
                                                                   tracking_uri=trained.tracking_uri))
    assert len(registered.servable()) == ASSETS - 1 and registered.assets[BROKEN].reason == entry.reason


def test_resume_trains_only_the_fixed_asset(trained):
    first, resumed = trained.first, trained.resumed
    assert resumed.trained == [BROKEN]
    assert sorted(first.trained) == load_fleet(trained.data).assets
    manifest = read_manifest(trained.out)
    assert manifest.counts()["succeeded"] == ASSETS and manifest.assets[BROKEN].status == SUCCEEDED
    assert manifest.config.params == CONFIG.params  # the fleet's own settings, not the resuming call's defaults
    assert resumed.run_id == first.run_id  # the same MLflow run goes on
    run = registry(trained.tracking_uri).get_run(first.run_id)
    assert run.data.metrics["assets_succeeded"] == ASSETS and run.data.metrics["assets_failed"] == 0
    assert run.info.status == "FINISHED"
    # one run for the fleet, no run per asset by default
    runs = registry(trained.tracking_uri).search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    artifacts = {a.path for a in registry(trained.tracking_uri).list_artifacts(first.run_id)}
    assert {"assets", "assets.csv", "fleet.json", "plots", "registry"} <= artifacts


def test_the_registered_fleet_is_one_model_whose_versions_point_at_each_asset(trained):
    client = registry(trained.tracking_uri)
    champion = client.get_model_version_by_alias("raysys-fleet", "champion")
    assert str(champion.version) == trained.resumed.version == "2" and trained.first.version == "1"
    assert str(client.get_model_version_by_alias("raysys-fleet", "previous").version) == "1"
    manifest = read_manifest(mlflow.artifacts.download_artifacts(artifact_uri=champion.source,
                                                                 tracking_uri=trained.tracking_uri))
    assert all(e.model_uri == f"runs:/{trained.first.run_id}/assets/{a}" for a, e in manifest.assets.items())


def offline_scores(model: str, rows: np.ndarray, tracking_uri: str) -> np.ndarray:
    return load_runtime(model, tracking_uri).score(rows)["score"]


def test_predict_asset_offline_uses_that_assets_model(trained, tmp_path):
    fleet = load_fleet(trained.data)
    frame = fleet.asset("asset-0002").test
    frame[["timestamp", *fleet.sensors]].to_csv(tmp_path / "in.csv", index=False)
    assert main(["predict", "--model", str(trained.out), "--asset", "asset-0002", "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out.parquet")]) == 0
    got = pd.read_parquet(tmp_path / "out.parquet")["score"].to_numpy()
    expected = offline_scores(str(trained.out / "assets" / "asset-0002"), frame[fleet.sensors].to_numpy(),
                              trained.tracking_uri)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert main(["predict", "--model", str(trained.out), "--asset", "nope", "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "x.parquet")]) == 2


@pytest.fixture(scope="module")
def served(trained):
    from ray import serve

    from raysys.serve import DeploymentSettings, ServeConfig, UserConfig, deploy, shutdown

    port = start_serve()
    config = ServeConfig(host="127.0.0.1", port=port, tracking_uri=trained.tracking_uri, autoscaling_config=None,
                         num_replicas=1, max_models_per_replica=2,
                         deployment=DeploymentSettings(num_cpus=0.1, max_ongoing_requests=16),
                         user_config=UserConfig(max_batch_size=8, batch_wait_timeout_s=0.005))
    try:
        yield deploy("models:/raysys-fleet@champion", config, timeout_s=120)
    finally:
        shutdown(stop_serve=True)
        serve.shutdown()


def test_each_asset_served_equals_its_own_model_offline_and_one_replica_evicts_past_its_cap(trained, served):
    fleet = load_fleet(trained.data)
    rows = fleet.asset("asset-0000").test[fleet.sensors].to_numpy()[:40]
    body = {"columns": {s: rows[:, j].tolist() for j, s in enumerate(fleet.sensors)}}
    answers = {}
    with httpx.Client(timeout=60) as client:
        card = client.get(f"{served}/v1/model").json()
        assert card["kind"] == "fleet" and card["version"] == "2" and card["assets"]["succeeded"] == ASSETS
        # the same rows for three assets on one replica holding at most two: asset-0001 is evicted and reloaded
        for asset in ("asset-0001", "asset-0005", BROKEN, "asset-0001"):
            response = client.post(f"{served}/v1/assets/{asset}/predict", json=body)
            assert response.status_code == 200, response.text
            answers[asset] = np.array(response.json()["score"])
            assert response.json()["asset_id"] == asset
        scorer = client.get(f"{served}/v1/model").json()["scorer"]
        by_header = client.post(f"{served}/v1/predict", json=body, headers={"serve_multiplexed_model_id": "asset-0005"})
    assert scorer["loads"] == {"asset-0001": 2, "asset-0005": 1, BROKEN: 1}
    assert scorer["held"] == [BROKEN, "asset-0001"]
    for asset, got in answers.items():
        expected = offline_scores(f"runs:/{trained.first.run_id}/assets/{asset}", rows, trained.tracking_uri)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert not np.allclose(answers["asset-0001"], answers["asset-0005"])  # different models, same replica
    np.testing.assert_allclose(by_header.json()["score"], answers["asset-0005"], rtol=1e-12)


def test_unknown_assets_and_bad_requests_are_answered_not_crashed(trained, served):
    with httpx.Client(timeout=60) as client:
        unknown = client.post(f"{served}/v1/assets/pump-9/predict", json={"readings": [{}]})
        assert unknown.status_code == 404 and "pump-9" in unknown.json()["detail"]
        entry = client.get(f"{served}/v1/assets/asset-0003").json()
        assert entry["status"] == SUCCEEDED and entry["served"] and "model_uri" not in entry
        bad = client.post(f"{served}/v1/assets/asset-0003/predict", json={"readings": [{"temperature": 1.0}]})
        assert bad.status_code == 422 and "pressure" in bad.text
        clash = client.post(f"{served}/v1/assets/asset-0003/predict", json={"readings": [{}]},
                            headers={"serve_multiplexed_model_id": "asset-0004"})
        assert clash.status_code == 400 and "asset-0004" in clash.json()["detail"]
        assert client.get(f"{served}/readyz").json()["version"] == "2"


def test_promoting_one_asset_leaves_every_other_entry_as_it_was(trained, tmp_path):
    from raysys.fleet.train import train_fleet

    retrained = train_fleet(trained.data, tmp_path / "one", CONFIG.model_copy(update={"seed": 9}),
                            assets=["asset-0003"], tracking_uri=trained.tracking_uri, register="", progress=False)
    assert retrained.version is None and retrained.trained == ["asset-0003"]
    champion = registry(trained.tracking_uri).get_model_version_by_alias("raysys-fleet", "champion")
    before = read_manifest(mlflow.artifacts.download_artifacts(artifact_uri=champion.source,
                                                               tracking_uri=trained.tracking_uri))
    assert main(["fleet", "promote", "--asset", "asset-0003", "--source", str(tmp_path / "one"),
                 "--mlflow-uri", trained.tracking_uri]) == 0
    client = registry(trained.tracking_uri)
    version = client.get_model_version_by_alias("raysys-fleet", "champion")
    after = read_manifest(mlflow.artifacts.download_artifacts(artifact_uri=version.source,
                                                              tracking_uri=trained.tracking_uri))
    assert version.tags["promoted_asset"] == "asset-0003" and version.tags["replaces_version"] == "2"
    assert {a: e for a, e in after.assets.items() if a != "asset-0003"} == \
        {a: e for a, e in before.assets.items() if a != "asset-0003"}
    assert after.assets["asset-0003"].model_uri == f"runs:/{version.run_id}/assets/asset-0003"
    logged = [a.path for a in client.list_artifacts(version.run_id, "assets")]
    assert logged == ["assets/asset-0003"]  # the promotion copies one asset, nothing else
    rows = load_fleet(trained.data).asset("asset-0003").test[before.sensors].to_numpy()[:30]
    np.testing.assert_allclose(offline_scores(after.assets["asset-0003"].model_uri, rows, trained.tracking_uri),
                               offline_scores(str(tmp_path / "one" / "assets" / "asset-0003"), rows,
                                              trained.tracking_uri), rtol=1e-6)


def test_assets_that_fail_a_gate_are_kept_listed_and_not_registered(trained, tmp_path):
    from raysys.fleet.train import train_fleet

    config = CONFIG.model_copy(update={"gates": {"roc_auc": 1.01}})  # no model reaches it
    run = train_fleet(trained.data, tmp_path / "gated", config, assets=["asset-0001", "asset-0002"],
                      tracking_uri=trained.tracking_uri, register="gated-fleet", progress=False)
    assert {e.status for e in run.manifest.assets.values()} == {GATE_FAILED}
    assert all("roc_auc" in e.reason and e.gates_failed == ["roc_auc"] for e in run.manifest.assets.values())
    assert all((tmp_path / "gated" / "assets" / a / "ensemble.json").exists() for a in run.manifest.assets)
    assert run.version is None
    mlflow_run = registry(trained.tracking_uri).get_run(run.run_id)
    assert mlflow_run.data.tags["raysys.assets_gate_failed"] == "asset-0001,asset-0002"
    assert mlflow_run.data.metrics["assets_gate_failed"] == 2
    with pytest.raises(mlflow.exceptions.MlflowException):
        registry(trained.tracking_uri).get_registered_model("gated-fleet")


def test_fleet_settings_are_checked_and_named():
    with pytest.raises(ValueError, match="unknown model families"):
        FleetConfig(families=["ae", "gbm"])
    with pytest.raises(ValueError, match="no members"):
        FleetConfig(families=[])
    with pytest.raises(ValueError, match="num_cpus"):
        FleetConfig(num_cpus=0)


def test_fleet_train_flags_make_the_fleet_config():
    from raysys.cli import build_parser
    from raysys.fleet.cli import config_from_args
    from raysys.fleet.config import FLEET_GATES

    args = build_parser().parse_args([
        "fleet", "train", "--data", "d", "--out", "o", "--model", "ae", "--model", "lstm", "--ensemble",
        "--max-epochs", "7", "--param", "hidden_size=8", "--gate", "roc_auc=0.9", "--gate", "heldout_far_ratio=off",
        "--cpus-per-asset", "0.5", "--gpus-per-asset", "0.25", "--max-concurrent", "4", "--assets", "a,b"])
    config = config_from_args(args)
    assert config.families == ["ae", "lstm"] and config.classical
    assert config.params == {"hidden_size": 8, "epochs": 7}
    assert config.gates == {**{k: v for k, v in FLEET_GATES.items() if k != "heldout_far_ratio"}, "roc_auc": 0.9}
    assert config.resources == {"num_cpus": 0.5, "num_gpus": 0.25} and config.max_concurrent == 4
    assert args.assets == ["a", "b"]
    assert main(["fleet", "train", "--data", "d"]) == 2  # neither --out nor --resume: a clear error
