"""Serving: the champion ensemble as an autoscaling Ray Serve HTTP endpoint.

- :func:`deploy` / :func:`shutdown`: run the application on Ray Serve from Python (``raysys serve``);
- ``raysys.serve.app:app_builder``: the import path for Serve config files and KubeRay RayServices;
- :class:`ServeConfig` and its parts: typed settings, from YAML (:func:`load_serve_config`) and flags;
- :class:`PredictRequest` / :class:`PredictResponse`: the ``POST /v1/predict`` bodies.
"""

from raysys.serve.config import (
    APP_NAME,
    DEPLOYMENT_NAME,
    IMPORT_PATH,
    AppArgs,
    AutoscalingSettings,
    DeploymentSettings,
    ServeConfig,
    UserConfig,
    load_serve_config,
    to_serve_config_v2,
)
from raysys.serve.deploy import base_url, block_until_interrupted, deploy, shutdown, wait_ready
from raysys.serve.schemas import PredictRequest, PredictResponse, RequestError, parse_json, parse_predict_request

__all__ = [
    "APP_NAME", "DEPLOYMENT_NAME", "IMPORT_PATH", "AppArgs", "AutoscalingSettings", "DeploymentSettings",
    "PredictRequest", "PredictResponse", "RequestError", "ServeConfig", "UserConfig", "base_url",
    "block_until_interrupted", "deploy", "load_serve_config", "parse_json", "parse_predict_request", "shutdown",
    "to_serve_config_v2", "wait_ready",
]
