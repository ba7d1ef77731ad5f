"""``pipeline bench``: measure the chosen points, append the rows, write the reports.

Each point's rows are appended (a new part of ``bench.parquet/``) and the Markdown report
rewritten as soon as the point is done, so a run stopped half-way keeps what it measured.
A point that cannot be built here (unknown model family, missing dataset: a PipelineError)
is recorded as ``unavailable``, one that breaks while measured as ``failed``, both with
the reason in ``detail``; the run goes on with the next point either way. Past the
deadline, points not started are recorded as ``skipped``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from pipeline.bench import synthetic
from pipeline.bench.environment import environment
from pipeline.bench.flops import analytic_train_flops
from pipeline.bench.loop_points import measure_loop, measure_stream
from pipeline.bench.measure import FAILED, OK, UNAVAILABLE, Measurement
from pipeline.bench.peaks import Peak, device_peak, mfu
from pipeline.bench.peers import Factory, measure_point
from pipeline.bench.points import POINTS, BenchError, Point, select
from pipeline.bench.processes import measure_first_step, measure_sweep_run
from pipeline.bench.readers import measure_readers, reader_config
from pipeline.bench.report import write_reports
from pipeline.bench.results import ALL_IMPLS, IMPLS, append, impls_of
from pipeline.bench.schedule import BUDGET_SPENT, SKIPPED, one_line
from pipeline.bench.sweep_points import measure_population
from pipeline.bench.timing import Deadline, paired_ratio, past
from pipeline.bench.trace import measure_trace
from pipeline.bench.workload import Workload, make_workload
from pipeline.data import Store
from pipeline.errors import PipelineError

DEFAULT_OUT = Path("bench-results")
# How the points of each non-model family are measured (model families: ``measure_point``).
WAYS = {"loop": measure_loop, "stream": measure_stream, "sweep": measure_population,
        "first-step": measure_first_step, "sweep-run": measure_sweep_run}


def parse_peers(text: str | None) -> tuple[str, ...]:
    """``--peers``: implementations of any family; a family none of whose are named runs all of its own."""
    if not text:
        return ALL_IMPLS
    peers = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in peers if p not in ALL_IMPLS]
    if bad:
        raise BenchError(f"unknown peer '{bad[0]}' in --peers; choose from {', '.join(ALL_IMPLS)}")
    return peers


def wanted(family: str, peers: tuple[str, ...]) -> tuple[str, ...]:
    group = impls_of(family)
    return tuple(i for i in group if i in peers) or group


def split_names(words: list[str]) -> tuple[list[str], list[str]]:
    """Suite, point and experiment names, and KEY=VALUE overrides for every point."""
    return [w for w in words if "=" not in w], [w for w in words if "=" in w]


def plan(chosen: list[tuple[str, Point]], backend: str) -> list[tuple[str, Point, str]]:
    """(suite, point, why it is skipped or ""): on a CPU the accel suite's points sized for an
    accelerator are skipped, each followed by its stand-in where it has one."""
    names = {p.name for _, p in chosen}
    out: list[tuple[str, Point, str]] = []
    for suite, point in chosen:
        if not (suite == "accel" and point.accelerator and backend == "cpu"):
            out.append((suite, point, ""))
            continue
        standin = POINTS.get(point.cpu_standin)
        out.append((suite, point, "sized for an accelerator, not run on a CPU"
                    + (f"; its stand-in {standin.name} runs instead" if standin else "")))
        if standin is not None and standin.name not in names:
            names.add(standin.name)
            out.append((suite, standin, ""))
    return out


@dataclasses.dataclass
class _Context:
    out: Path
    own_store: Store  # the benchmark's own store (synthetic and built-in data of the suites' points)
    user_store: Store  # the user's (--store, $PIPELINE_STORE): --dataset and experiment files read it
    user_data: bool  # --dataset: every point reads the user's store
    peers: tuple[str, ...]
    echo: Callable[[str], None]
    deadline: Deadline | None
    run_id: str
    factories: dict[str, Factory] | None

    def store_for(self, point: Point) -> Store:
        """Where ``point``'s dataset lives: an experiment file's dataset is the user's, as ``pipeline train``
        reads it; a suite's point keeps its synthetic or built-in data apart from the user's."""
        return self.user_store if self.user_data or point.experiment else self.own_store


def run_bench(names: list[str], out: Path | None = None, peers: tuple[str, ...] = ALL_IMPLS,
              echo: Callable[[str], None] = print, deadline: float | None = None, *,
              overrides: list[str] | tuple[str, ...] = (), dataset: str | None = None,
              data_store: Store | None = None, factories: dict[str, Factory] | None = None,
              after_point: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Measure every selected point; returns the new rows (also appended under ``out``).

    ``deadline`` (a ``time.time()``): points not started by then are recorded as skipped, and
    a point under way stops timing after its current round. ``overrides`` (KEY=VALUE) apply
    to every point; ``dataset`` replaces every point's data by that dataset of ``data_store``
    (the user's store, default ``$PIPELINE_STORE`` or ./data), where an experiment file's point finds
    its dataset too. ``factories`` put implementations of one's own (or a test's) in place
    of built-in ones of the same name. ``after_point`` sees the rows so far after each point.
    """
    chosen = select(names)
    out = Path(out) if out else DEFAULT_OUT
    store = Store(out / "store")  # synthetic and built-in datasets of the benchmark, apart from the user's
    env = environment()
    ctx = _Context(out, store, data_store or Store(), bool(dataset), tuple(peers), echo,
                   Deadline(deadline) if deadline is not None else None, uuid.uuid4().hex[:12], factories)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    rows: list[dict] = []
    todo = plan(chosen, jax.default_backend())
    for i, (suite, point, skip) in enumerate(todo, 1):
        if overrides:
            point = dataclasses.replace(point, overrides=(*point.overrides, *overrides))
        if dataset:
            point = dataclasses.replace(point, data=dataset)
        echo(f"[{i}/{len(todo)}] {suite} / {point.name}" + (f": skipped, {skip}" if skip else ""))
        base = {"run_id": ctx.run_id, "time_utc": now, "suite": suite, "point": point.name, "family": point.family,
                "data": point.data, "batch": point.batch, "precision": point.precision, **env}
        if skip or past(ctx.deadline):
            new = status_rows(base, point, SKIPPED, skip or BUDGET_SPENT)
        else:
            try:
                new = measure(point, base, ctx)
            except Exception as exc:  # a point that breaks is recorded; the next one runs
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0] if isinstance(exc, PipelineError) \
                    else one_line(exc)
                new = status_rows(base, point, UNAVAILABLE if isinstance(exc, PipelineError) else FAILED, why)
                echo(f"  {new[0]['status']}: {why}")
        rows += new
        append(out, new)
        write_reports(out, rows, chart=False)
        if after_point is not None:
            after_point(rows)
    write_reports(out, rows)
    return rows


