"""Samples per second of one training epoch: a plain PyTorch loop vs Ray Train with 1 and 2 workers.

Every setup trains the same detector on the same samples with the same per-worker batch size,
through the same epoch function as raysys training (``raysys.models._training.train_epoch``).
The clock runs inside the training loop, around each epoch (forward, backward, optimizer step,
and for Ray Train the gradient all-reduce of DDP plus the all-reduce of the epoch's sample count);
Ray's fixed start-up (worker processes, process group, data loading) is outside it and reported
on its own. The first ``--warmup`` epochs are not counted; the table shows the median and the
90th percentile of the remaining epochs' samples per second (on a machine shared with other work
the fast epochs are the ones nothing else slowed down).

Setups, all on one machine and measured in one run:

- Ray Train, 1 worker with 1 CPU (what ``raysys train --num-workers 1`` reserves), 1 thread;
- Ray Train, 1 worker with 2 CPUs, 2 threads;
- Ray Train, 2 workers with 1 CPU each (``raysys train`` default), 1 thread each;

each compared with the plain PyTorch loop in this process with as many intra-op threads in total,
run right before and right after it (a shared machine's load changes from minute to minute).

    python bench/bench_train.py                      # default dataset (20,000 rows), ae, 20 epochs
    python bench/bench_train.py --rounds 2 --json bench-train.json
    python bench/bench_train.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Ray starts its workers at nice 15; on a machine shared with other work that would time the
# neighbours, not Ray, so the workers here run at the plain loop's priority (reported per run).
os.environ.setdefault("RAY_worker_niceness", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402
import ray.train  # noqa: E402
import ray.train.torch  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from ray.train import RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from raysys.data import generate_dataset, load_dataset  # noqa: E402
from raysys.models import build_detector  # noqa: E402
from raysys.models._training import make_optimizer, train_epoch  # noqa: E402


def training_samples(data: str, model: str, params: dict[str, Any]) -> tuple[Any, torch.Tensor]:
    """A fresh detector (scaler fitted, network built) and its training samples, as raysys trains them."""
    dataset = load_dataset(data)
    detector = build_detector(model, **params)
    samples = detector.init_fit(dataset.features("train"), dataset.labels("train"))
    return detector, torch.from_numpy(samples)


def plain_loop(data: str, model: str, params: dict[str, Any], epochs: int, threads: int) -> list[dict[str, float]]:
    """The reference: one process, a DataLoader and the epoch function, no Ray."""
    torch.set_num_threads(threads)
    detector, samples = training_samples(data, model, params)
    loader = DataLoader(TensorDataset(samples), batch_size=detector.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    optimizer, _ = make_optimizer(detector.module_, detector.lr, detector.weight_decay)
    out = []
    for _ in range(epochs):
        start = time.perf_counter()
        _, n = train_epoch(detector.module_, loader, optimizer, detector.grad_clip, torch.device("cpu"))
        out.append({"samples": n, "seconds": time.perf_counter() - start})
    return out


# (workers, CPUs per worker): 1 worker as `raysys train --num-workers 1` reserves it, 1 worker with
# the whole machine, and the `raysys train` default of 2 workers
SETUPS = ((1, 1), (1, 2), (2, 1))


def bench_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: the raysys worker's data/model preparation and epoch loop, timed per epoch."""
    torch.set_num_threads(config["threads"])
    detector, samples = training_samples(config["data"], config["model"], config["params"])
    model = ray.train.torch.prepare_model(detector.module_)
    loader = ray.train.torch.prepare_data_loader(DataLoader(
        TensorDataset(samples), batch_size=detector.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(0)))
    optimizer, _ = make_optimizer(model, detector.lr, detector.weight_decay)
    device = ray.train.torch.get_device()
    sampler = getattr(loader, "sampler", None)
    epochs: list[dict[str, float]] = []
    for epoch in range(config["epochs"]):
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.set_epoch(epoch)
        start = time.perf_counter()
        _, n = train_epoch(model, loader, optimizer, detector.grad_clip, device)
        count = torch.tensor([float(n)], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)  # also waits for the slowest worker: the epoch ends for all
        epochs.append({"samples": float(count.item()), "seconds": time.perf_counter() - start})
        if epoch + 1 < config["epochs"] or ray.train.get_context().get_world_rank() != 0:
            ray.train.report({"epoch": epoch + 1})
            continue
        with tempfile.TemporaryDirectory() as tmp:  # the timings travel back as the run's last checkpoint
            Path(tmp, "timings.json").write_text(json.dumps({"epochs": epochs, "threads": torch.get_num_threads(),
                                                             "niceness": os.nice(0)}))
            ray.train.report({"epoch": epoch + 1}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def ray_train(data: str, model: str, params: dict[str, Any], epochs: int, workers: int, cpus: int,
              storage: str) -> tuple[list[dict[str, float]], float, int, int]:
    """Per-epoch timings of rank 0, the wall time of ``fit()``, the threads and niceness of rank 0."""
    trainer = TorchTrainer(
        bench_worker,
        train_loop_config={"data": data, "model": model, "params": params, "epochs": epochs, "threads": cpus},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=f"bench-{workers}w{cpus}c-{time.time_ns()}", storage_path=storage),
    )
    start = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - start
    timings = json.loads((Path(result.checkpoint.path) / "timings.json").read_text())
    return timings["epochs"], wall, int(timings["threads"]), int(timings["niceness"])


