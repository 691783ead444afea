"""The MLflow pyfunc wrapper of an ensemble: ``mlflow.pyfunc.load_model(...).predict(frame)``.

Logged as an MLflow "model from code": this file is copied into the model and run when the model is
loaded (no pickled object). It imports only :mod:`raysys.ensemble.runtime` (numpy, pandas,
onnxruntime), so loading a registered ensemble never pulls in torch or the training code; the
loading environment needs raysys installed.
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd

from raysys.ensemble.runtime import EnsembleRuntime
from raysys.layout import ENSEMBLE_MODEL_ARTIFACT


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Scores a DataFrame with the sensor columns (others ignored): ``score``, ``is_anomaly``, ``score_<member>``.

    Rows must be in time order (sequence members look at the rows before each one).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.runtime = EnsembleRuntime.load(context.artifacts[ENSEMBLE_MODEL_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.runtime.score_frame(pd.DataFrame(model_input))


mlflow.models.set_model(EnsembleModel())
