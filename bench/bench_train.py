"""Samples per second of raysys training: ``BaseDeepDetector.fit`` in-process vs ``raysys train`` on Ray Train.

Both sides run raysys's own code, with no copy of the epoch loop:

- **plain**: ``BaseDeepDetector.fit`` in this process (no Ray running): ``run_epochs`` with plain
  ``DataLoader`` objects, validation every epoch, no reports or checkpoints;
- **Ray Train**: the ``TorchTrainer`` of ``raysys train`` (``raysys.train.driver.build_trainer``)
  running ``train_fn_per_worker``: Ray-prepared model and loaders (DDP and a ``DistributedSampler``
  with 2 workers), the all-reduce of the epoch's losses, and every epoch a ``ray.train.report``
  with a checkpoint (rank 0 writes ``train_state.pt``, Ray persists it to the run directory).

Same detector, same samples, same global batch (``--batch-size``; each of ``n`` workers takes
``batch_size // n``), same number of intra-op threads in total. An epoch's time is the interval
between the ends of two consecutive epochs (the ``time`` that ``train_fn_per_worker`` records in
the checkpointed history; the same hook in-process), so it covers the training pass, the validation
pass and, for Ray Train, the previous epoch's report and checkpoint: the per-batch cost of the
product. Early stopping is off (``patience`` above ``epochs``), so every setup runs every epoch.
The first ``--warmup`` epochs are not counted. What is not in any epoch is the fixed cost of a run
(``fixed s``: ``fit()`` wall time minus the epochs at the median epoch time: Ray's worker processes,
the process group, loading the data, the first epoch's warm-up, the last checkpoint with the fitted
detector, tear-down), reported on its own.

Setups (workers x CPUs per worker), each compared with ``fit`` with as many threads, run right
before and right after it (a shared machine's load changes from minute to minute):

- 1 x 1: ``raysys train --num-workers 1`` (Ray runs the worker with 1 thread);
- 1 x 2: 1 worker with the whole 2-core machine, 2 threads;
- 2 x 1: the ``raysys train`` default, 1 thread each.

    python bench/bench_train.py                       # default dataset (20,000 rows), ae, 3 rounds
    python bench/bench_train.py --setups 1x1 2x1 --rounds 5 --json bench-train.json
    python bench/bench_train.py --smoke-test
    python bench/bench_train.py --setups 1x1 --rounds 1 --profile /tmp/prof   # cProfile of rank 0 and of fit
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Ray starts its workers at nice 15; on a machine shared with other work that would time the
# neighbours, not Ray, so the workers here run at the plain loop's priority (reported per run).
os.environ.setdefault("RAY_worker_niceness", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402
import ray.train  # noqa: E402
import torch  # noqa: E402

import raysys.models.base  # noqa: E402
from raysys.data import generate_dataset, load_dataset  # noqa: E402
from raysys.layout import TRAIN_STATE  # noqa: E402
from raysys.models import build_detector  # noqa: E402
from raysys.models._training import run_epochs, split_validation  # noqa: E402
from raysys.models.base import load_weights  # noqa: E402
from raysys.train.config import TrainConfig  # noqa: E402
from raysys.train.driver import build_trainer  # noqa: E402
from raysys.train.worker import train_fn_per_worker  # noqa: E402


def train_samples(data: str, model: str, params: dict[str, Any]) -> int:
    """Training samples per epoch (after the validation hold-out), as both sides split them."""
    dataset = load_dataset(data)
    detector = build_detector(model, **params)
    samples = torch.from_numpy(detector.init_fit(dataset.features("train"), dataset.labels("train")))
    return len(split_validation(samples, detector.validation_fraction)[0])


def plain_fit(data: str, model: str, params: dict[str, Any], threads: int,
              profile: str | None = None) -> tuple[list[float], float, float]:
    """``BaseDeepDetector.fit`` in this process: the end time of every epoch, fit's start and end."""
    torch.set_num_threads(threads)
    dataset = load_dataset(data)
    detector = build_detector(model, **params)
    ends: list[float] = []

    @functools.wraps(run_epochs)
    def timed(*args: Any, **kwargs: Any):  # fit's own loop, with a hook that only notes the time
        return run_epochs(*args, on_epoch=lambda *_: ends.append(time.time()), **kwargs)

    profiler = cProfile.Profile() if profile else None
    with mock.patch.object(raysys.models.base, "run_epochs", timed):
        start = time.time()
        if profiler:
            profiler.enable()
        detector.fit(dataset.features("train"), dataset.labels("train"))
        if profiler:
            profiler.disable()
            profiler.dump_stats(Path(profile) / f"plain-{threads}t.prof")
        end = time.time()
    return ends, start, end


