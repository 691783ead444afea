"""A streamed training run on a small dedicated Ray cluster (its own object store size), for test_ingest.py:
``python stream_train_job.py DATA OUT OBJECT_STORE_BYTES``. Writes OUT/result.json and the workers' diagnostics
under OUT/diagnostics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray

from raysys.train import TrainConfig, train


def main(data: str, out: str, object_store: int) -> None:
    ray.init(num_cpus=2, object_store_memory=object_store, include_dashboard=False)
    root = Path(out)
    cfg = TrainConfig(data=data, ingest="stream", model="ae", params={"epochs": 1, "patience": 5, "batch_size": 2048},
                      num_workers=2, cpus_per_worker=0.5, storage_path=str(root / "runs"), run_name="big",
                      tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="big")
    result = train(cfg, diagnostics_dir=str(root / "diagnostics"))
    (root / "result.json").write_text(json.dumps({
        "object_store": ray.available_resources().get("object_store_memory"), "epochs": result.epochs,
        "threshold": result.evaluation.threshold, "rows_evaluated": int(len(result.evaluation.test_scores))}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
