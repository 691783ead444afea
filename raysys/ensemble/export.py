"""Export ensemble members to ONNX and check them against the model they came from.

Deep detectors go through ``torch.onnx.export`` wrapped in :class:`ScoringGraph`, which folds the
training scaler in (in float64, as scikit-learn applies it) and ends in the anomaly score; the VAE
graph also outputs the Mahalanobis distance of the latent mean. A dense detector with ``lags`` is a
member with ``window = lags + 1``: the runtime feeds it windows of consecutive rows, as it feeds
sequence members, and the graph stacks each window as the detector does. The Isolation Forest goes
through skl2onnx. The PCA detector's T2 and SPE, and the CVA detector's statistic, are a few ONNX
ops written here (:func:`export_pca`, :func:`export_cva`): a fixed affine map, matrix products and
sums of squares, in float64. Every file passes ``onnx.checker`` and matches its source on real and
random inputs.

Each score that splits over the sensors has a second output, ``<output>_sensors`` (batch, sensors),
whose rows sum to the score (:func:`sensors_output`): the per-sensor reconstruction error of the deep
families, the per-sensor terms of PCA's T2 and SPE and of CVA's statistic. The VAE's Mahalanobis
distance and the Isolation Forest have none (docs/attribution.md says how the runtime attributes them).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from sklearn.ensemble import IsolationForest
from torch import nn

from raysys.data.preprocessing import scaler_affine
from raysys.ensemble.runtime import MemberSessions
from raysys.models import BaseDeepDetector
from raysys.models.cva import CVADetector
from raysys.models.pca import PCADetector

#: ONNX opset of the exported graphs (recorded in each model and in ``ensemble.json``).
OPSET = 17
#: Largest relative difference allowed between onnxruntime and the source model.
PARITY_RTOL = 1e-4
INPUT = "x"
SCORE = "score"
MAHALANOBIS = "mahalanobis"
#: Output names of a PCA member: Hotelling's T2 and the squared prediction error.
T2, SPE = "t2", "spe"


def sensors_output(output: str) -> str:
    """The name of the ONNX output holding ``output``'s per-sensor terms."""
    return f"{output}_sensors"


class ExportParityError(ValueError):
    """An exported member scores differently from the model it was exported from."""


@dataclass
class ExportedMember:
    """One exported ``.onnx`` file and the scores (outputs) it provides.

    Args:
        file: File name inside the ensemble directory.
        family: A deep family (``ae``, ``vae``, ``lstm``, ``conv``), ``iforest``, ``pca`` or ``cva``.
        window: Rows per input sample (1 for row models).
        outputs: Member name to ONNX output name.
        parity: Output name to the largest relative error seen, per check (``validation``, ``random``).
        contributions: Member name to the ONNX output of its per-sensor terms, for the members that have one.
    """

    file: str
    family: str
    window: int
    outputs: dict[str, str]
    parity: dict[str, dict[str, float]]
    contributions: dict[str, str]


