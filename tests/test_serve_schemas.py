"""Request validation, settings and the CLI of ``raysys.serve``, without Ray."""

import argparse
import asyncio
import json
import re

import numpy as np
import pytest
import yaml

from raysys.serve import (
    RequestError,
    ServeConfig,
    load_serve_config,
    parse_json,
    parse_predict_request,
    to_serve_config_v2,
)
from raysys.serve.schemas import predict_response, read_body, to_strict_json
from raysys.serve.cli import add_parsers, config_from_args, handler

SENSORS = ["flow", "ph", "temp"]


def reading(**values):
    row = {"flow": 1.0, "ph": 7.0, "temp": 20.0}
    row.update(values)
    return row


def parse(document, max_rows=100):
    return parse_predict_request(document, SENSORS, max_rows)


def test_records_and_columns_give_the_same_rows():
    rows = [reading(flow=float(i)) for i in range(5)]
    records = parse({"readings": rows})
    columns = parse({"columns": {s: [r[s] for r in rows] for s in reversed(SENSORS)}})
    assert records.rows.dtype == np.float64 and records.rows.shape == (5, 3)
    np.testing.assert_array_equal(records.rows, columns.rows)
    assert not records.columnar and columns.columnar
    assert records.n_history == 0 and records.n_readings == 5


def test_history_rows_come_first_and_are_counted():
    parsed = parse({"readings": [reading(flow=9.0)], "history": [reading(flow=1.0), reading(flow=2.0)]})
    assert parsed.n_history == 2 and parsed.n_readings == 1
    np.testing.assert_array_equal(parsed.rows[:, 0], [1.0, 2.0, 9.0])


@pytest.mark.parametrize("value", [1e300, -1e300, 1e19, 5e-324, 2.0 ** 128, 10 ** 30])
def test_readings_beyond_float32_stay_float64(value):
    """Readings beyond float32 are finite numbers the runtime flags (out_of_range): parsed exactly, as float64,
    never rejected and never turned into inf."""
    for document in ({"readings": [reading(temp=value)]}, {"columns": {"flow": [1.0], "ph": [7.0], "temp": [value]}}):
        parsed = parse(parse_json(json.dumps(document).encode()))
        assert parsed.rows.dtype == np.float64 and parsed.rows[0, 2] == float(value)


def test_integers_are_numbers():
    assert parse({"readings": [{"flow": 1, "ph": 7, "temp": 20}]}).rows.tolist() == [[1.0, 7.0, 20.0]]


@pytest.mark.parametrize("document, status, message", [
    ([reading()], 422, "must be a JSON object"),
    ({}, 422, "exactly one of 'readings'"),
    ({"readings": [reading()], "columns": {}}, 422, "got both"),
    ({"readings": [reading()], "extra": 1}, 422, "unknown field(s) 'extra'"),
    ({"readings": []}, 422, "empty batch"),
    ({"columns": {}}, 422, "empty batch"),
    ({"columns": {"flow": [], "ph": [], "temp": []}}, 422, "empty batch"),
    ({"readings": [reading(pressure=1.0)]}, 422, "readings[0]: unknown sensor(s) 'pressure'"),
    ({"readings": [reading(), {"flow": 1.0, "ph": 7.0}]}, 422, "readings[1]: missing sensor(s) 'temp'"),
    ({"readings": [reading(ph="7.1")]}, 422, 'readings[0]["ph"]: expected a number, got str "7.1"'),
    ({"readings": [reading(ph=True)]}, 422, 'readings[0]["ph"]: expected a number, got bool'),
    ({"readings": [reading(ph=None)]}, 422, 'readings[0]["ph"]: expected a number, got null'),
    ({"readings": [reading(temp=float("nan"))]}, 422, 'readings[0]["temp"]: NaN and infinite'),
    ({"readings": [reading(temp=float("inf"))]}, 422, "NaN and infinite values are not allowed"),
    ({"readings": [reading(temp=10 ** 400)]}, 422, 'readings[0]["temp"]: integer of 401 digits is beyond float64'),
    ({"readings": [reading(temp=-float("inf"))]}, 422, "NaN and infinite values are not allowed"),
    ({"readings": [[1.0, 7.0, 20.0]]}, 422, "readings[0]: expected an object"),
    ({"readings": {"flow": 1.0}}, 422, "readings: expected a list"),
    ({"columns": {"flow": [1.0], "ph": [7.0], "temp": [20.0, 21.0]}}, 422, "same number of values"),
    ({"columns": {"flow": [1.0], "ph": ["x"], "temp": [20.0]}}, 422, 'columns["ph"][0]: expected a number'),
    ({"columns": {"flow": [1.0], "ph": [7.0]}}, 422, "columns: missing sensor(s) 'temp'"),
    ({"readings": [reading()] * 101}, 413, "101 readings exceed the maximum of 100"),
    ({"columns": {s: [1.0] * 101 for s in SENSORS}}, 413, "max_request_rows"),
    ({"readings": [reading()] * 60, "history": [reading()] * 60}, 413, "plus 60 history rows"),
])
def test_bad_requests_name_the_problem(document, status, message):
    with pytest.raises(RequestError) as info:
        parse(document)
    assert info.value.status == status
    assert message in info.value.message, info.value.message
    assert info.value.body()["detail"] == info.value.message


