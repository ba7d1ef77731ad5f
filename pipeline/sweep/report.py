"""Look at a sweep folder: the top trials as a table, the metric against each hyperparameter as PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.durable.records import read_json, read_parquet
from pipeline.errors import PipelineError
from pipeline.track.plot import draw_runs, legend_outside, save_figure

TOP = 10
COLUMNS = ("step", "split", "name", "value")  # of curves.parquet, as draw_runs reads them


def is_sweep(path: Path) -> bool:
    return (path / "trials.parquet").is_file()


def _load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], str, str, bool]:
    if not is_sweep(path):
        raise PipelineError(f"{path} is not a sweep folder (no trials.parquet)")
    description = read_json(path / "sweep.json") if (path / "sweep.json").is_file() else {}
    rows = read_parquet(path / "trials.parquet").to_pylist()
    split, _, metric = description.get("selection", "test/accuracy").partition("/")
    # Sweeps recorded before objectives carried directions: the built-in metrics better higher.
    higher = description.get("higher_is_better", metric in ("accuracy", "r2"))
    return description, rows, split, metric, higher


def ranked(rows: list[dict[str, Any]], split: str, metric: str, higher: bool) -> list[dict[str, Any]]:
    """Best first by the final selection metric; trials without one (pending, diverged early) last."""
    column = f"final_{split}_{metric}"
    sign = -1.0 if higher else 1.0

    def key(row: dict[str, Any]) -> tuple[float, int]:
        value = row.get(column)
        bad = value is None or math.isnan(value) or row["status"] in ("diverged",)
        return (math.inf if bad else sign * value, row["trial"])

    return sorted(rows, key=key)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def show_sweep(path: Path, top: int = TOP) -> str:
    description, rows, split, metric, higher = _load(path)
    swept = description.get("swept", [])
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    lines = [
        f"sweep        {path}",
        f"experiment   {description.get('experiment', '?')}   strategy {description.get('strategy', '?')}",
        f"trials       {len(rows)}: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
        f"ranked by    final {split}/{metric}",
        "",
    ]
    metric_cols = [c for c in rows[0] if c.startswith("final_")] if rows else []
    metric_cols.sort(key=lambda c: c != f"final_{split}_{metric}")
    header = ["trial", "status", *swept, *(c.removeprefix("final_").replace("_", "/", 1) for c in metric_cols),
              "best_step", "steps", "wall_s"]
    body = [[_fmt(r["trial"]), r["status"], *(_fmt(r[k]) for k in swept), *(_fmt(r[c]) for c in metric_cols),
             _fmt(r["best_step"]), _fmt(r["steps"]), _fmt(round(r["wall_s"], 1))]
            for r in ranked(rows, split, metric, higher)[:top]]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more in {path / 'trials.parquet'}")
    return "\n".join(lines)


def _log_axis(text: str, values: np.ndarray) -> bool:
    if text.startswith(("loguniform", "logspace")):
        return True
    positive = values[np.isfinite(values) & (values > 0)]
    return len(positive) == len(values) and len(values) > 1 and positive.max() / positive.min() >= 100


def plot_sweep(path: Path) -> list[Path]:
    """``hparams.png``: the final selection metric against each swept key; ``curves.png``: the best trials."""
    import matplotlib.pyplot as plt

    out = []
    for name, fig in sweep_figures(path).items():
        save_figure(fig, path / name)
        plt.close(fig)
        out.append(path / name)
    return out


def sweep_figures(path: Path) -> dict[str, object]:
    """The figures of ``plot_sweep`` by file name (matplotlib figures, not yet saved)."""
    import matplotlib

    matplotlib.use("Agg")
    description, rows, split, metric, higher = _load(path)
    swept = description.get("swept", [])
    figures = {}
    if swept and rows:
        figures["hparams.png"] = _hparams_figure(description, rows, split, metric, swept)
    if (path / "curves.parquet").exists():
        figures["curves.png"] = _curves_figure(path, ranked(rows, split, metric, higher)[:5], split, metric, swept)
    return figures


def _hparams_figure(description: dict, rows: list[dict], split: str, metric: str, swept: list[str]):
    import matplotlib.pyplot as plt

    spelled = description.get("space", {}).get("dimensions", {})
    column = f"final_{split}_{metric}"
    fig, axes = plt.subplots(1, len(swept), figsize=(4.5 * len(swept) + 1.5, 3.6), squeeze=False,
                             layout="constrained")
    y = np.array([r.get(column) if r.get(column) is not None else np.nan for r in rows], float)
    status = np.array([r["status"] for r in rows])
    for ax, key in zip(axes[0], swept):
        raw = [r[key] for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        if numeric:
            x = np.array(raw, float)
        else:
            labels = list(dict.fromkeys(str(v) for v in raw))
            x = np.array([labels.index(str(v)) for v in raw], float)
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        for name, marker in (("done", "o"), ("early_stopped", "o"), ("stopped", "s"), ("running", "^")):
            sel = status == name
            if sel.any():
                ax.scatter(x[sel], y[sel], marker=marker, label=name, alpha=0.8,
                           facecolors="none" if name == "stopped" else None, edgecolors="C1" if name == "stopped"
                           else None)
        if (status == "diverged").any():
            for xv in x[status == "diverged"]:
                ax.axvline(xv, color="red", alpha=0.25, lw=1)
        if numeric and _log_axis(spelled.get(key, ""), x):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"final {split}/{metric}")
        ax.grid(alpha=0.3)
    legend_outside(fig, axes[0])
    diverged = " (red lines: diverged)" if (status == "diverged").any() else ""
    fig.suptitle(f"{description.get('experiment', '')} sweep: {len(rows)} trials{diverged}")
    return fig


def _curves_figure(path: Path, best: list[dict], split: str, metric: str, swept: list[str]):
    """The best trials drawn as ``pipeline runs plot`` draws runs (every metric of the objective, each
    axis zoomed to the later part), train and the selection split only, a colour per trial."""
    table = pq.read_table(path / "curves.parquet", filters=[("trial", "in", [r["trial"] for r in best])])
    series = []
    for row in best:
        label = f"trial {row['trial']}: " + ", ".join(f"{k.split('.')[-1]}={_fmt(row[k])}" for k in swept)
        mine = table.filter(pc.field("trial") == row["trial"])
        series.append((label.removesuffix(": "), {c: mine.column(c).to_pylist() for c in COLUMNS}))
    return draw_runs(series, f"the {len(best)} best trials by {split}/{metric}", splits=("train", split))
