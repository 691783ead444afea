"""A self-contained HTML report (figures embedded) a plant engineer can open from anywhere."""

from __future__ import annotations

import base64
import html
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from raysys.evaluation import plots
from raysys.train.driver import epoch_history
from raysys.layout import LEADERBOARD_PLOT

LEADERBOARD_COLUMNS = ["trial", "family", "status", "epochs", "val_pr_auc", "val_loss", "params"]
#: Per-detector columns of the detection table, with test labels and without.
DETECTION_COLUMNS = ("roc_auc", "pr_auc", "vus_pr", "precision", "recall", "f1", "false_alarm_rate", "far_asked",
                     "event_recall", "event_precision", "false_alarms_per_day")
LABEL_FREE_COLUMNS = ("alarm_rate", "heldout_false_alarm_rate", "far_asked", "heldout_far_ratio", "threshold")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; } th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; } .fail { color: #b00; } .pass { color: #070; }
"""


def _figure(caption: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)} ({html.escape(path.name)})</figcaption></figure>")


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, escape=True)


def write_report(path: str | os.PathLike, title: str, summary: Mapping[str, str],
                 sections: Sequence[tuple[str, Sequence[pd.DataFrame | tuple[str, Path]]]]) -> Path:
    """Write ``path`` (HTML): a summary list, then sections of tables and (caption, PNG) figures."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>"]
    parts += [f"<li><b>{html.escape(k)}</b>: <code>{html.escape(str(v))}</code></li>" for k, v in summary.items()]
    parts.append("</ul>")
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            parts.append(_table(item) if isinstance(item, pd.DataFrame) else _figure(*item))
    parts.append("</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out


def write_pipeline_report(out_dir: str | os.PathLike, dataset, sweep, ensemble, client, model_name: str) -> Path:
    """The pipeline's report: sweep leaderboard, winners' loss curves, ROC/PR of members and ensemble,
    confusion matrix, recall per anomaly type (with labels; without them, the held-out false-alarm
    rates beside the asked one), the gates (skipped ones with why) and a timeline of the test split.
    Returns the HTML path."""

    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    evaluation = Path(ensemble.evaluation_dir) / "plots"
    for png in evaluation.glob("*.png"):
        shutil.copy(png, figures / png.name)
    histories = {family: epoch_history(client, best["run_id"]) for family, best in sorted(sweep.best.items())}
    plots.loss_curves({k: v for k, v in histories.items() if v}, figures / "winners_loss_curves.png")
    sweep_plot = shutil.copy(Path(sweep.sweep_dir) / LEADERBOARD_PLOT, figures / "sweep_metric_vs_trial.png")
    test = dataset.test
    spec = ensemble.build.spec
    labelled = bool(ensemble.metrics["ensemble"].get("labelled"))
    plots.timeline(test["timestamp"].to_numpy(), {s: test[s].to_numpy() for s in dataset.sensors},
                   ensemble.build.test_scores["ensemble"], spec["threshold"], dataset.known_labels("test"),
                   figures / "test_timeline.png", "Test split: sensors, ensemble score, threshold"
                   + (", true anomalies" if labelled else " (no labels)") + "; each alarm's top sensor",
                   ensemble.build.test_top_sensors)
    columns = DETECTION_COLUMNS if labelled else LABEL_FREE_COLUMNS
    members = pd.DataFrame([{"detector": name, **{k: m.get(k) for k in columns}} for name, m in ensemble.metrics.items()])
    gates = pd.DataFrame([g.to_dict() for g in ensemble.gates.results]
                         + [{"name": name, "passed": "skipped", "reason": why} for name, why in ensemble.gates.skipped])
    summary = {
        "model": f"models:/{model_name}@champion (version {ensemble.version})" if ensemble.version
        else "not registered: a quality gate failed",
        "dataset": f"{dataset.path} ({dataset.metadata['rows']} rows, {len(dataset.sensors)} sensors"
                   + ("" if labelled else ", no labels") + ")",
        "sweep": str(sweep.sweep_dir),
        "ensemble": str(ensemble.ensemble_dir),
        "members": ", ".join(f"{m['name']} ({m['weight']:.2f})" for m in spec["members"]),
        "threshold": f"{spec['threshold']:.4g} ({spec['threshold_method']}"
                     + (f", asked false-alarm rate {spec['target_far']:g}" if spec.get("target_far") else "") + ")",
        "test": ensemble.summary(),
    }
    if labelled:
        recall = pd.DataFrame([{"anomaly type": k, "recall": v}
                               for k, v in ensemble.metrics["ensemble"]["recall_by_type"].items()])
        detection = [
            ("Detection on the held-out test split", [
                members, ("ROC and precision-recall curves: every member and the ensemble", figures / "roc_pr.png"),
                ("Ensemble confusion matrix", figures / "confusion_matrix.png"),
                ("Ensemble score distribution", figures / "score_distribution.png")]),
            ("Recall per anomaly type", [recall, ("Ensemble recall per anomaly type", figures / "recall_by_type.png")])]
    else:
        detection = [("Without labels: false alarms on held-out normal rows, alarms on the test split", [
            members, ("Ensemble score distribution (test, no labels)", figures / "score_distribution.png")])]
    return write_report(out / "report.html", "raysys pipeline report", summary, [
        ("Sweep", [sweep.leaderboard[LEADERBOARD_COLUMNS].head(20),
                   (f"{sweep.config.metric} of each trial and the epochs it trained", Path(sweep_plot))]),
        ("Winners", [("Loss curves of the best trial per family", figures / "winners_loss_curves.png")]),
        *detection,
        ("Quality gates", [gates]),
        ("What was caught and what was missed" if labelled else "What was flagged",
         [("Test split timeline" + (" (orange: true anomalies, red: flagged)" if labelled else " (red: flagged)"),
           figures / "test_timeline.png")]),
    ])


def write_fleet_report(out_dir: str | os.PathLike, run: Any, model_name: str) -> Path:
    """The fleet path's report: asset counts, the per-asset metric distributions, the assets that failed
    (training or a gate) with why, and every asset's row of ``assets.csv``."""
    from raysys.layout import FLEET_PLOTS, FLEET_TABLE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = shutil.copy(run.directory / FLEET_PLOTS / "metrics.png", out / "fleet_metrics.png")
    table = pd.read_csv(run.directory / FLEET_TABLE)
    counts = pd.DataFrame([run.manifest.counts()])
    failed = table[table["status"] != "SUCCEEDED"][["asset_id", "status", "reason"]]
    shown = ["asset_id", "status", "threshold", "roc_auc", "f1", "false_alarm_rate", "heldout_false_alarm_rate",
             "far_asked", "rows_train", "start", "end"]
    summary = {"fleet": str(run.directory), "MLflow run": str(run.run_id),
               "model": f"models:/{model_name}/{run.version}" if run.version else "not registered"}
    return write_report(out / "report.html", "raysys fleet report", summary, [
        ("Fleet", [counts, ("Per-asset metrics (trained assets)", Path(plot))]),
        ("Assets that failed or failed a gate", [failed]),
        ("Every asset", [table[[c for c in shown if c in table.columns]]]),
    ])