def test_every_bad_reading_is_listed():
    with pytest.raises(RequestError) as info:
        parse({"readings": [reading(ph="a"), reading(), reading(temp=None)]})
    assert len(info.value.errors) == 2 and "(and 1 more)" in info.value.message


@pytest.mark.parametrize("body", [b"", b"  ", b"{not json", b"\xff\xfe", b'{"readings": [}'])
def test_a_body_that_is_not_json_is_400(body):
    with pytest.raises(RequestError) as info:
        parse_json(body)
    assert info.value.status == 400 and "JSON" in info.value.message


async def _chunks(sizes, delay_s=0.0, read=None):
    for size in sizes:
        if delay_s:
            await asyncio.sleep(delay_s)
        if read is not None:
            read.append(size)
        yield b"x" * size


def test_a_chunked_body_over_the_limit_is_413_before_the_rest_is_read():
    read = []
    with pytest.raises(RequestError) as info:
        asyncio.run(read_body(_chunks([4096] * 1000, read=read), None, max_bytes=10_000, timeout_s=5))
    assert info.value.status == 413 and "over the limit of 10000 bytes (max_body_bytes)" in info.value.message
    assert len(read) == 3  # stopped at the chunk that passed the limit, not after 4 MB
    assert info.value.headers() == {"Connection": "close"}


def test_a_declared_length_over_the_limit_is_413_without_reading():
    read = []
    with pytest.raises(RequestError) as info:
        asyncio.run(read_body(_chunks([10], read=read), "20001", max_bytes=20_000, timeout_s=5))
    assert info.value.status == 413 and "20001 bytes" in info.value.message and read == []


def test_a_body_within_the_limit_is_read_whole():
    assert asyncio.run(read_body(_chunks([10, 20, 30]), "60", max_bytes=60, timeout_s=5)) == b"x" * 60


def test_a_slow_body_is_408_and_a_missing_one_503():
    with pytest.raises(RequestError) as info:
        asyncio.run(read_body(_chunks([10] * 100, delay_s=0.05), None, max_bytes=10_000, timeout_s=0.3))
    assert info.value.status == 408 and "body_timeout_s" in info.value.message
    with pytest.raises(RequestError) as info:
        asyncio.run(read_body(_chunks([10], delay_s=5), "10", max_bytes=10_000, timeout_s=0.2))
    assert info.value.status == 503 and info.value.headers() == {"Retry-After": "1"}


