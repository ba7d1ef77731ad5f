"""Learning curves as PNG, drawn from the metrics table alone."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


def plot_runs(series: list[tuple[str, dict]], out_path: Path, title: str = "") -> Path:
    """Runs (or sweep trials) overlaid: a colour per run, a line style per split; a panel per metric
    (loss first). One unlabelled run gets a colour per split instead.

    ``series`` is ``(label, long-format columns step/split/name/value)`` per run, as the caller read
    them (``pipeline.track.runs``): this module reads no record itself.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names_seen = [n for _, t in series for n in t["name"]]
    metric_names = [n for n in dict.fromkeys(names_seen) if n != "loss"]
    panels = ["loss"] + metric_names[:2]
    styles = {"train": "-", "val": "--", "test": ":"}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for run_index, (label, table) in enumerate(series):
        steps = np.asarray(table["step"])
        splits = np.asarray(table["split"], dtype=object)
        names = np.asarray(table["name"], dtype=object)
        values = np.asarray(table["value"])
        for ax, name in zip(axes[0], panels):
            for split_index, split in enumerate(dict.fromkeys(splits)):
                sel = (names == name) & (splits == split)
                if not sel.any():
                    continue
                x, y = steps[sel], values[sel]
                if split == "train" and sel.sum() > 200:  # smooth noisy per-step curves
                    width = max(1, int(sel.sum()) // 100)
                    y = np.convolve(y, np.ones(width) / width, mode="valid")
                    x = x[width - 1:]
                colour = colours[(run_index if label else split_index) % len(colours)]
                ax.plot(x, y, label=f"{label} {split}".strip(), color=colour, linestyle=styles.get(split, "-"),
                        marker="o" if split != "train" and not label else None, markersize=3)
    for ax, name in zip(axes[0], panels):
        ax.set_xlabel("step")
        ax.set_title(name)
        if name == "loss":
            ax.set_yscale("log")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
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
