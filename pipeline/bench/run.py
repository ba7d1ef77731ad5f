"""``pipeline bench``: measure the chosen points, append the rows, write the reports."""

from __future__ import annotations

import datetime
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pipeline.bench import synthetic
from pipeline.bench.environment import environment
from pipeline.bench.flops import analytic_train_flops
from pipeline.bench.measure import UNAVAILABLE, Measurement, missing
from pipeline.bench.peaks import Peak, device_peak, mfu
from pipeline.bench.peers import measure_point
from pipeline.bench.points import BenchError, select
from pipeline.bench.readers import measure_readers
from pipeline.bench.report import write_reports
from pipeline.bench.results import IMPLS, READERS, append
from pipeline.bench.workload import Workload, make_workload
from pipeline.data import Store
from pipeline.errors import PipelineError

DEFAULT_OUT = Path("bench-results")


def parse_peers(text: str | None) -> tuple[str, ...]:
    if not text:
        return IMPLS
    peers = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in peers if p not in IMPLS]
    if bad:
        raise BenchError(f"unknown peer '{bad[0]}' in --peers; choose from {', '.join(IMPLS)}")
    return peers


def run_bench(names: list[str], out: Path | None = None, peers: tuple[str, ...] = IMPLS,
              echo: Callable[[str], None] = print, deadline: float | None = None) -> list[dict]:
    """Measure every selected point; returns the new rows (also appended under ``out``).

    ``deadline`` (a ``time.time()``): points not started by then are recorded as skipped.
    """
    chosen = select(names)
    out = Path(out) if out else DEFAULT_OUT
    store = Store(out / "store")  # synthetic and built-in datasets of the benchmark, apart from the user's
    env = environment()
    run_id = uuid.uuid4().hex[:12]
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    rows: list[dict] = []
    for i, (suite, point) in enumerate(chosen, 1):
        echo(f"[{i}/{len(chosen)}] {suite} / {point.name}")
        base = {"run_id": run_id, "time_utc": now, "suite": suite, "point": point.name, "family": point.family,
                "data": point.data, "batch": point.batch, "precision": point.precision, **env}
        if deadline is not None and time.time() > deadline:
            impls = READERS if point.family == "data" else IMPLS
            rows += _with_ratios([{**base, "impl": i, "status": "skipped", "detail": "time budget spent"}
                                  for i in impls], impls)
            continue
        if point.family == "data":
            measured = measure_readers(point, store, synthetic.ensure(store, point.data), echo)
            rows += data_rows(base, measured)
            continue
        try:
            workload = make_workload(point, store)
            workload.param_count  # noqa: B018 - builds the model abstractly: an unknown family fails here
        except PipelineError as exc:
            rows += model_rows(base, None, [missing(impl, UNAVAILABLE, str(exc)) for impl in IMPLS], Peak(None, ""))
            continue
        measured = measure_point(point, workload, peers, echo)
        rows += model_rows(base, workload, measured, device_peak(point.precision))
    append(out, rows)
    write_reports(out, rows)
    return rows


def _timing_fields(m: Measurement) -> dict:
    if not m.ok:
        return {}
    t = m.timing
    return {"compile_s": m.compile_s, "step_s": t.median, "step_s_p25": t.p25, "step_s_p75": t.p75,
            "step_s_min": t.fastest, "step_s_max": t.slowest, "spread": t.spread, "timed_steps": t.steps,
            "rounds": t.rounds, "steps_per_s": 1.0 / t.median}


def _with_ratios(rows: list[dict], impls: tuple[str, ...]) -> list[dict]:
    rate = {r["impl"]: r.get("steps_per_s") for r in rows}
    for row in rows:
        for impl in impls:
            mine, theirs = row.get("steps_per_s"), rate.get(impl)
            row[f"vs_{impl}"] = mine / theirs if mine and theirs else None
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
        if m.ok:
            step = m.timing.median
            row["examples_per_s"] = workload.cfg.batch_size / step
            if workload.tokens_per_example:
                row["tokens_per_s"] = row["examples_per_s"] * workload.tokens_per_example
            row["mfu"] = mfu(flops, step, peak.flops)
            row["mfu_xla"] = mfu(m.flops_xla, step, peak.flops)
        if m.extra and "threads" in m.extra and m.extra["threads"]:
            row["detail"] = f"torch threads: {m.extra['threads']}"
        rows.append(row)
    return _with_ratios(rows, IMPLS)


def data_rows(base: dict, measured: list[Measurement]) -> list[dict]:
    rows = []
    for m in measured:
        row = {**base, "impl": m.impl, "status": m.status, "detail": m.detail or None, **_timing_fields(m)}
        if m.ok:
            row["examples_per_s"] = base["batch"] / m.timing.median
            row["bytes_per_s"] = m.bytes_per_step / m.timing.median
        rows.append(row)
    return _with_ratios(rows, READERS)


def summary(rows: list[dict], out: Path) -> dict:
    """The --json object: where the table is, and the headline figures of each new row."""
    keys = ("suite", "point", "impl", "status", "steps_per_s", "examples_per_s", "tokens_per_s", "mfu",
            "compile_s", "vs_jax_bare", "vs_jax_bare_scan", "vs_torch_eager", "vs_torch_compile",
            "vs_pyarrow_read")
    return {"results": str(out), "table": str(out / "bench.parquet"), "run_id": rows[0]["run_id"] if rows else None,
            "device_kind": rows[0]["device_kind"] if rows else None,
            "rows": [{k: r.get(k) for k in keys if r.get(k) is not None} for r in rows]}