def bench_train_fn(config: dict[str, Any]) -> None:
    """``train_fn_per_worker`` itself; rank 0 also notes its threads and priority (and may profile it)."""
    out = Path(config["bench_dir"])
    rank = ray.train.get_context().get_world_rank()
    if rank == 0:
        (out / "worker.json").write_text(json.dumps({
            "threads": torch.get_num_threads(), "niceness": os.nice(0),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "worker_module": sys.modules[train_fn_per_worker.__module__].__file__}))
    if not (config.get("profile") and rank == 0):
        train_fn_per_worker(config)
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        train_fn_per_worker(config)
    finally:
        profiler.disable()
        profiler.dump_stats(Path(config["profile"]) / f"ray-{config['setup']}-rank0.prof")


def ray_fit(data: str, model: str, params: dict[str, Any], workers: int, cpus: int, storage: str,
            profile: str | None = None) -> tuple[list[float], float, float, dict[str, Any]]:
    """``raysys train``'s TorchTrainer: the end time of every epoch (from the last checkpoint's
    history), ``fit()``'s start and end, and rank 0's threads and niceness."""
    cfg = TrainConfig(data=data, model=model, params=params, num_workers=workers, storage_path=storage)
    name = f"bench-{workers}x{cpus}-{time.time_ns()}"
    bench_dir = Path(storage) / f"{name}-worker"
    bench_dir.mkdir(parents=True)
    extra = {"bench_dir": str(bench_dir), "setup": f"{workers}x{cpus}", "profile": profile}
    trainer = build_trainer(cfg, name, [], extra, train_fn=bench_train_fn, resources_per_worker={"CPU": cpus})
    start = time.time()
    result = trainer.fit()
    end = time.time()
    history = load_weights(Path(result.checkpoint.path) / TRAIN_STATE)["history"]
    return [h["time"] for h in history], start, end, json.loads((bench_dir / "worker.json").read_text())


def throughput(ends: list[float], start: float, end: float, samples: int, warmup: int) -> dict[str, Any]:
    """Samples/s per counted epoch, and the run's fixed cost (wall time not in its epochs)."""
    seconds = [b - a for a, b in zip(ends, ends[1:])][warmup - 1:]  # epoch e lasts from the end of e-1 to its own
    rates = [samples / s for s in seconds]
    epoch_s = statistics.median(seconds)
    return {"median": statistics.median(rates), "p90": float(np.percentile(rates, 90)), "min": min(rates),
            "max": max(rates), "rates": rates, "epoch_seconds": epoch_s, "fit_seconds": end - start,
            # before the first epoch's end and after the last one's, less the first epoch at the median time
            "fixed_seconds": (ends[0] - start) - epoch_s + (end - ends[-1]),
            "first_epoch_end_seconds": ends[0] - start, "after_last_epoch_seconds": end - ends[-1]}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "load_average": os.getloadavg()}


