"""Collect a sweep directory into a table and plots: `report.csv`, `report.md`, and `<metric>_vs_<param>.png`."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from perceiver_lit.sweeps.runner import DONE_FILE, FAILED_FILE, PLAN_FILE, TRIAL_FILE, read_metrics
from perceiver_lit.sweeps.spec import SweepError


def collect(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Rows (one per trial, sorted by index), the swept parameter keys, and the metric names seen."""
    sweep_dir = Path(sweep_dir)
    trial_files = sorted(sweep_dir.glob(f"trial-*/{TRIAL_FILE}"), key=lambda f: int(f.parent.name.split("-")[1]))
    if not trial_files:
        raise SweepError(f"{sweep_dir}: no trial-*/{TRIAL_FILE} found; is this a sweep directory?")
    rows, params, metrics = [], [], []
    for f in trial_files:
        info = json.loads(f.read_text())
        tdir = f.parent
        status = "done" if (tdir / DONE_FILE).exists() else "failed" if (tdir / FAILED_FILE).exists() else "pending"
        m = read_metrics(tdir)
        for k in info["params"]:
            params.append(k) if k not in params else None
        for k in m:
            metrics.append(k) if k not in metrics else None
        rows.append({"trial": info["index"], "status": status, "params": info["params"], "metrics": m})
    return rows, params, sorted(metrics)


def short(key: str) -> str:
    """A column title for a LightningCLI key: its last meaningful part (init_args/class_path dropped)."""
    parts = [p for p in key.split(".") if p not in ("init_args", "class_path")]
    return parts[-1] if parts else key


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str) and re.fullmatch(r"[a-z_][\w.]*\.[A-Z]\w*", v):
        return v.rsplit(".", 1)[1]  # a class path: its class name is enough in a table
    return str(v)


def write_report(
    sweep_dir: str | Path, out: str | Path | None = None, metric: str | None = None, goal: str | None = None
) -> dict[str, Any]:
    """Write report.csv, report.md and plots into `out` (default: the sweep dir). The plotted metric is `metric`,
    else the spec's `metric.name`, else the first val/ metric. The best trial is by `goal` (minimize/maximize),
    else the spec's goal for the spec's metric, else minimize for a loss and maximize otherwise."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    rows, params, metric_names = collect(sweep_dir)
    plan_file = sweep_dir / PLAN_FILE
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
    spec_metric = plan.get("metric", {})
    metric = (
        metric
        or spec_metric.get("name")
        or next((m for m in metric_names if m.startswith("val")), metric_names[0] if metric_names else None)
    )
    if goal is None:  # the spec's goal belongs to the spec's metric, not to one picked with --metric
        goal = (
            spec_metric.get("goal", "maximize")
            if metric == spec_metric.get("name")
            else ("minimize" if metric and "loss" in metric else "maximize")
        )
    if goal not in ("minimize", "maximize"):
        raise SweepError(f"goal must be 'minimize' or 'maximize', got {goal!r}")
    if metric and metric_names and metric not in metric_names:
        raise SweepError(
            f"metric {metric!r} was logged by no trial of {sweep_dir} (a typo in --metric or the spec's "
            f"metric.name?); logged: {', '.join(metric_names)}"
        )

    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", *params, *metric_names])
        for r in rows:
            w.writerow(
                [
                    r["trial"],
                    r["status"],
                    *[r["params"].get(p) for p in params],
                    *[r["metrics"].get(m) for m in metric_names],
                ]
            )

    # The sweep's metric first, then a few other evaluation metrics and the training loss.
    others = [m for m in metric_names if m != metric and m.startswith(("val/", "test/"))]
    shown = [m for m in metric_names if m == metric] + others[:5] + [m for m in metric_names if m == "train/loss"]
    lines = [
        "| trial | status | " + " | ".join(short(p) for p in params) + " | " + " | ".join(shown) + " |",
        "|" + "---|" * (2 + len(params) + len(shown)),
    ]
    for r in rows:
        lines.append(
            f"| {r['trial']} | {r['status']} | "
            + " | ".join(_fmt(r["params"].get(p)) for p in params)
            + " | "
            + " | ".join(_fmt(r["metrics"].get(m)) for m in shown)
            + " |"
        )
    scored = [r for r in rows if r["status"] == "done" and metric and _num(r["metrics"].get(metric)) is not None]
    if scored:
        best = (max if goal == "maximize" else min)(scored, key=lambda r: r["metrics"][metric])
        lines += [
            "",
            f"Best ({goal} `{metric}`): trial {best['trial']}, {metric} = {_fmt(best['metrics'][metric])}, "
            + ", ".join(f"`{p}` = {_fmt(best['params'][p])}" for p in params),
        ]
    table = "\n".join(lines) + "\n"
    (out / "report.md").write_text(table)

    plots = []
    if metric and scored:
        from datamodules.optional import require

        require("matplotlib", "perceiver-lit-sweep report's plots")
        swept = [p for p in params if len({json.dumps(r["params"].get(p), sort_keys=True) for r in rows}) > 1]
        for p in swept:
            plots.append(plot_metric(scored, p, metric, out))
    return {
        "csv": out / "report.csv",
        "markdown": out / "report.md",
        "plots": plots,
        "table": table,
        "metric": metric,
        "rows": rows,
    }


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def plot_metric(rows: list[dict[str, Any]], param: str, metric: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["params"].get(param) for r in rows]
    ys = [r["metrics"][metric] for r in rows]
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    if all(_num(x) is not None for x in xs):
        ax.scatter(xs, ys, color="C0", zorder=3)
        # The mean per value shows the trend when other parameters vary too.
        uniq = sorted(set(xs))
        ax.plot(uniq, [sum(y for x, y in zip(xs, ys) if x == u) / xs.count(u) for u in uniq], color="C0", alpha=0.6)
        if len(uniq) > 2 and min(uniq) > 0 and max(uniq) / min(uniq) >= 16:
            ax.set_xscale("log", base=2)
    else:
        cats = list(dict.fromkeys(_fmt(x) for x in xs))
        ax.scatter([cats.index(_fmt(x)) for x in xs], ys, color="C0", zorder=3)
        ax.set_xticks(range(len(cats)), cats, rotation=20 if max(len(c) for c in cats) > 8 else 0)
        ax.set_xlim(-0.5, len(cats) - 0.5)
    ax.set_xlabel(short(param))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / f"{_slug(metric)}_vs_{_slug(short(param))}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")
