"""The production artifact: an ensemble of ONNX detectors with one calibrated threshold, registered in MLflow.

Serving side (numpy + onnxruntime only, never torch): :class:`EnsembleRuntime`, :func:`load_runtime`,
:class:`AlarmLogic` (how flagged rows become alarm events).
Building side (imported on first use, as it needs torch): ``build_ensemble``, ``register_ensemble``,
``run_ensemble``, ``predict_file``. See ``docs/ensemble.md``.
"""

from __future__ import annotations

from raysys._lazy import lazy_exports
from raysys.ensemble.alarms import AlarmLogic
from raysys.ensemble.runtime import EnsembleRuntime, load_runtime

_LAZY = {
    "build_ensemble": "raysys.ensemble.build",
    "EnsembleBuild": "raysys.ensemble.build",
    "register_ensemble": "raysys.ensemble.registry",
    "DEFAULT_MODEL_NAME": "raysys.ensemble.registry",
    "run_ensemble": "raysys.ensemble.workflow",
    "EnsembleResult": "raysys.ensemble.workflow",
    "DEFAULT_GATES": "raysys.ensemble.gates",
    "check_gates": "raysys.ensemble.gates",
    "predict_file": "raysys.ensemble.predict",
    "recalibrate": "raysys.ensemble.recalibrate",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["AlarmLogic", "EnsembleRuntime", "load_runtime", *_LAZY]