class ScoringGraph(nn.Module):
    """Raw sensor values -> folded scaler -> network -> per-sample anomaly score(s)."""

    def __init__(self, detector: BaseDeepDetector):
        super().__init__()
        self.network = detector.module_
        self.n_sensors = detector.n_features_in_
        # a lagged dense detector reads an oldest-first window flattened to [x_t, x_t-1, ...] (pca.lagged)
        self.stacks_window = getattr(detector, "lags", 0) > 0
        scale, offset = scaler_affine(detector.scaler_)
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64))
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float64))
        self.mahalanobis = hasattr(detector, "latent_precision_")
        if self.mahalanobis:
            self.register_buffer("latent_mean", torch.as_tensor(detector.latent_mean_, dtype=torch.float64))
            self.register_buffer("latent_precision", torch.as_tensor(detector.latent_precision_, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(score, per-sensor terms)``, or ``(score, mahalanobis, per-sensor terms)`` for the VAE."""
        z = (x.double() * self.scale + self.offset).float()
        if self.stacks_window:
            z = z.flip(1).flatten(1)
        outputs = self.network(z)
        terms = self.network.score_terms(z, outputs)
        score = terms.flatten(1).sum(dim=1)  # the network's score, as ReconstructionScore.score adds it
        per_sensor = terms.reshape(terms.shape[0], -1, self.n_sensors).sum(dim=1)  # over lags / window steps
        if not self.mahalanobis:
            return score, per_sensor
        diff = outputs[1].double() - self.latent_mean  # the VAE's latent mean, as VAEDetector.latent_scores
        distance = torch.sqrt(((diff @ self.latent_precision) * diff).sum(dim=1))
        return score, distance.float(), per_sensor


def detector_window(detector: Any) -> int:
    """Rows per sample the detector scores (``window`` for sequence models, ``lags + 1`` for lagged
    row models: PCA and the dense families, else 1)."""
    if hasattr(detector, "lags"):
        return int(detector.lags) + 1
    return int(getattr(detector, "window", 1))


def source_scores(model: Any, X: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of the source model (output name -> (n,)) by the runtime's rules for rows in time order.

    Sequence (and lagged dense) detectors score ``X`` left-padded with ``window - 1`` copies of
    ``X[0]``, as :func:`raysys.ensemble.runtime.history_windows` does.
    """
    if isinstance(model, IsolationForest):
        return {SCORE: -model.score_samples(X)}
    if isinstance(model, PCADetector):  # dynamic PCA pads its first rows' history as the runtime does
        return {T2: model.t2(X), SPE: model.spe(X)}
    if isinstance(model, CVADetector):  # likewise
        return {SCORE: model.statistic(X)}
    pad = detector_window(model) - 1
    scores = {SCORE: model.decision_function(_padded(X, pad))[pad:]}
    if hasattr(model, "latent_scores"):
        scores[MAHALANOBIS] = model.latent_scores(X)["mahalanobis"]
    return scores


def source_contributions(model: Any, X: np.ndarray) -> dict[str, np.ndarray]:
    """The source model's per-sensor terms (``<output>_sensors`` -> (n, sensors)), for the outputs that have
    them, by the rules of :func:`source_scores`."""
    if isinstance(model, IsolationForest):
        return {}
    if isinstance(model, PCADetector):
        return {sensors_output(T2): model.t2_contributions(X), sensors_output(SPE): model.spe_contributions(X)}
    if isinstance(model, CVADetector):
        return {sensors_output(SCORE): model.contributions(X)}
    pad = detector_window(model) - 1
    return {sensors_output(SCORE): model.sensor_contributions(_padded(X, pad))[pad:]}


def _padded(X: np.ndarray, pad: int) -> np.ndarray:
    """``X`` after ``pad`` copies of its first row (the runtime's left padding)."""
    return np.concatenate([np.repeat(X[:1], pad, axis=0), X])


def export_detector(detector: BaseDeepDetector, path: str | os.PathLike) -> list[str]:
    """Write ``detector`` as ONNX to ``path``; returns its output names."""
    graph = ScoringGraph(detector).eval()
    window = detector_window(detector)
    n = detector.n_features_in_
    example = torch.zeros((2, n) if window == 1 else (2, window, n))
    outputs = [SCORE, MAHALANOBIS] if graph.mahalanobis else [SCORE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT],
                          output_names=[*outputs, sensors_output(SCORE)],
                          dynamic_axes={name: {0: "batch"} for name in [INPUT, *outputs, sensors_output(SCORE)]},
                          opset_version=OPSET, dynamo=False)
    return outputs


def export_isolation_forest(forest: IsolationForest, n_sensors: int, path: str | os.PathLike) -> list[str]:
    """Write ``forest`` as ONNX to ``path`` with output ``score`` = ``-score_samples`` (higher is more anomalous)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = convert_sklearn(forest, initial_types=[(INPUT, FloatTensorType([None, n_sensors]))],
                            target_opset={"": OPSET, "ai.onnx.ml": 3})
    graph = model.graph
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    # skl2onnx outputs decision_function = score_samples - offset_; undo the offset and flip the sign
    graph.initializer.append(numpy_helper.from_array(np.array([forest.offset_], dtype=np.float32), "offset"))
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
    graph.node.extend([helper.make_node("Add", ["scores", "offset"], ["samples"]),
                       helper.make_node("Neg", ["samples"], ["negated"]),
                       helper.make_node("Reshape", ["negated", "flat"], [SCORE])])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(SCORE, onnx.TensorProto.FLOAT, ["batch"]))
    onnx.save(model, str(path))
    return [SCORE]


#: A graph fragment: its nodes and its initialisers (constants).
Fragment = tuple[list[onnx.NodeProto], list[onnx.TensorProto]]


def _const(name: str, value: Any, dtype: Any = np.float64) -> onnx.TensorProto:
    """The initialiser ``name`` holding ``value`` as ``dtype``."""
    return numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name)


def _standardised_input(mean: np.ndarray, scale: np.ndarray, window: int, n: int) -> Fragment:
    """Nodes and initialisers from the input ``x`` to ``z = (stacked x - mean) / scale`` in float64.

    With ``window`` > 1 the input is a window of rows, oldest first (the runtime's history windows);
    it is reversed and flattened to ``[x_t, x_t-1, ...]`` as :func:`raysys.models.pca.lagged` stacks rows.
    """
    initializers = [_const("mean", mean), _const("scale", scale), _const("feature_axis", [1], np.int64),
                    _const("lag_sensor_shape", [0, window, n], np.int64)]
    nodes = [helper.make_node("Cast", [INPUT], ["x64"], to=onnx.TensorProto.DOUBLE)]
    stacked = "x64"
    if window > 1:
        reverse = {"rev_start": [-1], "rev_end": [-(2 ** 63)], "rev_axis": [1], "rev_step": [-1],
                   "flat_shape": [0, window * n]}
        initializers += [_const(k, v, np.int64) for k, v in reverse.items()]
        nodes += [helper.make_node("Slice", ["x64", "rev_start", "rev_end", "rev_axis", "rev_step"], ["newest_first"]),
                  helper.make_node("Reshape", ["newest_first", "flat_shape"], ["stacked"])]
        stacked = "stacked"
    nodes += [helper.make_node("Sub", [stacked, "mean"], ["centred"]),
              helper.make_node("Div", ["centred", "scale"], ["z"])]
    return nodes, initializers


def _quadratic_nodes(stat: str, loadings: np.ndarray, variances: np.ndarray | None) -> Fragment:
    """Nodes for ``stat = sum_j t_j**2 / v_j`` with ``t = z @ L^T`` (``variances`` None: all 1), and its
    feature terms ``<stat>_feature_terms = z * ((t / v) @ L)``; also leaves ``<stat>_t`` for reuse."""
    initializers = [_const(f"{stat}_loadings_t", loadings.T), _const(f"{stat}_loadings", loadings)]
    t = f"{stat}_t"
    nodes = [helper.make_node("MatMul", ["z", f"{stat}_loadings_t"], [t])]
    weighted = t  # t / v, which is t itself with unit variances
    if variances is not None:
        initializers.append(_const(f"{stat}_variances", variances))
        weighted = f"{stat}_t_weighted"
        nodes.append(helper.make_node("Div", [t, f"{stat}_variances"], [weighted]))
    nodes += [helper.make_node("Mul", [t, weighted], [f"{stat}_squares"]),
              helper.make_node("ReduceSum", [f"{stat}_squares", "feature_axis"], [f"{stat}_64"], keepdims=0),
              helper.make_node("MatMul", [weighted, f"{stat}_loadings"], [f"{stat}_direction"]),
              helper.make_node("Mul", ["z", f"{stat}_direction"], [f"{stat}_feature_terms"])]
    return nodes, initializers


def _save_statistics(nodes: list, initializers: list, stats: list[str], window: int, n: int, name: str,
                     path: str | os.PathLike) -> list[str]:
    """Cast each ``<stat>_64`` to the float32 output ``<stat>``, add up its ``<stat>_feature_terms`` per
    sensor over the lags as output ``<stat>_sensors``, and save the graph; returns ``stats``."""
    nodes = list(nodes)
    for stat in stats:  # (batch, lags + 1, n) -> per sensor
        nodes += [helper.make_node("Cast", [f"{stat}_64"], [stat], to=onnx.TensorProto.FLOAT),
                  helper.make_node("Reshape", [f"{stat}_feature_terms", "lag_sensor_shape"], [f"{stat}_by_lag"]),
                  helper.make_node("ReduceSum", [f"{stat}_by_lag", "feature_axis"], [f"{stat}_sensors_64"], keepdims=0),
                  helper.make_node("Cast", [f"{stat}_sensors_64"], [sensors_output(stat)], to=onnx.TensorProto.FLOAT)]
    shape = ["batch", n] if window == 1 else ["batch", window, n]
    outputs = [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["batch"]) for out in stats]
    outputs += [helper.make_tensor_value_info(sensors_output(out), onnx.TensorProto.FLOAT, ["batch", n])
                for out in stats]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, shape)], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="raysys")
    onnx.save(model, str(path))
    return list(stats)


def export_pca(detector: PCADetector, path: str | os.PathLike) -> list[str]:
    """Write ``detector``'s T2 and SPE (and their per-sensor terms) as ONNX to ``path``; returns the score
    output names ``[t2, spe]``.

    skl2onnx converts scikit-learn's PCA projection only, so the graph is built here, in float64 as
    :class:`~raysys.models.pca.PCADetector` computes (outputs float32)::

        z   = (x - mean) / scale                      # x: (batch, sensors), or (batch, lags + 1, sensors)
        t   = z @ P^T                                 # P: (k, features), the retained loadings
        t2  = sum_j t_j**2 / lambda_j
        spe = sum_i (z - t @ P)_i**2
        t2_sensors  = z * ((t / lambda) @ P),  added up per sensor over the lags
        spe_sensors = (z - t @ P)**2,          likewise

    With ``lags`` > 0 the input is a window of ``lags + 1`` rows, oldest first (see
    :func:`_standardised_input`). ``smoothing`` is not part of the graph: the outputs are the
    statistics before it, as ``PCADetector.t2`` and ``spe`` return them.
    """
    if not hasattr(detector, "components_"):
        raise ValueError("the PCA detector is not fitted; call fit first")
    window, n = detector_window(detector), detector.n_features_in_
    nodes, initializers = _standardised_input(detector.mean_, detector.scale_, window, n)
    t2_nodes, t2_initializers = _quadratic_nodes(T2, detector.components_, detector.explained_variance_)
    nodes += t2_nodes + [helper.make_node("MatMul", [f"{T2}_t", f"{T2}_loadings"], ["reconstruction"]),
                         helper.make_node("Sub", ["z", "reconstruction"], ["residual"]),
                         helper.make_node("Mul", ["residual", "residual"], [f"{SPE}_feature_terms"]),
                         helper.make_node("ReduceSum", [f"{SPE}_feature_terms", "feature_axis"], [f"{SPE}_64"],
                                          keepdims=0)]
    return _save_statistics(nodes, initializers + t2_initializers, [T2, SPE], window, n, "pca_t2_spe", path)


def export_cva(detector: CVADetector, path: str | os.PathLike) -> list[str]:
    """Write ``detector``'s statistic (:meth:`~raysys.models.cva.CVADetector.statistic`: its ``score``
    before smoothing) and its per-sensor terms as ONNX to ``path``; returns ``[score]``::

        z  = (x - mean) / scale                       # x: (batch, lags + 1, sensors), oldest first
        ts = sum_j (z @ Ls^T)_j**2,   terms z * ((z @ Ls^T) @ Ls)   (Ls: the state loadings)
        tr = sum_j (z @ Lr^T)_j**2,   terms likewise                (Lr: the residual loadings)
        score = a * ts + b * tr                       # (a, b) = statistic_weights(): combined, ts or tr
        score_sensors = a * ts terms + b * tr terms, added up per sensor over the lags

    ``smoothing`` is not part of the graph, as for :func:`export_pca`.
    """
    if not hasattr(detector, "state_loadings_"):
        raise ValueError("the CVA detector is not fitted; call fit first")
    window, n = detector_window(detector), detector.n_features_in_
    nodes, initializers = _standardised_input(detector.mean_, detector.scale_, window, n)
    for stat, loadings, weight in zip(("ts", "tr"), (detector.state_loadings_, detector.residual_loadings_),
                                      detector.statistic_weights()):
        more_nodes, more_initializers = _quadratic_nodes(stat, loadings, None)
        nodes += more_nodes
        initializers += more_initializers + [_const(f"{stat}_weight", [weight])]
        for part in (f"{stat}_64", f"{stat}_feature_terms"):
            nodes.append(helper.make_node("Mul", [part, f"{stat}_weight"], [f"{part}_weighted"]))
    nodes += [helper.make_node("Add", ["ts_64_weighted", "tr_64_weighted"], [f"{SCORE}_64"]),
              helper.make_node("Add", ["ts_feature_terms_weighted", "tr_feature_terms_weighted"],
                               [f"{SCORE}_feature_terms"])]
    return _save_statistics(nodes, initializers, [SCORE], window, n, "cva_statistic", path)


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / |expected|`` (denominator floored at 1e-12)."""
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(actual, dtype=np.float64) - expected)
                        / np.maximum(np.abs(expected), 1e-12)))