def status_rows(base: dict, point: Point, status: str, detail: str) -> list[dict]:
    impls = impls_of(point.family)
    return _with_ratios([{**base, "impl": impl, "status": status, "detail": detail} for impl in impls], impls)


def measure(point: Point, base: dict, ctx: _Context) -> list[dict]:
    peers = wanted(point.family, ctx.peers)
    store = ctx.store_for(point)
    if point.family == "data":
        name = synthetic.ensure(store, point.data)
        base["batch"] = reader_config(point, name).batch_size
        return way_rows(base, None, measure_readers(point, store, name, ctx.echo, peers, ctx.deadline))
    workload = make_workload(point, store)
    workload.param_count  # noqa: B018 - builds the model abstractly: an unknown family fails here
    base["batch"], base["precision"] = workload.cfg.batch_size, workload.cfg.precision
    if point.family == "trace":
        folder = ctx.out / "profiles" / f"{point.name}-{ctx.run_id}"
        return way_rows(base, workload, measure_trace(point, workload, folder, ctx.echo, ctx.deadline))
    if point.family in WAYS:
        return way_rows(base, workload, WAYS[point.family](point, workload, peers, ctx.echo, ctx.deadline))
    measured = measure_point(point, workload, peers, ctx.echo, ctx.deadline, ctx.factories)
    return model_rows(base, workload, measured, device_peak(point.precision))


def _timing_fields(m: Measurement) -> dict:
    if m.status != OK:
        return {}
    out = {"compile_s": m.compile_s, "wall_s": m.wall_s}
    if m.timing is not None:
        t = m.timing
        out.update(step_s=t.median, step_s_p25=t.p25, step_s_p75=t.p75, step_s_min=t.fastest, step_s_max=t.slowest,
                   spread=t.spread, timed_steps=t.steps, rounds=t.rounds, steps_per_s=1.0 / t.median,
                   step_cpu_s=t.cpu)
    elif m.wall_s and m.extra and m.extra.get("member_steps"):  # a whole sweep: member-steps over its seconds
        out["steps_per_s"] = m.extra["member_steps"] / m.wall_s
    return out


def _speed(row: dict) -> float | None:
    """Steps/s, or for a measurement of seconds alone (time to a first step) its inverse."""
    if row.get("steps_per_s"):
        return row["steps_per_s"]
    return 1.0 / row["wall_s"] if row.get("wall_s") else None


