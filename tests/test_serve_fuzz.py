"""Property-based fuzzing of ``POST /v1/predict`` over real HTTP (hypothesis), against the Serve app of
``tests/test_serve.py`` (its ``served`` fixture: HAProxy ingress, a registered AE + LSTM ensemble).

Bodies: valid shapes with extreme floats (huge, tiny, negative, beyond float32 and float64), huge integers,
wrong types, missing and unknown sensors, nested junk, empty batches, history, and raw bytes (NaN tokens,
truncated JSON). Properties: never a 5xx; every answer is strict JSON; no prediction has a non-finite
score or member score; every reading outside the ensemble's allowed input range is flagged out_of_range.
"""

import json

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_serve import client, ensembles, served, strict_json  # noqa: E402,F401  (its module fixtures)

from raysys.ensemble.runtime import allowed_range  # noqa: E402

SENSORS = ["temperature", "pressure", "flow_rate", "level", "quality"]  # the generated water-treatment data
EXAMPLES = 150

#: Numbers a sensor may read: ordinary, extreme, at and beyond float32's and float64's edges, huge integers.
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-50, max_value=500),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e-300, 1e19, -1e19, 3.4028235e38, 3.5e38, -3.5e38, 1e300,
                     -1e300, 1.7976931348623157e308, -1.7976931348623157e308]),
    st.integers(min_value=-10**20, max_value=10**20),
    st.sampled_from([10**308, -10**308, 10**309, 10**400]),
)
junk = st.recursive(st.none() | st.booleans() | st.text(max_size=8) | numbers,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
sensor_names = st.sampled_from(SENSORS) | st.text(max_size=12)


@st.composite
def reading(draw):
    """A reading: usually all sensors with numbers; sometimes a sensor missing, an unknown one, or junk."""
    values = {s: draw(numbers) for s in SENSORS}
    kind = draw(st.sampled_from(["ok"] * 6 + ["missing", "unknown", "junk"]))
    if kind == "missing":
        values.pop(draw(st.sampled_from(SENSORS)))
    elif kind == "unknown":
        values[draw(sensor_names)] = draw(numbers)
    elif kind == "junk":
        values[draw(st.sampled_from(SENSORS))] = draw(junk)
    return values


@st.composite
def body(draw):
    """A request body (a JSON-able object, or raw bytes)."""
    form = draw(st.sampled_from(["records"] * 4 + ["columns"] * 3 + ["both", "neither", "junk", "raw"]))
    rows = draw(st.lists(reading(), min_size=0, max_size=6))
    if form == "raw":
        return draw(st.sampled_from([b"", b"{", b"[]", b"null", b'{"readings": [{"temperature": NaN}]}',
                                     b'{"columns": {"level": [Infinity]}}', b"\xff\xfe", b'{"readings": "x"}']))
    if form == "junk":
        return draw(junk)
    if form == "columns":
        document = {"columns": {k: [r.get(k, 0.0) for r in rows] for k in {k for r in rows for k in r} or SENSORS}}
        if draw(st.booleans()) and document["columns"]:
            key = draw(st.sampled_from(sorted(document["columns"])))
            document["columns"][key] = draw(st.lists(numbers, max_size=7) | junk)
    else:
        document = {"readings": rows} if form != "neither" else {}
        if form == "both":
            document["columns"] = {s: [1.0] for s in SENSORS}
    if draw(st.booleans()):
        history = draw(st.lists(reading(), max_size=4))
        document["history"] = history if "columns" not in document else \
            {s: [r.get(s, 0.0) for r in history] for s in SENSORS}
    if draw(st.integers(0, 9)) == 0:
        document[draw(st.text(max_size=6))] = draw(junk)
    return document


def encode(document) -> bytes:
    if isinstance(document, bytes):
        return document
    return json.dumps(document).encode()  # Python ints of any size; floats as repr (finite only here)


@pytest.fixture(scope="module")
def limits(ensembles):
    """The served champion's allowed input range per sensor (``ensemble.json``'s ``input_range``)."""
    from raysys.ensemble.runtime import load_runtime

    runtime = load_runtime("models:/raysys-detector/1", ensembles.tracking_uri)
    assert runtime.sensors == SENSORS
    return allowed_range(runtime.spec)


def _readings_of(document) -> list[dict] | None:
    """The scored readings of a request that was answered 200, as sensor -> float."""
    if "readings" in document and document["readings"] is not None:
        return [{s: float(r[s]) for s in SENSORS} for r in document["readings"]]
    columns = document["columns"]
    return [{s: float(columns[s][i]) for s in SENSORS} for i in range(len(columns[SENSORS[0]]))]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(document=body())
def test_fuzzed_bodies_never_5xx_and_fail_closed(served, client, limits, document):
    url, _ = served
    response = client.post(f"{url}/v1/predict", content=encode(document),
                           headers={"content-type": "application/json"})
    assert response.status_code < 500, (document, response.status_code, response.text[:500])
    answer = strict_json(response)  # 4xx bodies too: strict JSON, {"detail", "errors"}
    if response.status_code != 200:
        assert 400 <= response.status_code < 500 and answer["detail"], answer
        return
    low, high = limits
    if "predictions" in answer:
        predictions = answer["predictions"]
    else:
        predictions = [{"score": s, "is_anomaly": a, "reason": r, "sensors": z,
                        "members": {m: v[i] for m, v in answer["members"].items()}}
                       for i, (s, a, r, z) in enumerate(zip(answer["score"], answer["is_anomaly"], answer["reason"],
                                                            answer["sensors"]))]
    readings = _readings_of(document)
    assert len(predictions) == len(readings)
    for values, prediction in zip(readings, predictions):
        assert np.isfinite(prediction["score"]) and all(np.isfinite(v) for v in prediction["members"].values())
        outside = [s for j, s in enumerate(SENSORS) if not low[j] <= values[s] <= high[j]]
        if outside:
            assert prediction["is_anomaly"] is True and prediction["reason"] == "out_of_range", (values, prediction)
            assert prediction["sensors"] == outside
        elif prediction["reason"] is None:
            assert prediction["sensors"] == []
