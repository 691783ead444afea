"""Ray Train runs on the session's local Ray cluster: one 2-worker CPU run per detector family,
shared by the tests below. Each worker trained on its own shard, the DDP replicas ended equal,
MLflow holds params, per-epoch metrics, test metrics and artifacts, and the autoencoder meets
the quality targets on the default generated dataset."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from raysys.data import ANOMALY_TYPES, load_dataset
from raysys.evaluation import flat_metrics
from raysys.layout import TRAIN_STATE
from raysys.models import build_detector, load_detector, with_spellings
from raysys.models._training import split_validation, worker_batch_size
from raysys.train import TrainConfig, train

# family -> (dataset fixture, epochs, detector params). The autoencoder run is on the default
# dataset (20,000 rows) because it also carries the quality targets; the others use 3,000 rows.
RUNS = {
    "ae": ("default_dataset", 8, {}),
    "vae": ("small_dataset", 2, {"latent_dim": 4}),
    "lstm": ("small_dataset", 2, {"window": 8, "stride": 2}),
    "conv": ("small_dataset", 2, {"window": 8, "stride": 2}),
}
EXPECTED_PARAMS = {"data", "ingest", "storage_options", "cpus_per_worker", "model", "num_workers", "use_gpu",
                   "storage_path", "run_name",
                   "threshold_method", "percentile", "target_far", "max_failures", "experiment"}
PLOTS = {"loss_curves.png", "score_distribution.png", "roc_pr.png", "confusion_matrix.png", "recall_by_type.png"}


@pytest.fixture(scope="module")
def trained(request, ray_cluster, tmp_path_factory):
    """``trained(family)``: that family's 2-worker run, trained on first use and kept for the module."""
    runs: dict[str, SimpleNamespace] = {}

    def get(family: str) -> SimpleNamespace:
        if family not in runs:
            dataset, epochs, params = RUNS[family]
            data = request.getfixturevalue(dataset)
            root = tmp_path_factory.mktemp(f"train-{family}")
            uri = f"sqlite:///{root / 'mlflow.db'}"
            cfg = TrainConfig(data=str(data), model=family, params={**params, "epochs": epochs, "patience": 100},
                              num_workers=2, storage_path=str(root / "runs"), run_name=f"{family}-run",
                              tracking_uri=uri, experiment="raysys-tests")
            result = train(cfg, diagnostics_dir=str(root / "diagnostics"))
            runs[family] = SimpleNamespace(family=family, cfg=cfg, epochs=epochs, result=result, root=root, uri=uri,
                                           client=MlflowClient(uri), dataset=load_dataset(data))
        return runs[family]

    return get


@pytest.fixture(scope="module", params=sorted(RUNS))
def run(request, trained):
    return trained(request.param)


def _diagnostics(run) -> dict[int, dict]:
    files = sorted((run.root / "diagnostics").glob("rank*.json"))
    return {d["rank"]: d for d in (json.loads(f.read_text()) for f in files)}


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_run_completes_with_every_epoch(run):
    result = run.result
    assert result.epochs == run.epochs
    assert result.run_dir == Path(run.cfg.storage_path) / run.cfg.run_name
    # Ray Train keeps the two newest checkpoints; the last one holds the fitted detector
    assert [p.name for p in sorted(result.run_dir.glob("epoch-*"))] == [
        f"epoch-{e:04d}" for e in (run.epochs - 1, run.epochs)]
    assert result.detector_dir == result.run_dir / f"epoch-{run.epochs:04d}" / "detector"
    detector = load_detector(result.detector_dir)
    assert detector.family == run.family
    assert all(detector.get_params()[k] == v for k, v in run.cfg.params.items())
    np.testing.assert_allclose(detector.decision_function(run.dataset.features("test")),
                               result.evaluation.test_scores, rtol=1e-6)


def test_loaded_detector_flags_rows_with_the_calibrated_threshold(run):
    """One threshold: the one the run calibrated on validation (and counted in its metrics) is the
    detector's own, so ``predict`` of the saved detector gives the confusion matrix the run logged."""
    detector = load_detector(run.result.detector_dir)
    evaluation = run.result.evaluation
    assert detector.threshold_ == pytest.approx(evaluation.threshold)
    assert detector.threshold_method_ == evaluation.threshold_method == "best_f1"
    flags = detector.predict(run.dataset.features("test"))
    assert int(flags.sum()) == evaluation.metrics["confusion_matrix"]["tp"] + evaluation.metrics["confusion_matrix"]["fp"]


