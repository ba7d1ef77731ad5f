"""MFU arithmetic, the table of peaks, and the figures of a result row."""

from __future__ import annotations

import pytest

from pipeline.bench.measure import NOT_INSTALLED, Measurement, missing
from pipeline.bench.peaks import Peak, device_peak, mfu, table_peak
from pipeline.bench.points import POINTS
from pipeline.bench.run import model_rows
from pipeline.bench.timing import Timing, summarize


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
