"""MFU arithmetic, the table of peaks, the figures of a result row, and how rounds become ratios."""

from __future__ import annotations

import pytest

from pipeline.bench.measure import NOT_INSTALLED, Measurement, missing
from pipeline.bench.peaks import Peak, device_peak, mfu, table_peak
from pipeline.bench.points import POINTS
from pipeline.bench.run import model_rows
from pipeline.bench.schedule import time_together
from pipeline.bench.timing import Budget, RoundRobin, Timing, cycle_order, paired_ratio, summarize


def test_mfu_against_a_fixed_peak():
    assert mfu(2e12, 0.5, 8e12) == pytest.approx(0.5)
    assert mfu(2e12, 0.5, 8e12, devices=2) == pytest.approx(0.25)
    assert mfu(None, 0.5, 8e12) is None
    assert mfu(2e12, 0.5, None) is None


@pytest.mark.parametrize("kind, precision, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989), ("NVIDIA H200", "bf16", 989), ("NVIDIA H100 PCIe", "bf16", 756),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312), ("NVIDIA A100-SXM4-40GB", "fp32", 156), ("NVIDIA L4", "bf16", 121),
    ("NVIDIA L40S", "bf16", 362), ("TPU v5 lite", "bf16", 197), ("TPU v4", "bf16", 275),
])
def test_known_peaks(kind, precision, tflops):
    assert table_peak(kind, precision).flops == tflops * 1e12


def test_unknown_device_has_no_peak():
    assert table_peak("Some Future Chip", "bf16") is None


def test_peak_override(monkeypatch):
    monkeypatch.setenv("PIPELINE_PEAK_TFLOPS", "100")
    assert device_peak("fp32") == Peak(100e12, "PIPELINE_PEAK_TFLOPS")


def test_cpu_peak_is_measured(monkeypatch):
    monkeypatch.delenv("PIPELINE_PEAK_TFLOPS", raising=False)
    peak = device_peak("fp32")
    assert peak.source.startswith("measured") and peak.flops > 0


def test_summary_statistics():
    median, p25, p75, fastest, slowest = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (median, p25, p75, fastest, slowest) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert Timing(3.0, 2.0, 4.0, 1.0, 5.0, 50, 5).spread == pytest.approx(2 / 3)


def test_row_figures_and_ratios(workload_for):
    w = workload_for(POINTS["mlp-h32-b32"])
    fast = Timing(0.01, 0.01, 0.01, 0.01, 0.01, 100, 5)
    slow = Timing(0.02, 0.02, 0.02, 0.02, 0.02, 100, 5)
    measured = [Measurement("pipeline", timing=fast, flops_xla=3e6),
                Measurement("jax_bare", timing=slow, flops_xla=2e6),
                missing("jax_bare_scan", "skipped"), missing("torch_eager", NOT_INSTALLED),
                missing("torch_compile", NOT_INSTALLED)]
    rows = {r["impl"]: r for r in model_rows({"batch": 32}, w, measured, Peak(1e9, "test"))}
    pipe = rows["pipeline"]
    assert pipe["steps_per_s"] == pytest.approx(100.0)
    assert pipe["examples_per_s"] == pytest.approx(3200.0)
    assert pipe["flops_model"] == 2e6  # the plain step's count: the model's useful work
    assert pipe["mfu"] == pytest.approx(2e6 / 0.01 / 1e9)
    assert pipe["mfu_xla"] == pytest.approx(3e6 / 0.01 / 1e9)
    assert pipe["vs_jax_bare"] == pytest.approx(2.0)
    assert rows["jax_bare"]["vs_pipeline"] == pytest.approx(0.5)
    assert pipe["vs_torch_eager"] is None
    assert rows["torch_eager"]["status"] == NOT_INSTALLED and rows["torch_eager"].get("steps_per_s") is None
    assert rows["torch_eager"].get("mfu") is None


def timed(samples: tuple[float, ...], together: int) -> Timing:
    median, p25, p75, fastest, slowest = summarize(list(samples))
    return Timing(median, p25, p75, fastest, slowest, 10 * len(samples), len(samples), None, samples, together)