def _with_ratios(rows: list[dict], impls: tuple[str, ...], measured: Sequence[Measurement] = ()) -> list[dict]:
    """``vs_IMPL``: how many times faster each row is than IMPL. Implementations timed in one
    round-robin are compared round by round (``paired_ratio``); others by their speeds."""
    speed = {r["impl"]: _speed(r) for r in rows}
    timings = {m.impl: m.timing for m in measured if m.ok and m.timing is not None}
    for row in rows:
        for impl in impls:
            mine, theirs = timings.get(row["impl"]), timings.get(impl)
            ratio = paired_ratio(mine, theirs) if mine and theirs else None
            if ratio is None:
                fast, slow = _speed(row), speed.get(impl)
                ratio = fast / slow if fast and slow else None
            row[f"vs_{impl}"] = ratio
    return rows


def model_flops(workload: Workload | None, measured: list[Measurement]) -> tuple[float | None, float | None]:
    """(analytic, model) FLOPs per step. The model count is the analytic one where a family has
    it (transformers: MaxText's convention), else XLA's count of the plain step's useful work."""
    if workload is None:
        return None, None
    cfg = workload.cfg
    analytic = analytic_train_flops(cfg.model, workload.info.feature_shape, workload.info.output_size,
                                    cfg.batch_size)
    if analytic is not None:
        return analytic, analytic
    by_impl = {m.impl: m.flops_xla for m in measured if m.flops_xla}
    return analytic, by_impl.get("jax_bare") or by_impl.get("pipeline")


def model_rows(base: dict, workload: Workload | None, measured: list[Measurement], peak: Peak) -> list[dict]:
    analytic, flops = model_flops(workload, measured)
    rows = []
    for m in measured:
        row = {**base, "impl": m.impl, "status": m.status, "detail": m.detail or None,
               "flops_analytic": analytic, "flops_model": flops, "peak_flops": peak.flops,
               "peak_source": peak.source or None, "flops_xla": m.flops_xla,
               "mem_peak_bytes": m.mem_peak_bytes, "mem_program_bytes": m.mem_program_bytes,
               "input_share": m.input_share, **_timing_fields(m)}
        if workload is not None:
            row.update(steps_per_call=m.steps_per_call, params=workload.param_count,
                       tokens_per_example=workload.tokens_per_example,
                       config=json.dumps({"overrides": list(workload.point.model_overrides),
                                          "batch_size": workload.cfg.batch_size,
                                          "precision": workload.cfg.precision}))
        if m.ok and m.timing is not None:
            step = m.timing.median
            row["examples_per_s"] = workload.cfg.batch_size / step
            if workload.tokens_per_example:
                row["tokens_per_s"] = row["examples_per_s"] * workload.tokens_per_example
            row["mfu"] = mfu(flops, step, peak.flops)
            row["mfu_xla"] = mfu(m.flops_xla, step, peak.flops)
        if m.extra and "threads" in m.extra and m.extra["threads"]:
            row["detail"] = f"torch threads: {m.extra['threads']}"
        rows.append(row)
    return _with_ratios(rows, IMPLS, measured)


def way_rows(base: dict, workload: Workload | None, measured: list[Measurement]) -> list[dict]:
    """Rows of a point measured in its family's ways (readers, loops, populations, processes, traces)."""
    rows = []
    for m in measured:
        row = {**base, "impl": m.impl, "status": m.status, "detail": m.detail or None, "artifact": m.artifact,
               **_timing_fields(m)}
        if workload is not None:
            row.update(params=workload.param_count, tokens_per_example=workload.tokens_per_example,
                       steps_per_call=m.steps_per_call,
                       config=json.dumps({"overrides": list(workload.point.model_overrides),
                                          "batch_size": workload.cfg.batch_size, "precision": workload.cfg.precision,
                                          **({"population": workload.point.population}
                                             if workload.point.population else {})}))
        if row.get("steps_per_s"):  # member-steps for sweeps: each is one batch of one member
            row["examples_per_s"] = base["batch"] * row["steps_per_s"]
            if workload is not None and workload.tokens_per_example:
                row["tokens_per_s"] = row["examples_per_s"] * workload.tokens_per_example
            if m.bytes_per_step:
                row["bytes_per_s"] = m.bytes_per_step * row["steps_per_s"]
        rows.append(row)
    return _with_ratios(rows, tuple(m.impl for m in measured), measured)


def summary(rows: list[dict], out: Path) -> dict:
    """The --json object: where the table is, and the headline figures of each new row."""
    keys = ("suite", "point", "impl", "status", "detail", "steps_per_s", "examples_per_s", "tokens_per_s", "mfu",
            "compile_s", "wall_s", "artifact", *(f"vs_{impl}" for impl in ALL_IMPLS if impl != "pipeline"))
    return {"results": str(out), "table": str(out / "bench.parquet"), "run_id": rows[0]["run_id"] if rows else None,
            "device_kind": rows[0]["device_kind"] if rows else None,
            "rows": [{k: r.get(k) for k in keys if r.get(k) is not None} for r in rows]}