def throughput(epochs: list[dict[str, float]], warmup: int) -> dict[str, Any]:
    rates = [e["samples"] / e["seconds"] for e in epochs[warmup:]]
    return {"median": statistics.median(rates), "p90": float(np.percentile(rates, 90)), "min": min(rates),
            "max": max(rates), "rates": rates,
            "samples_per_epoch": epochs[-1]["samples"], "train_seconds": sum(e["seconds"] for e in epochs)}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="prepared dataset (default: generate the default 20,000-row dataset)")
    parser.add_argument("--model", default="ae", choices=["ae", "vae", "lstm"])
    parser.add_argument("--batch-size", type=int, default=256, help="per worker, as in raysys train")
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs per setup, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="epochs run first and not counted")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every setup this many times")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait after stopping Ray")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--smoke-test", action="store_true", help="2 epochs, 1 round, no settling: a quick check")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.epochs, args.rounds, args.settle = 2, 1, 0.0

    params = {"batch_size": args.batch_size, "seed": 0}
    info = machine()
    total = args.warmup + args.epochs
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(generate_dataset(Path(tmp) / "data"))

        def plain(threads: int, round_: int) -> dict[str, Any]:
            load = os.getloadavg()[0]
            stats = throughput(plain_loop(data, args.model, params, total, threads), args.warmup)
            row = {"setup": f"plain PyTorch, {threads} thread(s)", "kind": "plain", "round": round_,
                   "threads": threads, "niceness": os.nice(0), "load": load, **stats}
            rows.append(row)
            return row

        for round_ in range(1, args.rounds + 1):
            for workers, cpus in SETUPS:
                # the plain loop with as many threads right before and right after, with no Ray running,
                # so that a change of load on a shared machine hits both sides of the ratio alike
                before = plain(workers * cpus, round_)
                ray.init(address="local", num_cpus=max(os.cpu_count() or 2, 2), include_dashboard=False,
                         log_to_driver=False)
                try:
                    load = os.getloadavg()[0]
                    epochs, wall, used, nice = ray_train(data, args.model, params, total, workers, cpus,
                                                         f"{tmp}/runs")
                finally:
                    ray.shutdown()
                time.sleep(args.settle)  # Ray's processes take a few seconds to exit
                stats = throughput(epochs, args.warmup)
                rows.append({"setup": f"Ray Train, {workers} worker(s) x {cpus} CPU", "kind": "ray",
                             "round": round_, "threads": workers * used, "niceness": nice, "load": load, **stats,
                             "fit_seconds": wall, "startup_seconds": wall - stats["train_seconds"]})
                after = plain(workers * cpus, round_)
                pooled = before["rates"] + after["rates"]
                rows[-2].update(plain_median=statistics.median(pooled), plain_p90=float(np.percentile(pooled, 90)),
                                ratio=stats["median"] / statistics.median(pooled),
                                ratio_p90=stats["p90"] / float(np.percentile(pooled, 90)))

    print(f"\n{args.model}, batch {args.batch_size} per worker, {int(rows[0]['samples_per_epoch'])} samples per "
          f"epoch, {args.epochs} timed epochs after {args.warmup} warm-up; {info['cores']} cores ({info['cpu']}), "
          f"torch {info['torch']}, ray {info['ray']}, load average before {info['load_average'][0]:.2f}")
    header = (f"{'round':>5} {'setup':32} {'threads':>7} {'median/s':>9} {'p90/s':>8} {'min-max':>15} "
              f"{'vs plain':>8} {'p90 vs':>6} {'start-up s':>10} {'load':>5}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        spread = f"{r['min']:.0f}-{r['max']:.0f}"
        ray_row = r["kind"] == "ray"
        ratio, ratio_p90 = (f"{r['ratio']:.2f}", f"{r['ratio_p90']:.2f}") if ray_row else ("", "")
        startup = f"{r['startup_seconds']:.1f}" if ray_row else ""
        print(f"{r['round']:>5} {r['setup']:32} {r['threads']:>7} {r['median']:>9.0f} {r['p90']:>8.0f} "
              f"{spread:>15} {ratio:>8} {ratio_p90:>6} {startup:>10} {r['load']:>5.1f}")
    print("vs plain: median samples/s of the Ray setup over the median of the plain loop with as many threads, "
          "run just before and just after it (p90 vs: the same with the 90th percentile of the epochs, the fast "
          "epochs that other work on a shared machine did not slow down); start-up: fit() wall time minus the "
          "timed epochs (not in samples/s); load: 1-minute load average when the setup started")
    if args.rounds > 1:
        for workers, cpus in SETUPS:
            mine = [r for r in rows if r["kind"] == "ray" and r["setup"] == f"Ray Train, {workers} worker(s) x "
                    f"{cpus} CPU"]
            print(f"Ray Train, {workers} worker(s) x {cpus} CPU over {len(mine)} rounds: median ratio "
                  f"{statistics.median(r['ratio'] for r in mine):.2f}, "
                  f"p90 ratio {statistics.median(r['ratio_p90'] for r in mine):.2f}")
    report = {"model": args.model, "batch_size": args.batch_size, "epochs": args.epochs, "warmup": args.warmup,
              "machine": info, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return report


if __name__ == "__main__":
    main()
