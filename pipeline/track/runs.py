"""Look at recorded runs: list them, show one, plot one.

A run whose records cannot be read (a damaged ``config.json``, ``summary.json`` or
metrics part, or a hostile one: JSON nested past ``MAX_JSON_DEPTH``) is one line naming the file:
``runs show`` and ``runs plot`` stop with it, ``runs list`` prints it as a warning on stderr and
lists the other runs.

These are readers: they take no lock and write nothing in the folders they read, so they work
on a run that is training and on a read-only copy. ``runs plot`` writes only its picture,
``curves.png``, through a new file and a rename.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipeline.durable.records import CorruptFile, parquet_files, read_json_object, read_parquet
from pipeline.errors import PipelineError
from pipeline.track.hparams import hparams_cells
from pipeline.track.metrics import read_metrics
from pipeline.track.run_dir import default_runs_root

METRICS = "metrics.parquet"


def _require_run(run: Path) -> None:
    if not (run / "config.json").is_file():
        raise PipelineError(f"{run} is not a run folder (no config.json)")


def _config(run: Path) -> dict[str, Any]:
    record = read_json_object(run / "config.json", ("config",))
    if not isinstance(record["config"], dict):
        raise CorruptFile(f"{run / 'config.json'}: damaged record ('config' is not an object)")
    return record


def _summary(run: Path) -> dict[str, Any] | None:
    """``summary.json`` checked for the fields shown; None for an unfinished run."""
    path = run / "summary.json"
    if not path.is_file():
        return None
    summary = read_json_object(path, ("steps", "wall_s", "metrics"))
    if not isinstance(summary["metrics"], dict) or not all(
            isinstance(v, (int, float)) for v in summary["metrics"].values()):
        raise CorruptFile(f"{path}: damaged record ('metrics' is not an object of numbers)")
    if not isinstance(summary["wall_s"], (int, float)):
        raise CorruptFile(f"{path}: damaged record ('wall_s' is not a number)")
    return summary


def _metrics_rows(run: Path) -> int | None:
    """Rows in the run's metrics (footers only); a damaged part raises CorruptFile naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = run / METRICS
    if not path.exists():
        return None
    rows = 0
    for part in parquet_files(path):
        try:
            rows += pq.read_metadata(part).num_rows
        except OSError as exc:
            if exc.errno is not None:
                raise
            raise CorruptFile(f"{part}: damaged Parquet ({str(exc).strip().splitlines()[0]})") from None
        except pa.ArrowException as exc:
            raise CorruptFile(f"{part}: damaged Parquet ({str(exc).strip().splitlines()[0]})") from None
    return rows


def _data_name(config: dict[str, Any]) -> str:
    data = config.get("config", {}).get("data", "")
    if isinstance(data, dict):
        return str(data.get("name", ""))
    return str(data)


RUN_COLUMNS = ("run", "experiment", "data", "steps")


