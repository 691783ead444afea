"""The ensemble's labelled rule against its label-free rule, on the same members and the same test split.

Labelled (the default with labels): greedy weights and the threshold method on the labelled
validation split. Label-free (the rule without labels): the validation split's labels dropped, equal
weights, the threshold from the first 70% of the validation rows at the asked false-alarm rate
(``raysys.evaluation.calibration.holdout_calibration``). The test split keeps its labels here, so
both are measured the same way: test F1, precision, recall and the false-alarm rate beside the asked one.

The label-free rule takes every validation row as normal. Two cases: ``label-free, far`` keeps the
generated anomalies in the training and validation splits (unlabelled anomalies in the history, about
5% of the rows); ``label-free, clean history`` drops the anomalous rows first (a history of normal
operation, which is what the rule asks the user for).

    python bench/bench_label_free.py                      # default dataset (20,000 rows), 1% asked
    python bench/bench_label_free.py --rows 6000 --epochs 3 --smoke-test
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from raysys.data import ANOMALY_TYPE, LABEL, generate_dataset, load_dataset
from raysys.ensemble.build import build_ensemble
from raysys.models import build_detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--profile", default="water_treatment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", nargs="+", default=["ae", "vae", "lstm", "conv"])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per family (default: its own)")
    parser.add_argument("--target-far", type=float, default=0.01)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--smoke-test", action="store_true", help="tiny run: 2 families, 6,000 rows")
    args = parser.parse_args()
    if args.smoke_test:
        args.rows, args.families, args.epochs = 6000, ["ae", "lstm"], 2
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_dataset(generate_dataset(Path(tmp) / "data", args.profile, args.rows, args.seed))
        X, y = dataset.features("train"), dataset.labels("train")
        extra = {} if args.epochs is None else {"epochs": args.epochs}
        members = {}
        for family in args.families:
            console.print(f"fitting {family}")
            members[family] = build_detector(family, seed=args.seed, **extra).fit(X, y)
        unlabelled = replace(dataset, **{s: dataset.split(s).drop(columns=[LABEL, ANOMALY_TYPE])
                                         for s in ("train", "val")})
        clean = replace(dataset, **{s: dataset.split(s)[dataset.split(s)[LABEL] == 0].drop(
            columns=[LABEL, ANOMALY_TYPE]).reset_index(drop=True) for s in ("train", "val")})
        rules = {
            "labelled, best_f1": build_ensemble(members, dataset, Path(tmp) / "best_f1", seed=args.seed),
            "labelled, far": build_ensemble(members, dataset, Path(tmp) / "far", threshold_method="far",
                                            target_far=args.target_far, seed=args.seed),
            "label-free, far": build_ensemble(members, unlabelled, Path(tmp) / "free", threshold_method="far",
                                              target_far=args.target_far, seed=args.seed),
            "label-free, clean history": build_ensemble(members, clean, Path(tmp) / "clean", threshold_method="far",
                                                        target_far=args.target_far, seed=args.seed),
        }
    table = Table(title=f"Ensemble rules on {args.profile}, {args.rows} rows (test split, asked FAR "
                        f"{args.target_far:g} for 'far')")
    for column in ("rule", "F1", "precision", "recall", "FAR measured", "held-out FAR", "PR AUC", "weights"):
        table.add_column(column, justify="left" if column in ("rule", "weights") else "right")
    results = {}
    for name, build in rules.items():
        m = build.ensemble_metrics
        weights = {member["name"]: round(member["weight"], 2) for member in build.spec["members"]}
        results[name] = {k: m[k] for k in ("f1", "precision", "recall", "false_alarm_rate", "pr_auc")}
        results[name].update(weights=weights, heldout_false_alarm_rate=m.get("heldout_false_alarm_rate"))
        table.add_row(name, f"{m['f1']:.3f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}",
                      f"{m['false_alarm_rate']:.4f}",
                      "-" if m.get("heldout_false_alarm_rate") is None else f"{m['heldout_false_alarm_rate']:.4f}",
                      f"{m['pr_auc']:.3f}",
                      ", ".join(f"{k} {v:g}" for k, v in weights.items() if v))
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