def _setup(text: str) -> tuple[int, int]:
    try:
        workers, cpus = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setup is WORKERSxCPUS, e.g. 2x1; got {text!r}") from None
    return workers, cpus


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="prepared dataset (default: generate the default 20,000-row dataset)")
    parser.add_argument("--model", default="ae", choices=["ae", "vae", "lstm"])
    parser.add_argument("--batch-size", type=int, default=256, help="the global batch, as in raysys train")
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs per setup, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="epochs run first and not counted (>= 1)")
    parser.add_argument("--rounds", type=int, default=3, help="repeat every setup this many times")
    parser.add_argument("--setups", nargs="+", type=_setup, default=[(1, 1), (1, 2), (2, 1)],
                        metavar="WORKERSxCPUS", help="Ray Train setups (default: 1x1 1x2 2x1)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after stopping Ray")
    parser.add_argument("--health-check-interval", type=float,
                        help="set RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default: Ray's 2 s, as raysys train runs): how "
                             "often the controller collects reports; a worker's report waits for the previous one")
    parser.add_argument("--profile", help="write cProfile stats of fit and of Ray Train's rank 0 here")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--smoke-test", action="store_true", help="2 epochs, 1 round, no settling: a quick check")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.epochs, args.rounds, args.settle = 2, 1, 0.0
    if args.warmup < 1:
        parser.error("--warmup must be >= 1: the first epoch has no previous epoch end to time it from")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        args.profile = str(Path(args.profile).resolve())

    if args.health_check_interval is not None:  # the driver passes it on to the controller and the workers
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(args.health_check_interval)
    total = args.warmup + args.epochs
    params = {"batch_size": args.batch_size, "seed": 0, "epochs": total, "patience": total + 1}
    info = machine()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(generate_dataset(Path(tmp) / "data"))
        samples = train_samples(data, args.model, params)

        def plain(threads: int, round_: int) -> dict[str, Any]:
            load = os.getloadavg()[0]
            stats = throughput(*plain_fit(data, args.model, params, threads, args.profile), samples, args.warmup)
            row = {"setup": f"fit, {threads} thread(s)", "kind": "plain", "round": round_, "threads": threads,
                   "niceness": os.nice(0), "load": load, **stats}
            rows.append(row)
            return row

        for round_ in range(1, args.rounds + 1):
            for workers, cpus in args.setups:
                # fit with as many threads right before and right after, with no Ray running,
                # so that a change of load on a shared machine hits both sides of the ratio alike
                before = plain(workers * cpus, round_)
                ray.init(address="local", num_cpus=max(os.cpu_count() or 2, workers * cpus), include_dashboard=False,
                         log_to_driver=False)
                try:
                    load = os.getloadavg()[0]
                    ends, start, end, worker = ray_fit(data, args.model, params, workers, cpus, f"{tmp}/runs",
                                                       args.profile)
                finally:
                    ray.shutdown()
                time.sleep(args.settle)  # Ray's processes take a few seconds to exit
                stats = throughput(ends, start, end, samples, args.warmup)
                rows.append({"setup": f"Ray Train, {workers} worker(s) x {cpus} CPU", "kind": "ray",
                             "workers": workers, "cpus": cpus, "round": round_,
                             "threads": workers * worker["threads"], "niceness": worker["niceness"], "load": load,
                             "worker_module": worker["worker_module"],
                             **stats})
                after = plain(workers * cpus, round_)
                pooled = before["rates"] + after["rates"]
                fixed = statistics.median([before["fixed_seconds"], after["fixed_seconds"]])
                rows[-2].update(plain_median=statistics.median(pooled), plain_p90=float(np.percentile(pooled, 90)),
                                ratio=stats["median"] / statistics.median(pooled),
                                ratio_p90=stats["p90"] / float(np.percentile(pooled, 90)),
                                plain_fixed_seconds=fixed, extra_fixed_seconds=stats["fixed_seconds"] - fixed)

    print(f"\n{args.model}, global batch {args.batch_size}, {samples} training samples per epoch, {args.epochs} "
          f"timed epochs after {args.warmup} warm-up; {info['cores']} cores ({info['cpu']}), torch {info['torch']}, "
          f"ray {info['ray']}, load average before {info['load_average'][0]:.2f}; Ray Train health-check interval "
          f"{os.environ.get('RAY_TRAIN_HEALTH_CHECK_INTERVAL_S', '2 (default)')} s")
    header = (f"{'round':>5} {'setup':32} {'threads':>7} {'nice':>4} {'median/s':>9} {'p90/s':>8} {'min-max':>15} "
              f"{'vs fit':>6} {'p90 vs':>6} {'fixed s':>7} {'load':>5}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        spread = f"{r['min']:.0f}-{r['max']:.0f}"
        ray_row = r["kind"] == "ray"
        ratio, ratio_p90 = (f"{r['ratio']:.2f}", f"{r['ratio_p90']:.2f}") if ray_row else ("", "")
        print(f"{r['round']:>5} {r['setup']:32} {r['threads']:>7} {r['niceness']:>4} {r['median']:>9.0f} "
              f"{r['p90']:>8.0f} {spread:>15} {ratio:>6} {ratio_p90:>6} {r['fixed_seconds']:>7.1f} {r['load']:>5.1f}")
    print("vs fit: median samples/s of the Ray setup over the median of fit with as many threads, run just before "
          "and just after it (p90 vs: the same with the 90th percentiles, the epochs other work on a shared machine "
          "slowed least); fixed: fit() wall time not in its epochs (Ray: start-up, last checkpoint, tear-down); "
          "load: 1-minute load average when the setup started")
    summary = []
    for workers, cpus in args.setups:
        mine = [r for r in rows if r["kind"] == "ray" and (r["workers"], r["cpus"]) == (workers, cpus)]
        ratios, p90s = [r["ratio"] for r in mine], [r["ratio_p90"] for r in mine]
        extra = [r["extra_fixed_seconds"] for r in mine]
        summary.append({"setup": f"{workers}x{cpus}", "rounds": len(mine), "ratio_median": statistics.median(ratios),
                        "ratio_min": min(ratios), "ratio_max": max(ratios), "ratio_p90_median": statistics.median(p90s),
                        "ratio_p90_min": min(p90s), "ratio_p90_max": max(p90s),
                        "extra_fixed_seconds_median": statistics.median(extra),
                        "extra_fixed_seconds_min": min(extra), "extra_fixed_seconds_max": max(extra)})
        s = summary[-1]
        print(f"Ray Train {workers} worker(s) x {cpus} CPU over {len(mine)} round(s): vs fit {s['ratio_median']:.2f} "
              f"(median; {s['ratio_min']:.2f}-{s['ratio_max']:.2f}), p90 vs fit {s['ratio_p90_median']:.2f} "
              f"({s['ratio_p90_min']:.2f}-{s['ratio_p90_max']:.2f}); fixed cost per run beyond fit's "
              f"{s['extra_fixed_seconds_median']:.1f} s ({s['extra_fixed_seconds_min']:.1f}-"
              f"{s['extra_fixed_seconds_max']:.1f})")
    report = {"model": args.model, "batch_size": args.batch_size, "epochs": args.epochs, "warmup": args.warmup,
              "health_check_interval_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"),
              "samples_per_epoch": samples, "machine": info, "rows": rows, "summary": summary}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return report


if __name__ == "__main__":
    main()
