"""Look at recorded runs: list them, show one, plot one."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.track.plot import plot_run
from pipeline.track.run_dir import default_runs_root, read_json


def _require_run(run: Path) -> None:
    if not (run / "config.json").is_file():
        raise PipelineError(f"{run} is not a run folder (no config.json)")


def list_runs(root: Path | None = None) -> list[dict]:
    root = root or default_runs_root()
    rows = []
    if not root.is_dir():
        return rows
    for path in sorted(p for p in root.iterdir() if (p / "config.json").is_file()):
        summary = read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
        config = read_json(path / "config.json")
        metrics = summary.get("metrics", {})
        rows.append({
            "run": str(path), "experiment": config.get("experiment", ""),
            "data": config.get("config", {}).get("data", ""), "steps": summary.get("steps", "unfinished"),
            **{k: v for k, v in list(metrics.items())[:3]},
        })
    return rows


def show_run(run: Path) -> str:
    _require_run(run)
    config = read_json(run / "config.json")
    lines = [f"run          {run}", f"experiment   {config.get('experiment')}"]
    if (run / "summary.json").is_file():
        summary = read_json(run / "summary.json")
        lines.append(f"steps        {summary['steps']}  wall {summary['wall_s']:.1f} s")
        lines += [f"{k:<12} {v:.6g}" for k, v in summary["metrics"].items()]
    else:
        lines.append("status       unfinished (no summary.json)")
    if (run / "metrics.parquet").is_file():
        lines.append(f"metrics      {pq.read_metadata(run / 'metrics.parquet').num_rows} rows in metrics.parquet")
    return "\n".join(lines)


def plot_run_dir(run: Path) -> Path:
    _require_run(run)
    if not (run / "metrics.parquet").is_file():
        raise PipelineError(f"{run} has no metrics.parquet yet")
    return plot_run(run / "metrics.parquet", run / "curves.png", title=run.name)
