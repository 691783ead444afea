"""The sweep config and search space: validation before any Ray work (no cluster needed)."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
import yaml

from raysys.models import build_detector
from raysys.tune import SweepConfig, default_config_path, load_sweep_config
from raysys.tune.cli import main as tune_main
from raysys.tune.config import Distribution
from raysys.tune.space import FamilySpace, trial_params


def _write(tmp_path, data, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return path


def test_packaged_default_config_loads_and_covers_every_family():
    config = load_sweep_config(default_config_path())
    assert sorted(config.families) == ["ae", "conv", "lstm", "vae"]
    assert config.scheduler == "asha" and config.mode == "max"
    lstm = config.family_space("lstm")
    assert isinstance(lstm["window"], Distribution) and isinstance(lstm["lr"], Distribution)  # common merged in
    assert "beta" in config.family_space("vae") and "beta" not in config.family_space("ae")


def test_conv_space_draws_windows_channels_and_kernels():
    conv = SweepConfig.default().family_space("conv")
    assert conv["channels"] == Distribution("choice", ([8, 16], [16, 32], [16, 32, 64]))
    assert conv["kernel_size"] == Distribution("choice", (3, 5)) and isinstance(conv["lr"], Distribution)
    assert "hidden_size" not in conv and "window" in conv


def test_quick_config_runs_one_trial_per_family():
    config = SweepConfig.quick()
    assert config.num_samples == len(config.families) == 4
    assert (config.max_epochs, config.workers_per_trial, config.scheduler) == (2, 1, "asha_family")


def test_quick_config_is_a_tiny_sweep_with_overrides():
    config = SweepConfig.quick(num_samples=6, storage_path="/tmp/x")
    assert (config.num_samples, config.max_epochs, config.workers_per_trial) == (6, 2, 1)
    assert config.max_concurrent <= 2 and config.storage_path == "/tmp/x" and config.scheduler == "asha_family"


def test_config_round_trips_through_yaml_and_json(tmp_path):
    config = SweepConfig.default(num_samples=5, search="optuna")
    again = load_sweep_config(_write(tmp_path, yaml.safe_load(config.to_yaml())))
    assert again.to_dict() == config.to_dict()
    assert load_sweep_config(_write(tmp_path, config.to_dict(), "s.json")).num_samples == 5


def test_yaml_numbers_written_without_a_dot_are_accepted(tmp_path):
    # YAML 1.1 reads 1e-4 as a string
    config = load_sweep_config(_write(tmp_path, {"space": {"ae": {"lr": {"loguniform": ["1e-4", "1e-2"]}}}}))
    assert config.family_space("ae")["lr"] == Distribution("loguniform", (1e-4, 1e-2))


@pytest.mark.parametrize("data, named", [
    ({"num_sample": 3}, "num_sample"),
    ({"families": ["ae", "gru"]}, "'gru'"),
    ({"scheduler": "hyperband"}, "'hyperband'"),
    ({"search": "bayes"}, "'bayes'"),
    ({"metric": "accuracy"}, "'accuracy'"),
    ({"num_samples": 0}, "num_samples"),
    ({"max_concurrent": -1}, "max_concurrent"),
    ({"workers_per_trial": 1.5}, "workers_per_trial"),
    ({"gpus_per_worker": -1}, "gpus_per_worker"),
    ({"time_budget_s": 0}, "time_budget_s"),
    ({"max_epochs": 2, "grace_period": 5}, "grace_period"),
    ({"reduction_factor": 1}, "reduction_factor"),
    ({"space": {"gru": {"lr": 0.1}}}, "'gru'"),
    ({"space": {"ae": {"windoww": 8}}}, "space.ae.windoww"),
    ({"space": {"ae": {"window": 8}}}, "space.ae.window"),  # an lstm parameter on ae
    ({"space": {"ae": {"lr": {"normal": [0, 1]}}}}, "'normal'"),
    ({"space": {"ae": {"lr": {"loguniform": [1e-2, 1e-4]}}}}, "space.ae.lr.loguniform"),
    ({"space": {"ae": {"lr": {"loguniform": [0, 1e-2]}}}}, "space.ae.lr.loguniform"),
    ({"space": {"ae": {"lr": {"uniform": [1e-3]}}}}, "space.ae.lr.uniform"),
    ({"space": {"ae": {"lr": {"uniform": ["fast", 1]}}}}, "'fast'"),
    ({"space": {"ae": {"batch_size": {"choice": []}}}}, "space.ae.batch_size.choice"),
    ({"space": {"ae": {"batch_size": {"choice": [64, 0]}}}}, "space.ae.batch_size.choice[1]"),
    ({"space": {"ae": {"batch_size": {"uniform": [16, 64]}}}}, "space.ae.batch_size.uniform"),
    ({"space": {"ae": {"dropout": 1.5}}}, "space.ae.dropout"),
    ({"space": {"ae": {"hidden_dims": {"choice": [[64, 32], [0]]}}}}, "space.ae.hidden_dims.choice[1]"),
    ({"space": {"lstm": {"window": {"randint": [1, 8]}}}}, "space.lstm.window.randint[0]"),
    ({"space": {"conv": {"kernel_size": {"choice": [3, 4]}}}}, "space.conv.kernel_size.choice[1]"),
    ({"space": {"conv": {"channels": {"choice": [[16, 32], []]}}}}, "space.conv.channels.choice[1]"),
    ({"space": {"conv": {"hidden_size": 8}}}, "space.conv.hidden_size"),
    ({"space": {"common": {"epochs": 5}}}, "max_epochs"),
    ({"space": {"ae": {"lr": {"uniform": [1e-4, 1e-2], "log": True}}}}, "space.ae.lr"),
])
def test_malformed_config_names_the_bad_key_or_value(tmp_path, data, named):
    with pytest.raises(ValueError) as excinfo:
        load_sweep_config(_write(tmp_path, data))
    assert named in str(excinfo.value)


def test_unreadable_or_missing_config_fails_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_samples: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_sweep_config(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_sweep_config(tmp_path / "nope.yaml")


def test_cli_rejects_a_malformed_config_before_any_trial(tmp_path, capsys, small_dataset):
    import ray

    ray_was_up = ray.is_initialized()
    config = _write(tmp_path, {"space": {"vae": {"beta": {"loguniform": [0.0, 1.0]}}}})
    code = tune_main(["--data", str(small_dataset), "--config", str(config), "--storage-path", str(tmp_path / "runs"),
                      "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 2
    assert "space.vae.beta.loguniform" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    assert ray.is_initialized() == ray_was_up


def test_cli_print_config_applies_flags(capsys):
    assert tune_main(["--print-config", "--quick", "--num-samples", "9", "--gpus-per-worker", "0.5",
                      "--time-budget", "60"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["num_samples"], printed["gpus_per_worker"], printed["time_budget_s"]) == (9, 0.5, 60)
    assert printed["max_epochs"] == 2


@pytest.mark.parametrize("sampler", [optuna.samplers.RandomSampler(seed=3), optuna.samplers.TPESampler(seed=3)])
def test_space_draws_valid_detectors_round_robin_over_families(sampler):
    config = SweepConfig.default()
    space = FamilySpace.from_config(config)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    families = []
    for _ in range(12):
        trial = study.ask()
        values = space(trial)
        # what OptunaSearch hands the trial: values nested by family
        nested: dict = {"family": values["family"]}
        for key, value in values.items():
            if "/" in key:
                family, name = key.split("/")
                nested.setdefault(family, {})[name] = value
        family, params = trial_params(nested)
        build_detector(family, **params)
        if family == "ae":
            assert params["hidden_dims"] in ([32, 16], [64, 32], [128, 64], [64, 32, 16])
            assert 3e-4 <= params["lr"] <= 1e-2
        if family == "lstm":
            assert params["window"] in (8, 16, 32) and "hidden_dims" not in params
        if family == "conv":
            assert params["channels"] in ([8, 16], [16, 32], [16, 32, 64]) and params["kernel_size"] in (3, 5)
            detector = build_detector(family, **params)
            assert detector.build_module(5)(torch.zeros(2, params["window"], 5))[0].shape == (2, params["window"], 5)
        families.append(family)
        study.tell(trial, 0.5)
    assert families == config.families * 3


class _Trial:
    """What the schedulers read from a Tune trial."""

    def __init__(self, trial_id: str, family: str):
        self.trial_id = trial_id
        self.config = {"family": family}


@pytest.mark.parametrize("scheduler_name, lstm_stopped", [("asha", True), ("asha_family", False)])
def test_asha_family_ranks_each_trial_within_its_family(scheduler_name, lstm_stopped):
    from ray.tune.schedulers import TrialScheduler

    from raysys.tune.sweep import _scheduler

    scheduler = _scheduler(SweepConfig.default(scheduler=scheduler_name, max_epochs=9, grace_period=1,
                                               reduction_factor=2))
    scheduler.set_search_properties("val_pr_auc", "max")
    # dense models reach a high PR AUC after one epoch; the LSTMs start lower
    trials = [_Trial("ae1", "ae"), _Trial("ae2", "ae"), _Trial("lstm1", "lstm"), _Trial("lstm2", "lstm")]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    decisions = {t.trial_id: scheduler.on_trial_result(None, t, {"epoch": 1, "val_pr_auc": value})
                 for t, value in zip(trials, (0.95, 0.96, 0.60, 0.70))}
    assert decisions["ae1"] == decisions["ae2"] == TrialScheduler.CONTINUE
    assert (decisions["lstm2"] == TrialScheduler.STOP) == lstm_stopped