def random_rows(reference: np.ndarray, n: int = 256, seed: int = 0) -> np.ndarray:
    """Fresh random sensor rows around ``reference``'s range (3x its spread), float32."""
    rng = np.random.default_rng(seed)
    return rng.normal(reference.mean(axis=0), 3 * reference.std(axis=0) + 1e-6,
                      size=(n, reference.shape[1])).astype(np.float32)


def check_parity(model: Any, directory: Path, member: dict[str, Any], checks: dict[str, np.ndarray],
                 rtol: float = PARITY_RTOL) -> dict[str, dict[str, float]]:
    """onnxruntime vs the source model on each named input; raises :class:`ExportParityError` above ``rtol``.

    Scores compare value by value; per-sensor terms (``<output>_sensors``) compare against the size of
    their row (the largest ``|term difference|`` over the row's ``sum |term|``), since a single term
    may be near 0.
    """
    outputs = list(member["outputs"].values())
    contributions = member.get("contributions", {})
    entries = [{"name": out, "file": member["file"], "output": out, "window": member["window"],
                "contributions": contributions.get(out)} for out in outputs]
    sessions = MemberSessions(directory, entries, checks[next(iter(checks))].shape[1])
    report: dict[str, dict[str, float]] = {}
    for check, X in checks.items():
        onnx_scores, onnx_terms = sessions.raw_scores_and_terms(X)
        expected = {**source_scores(model, X), **source_contributions(model, X)}
        report[check] = {out: max_relative_error(onnx_scores[:, j], expected[out]) for j, out in enumerate(outputs)}
        for j, out in enumerate(outputs):
            terms = contributions.get(out)
            if terms:
                size = np.maximum(np.abs(expected[terms]).sum(axis=1, keepdims=True), 1e-12)
                report[check][terms] = float(np.max(np.abs(onnx_terms[:, j] - expected[terms]) / size))
        worst = max(report[check], key=report[check].get)
        if report[check][worst] > rtol:
            raise ExportParityError(
                f"{member['file']}: onnxruntime output {worst!r} differs from {member['family']} on {check} data "
                f"by a relative error of {report[check][worst]:.3g} > {rtol:g}")
    return report


