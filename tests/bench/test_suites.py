"""The suites beside the side-by-side one (loop, sweep, data, stream-train, accel): names, each family
of points measured on tiny shapes, and what a failing point or peer leaves (a record, and the next runs)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.bench import points
from pipeline.bench.environment import device_free_bytes
from pipeline.bench.jax_bare import BareRunner, BareScanRunner
from pipeline.bench.measure import FAILED, NOT_INSTALLED, OUT_OF_MEMORY, UNAVAILABLE
from pipeline.bench.peers import measure_point
from pipeline.bench.points import POINTS, SMOKE, SUITES, Point
from pipeline.bench.results import GROUPS, impls_of
from pipeline.bench.run import run_bench
from pipeline.bench.timing import Budget
from pipeline.registry import is_registered

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

ROOT = Path(__file__).resolve().parents[2]
WRAPPERS = {"bench_loop": "loop", "bench_sweep": "sweep", "bench_data": "data",
            "bench_stream_train": "stream-train", "bench_accel": "accel"}


def quiet(_line: str) -> None:
    pass


def by_key(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["point"], r["impl"]): r for r in rows}


# -- names -------------------------------------------------------------------------------------

def test_suite_and_point_names_never_overlap():
    assert not set(SUITES) & set(POINTS)
    for name in [*SUITES, *POINTS]:  # never taken for an experiment file or a KEY=VALUE override
        assert not name.endswith(".py") and "/" not in name and "=" not in name
    for suite, members in SUITES.items():
        assert all(m in POINTS for m in members), suite
    for p in POINTS.values():
        if p.cpu_standin:
            assert p.accelerator and not POINTS[p.cpu_standin].accelerator
            assert POINTS[p.cpu_standin].family == p.family
        assert p.family in GROUPS or is_registered(p.family), p.name  # a way of measuring, or a model family


def test_accel_suite_covers_mfu_models_sweep_and_trace():
    families = {POINTS[n].family for n in SUITES["accel"]}
    assert {"transformer", "mlp", "cnn", "sweep", "trace"} <= families
    assert all(POINTS[n].precision == "bf16" for n in SUITES["accel"] if POINTS[n].family == "transformer")


@pytest.mark.parametrize("script, suite", sorted(WRAPPERS.items()))
def test_scripts_are_thin_wrappers_of_the_suites(script, suite):
    text = (ROOT / "scripts" / script).read_text()
    assert suite in SUITES
    assert re.search(rf"exec (python -m )?pipeline bench {re.escape(suite)} \"\$@\"", text)
    assert "scripts/_env.sh" in text or "_env.sh" in text
    assert not (ROOT / "scripts" / f"{script}.py").exists()


def test_bad_minutes_is_one_line(cli):
    r = cli("bench", "tiny", "--minutes", "0")
    assert r.code == 2 and "error: bad value for '--minutes'" in r.err and "Traceback" not in r.err


def test_unknown_peer_lists_every_family(cli):
    r = cli("bench", "loop", "--peers", "population,nope")
    assert r.code == 2 and "unknown peer 'nope'" in r.err and "host_loop" in r.err and "pyarrow_read" in r.err


# -- a failing peer or point is recorded, and the next one runs --------------------------------

class BrokenAtSetup(BareRunner):
    """A peer that cannot even start (an injected plug-in, the bench's own code around it)."""

    def setup(self) -> None:
        raise RuntimeError("driver refused the context\nmore text that must not appear")


class BreaksWhileTimed(BareScanRunner):
    """The bare scan, which dies on its third dispatch: after warm-up, during the timed rounds."""

    def __init__(self, workload):
        super().__init__(workload, 10)
        self.calls = 0

    def run(self, units: int) -> None:
        self.calls += 1
        if self.calls == 3:
            raise ValueError("lost the device")
        super().run(units)


def test_failing_peers_are_recorded_and_the_rest_of_the_point_and_suite_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(points.POINTS, "tiny-mlp-4", Point("tiny-mlp-4", "mlp", "digits", 16,
                                                           overrides=("model.hidden=4",), budget=SMOKE))
    factories = {"jax_bare": BrokenAtSetup, "jax_bare_scan": BreaksWhileTimed}
    rows = run_bench(["tiny", "tiny-mlp-4"], tmp_path, ("pipeline", "jax_bare", "jax_bare_scan"), echo=quiet,
                     factories=factories)
    got = by_key(rows)
    for point in ("tiny-mlp", "tiny-mlp-4"):
        assert got[(point, "pipeline")]["status"] == "ok" and got[(point, "pipeline")]["steps_per_s"] > 0
        broken = got[(point, "jax_bare")]
        assert broken["status"] == FAILED
        assert broken["detail"] == "RuntimeError: driver refused the context"
        assert broken.get("steps_per_s") is None and got[(point, "pipeline")]["vs_jax_bare"] is None
        assert got[(point, "jax_bare_scan")]["status"] == FAILED
        assert got[(point, "jax_bare_scan")]["detail"] == "ValueError: lost the device"
    table = pq.read_table(tmp_path / "bench.parquet").to_pylist()
    assert {(r["point"], r["impl"], r["status"]) for r in table} >= {("tiny-mlp-4", "jax_bare", FAILED),
                                                                     ("tiny-mlp-4", "pipeline", "ok")}
    report = (tmp_path / "bench.md").read_text()
    assert "tiny-mlp-4 / jax_bare: failed: RuntimeError: driver refused the context" in report


def test_a_point_that_cannot_be_built_or_breaks_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    # A dataset that is nowhere, and a batch larger than the table it reads: neither stops the run.
    monkeypatch.setitem(points.POINTS, "missing-read", Point("missing-read", "data", "no-such-set", 256,
                                                             budget=SMOKE))
    monkeypatch.setitem(points.POINTS, "huge-batch-read", Point("huge-batch-read", "data", "table:512x4", 4096,
                                                                budget=SMOKE))
    rows = run_bench(["missing-read", "huge-batch-read", "tiny"], tmp_path, ("pipeline",), echo=quiet)
    got = by_key(rows)
    for impl in impls_of("data"):
        missing = got[("missing-read", impl)]
        assert missing["status"] == UNAVAILABLE and "no-such-set" in missing["detail"]
        assert "\n" not in missing["detail"]
        huge = got[("huge-batch-read", impl)]
        assert huge["status"] == FAILED and "4096" in huge["detail"] and "\n" not in huge["detail"]
    assert got[("tiny-mlp", "pipeline")]["status"] == "ok"


def test_a_step_too_large_for_memory_refuses_the_torch_peers_before_they_allocate(tmp_path, monkeypatch):
    """The accelerator suite's old crash: the pipeline's compiled step needs more memory than is free
    (its parameters alone fit), so the PyTorch peers are refused before they build anything. A real
    config, sized from this machine's free memory: the activations of one batch are four times it."""
    pytest.importorskip("torch")
    free = device_free_bytes()
    hidden = max(4096, free // (8192 * 4) * 4)  # 8192 x hidden float32 activations = 4x the free memory
    point = Point("wide-mlp", "mlp", "images:4x4x1", 8192, overrides=(f"model.hidden={hidden}",), budget=SMOKE)
    monkeypatch.setitem(points.POINTS, "wide-mlp", point)
    rows = run_bench(["wide-mlp", "tiny"], tmp_path, ("pipeline", "jax_bare", "torch_eager"), echo=quiet)
    got = by_key(rows)
    assert got[("wide-mlp", "pipeline")]["status"] == OUT_OF_MEMORY
    assert "free" in got[("wide-mlp", "pipeline")]["detail"]
    torch_row = got[("wide-mlp", "torch_eager")]
    assert torch_row["status"] == OUT_OF_MEMORY and "compiled by XLA needs" in torch_row["detail"]
    assert got[("tiny-mlp", "pipeline")]["status"] == "ok"
    assert got[("tiny-mlp", "torch_eager")]["status"] in ("ok", NOT_INSTALLED)


def test_measure_point_takes_a_peer_of_ones_own(workload_for):
    w = workload_for(POINTS["tiny-mlp"])
    measured = {m.impl: m for m in measure_point(w.point, w, ("pipeline", "jax_bare"), quiet,
                                                 factories={"jax_bare": BrokenAtSetup})}
    assert measured["pipeline"].ok and measured["jax_bare"].status == FAILED
    assert measured["jax_bare_scan"].status == "skipped"


# -- each family on tiny shapes ------------------------------------------------------------------

TINY = {
    "tiny-loop": Point("tiny-loop", "loop", "digits", 16, overrides=("model.hidden=8",), budget=SMOKE, model="mlp"),
    "tiny-sweep": Point("tiny-sweep", "sweep", "digits", 16, overrides=("model.hidden=8",), budget=SMOKE,
                        model="mlp", population=4),
    "tiny-stream": Point("tiny-stream", "stream", "images:8x8x1", 64, overrides=("model.hidden=16",),
                         steps_per_call=4, budget=SMOKE, model="mlp"),
    "tiny-trace": Point("tiny-trace", "trace", "digits", 16, overrides=("model.hidden=8",),
                        budget=Budget(warmup=1, rounds=2), model="mlp"),
    "tiny-read": Point("tiny-read", "data", "table:4096x8", 256, budget=SMOKE),
}


def test_loop_sweep_stream_trace_and_readers_on_tiny_shapes(cli, tmp_path, monkeypatch):
    for name, point in TINY.items():
        monkeypatch.setitem(points.POINTS, name, point)
    out = tmp_path / "results"
    r = cli("bench", "--out", str(out), "--json", *TINY, "data.shuffle_buffer=512")
    assert r.code == 0, r.err
    summary = json.loads(r.out.strip().splitlines()[-1])
    rows = by_key(pq.read_table(out / "bench.parquet").to_pylist())
    assert len(rows) == len(summary["rows"]) == sum(len(impls_of(p.family)) for p in TINY.values())
    assert all(row["status"] == "ok" for row in rows.values()), {k: r["detail"] for k, r in rows.items()}
    scanned, host = rows[("tiny-loop", "scanned")], rows[("tiny-loop", "host_loop")]
    assert host["steps_per_call"] == 1 and scanned["steps_per_call"] > 1
    paired = scanned["vs_host_loop"]  # the median of paired rounds' ratios: within the extremes'
    assert host["step_s_min"] / scanned["step_s_max"] <= paired <= host["step_s_max"] / scanned["step_s_min"]
    pop = rows[("tiny-sweep", "population")]
    assert json.loads(pop["config"])["population"] == 4
    assert pop["examples_per_s"] == pytest.approx(16 * pop["steps_per_s"])  # member-steps of batch 16
    assert rows[("tiny-stream", "streaming")]["vs_resident"] > 0
    traced = rows[("tiny-trace", "traced")]
    assert traced["artifact"] and any(Path(traced["artifact"]).rglob("*.xplane.pb"))
    assert rows[("tiny-read", "stream_reader")]["step_cpu_s"] > 0
    assert "| tiny-loop | scanned | ok |" in r.out and "member-steps/s" in r.out


def test_data_suite_on_a_dataset_of_the_users_store(cli, workdir, monkeypatch):
    monkeypatch.setitem(points.POINTS, "read-256k-x64", dataclasses.replace(POINTS["read-256k-x64"], budget=SMOKE))
    out = workdir / "results"
    r = cli("bench", "data", "--dataset", "digits", "batch_size=64", "--out", str(out))
    assert r.code == 0, r.err
    rows = pq.read_table(out / "bench.parquet").to_pylist()
    assert {row["impl"] for row in rows} == set(impls_of("data"))
    assert all(row["status"] == "ok" and row["data"] == "digits" and row["batch"] == 64 for row in rows)
    assert (workdir / "data" / "digits").is_dir()  # the user's store (PIPELINE_STORE), not the bench's own
    assert not (out / "store" / "digits").exists()


@pytest.mark.slow
@pytest.mark.subprocess  # the first-step and sweep-run points time whole `python -m pipeline` runs
def test_whole_processes_first_step_and_sweeps(tmp_path, monkeypatch):
    monkeypatch.setitem(points.POINTS, "tiny-first-step", Point(
        "tiny-first-step", "first-step", "digits", 16, overrides=("model.hidden=8",),
        budget=Budget(warmup=0, rounds=1), model="mlp"))
    monkeypatch.setitem(points.POINTS, "tiny-sweep-run", Point(
        "tiny-sweep-run", "sweep-run", "digits", 16, overrides=("model.hidden=8", "steps=40", "eval_every=20"),
        budget=Budget(warmup=0, rounds=1), model="mlp", population=2))
    rows = by_key(run_bench(["tiny-first-step", "tiny-sweep-run"], tmp_path, echo=quiet))
    for impl in impls_of("first-step"):
        assert rows[("tiny-first-step", impl)]["status"] == "ok" and rows[("tiny-first-step", impl)]["wall_s"] > 0
    warm = rows[("tiny-first-step", "warm_cache")]
    assert warm["vs_cold_cache"] == pytest.approx(rows[("tiny-first-step", "cold_cache")]["wall_s"] / warm["wall_s"])
    for impl in impls_of("sweep-run"):
        row = rows[("tiny-sweep-run", impl)]
        assert row["status"] == "ok", row["detail"]
        assert row["steps_per_s"] == pytest.approx(2 * 40 / row["wall_s"])
    # The same trials, however they ran, end with the same test accuracy.
    assert "final test accuracy within 0 of sweep_vmap's" in rows[("tiny-sweep-run", "sweep_no_vmap")]["detail"]


# -- the accelerator suite on a machine without one ----------------------------------------------

def test_accel_on_a_cpu_with_no_time_left_records_every_point(cli, tmp_path):
    out, docs = tmp_path / "results", tmp_path / "docs"
    r = cli("bench", "accel", "--minutes", "0.000001", "--out", str(out), "--docs", str(docs), "--json")
    assert r.code == 0, r.err
    assert "no accelerator" in r.err
    rows = pq.read_table(out / "bench.parquet").to_pylist()
    status = {(row["point"], row["impl"]): row for row in rows}
    assert {row["point"] for row in rows} >= set(SUITES["accel"]) | {"lm-mini-bf16", "trace-lm-mini"}
    for name in ("lm-125m", "lm-350m", "lm-1b", "trace-lm-125m"):
        for impl in impls_of(POINTS[name].family):
            assert status[(name, impl)]["status"] == "skipped"
            assert status[(name, impl)]["detail"].startswith("sized for an accelerator")
    assert all(row["status"] in ("ok", "skipped") for row in rows)
    report = (docs / "accel-cpu.md").read_text()
    assert "lm-125m" in report and "Not measured, and why" in report and "time budget spent" in report


@pytest.mark.slow
def test_accel_on_a_cpu_runs_its_stand_ins_within_a_short_budget(cli, tmp_path):
    out, docs = tmp_path / "results", tmp_path / "docs"
    r = cli("bench", "accel", "--minutes", "0.1", "--peers", "pipeline,jax_bare_scan", "--out", str(out),
            "--docs", str(docs))
    assert r.code == 0, r.err
    rows = pq.read_table(out / "bench.parquet").to_pylist()
    ran = {(row["point"], row["impl"]) for row in rows if row["status"] == "ok"}
    assert ("lm-mini-bf16", "pipeline") in ran  # the first stand-in always starts
    mini = next(row for row in rows if row["point"] == "lm-mini-bf16" and row["impl"] == "pipeline")
    assert mini["mfu"] > 0 and mini["tokens_per_s"] > 0
    assert all(row["status"] in ("ok", "skipped") for row in rows)
    assert (docs / "accel-cpu.md").read_text().count("lm-mini-bf16") >= 2