def test_ratios_of_a_round_robin_are_taken_round_by_round():
    # A burst of load slows the third cycle for both; paired, it cancels: each cycle says 2x.
    mine, theirs = timed((1.0, 1.0, 3.0, 1.0, 1.0), 7), timed((2.0, 2.0, 6.0, 2.0, 2.0), 7)
    assert paired_ratio(mine, theirs) == pytest.approx(2.0)
    # The median of the cycles' ratios, not the ratio of the medians (2 / 1 here).
    mine, theirs = timed((1.0, 2.0, 4.0), 7), timed((3.0, 2.0, 4.0), 7)
    assert paired_ratio(mine, theirs) == pytest.approx(1.0) and theirs.median / mine.median == pytest.approx(1.5)
    # A runner that failed after two rounds: too few pairs. Two round-robins: nothing to pair.
    assert paired_ratio(timed((1.0, 1.0), 7), timed((2.0, 2.0, 2.0), 7)) is None
    assert paired_ratio(timed((1.0, 1.0, 1.0), 7), timed((2.0, 2.0, 2.0), 8)) is None
    assert paired_ratio(timed((1.0, 1.0, 1.0), 0), timed((2.0, 2.0, 2.0), 0)) is None


def test_row_ratios_are_paired_when_timed_together(workload_for):
    w = workload_for(POINTS["mlp-h32-b32"])
    measured = [Measurement("pipeline", timing=timed((1.0, 2.0, 4.0), 3)),
                Measurement("jax_bare", timing=timed((3.0, 2.0, 4.0), 3)),
                Measurement("jax_bare_scan", timing=timed((3.0, 2.0, 4.0), 4)),  # timed apart: speeds
                missing("torch_eager", NOT_INSTALLED), missing("torch_compile", NOT_INSTALLED)]
    rows = {r["impl"]: r for r in model_rows({"batch": 32}, w, measured, Peak(1e9, "test"))}
    assert rows["pipeline"]["vs_jax_bare"] == pytest.approx(1.0)
    assert rows["pipeline"]["vs_jax_bare_scan"] == pytest.approx(1.5)


def test_each_cycle_starts_one_implementation_further_on():
    assert [cycle_order(["a", "b", "c"], i) for i in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_rounds_are_balanced_to_the_longest_unit():
    """A pipeline call of K CNN steps (0.45 s) outlasts round_s: every round then lasts about that
    long, so the rounds paired in a cycle see the same stretch of load."""
    rr = RoundRobin(Budget(round_s=0.1))
    rr.unit_s = {"pipeline": 0.45, "jax_bare_scan": 0.045, "jax_bare": 0.0005, "failed": 9.0}
    rr.balance(["pipeline", "jax_bare_scan", "jax_bare"])
    assert rr.units == {"pipeline": 1, "jax_bare_scan": 10, "jax_bare": 900}
    rr.unit_s = {"a": 0.01, "b": 0.02}
    rr.balance(["a", "b"])  # both shorter than round_s: round_s it is
    assert rr.units == {"pipeline": 1, "jax_bare_scan": 10, "jax_bare": 900, "a": 10, "b": 5}


class Counter:
    """A trivial implementation that logs the order in which the scheduler runs its rounds."""

    steps_per_unit = 1

    def __init__(self, impl: str, log: list[str]):
        self.impl, self.log = impl, log
        self.m = Measurement(impl)

    def setup(self) -> None:
        pass

    def run(self, units: int) -> None:
        self.log.append(self.impl)

    def result(self, timing: Timing) -> Measurement:
        self.m.timing = timing
        return self.m

    def close(self) -> None:
        pass


def test_time_together_rotates_and_pairs_its_rounds():
    log: list[str] = []
    done: dict[str, Measurement] = {}
    budget = Budget(warmup=1, rounds=4, round_s=1e-4, max_units=1)
    time_together([Counter("a", log), Counter("b", log)], budget, done, echo=lambda s: None)
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-ups, then the rotating cycles
    a, b = done["a"].timing, done["b"].timing
    assert a.together == b.together != 0 and len(a.samples) == len(b.samples) == 4