def export_member(name: str, model: Any, directory: str | os.PathLike, checks: dict[str, np.ndarray],
                  rtol: float = PARITY_RTOL) -> ExportedMember:
    """Export ``model`` (a fitted raysys detector, IsolationForest, PCADetector or CVADetector) to
    ``directory/<name>.onnx`` and check it.

    Args:
        name: Member name; a VAE also provides member ``<name>_mahalanobis``; a PCA detector provides
            ``<name>_t2`` and ``<name>_spe`` (no member ``<name>``).
        model: The fitted source model.
        directory: Ensemble directory to write into.
        checks: Named raw inputs (rows in time order) on which ONNX must match the source within ``rtol``.
        rtol: Largest relative error allowed.
    """
    directory = Path(directory)
    path = directory / f"{name}.onnx"
    if isinstance(model, IsolationForest):
        family, window = "iforest", 1
        outputs = export_isolation_forest(model, model.n_features_in_, path)
    elif isinstance(model, PCADetector):
        family, window = "pca", detector_window(model)
        outputs = export_pca(model, path)
    elif isinstance(model, CVADetector):
        family, window = "cva", detector_window(model)
        outputs = export_cva(model, path)
    else:
        family, window = model.family, detector_window(model)
        outputs = export_detector(model, path)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    names = {(name if out == SCORE else f"{name}_{out}"): out for out in outputs}
    available = {o.name for o in graph.graph.output}
    terms = {out: sensors_output(out) for out in outputs if sensors_output(out) in available}
    member = {"file": path.name, "family": family, "window": window, "outputs": names, "contributions": terms}
    parity = check_parity(model, directory, member, checks, rtol)
    return ExportedMember(path.name, family, window, names, parity,
                          {name: terms[out] for name, out in names.items() if out in terms})
