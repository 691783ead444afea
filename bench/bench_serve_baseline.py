"""The seeds' serving design, kept as the benchmark baseline for ``bench/bench_serve.py``.

One FastAPI process under uvicorn that scores every request on its own with the PyTorch detectors
(``raysys.models.load_detector``): no ONNX, no batching across requests, no replicas. It computes the
same ensemble score as the served ONNX ensemble (same members, normalisation, weights and threshold,
taken from ``ensemble.json``), so both answer the same question for the same rows::

    python bench/bench_serve_baseline.py --ensemble DIR --detector ae=DIR --detector lstm=DIR --port 8001
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from raysys.ensemble.build import source_ensemble_scores
from raysys.models import load_detector


class Readings(BaseModel):
    readings: list[dict[str, float]]


def make_app(ensemble_dir: str | Path, detectors: dict[str, str | Path]) -> FastAPI:
    """The baseline app: ``POST /v1/predict`` (records form) and ``GET /healthz``."""
    spec = json.loads((Path(ensemble_dir) / "ensemble.json").read_text())
    sensors, threshold = spec["sensors"], float(spec["threshold"])
    models = {name: load_detector(path) for name, path in detectors.items()}
    app = FastAPI(title="raysys baseline (PyTorch per request)")

    @app.post("/v1/predict")
    def predict(body: Readings) -> dict:  # a plain def: FastAPI runs it in its thread pool, one request each
        X = np.array([[reading[s] for s in sensors] for reading in body.readings], dtype=np.float32)
        score = source_ensemble_scores(models, spec, X)
        return {"score": score.tolist(), "is_anomaly": (score > threshold).tolist(), "threshold": threshold}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensemble", required=True, help="ensemble directory (for ensemble.json)")
    parser.add_argument("--detector", action="append", default=[], metavar="NAME=DIR",
                        help="saved PyTorch detector of member file NAME (repeat per member)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    detectors = dict(item.split("=", 1) for item in args.detector)
    uvicorn.run(make_app(args.ensemble, detectors), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