def test_each_worker_trained_on_a_distinct_shard(run):
    ranks = _diagnostics(run)
    assert sorted(ranks) == [0, 1] and all(d["world_size"] == 2 for d in ranks.values())
    # the samples the detector trains on: normal rows (or windows) of the training split
    detector = build_detector(run.family, **run.cfg.params)
    samples = detector.init_fit(run.dataset.features("train"), run.dataset.labels("train"))
    n_samples = len(split_validation(torch.from_numpy(samples), detector.validation_fraction)[0])
    shard0, shard1 = (ranks[r]["indices"] for r in (0, 1))
    per_rank = -(-n_samples // 2)  # DistributedSampler: ceil(n / world_size) each
    assert len(shard0) == len(shard1) == per_rank
    assert set(shard0) | set(shard1) == set(range(n_samples))
    # disjoint, except the samples DistributedSampler repeats to even out the shards (n odd: one)
    assert len(set(shard0) & set(shard1)) <= 2 * per_rank - n_samples


def test_ddp_replicas_end_with_identical_weights(run):
    checksums = [d["weights_checksum"] for d in _diagnostics(run).values()]
    assert np.isfinite(checksums).all() and checksums[0] == checksums[1]
    # and those are the weights of the last checkpoint
    state = torch.load(run.result.run_dir / f"epoch-{run.epochs:04d}" / TRAIN_STATE, weights_only=True)
    assert float(sum(v.double().sum() for v in state["module"].values())) == pytest.approx(checksums[0], rel=1e-9)


def test_mlflow_run_has_params_epoch_metrics_and_artifacts(run, tmp_path):
    client, run_id, epochs = run.client, run.result.run_id, run.epochs
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == run.cfg.run_name
    assert logged.data.tags["raysys.model"] == run.family
    params = logged.data.params
    model_params = {f"model.{k}": str(v) for k, v in run.cfg.params.items()}
    assert set(params) == EXPECTED_PARAMS | set(model_params)
    assert params["model"] == run.family and params["num_workers"] == "2" and params["model.epochs"] == str(epochs)
    assert all(params[k] == v for k, v in model_params.items())

    for key in ("train_loss", "val_loss", "lr"):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key
        assert all(np.isfinite(m.value) and m.value > 0 for m in history)
    losses = {m.step: m.value for m in client.get_metric_history(run_id, "train_loss")}
    assert losses[epochs] < losses[1]

    test_metrics = {k: v for k, v in logged.data.metrics.items() if k.startswith("test_")}
    expected = {f"test_{k}": v for k, v in flat_metrics({**run.result.evaluation.metrics,
                                                         **run.result.evaluation.extra_scores}).items()}
    assert test_metrics == pytest.approx(expected)
    test_types = set(run.dataset.anomaly_types("test")) - {"normal"}
    assert {"test_roc_auc", "test_pr_auc", "test_precision", "test_recall", "test_f1", "test_false_alarm_rate",
            "test_threshold", "test_confusion_matrix_tp"} | {f"test_recall_by_type_{t}" for t in test_types} \
        <= set(test_metrics)
    if run.family == "vae":
        assert {"test_mahalanobis_roc_auc", "test_euclidean_roc_auc"} <= set(test_metrics)

    artifacts = _artifacts(client, run_id)
    assert {"detector/detector.json", "detector/model.pt", "detector/scaler.json", "threshold.json",
            "metrics.json", "metadata.json"} | {f"plots/{p}" for p in PLOTS} <= artifacts
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path), tracking_uri=run.uri))
    assert json.loads((local / "threshold.json").read_text()) == {
        "threshold": pytest.approx(run.result.evaluation.threshold), "method": "best_f1"}
    assert json.loads((local / "metrics.json").read_text())["roc_auc"] == pytest.approx(
        run.result.evaluation.metrics["roc_auc"])
    assert json.loads((local / "metadata.json").read_text()) == run.dataset.metadata
    assert all((local / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in PLOTS)
    # the logged detector is the run's detector
    X = run.dataset.features("test")
    np.testing.assert_array_equal(load_detector(local / "detector").decision_function(X),
                                  load_detector(run.result.detector_dir).decision_function(X))


def test_autoencoder_meets_quality_targets_on_default_dataset(trained):
    run = trained("ae")
    metrics = run.result.evaluation.metrics
    assert metrics["roc_auc"] >= 0.95
    assert metrics["f1"] >= 0.80
    # every anomaly type's recall is reported, in the result and in MLflow
    assert set(metrics["recall_by_type"]) == set(ANOMALY_TYPES)
    logged = run.client.get_run(run.result.run_id).data.metrics
    for kind, recall in metrics["recall_by_type"].items():
        assert 0.0 <= recall <= 1.0
        assert logged[f"test_recall_by_type_{kind}"] == pytest.approx(recall)


# --------------------------------------------------------------------------- without Ray


@pytest.mark.parametrize(("changes", "match"), [
    ({"model": "iforest"}, "model must be one of"),
    ({"num_workers": 0}, "num_workers must be >= 1, got 0"),
    ({"params": {"epochs": 0}}, "epochs must be >= 1, got 0"),
    ({"params": {"patience": 0}}, "patience must be >= 1, got 0"),
    ({"params": {"dropout": 2}}, r"dropout must be in \[0, 1\), got 2"),
    ({"params": {"batch_size": 1}, "num_workers": 2}, "batch_size .1. must be >= num_workers .2."),
    ({"percentile": 100}, r"percentile must be in \(0, 100\), got 100"),
    ({"threshold_method": "far", "target_far": 2}, r"target_far must be in \(0, 1\), got 2"),
    ({"threshold_method": "otsu"}, "threshold_method must be one of .*'otsu'"),
    ({"params": {"latent_size": 3}}, "unknown ae parameter.*'latent_size'"),
])
def test_train_config_rejects_bad_values(small_dataset, changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(data=str(small_dataset), **changes)


def test_resume_of_unknown_run_and_reuse_of_a_run_name_fail_before_training(small_dataset, tmp_path, mlflow_uri):
    cfg = TrainConfig(data=str(small_dataset), storage_path=str(tmp_path / "runs"), run_name="taken",
                      tracking_uri=mlflow_uri)
    with pytest.raises(FileNotFoundError, match="cannot resume 'ghost'"):
        train(cfg, resume="ghost")
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="--resume taken"):
        train(cfg)
    assert MlflowClient(mlflow_uri).search_runs(
        [e.experiment_id for e in MlflowClient(mlflow_uri).search_experiments()]) == []


def test_flag_spellings_set_the_detector_parameter_and_conflicts_name_both():
    assert with_spellings({"lr": 0.1}, max_epochs=3, patience=None) == {"lr": 0.1, "epochs": 3}
    assert with_spellings({"epochs": 3}, max_epochs=3) == {"epochs": 3}
    with pytest.raises(ValueError, match=r"max_epochs=3 conflicts with the detector parameter epochs=5"):
        with_spellings({"epochs": 5}, max_epochs=3)


def test_batch_size_is_the_global_batch_split_across_workers():
    assert [worker_batch_size(256, n) for n in (1, 2, 3)] == [256, 128, 85]
    with pytest.raises(ValueError, match="must be >= the number of workers"):
        worker_batch_size(1, 2)


def test_evaluation_without_labels_calibrates_on_older_rows_and_measures_the_newest(small_dataset, tmp_path):
    from dataclasses import replace

    from raysys.data import ANOMALY_TYPE, LABEL
    from raysys.evaluation.calibration import HOLDOUT_FRACTION, tail_threshold
    from raysys.train.evaluate import evaluate_detector, write_evaluation

    dataset = load_dataset(small_dataset)
    unlabelled = replace(dataset, **{s: dataset.split(s).drop(columns=[LABEL, ANOMALY_TYPE])
                                     for s in ("train", "val", "test")})
    detector = build_detector("ae", epochs=2).fit(unlabelled.features("train"))
    evaluation = evaluate_detector(detector, unlabelled, target_far=0.05)
    assert evaluation.threshold_method == "far"
    scores = evaluation.val_scores
    holdout = round(len(scores) * HOLDOUT_FRACTION)
    assert holdout > 0 and evaluation.threshold == tail_threshold(scores[:len(scores) - holdout], 0.05)
    metrics = evaluation.metrics
    assert metrics["labelled"] is False and metrics["far_asked"] == 0.05 and metrics["heldout_rows"] == holdout
    assert metrics["heldout_false_alarm_rate"] == pytest.approx(np.mean(scores[-holdout:] > evaluation.threshold))
    assert metrics["alarm_rate"] == pytest.approx(np.mean(evaluation.test_scores > evaluation.threshold))
    out = write_evaluation(evaluation, unlabelled, detector.history_, tmp_path, "ae")
    assert {p.name for p in (out / "plots").glob("*.png")} == {"loss_curves.png", "score_distribution.png"}
    with pytest.raises(ValueError, match="'best_f1' needs labelled validation rows"):
        evaluate_detector(detector, unlabelled, threshold_method="best_f1")
