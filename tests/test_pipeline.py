"""``raysys pipeline`` end to end on the session's real Ray cluster and a real MLflow store."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raysys.cli import main
from raysys.pipeline import PipelineConfig, StageError, load_pipeline_config, run_pipeline, summary_lines
from raysys.pipeline.runner import PARENT_TAG, STAGES

FIGURES = {"roc_pr.png", "confusion_matrix.png", "recall_by_type.png", "score_distribution.png",
           "sweep_metric_vs_trial.png", "winners_loss_curves.png", "test_timeline.png"}


@pytest.fixture(scope="module")
def quick_run(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = PipelineConfig(rows=6000, seed=3, quick=True, output_dir=str(root / "runs"), tracking_uri=uri,
                         sweep={"max_epochs": 2},
                         gates={"latency_ms": 1000.0})  # the shared CI machine's latency is not what is tested here
    return run_pipeline(cfg), uri


def test_quick_pipeline_registers_a_champion(quick_run):
    result, uri = quick_run
    client = MlflowClient(uri)
    assert result.model_uri == "models:/raysys-detector@champion"
    version = client.get_model_version_by_alias("raysys-detector", "champion")
    assert str(version.version) == result.ensemble.version
    state = json.loads((result.run_dir / "pipeline.json").read_text())
    assert state["status"] == "complete"
    assert [state["stages"][s]["status"] for s in STAGES] == ["done"] * len(STAGES)


def test_every_stage_is_a_child_of_the_pipeline_run(quick_run):
    result, uri = quick_run
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'")
    stages = {run.data.tags.get("raysys.stage") for run in children}
    assert {"data", "tune", "ensemble", "report"} <= stages


def test_report_holds_every_figure(quick_run):
    result, _ = quick_run
    figures = {p.name for p in (result.report.parent / "figures").glob("*.png")}
    assert FIGURES <= figures
    html = result.report.read_text()
    assert html.count("data:image/png;base64,") >= len(FIGURES)
    for heading in ("Sweep", "Recall per anomaly type", "What was caught and what was missed"):
        assert heading in html


def test_summary_numbers_match_mlflow(quick_run):
    result, uri = quick_run
    client = MlflowClient(uri)
    logged = client.get_run(result.parent_run_id).data.metrics
    summary = "\n".join(summary_lines(result, uri))
    for key, label in (("roc_auc", "ROC AUC"), ("f1", "F1"), ("precision", "precision"), ("recall", "recall")):
        shown = float(re.search(rf"{label} (\d\.\d+)", summary).group(1))  # the ensemble's, printed first
        assert shown == pytest.approx(logged[f"ensemble_test_{key}"], abs=5e-5)
    registration_run = client.get_run(result.ensemble.registration.run_id)
    assert registration_run.data.tags[PARENT_TAG] == result.parent_run_id
    assert result.model_uri in summary and str(result.report) in summary


def test_same_seed_gives_the_same_data(quick_run, tmp_path):
    from raysys.data import generate_dataset, load_dataset

    result, _ = quick_run
    again = load_dataset(generate_dataset(tmp_path / "again", rows=6000, seed=3))
    first = load_dataset(result.run_dir / "data")
    assert first.train.equals(again.train) and first.test.equals(again.test)


def _without_labels(root: Path) -> Path:
    """Normal generated data (no anomalies injected) with the label columns dropped from every split."""
    import pandas as pd

    from raysys.data import generate_dataset

    data = generate_dataset(root, "power_plant", rows=6000, seed=0, anomaly_rate=0.0)
    for split in data.glob("*.parquet"):
        pd.read_parquet(split).drop(columns=["is_anomaly", "anomaly_type"]).to_parquet(split)
    return data


def test_quick_pipeline_without_labels_registers_a_champion(ray_cluster, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = PipelineConfig(data=str(_without_labels(tmp_path / "data")), quick=True, target_far=0.05,
                         output_dir=str(tmp_path / "runs"), tracking_uri=uri,
                         sweep={"families": ["ae", "lstm"], "num_samples": 2, "max_epochs": 2},
                         gates={"latency_ms": 1000.0}, cva=True)
    result = run_pipeline(cfg)
    assert result.model_uri == "models:/raysys-detector@champion"
    assert "cva" in {m["name"] for m in result.ensemble.build.spec["members"]}  # cva: true
    # trials were ranked without labels: by validation loss, within each family
    assert result.sweep.config.metric == "val_loss" and result.sweep.config.scheduler == "asha_family"
    assert set(result.sweep.best) == {"ae", "lstm"}
    spec = result.ensemble.build.spec
    assert spec["threshold_method"] == "far" and spec["calibration"]["labels"] is False
    weights = [m["weight"] for m in spec["members"]]
    assert weights == pytest.approx([1 / len(weights)] * len(weights))  # the label-free rule: equal weights
    gates = result.ensemble.gates
    assert {name for name, _ in gates.skipped} == {"roc_auc", "precision", "recall", "false_alarm_rate"}
    measured = {g.name: g for g in gates.results}
    assert set(measured) == {"heldout_far_ratio", "latency_ms"} and measured["heldout_far_ratio"].passed, measured
    metrics = result.ensemble.metrics["ensemble"]
    assert metrics["far_asked"] == 0.05 and metrics["heldout_rows"] == spec["calibration"]["holdout_rows"] > 0
    summary = "\n".join(summary_lines(result, uri))
    assert "no labels" in summary and "(asked 0.05)" in summary and "skipped" in summary
    html = result.report.read_text()
    assert "false alarms on held-out normal rows" in html and "the test split has no labels" in html
    version = MlflowClient(uri).get_model_version_by_alias("raysys-detector", "champion")
    assert float(version.tags["heldout_false_alarm_rate"]) == pytest.approx(metrics["heldout_false_alarm_rate"],
                                                                           abs=5e-5)


def _corrupt_dataset(small_dataset: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(small_dataset, bad)
    (bad / "train.parquet").write_bytes(b"not parquet at all")
    return bad


def test_unreadable_data_stops_in_the_data_stage(small_dataset, tmp_path):
    cfg = PipelineConfig(data=str(_corrupt_dataset(small_dataset, tmp_path)), output_dir=str(tmp_path / "runs"),
                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(StageError, match=r"stage 'data' failed.*train\.parquet"):
        run_pipeline(cfg)
    state = json.loads(next((tmp_path / "runs").glob("*/pipeline.json")).read_text())
    assert state["status"] == "failed" and state["failed_stage"] == "data"
    assert state["stages"]["sweep"]["status"] == "pending"


def test_a_middle_stage_failure_keeps_earlier_outputs_marked(small_dataset, tmp_path):
    cfg = PipelineConfig(data=str(small_dataset), output_dir=str(tmp_path / "runs"),
                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", sweep={"num_samples": 0})
    with pytest.raises(StageError, match=r"stage 'sweep' failed.*num_samples"):
        run_pipeline(cfg)
    state = json.loads(next((tmp_path / "runs").glob("*/pipeline.json")).read_text())
    assert state["status"] == "failed"
    assert state["stages"]["data"]["status"] == "done"
    assert state["stages"]["data"]["outputs"]["path"] == str(small_dataset)
    assert state["stages"]["sweep"]["status"] == "failed"
    assert [state["stages"][s]["status"] for s in ("ensemble", "report")] == ["pending", "pending"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("raysys").experiment_id],
                                "tags.`raysys.stage` = 'pipeline'")[0]
    assert parent.info.status == "FAILED"


def test_cli_names_the_failed_stage(ray_cluster, small_dataset, tmp_path, capsys):
    code = main(["pipeline", "--data", str(_corrupt_dataset(small_dataset, tmp_path)), "--output-dir",
                 str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 1
    assert "pipeline stage 'data' failed" in capsys.readouterr().err


def test_pipeline_config_rejects_unknown_keys(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("rows: 5000\nsweeep: {}\n")
    with pytest.raises(ValueError, match="sweeep"):
        load_pipeline_config(path)
    path.write_text("rows: 5000\nquick: true\n")
    assert load_pipeline_config(path, seed=4) == PipelineConfig(rows=5000, quick=True, seed=4)


def test_pipeline_assets_runs_the_fleet_path_end_to_end(ray_cluster, tmp_path, capsys):
    from raysys.pipeline.runner import FLEET_STAGES

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["pipeline", "--assets", "3", "--rows", "600", "--quick", "--output-dir", str(tmp_path / "runs"),
                 "--mlflow-uri", uri])
    out = capsys.readouterr().out
    run_dir = next((tmp_path / "runs").iterdir())
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert [state["stages"][s]["status"] for s in FLEET_STAGES] == ["done"] * len(FLEET_STAGES)
    fleet = state["stages"]["fleet"]["outputs"]
    assert fleet["assets"]["total"] == 3 and state["config"]["assets"] == 3
    fleet_run = MlflowClient(uri).get_run(fleet["mlflow_run_id"])
    assert fleet_run.data.tags[PARENT_TAG] == MlflowClient(uri).search_runs(
        [fleet_run.info.experiment_id], "tags.`raysys.stage` = 'pipeline'")[0].info.run_id
    assert json.loads(fleet_run.data.params["params"]) == {"epochs": 3}  # --quick
    html = (run_dir / "report" / "report.html").read_text()
    assert "raysys fleet report" in html and "Every asset" in html and html.count("asset-000") >= 3
    served = fleet["assets"]["succeeded"]
    assert code == (0 if served else 1) and "fleet " in out
    if served:
        assert fleet["model_uri"] == "models:/raysys-fleet@champion"