def strict_loads(text):
    """``json.loads`` that fails on the NaN / Infinity tokens Python's parser accepts by default."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_the_encoder_refuses_nan_and_infinity(value):
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_strict_json({"predictions": [{"score": 1.0, "members": {"ae": value}}]})


def test_the_encoder_keeps_strings_that_look_like_nan():
    content = {"detail": "NaN", "sensors": ["Infinity", "-Infinity"], "score": 1e308, "tiny": 5e-324}
    assert strict_loads(to_strict_json(content)) == content


def test_nan_tokens_parse_then_fail_validation():
    document = parse_json(b'{"readings": [{"flow": NaN, "ph": 7, "temp": 20}]}')
    with pytest.raises(RequestError, match="NaN and infinite"):
        parse(document)


# -- settings -------------------------------------------------------------------------


def test_flat_config_file_and_overrides(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({
        "model_uri": "models:/raysys-detector@champion",
        "port": 9000,
        "autoscaling_config": {"min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 4},
        "user_config": {"max_batch_size": 16},
    }))
    config = load_serve_config(path, **{"autoscaling_config.max_replicas": 8, "user_config.batch_wait_timeout_s": 0.01,
                                        "port": None})
    assert config.port == 9000
    assert config.autoscaling_config.min_replicas == 2 and config.autoscaling_config.max_replicas == 8
    assert config.user_config.max_batch_size == 16 and config.user_config.batch_wait_timeout_s == 0.01


def test_serve_config_v2_round_trip(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    config = ServeConfig(model_uri="models:/raysys-detector@champion", tracking_uri="http://mlflow:5000",
                         host="0.0.0.0", port=8000)
    document = to_serve_config_v2(config)
    ServeDeploySchema.model_validate(document)  # what `serve deploy` and KubeRay accept
    app = document["applications"][0]
    assert app["name"] == "raysys" and app["import_path"] == "raysys.serve.app:app_builder"
    deployment = app["deployments"][0]
    assert deployment["name"] == "AnomalyDetector"
    assert set(deployment["user_config"]) == {"max_batch_size", "batch_wait_timeout_s", "max_request_rows",
                                              "max_body_bytes", "body_timeout_s"}
    assert {"min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s",
            "downscale_delay_s"} <= set(deployment["autoscaling_config"])
    path = tmp_path / "serve-config.yaml"
    path.write_text(yaml.safe_dump(document))
    assert load_serve_config(path) == config


def test_serve_config_v2_with_fixed_replicas_round_trips(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    config = ServeConfig(model_uri="/models/ensemble", autoscaling_config=None, num_replicas=3, port=8100)
    document = to_serve_config_v2(config)
    ServeDeploySchema.model_validate(document)
    assert document["applications"][0]["deployments"][0]["num_replicas"] == 3
    path = tmp_path / "serve-config.yaml"
    path.write_text(yaml.safe_dump(document))
    assert load_serve_config(path) == config


def _serve_config_v2(**deployment):
    return {"applications": [
        {"name": "other", "route_prefix": "/other", "import_path": "other.app:build"},
        {"name": "detector", "route_prefix": "/detect", "import_path": "raysys.serve.app:app_builder",
         "args": {"model_uri": "models:/raysys-detector/3"},
         "deployments": [{"name": "AnomalyDetector", **deployment}, {"name": "Other", "num_replicas": 9}]}]}


def test_serve_config_v2_is_read_with_rays_schema(tmp_path, caplog):
    path = tmp_path / "serve-config.yaml"
    path.write_text(yaml.safe_dump({**_serve_config_v2(
        ray_actor_options={"num_cpus": 0.25, "num_gpus": 1}, max_ongoing_requests=16,
        user_config={"max_batch_size": 8}, logging_config={"enable_access_log": False},
        health_check_timeout_s=5), "http_options": {"port": 9100}}))
    with caplog.at_level("WARNING", logger="raysys.serve.config"):
        config = load_serve_config(path)
    assert config.app_name == "detector" and config.route_prefix == "/detect" and config.port == 9100
    assert config.host == ServeConfig().host  # not given: raysys's default, not Serve's
    assert config.deployment.num_cpus == 0.25 and config.deployment.max_ongoing_requests == 16
    assert config.deployment.access_log is False and config.user_config.max_batch_size == 8
    assert config.autoscaling_config == ServeConfig().autoscaling_config
    assert "does not apply health_check_timeout_s, ray_actor_options.num_gpus" in caplog.text


@pytest.mark.parametrize("deployment, message", [
    ({"max_ongoing_requests": "lots"},
     "not a valid Serve config: applications.1.deployments.0.max_ongoing_requests: Input should be a valid "
     "integer, unable to parse string as an integer (got 'lots')"),
    ({"ray_actor_options": {"num_cpus": -1}}, "applications.1.deployments.0.ray_actor_options.num_cpus"),
    ({"num_replicas": 2, "autoscaling_config": {"max_replicas": 4}}, "num_replicas is not allowed"),
    ({"max_ongoing_requests": 4, "user_config": {"max_batch_size": 8}}, "batches never fill"),  # raysys's check
    ({"user_config": {"max_batch_size": 0}}, "user_config.max_batch_size: Input should be greater than or equal"),
    ({"autoscaling_config": {"max_replicass": 3}}, "autoscaling_config.max_replicass: Extra inputs"),
])
def test_bad_serve_config_v2_fails_naming_the_field(tmp_path, deployment, message):
    path = tmp_path / "serve-config.yaml"
    path.write_text(yaml.safe_dump(_serve_config_v2(**deployment)))
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        load_serve_config(path)
    assert str(path) in str(info.value)


def test_cli_help_shows_the_models_defaults(capsys):
    from raysys.serve.config import AutoscalingSettings, DeploymentSettings, UserConfig

    with pytest.raises(SystemExit):
        _parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for model, field, flag in [(UserConfig, "max_batch_size", "requests per model call"),
                               (UserConfig, "batch_wait_timeout_s", "longest wait for a batch to fill"),
                               (UserConfig, "max_request_rows", "most readings per request, else 413"),
                               (AutoscalingSettings, "max_replicas", "upper bound on replicas"),
                               (DeploymentSettings, "num_cpus", "CPUs reserved per replica"),
                               (DeploymentSettings, "max_ongoing_requests", "requests per replica at once")]:
        assert f"{flag} (default {model.model_fields[field].default:g})" in text


@pytest.mark.parametrize("overrides, message", [
    ({"autoscaling_config.min_replicas": 5, "autoscaling_config.max_replicas": 2}, "max_replicas (2) must be >="),
    ({"user_config.max_batch_size": 0}, "user_config.max_batch_size"),
    ({"user_config.batch_wait_timeout_s": -1}, "batch_wait_timeout_s"),
    ({"deployment.max_ongoing_requests": 4, "user_config.max_batch_size": 8}, "batches never fill"),
    ({"route_prefix": "api"}, "must start with '/'"),
    ({"autoscaling_config.max_replicass": 3}, "max_replicass"),
])
def test_bad_settings_fail_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_serve_config(None, model_uri="x", **overrides)


def test_app_args_need_a_model():
    with pytest.raises(ValueError, match="give --model"):
        ServeConfig().app_args()


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_cli_flags_override_the_config_file(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("model_uri: /models/ensemble\nautoscaling_config: {max_replicas: 2}\n")
    args = _parse(["--config", str(path), "--model", "models:/raysys-detector@champion", "--min-replicas", "1",
                   "--max-replicas", "4", "--target-ongoing-requests", "8", "--max-batch-size", "64",
                   "--batch-wait-timeout-s", "0.005", "--port", "8100", "--ingress", "proxy",
                   "--no-throughput-optimized", "--no-blocking"])
    assert args.func is handler and args.blocking is False
    config = config_from_args(args)
    assert config.model_uri == "models:/raysys-detector@champion" and config.port == 8100
    assert config.ingress == "proxy" and config.throughput_optimized is False
    defaults = config_from_args(_parse(["--config", str(path)]))
    assert defaults.ingress == "haproxy" and defaults.throughput_optimized is True
    assert config.autoscaling_config.max_replicas == 4 and config.autoscaling_config.target_ongoing_requests == 8
    assert config.user_config.max_batch_size == 64 and config.user_config.batch_wait_timeout_s == 0.005


def test_unknown_ingress_is_rejected_naming_the_choices(tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text("model_uri: m\ningress: nginx\n")
    with pytest.raises(ValueError, match=r"serve.yaml: ingress: Input should be 'haproxy' or 'proxy'"):
        load_serve_config(path)
    with pytest.raises(SystemExit):
        _parse(["--model", "m", "--ingress", "nginx"])
    assert "invalid choice: 'nginx'" in capsys.readouterr().err


def test_cli_num_replicas_switches_autoscaling_off():
    config = config_from_args(_parse(["--model", "m", "--num-replicas", "3"]))
    assert config.autoscaling_config is None
    options = to_serve_config_v2(config)["applications"][0]["deployments"][0]
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options


def test_cli_print_config(capsys):
    assert handler(_parse(["--model", "models:/raysys-detector@champion", "--max-replicas", "3",
                           "--print-config"])) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    deployment = document["applications"][0]["deployments"][0]
    assert deployment["autoscaling_config"]["max_replicas"] == 3
    assert json.dumps(document)  # plain data, ready for a RayService manifest


# -- batched scoring ----------------------------------------------------------------------

WINDOW = 4


def _onnx_model(path, inputs_shape, nodes, initializers=()):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, inputs_shape)],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])], list(initializers))
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


@pytest.fixture(scope="module")
def tiny_ensemble(tmp_path_factory):
    """A hand-made two-member ensemble: a dense member (sum of squares of a row) and a sequence member
    (window of 4 rows, later rows weigh more), both weighted 0.5."""
    from onnx import helper, numpy_helper

    from raysys.ensemble.runtime import EnsembleRuntime

    directory = tmp_path_factory.mktemp("tiny") / "ensemble"
    directory.mkdir()
    _onnx_model(directory / "dense.onnx", ["n", len(SENSORS)],
                [helper.make_node("ReduceSumSquare", ["x"], ["score"], axes=[1], keepdims=0)])
    steps = numpy_helper.from_array(np.arange(1, WINDOW + 1, dtype=np.float32), "steps")
    _onnx_model(directory / "seq.onnx", ["n", WINDOW, len(SENSORS)],
                [helper.make_node("ReduceSumSquare", ["x"], ["rows"], axes=[2], keepdims=0),
                 helper.make_node("MatMul", ["rows", "steps"], ["score"])], [steps])
    members = [{"name": name, "file": f"{name}.onnx", "output": "score", "window": window, "center": 1.0,
                "scale": 2.0, "weight": 0.5} for name, window in (("dense", 1), ("seq", WINDOW))]
    spec = {"format_version": 1, "name": "tiny", "sensors": SENSORS, "members": members, "threshold": 12.0,
            "combination": "weighted_mean"}
    (directory / "ensemble.json").write_text(json.dumps(spec))
    return EnsembleRuntime.load(directory)


def test_coalesced_requests_score_as_each_request_alone(tiny_ensemble):
    """``ServedModel.score_many`` (what one ``@serve.batch`` call runs) gives each request exactly
    ``runtime.score`` of its rows alone: the sequence member is left out of the ensemble score on every
    request's first ``window - 1`` rows, not only on the first request's."""
    from raysys.serve._internal.model import ModelSource, ServedModel

    runtime = tiny_ensemble
    assert runtime.history == WINDOW - 1 and runtime.spec["members"][1]["weight"] > 0
    model = ServedModel(runtime, ModelSource("tiny", "tiny", None, "local-test"))
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, len(SENSORS))).astype(np.float32) for n in (7, 1, 2, 3, 4, 9, 1, 12)]
    results = model.score_many(parts)
    assert len(results) == len(parts)
    for part, got in zip(parts, results):
        alone = runtime.score(part)
        assert got["score"].shape == (len(part),)
        np.testing.assert_allclose(got["score"], alone["score"], rtol=1e-6)
        assert got["is_anomaly"].tolist() == alone["is_anomaly"].tolist()
        for name in ("dense", "seq"):
            np.testing.assert_allclose(got["members"][name], alone["members"][name], rtol=1e-6)
        # rows without a full window of their own request: the dense member alone
        early = slice(0, WINDOW - 1)
        np.testing.assert_allclose(got["score"][early], got["members"]["dense"][early], rtol=1e-6)
    assert any(r["is_anomaly"].any() for r in results) and not all(r["is_anomaly"].all() for r in results)


def test_extreme_readings_are_answered_flagged_with_their_reason_and_sensors(tiny_ensemble, tmp_path):
    """Fail closed, end to end without Ray: a reading far outside the training range (1e19, 1e300) is parsed as
    float64, scored, flagged ``out_of_range`` naming its sensor, and answered as strict JSON; ordinary readings
    get ``reason`` null and no sensors. Records and columnar forms agree."""
    import shutil

    from raysys.ensemble.runtime import EnsembleRuntime
    from raysys.serve._internal.model import ModelSource, ServedModel

    directory = tmp_path / "ensemble"
    shutil.copytree(tiny_ensemble.directory, directory)
    spec = json.loads((directory / "ensemble.json").read_text())
    spec["input_range"] = {"min": [0.0, 6.0, 10.0], "max": [2.0, 8.0, 30.0], "factor": [3.0, 3.0, 3.0]}
    (directory / "ensemble.json").write_text(json.dumps(spec))
    model = ServedModel(EnsembleRuntime.load(directory), ModelSource("tiny", "tiny", None, "local-test"))
    readings = [reading(), reading(temp=1e19), reading(flow=-1e300, ph=1e300), reading(ph=-7.0)]
    for form in ("readings", "columns"):
        document = {"readings": readings} if form == "readings" else \
            {"columns": {s: [r[s] for r in readings] for s in SENSORS}}
        parsed = parse(parse_json(json.dumps(document).encode()))
        (result,) = model.score_many([parsed.rows])
        answer = strict_loads(to_strict_json(predict_response(parsed, model.with_alarms(result, None), model.ref,
                                                              model.threshold, model.sensors)))
        if form == "readings":
            got = answer["predictions"]
        else:
            got = [{"is_anomaly": a, "reason": r, "sensors": z, "score": s}
                   for a, r, z, s in zip(answer["is_anomaly"], answer["reason"], answer["sensors"], answer["score"])]
        assert [p["reason"] for p in got] == [None, "out_of_range", "out_of_range", "out_of_range"]
        assert [p["sensors"] for p in got] == [[], ["temp"], ["flow", "ph"], ["ph"]]
        assert [p["is_anomaly"] for p in got][1:] == [True, True, True]
        assert all(np.isfinite(p["score"]) for p in got)