def _shown(path: Path) -> str:
    """A run's folder as the listing shows it: relative to the current folder when inside it (shorter)."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def list_runs(root: Path | None = None, warn=None) -> list[dict]:
    """One row per run under ``root``, every row with the same columns in one order.

    The columns are ``RUN_COLUMNS``, ``hparams`` (the hyperparameters that differ among the runs of
    the run's experiment: ``pipeline.track.hparams``; only when some do), then every metric of any
    run's summary (``test/accuracy``, ``test/r2``, ...), grouped by split; a run without a metric has
    "" there. ``data`` is the dataset's name. A run that cannot be read is left out; ``warn``
    (default: a line on stderr) gets its message.
    """
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    root = root or default_runs_root()
    rows, configs = [], []
    if not root.is_dir():
        return rows
    for path in sorted(p for p in root.iterdir() if (p / "config.json").is_file()):
        try:
            config = _config(path)
            summary = _summary(path) or {}
            _metrics_rows(path)
        except CorruptFile as exc:
            warn(f"skipped {path}: {exc}")
            continue
        except OSError as exc:
            warn(f"skipped {path}: {exc.filename or path}: {exc.strerror or exc}")
            continue
        rows.append({
            "run": _shown(path), "experiment": str(config.get("experiment", "")),
            "data": _data_name(config), "steps": summary.get("steps", "unfinished"),
            **{str(k): v for k, v in summary.get("metrics", {}).items() if str(k) not in RUN_COLUMNS},
        })
        configs.append(config["config"])
    metrics = list(dict.fromkeys(k for row in rows for k in row if k not in RUN_COLUMNS))
    splits = list(dict.fromkeys(m.partition("/")[0] for m in metrics))
    metrics.sort(key=lambda m: splits.index(m.partition("/")[0]))  # stable: first seen within a split
    cells = hparams_cells([row["experiment"] for row in rows], configs)
    hparams = ("hparams",) if any(cells) else ()
    return [{c: row.get(c, "") for c in (*RUN_COLUMNS, *hparams, *metrics)} | dict(zip(hparams, [text]))
            for row, text in zip(rows, cells)]


def _selection_lines(summary: dict[str, Any]) -> list[str]:
    """The selected step and what selected it; a selection that read the test split, flagged."""
    best, selection = summary.get("best"), summary.get("selection")
    lines = []
    if isinstance(best, dict) and isinstance(selection, dict):
        split = selection.get("split")
        chose = "nothing (no validation split)" if split == "none" else f"{split}/{selection.get('metric')}"
        lines.append(f"{'best':<12} step {best.get('step')}, selected on {chose}")
        metrics = best.get("metrics")
        if isinstance(metrics, dict) and split != "none":
            lines += [f"  {k:<10} {v:.6g}" for k, v in metrics.items() if isinstance(v, (int, float))]
        if selection.get("flag"):
            lines.append(f"{'WARNING':<12} {selection['flag']}")
    return lines


def show_run(run: Path) -> str:
    _require_run(run)
    config = _config(run)
    lines = [f"run          {run}", f"experiment   {config.get('experiment')}"]
    summary = _summary(run)
    if summary is not None:
        lines.append(f"steps        {summary['steps']}  wall {summary['wall_s']:.1f} s")
        lines += [f"{k:<12} {v:.6g}" for k, v in summary["metrics"].items()]
        for row in summary.get("pbt_history", []):  # a PBT member's hyperparameters over time
            lines.append(f"pbt          step {row.get('step')} from trial {row.get('parent')}: "
                         + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                    if k not in ("step", "parent")))
        lines += _selection_lines(summary)
    else:
        lines.append("status       unfinished (no summary.json)")
    rows = _metrics_rows(run)
    if rows is not None:
        lines.append(f"metrics      {rows} rows in {METRICS}")
    return "\n".join(lines)


def plot_run_dir(run: Path) -> Path:
    from pipeline.track.plot import plot_runs

    _require_run(run)
    # A damaged part is one line naming it, before any drawing; the table read is the one drawn.
    table = read_metrics(run / METRICS) if (run / METRICS).exists() else None
    if table is None or table.num_rows == 0:
        raise PipelineError(f"{run} has no {METRICS} yet")
    return plot_runs([("", table.to_pydict())], run / "curves.png", title=run.name)


def curves_of(spec: str) -> tuple[str, dict]:
    """``RUN_DIR`` or ``SWEEP_DIR@TRIAL``: a label and that run's (or trial's) long-format metrics."""
    folder, _, trial = spec.rpartition("@") if "@" in spec else (spec, "", "")
    path = Path(folder)
    if trial:
        if not trial.isdigit():
            raise PipelineError(f"{spec}: a sweep trial is SWEEP_DIR@N, with N a trial id")
        curves = path / "curves.parquet"
        if not curves.exists():
            raise PipelineError(f"{path} is not a sweep folder with curves (no curves.parquet)")
        table = read_parquet(curves, filters=[("trial", "=", int(trial))])
        if table.num_rows == 0:
            raise PipelineError(f"{spec}: the sweep has no curves for trial {trial}")
        return f"{path.name}@{trial}", table.to_pydict()
    _require_run(path)
    if not (path / METRICS).exists():
        raise PipelineError(f"{path} has no {METRICS} yet")
    return path.name, read_metrics(path / METRICS).to_pydict()


def plot_many(specs: list[str], out: Path) -> Path:
    """Several runs or sweep trials overlaid in one PNG."""
    from pipeline.track.plot import plot_runs

    return plot_runs([curves_of(s) for s in specs], out, title=f"{len(specs)} runs")
