"""Learning curves as PNG, drawn from the metrics table alone."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

import numpy as np

from pipeline.track.panels import panel_metrics, with_derived_curves, zoomed_range

STYLES = {"train": "-", "val": "--", "test": ":"}
PANELS_PER_ROW = 3
SMOOTH_OVER = 200  # train curves with more points than this are drawn as a moving average


def smoothed(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A noisy per-step curve as the moving average over about 1% of its points."""
    if len(y) <= SMOOTH_OVER:
        return x, y
    width = max(1, len(y) // 100)
    return x[width - 1:], np.convolve(y, np.ones(width) / width, mode="valid")


def draw_runs(series: list[tuple[str, dict]], title: str = "", splits: tuple[str, ...] | None = None):
    """The figure of ``plot_runs``: a panel per metric (loss first, then each metric of the objective that
    is not a copy of the loss: accuracy; mae and r2; bits per byte and perplexity), a colour per run, a
    line style per split (one unlabelled run: a colour per split), evaluations marked at every point.

    The loss axis is logarithmic and holds the whole descent; every other axis is zoomed to the later
    part of the curves (``pipeline.track.panels``), so 0.97 and 0.99 look apart. The legend sits
    outside the panels, on the right. ``splits`` keeps only those splits.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [with_derived_curves(t) for _, t in series]
    panels = panel_metrics(tables) or ["loss"]
    cols = min(PANELS_PER_ROW, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 2.4, 3.4 * rows), squeeze=False,
                             layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in panels}
    for run_index, ((label, _), table) in enumerate(zip(series, tables)):
        steps = np.asarray(table["step"])
        split_of = np.asarray(table["split"], dtype=object)
        names = np.asarray(table["name"], dtype=object)
        values = np.asarray(table["value"], float)
        for split_index, split in enumerate(dict.fromkeys(split_of)):
            if splits is not None and split not in splits:
                continue
            for ax, name in zip(axes.flat, panels):
                sel = (names == name) & (split_of == split)
                if not sel.any():
                    continue
                order = np.argsort(steps[sel], kind="stable")
                x, y = steps[sel][order], values[sel][order]
                if split == "train":
                    x, y = smoothed(x, y)
                colour = colours[(run_index if label else split_index) % len(colours)]
                ax.plot(x, y, label=f"{label} {split}".strip(), color=colour, linestyle=STYLES.get(split, "-"),
                        marker="o" if split != "train" else None, markersize=3)
                drawn[name].append((x, y))
    for ax, name in zip(axes.flat, panels):
        ax.set_xlabel("step")
        ax.set_title(name)
        if name == "loss":  # the whole descent, on a log axis
            if all((y[np.isfinite(y)] > 0).all() for _, y in drawn[name]):
                ax.set_yscale("log")
        elif (limits := zoomed_range(drawn[name])) is not None:
            ax.set_ylim(*limits)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    legend_outside(fig, axes.flat)
    if title:
        fig.suptitle(title)
    return fig


def legend_outside(fig, axes) -> None:
    """One legend for the figure, to the right of every panel: it never covers a curve."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside right upper", fontsize="small")


def plot_runs(series: list[tuple[str, dict]], out_path: Path, title: str = "") -> Path:
    """Runs (or sweep trials) overlaid in one PNG (``draw_runs``).

    ``series`` is ``(label, long-format columns step/split/name/value)`` per run, as the caller read
    them (``pipeline.track.runs``): this module reads no record itself.
    """
    fig = draw_runs(series, title)  # first: it picks the Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    save_figure(fig, out_path)
    plt.close(fig)
    return out_path


def save_figure(fig, path: Path) -> None:
    """PNG through a new, uniquely named file and a rename: a plot killed halfway leaves the old one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as handle:
            fig.savefig(handle, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
