"""Peers: a missing PyTorch is recorded as missing, and the torch twins match the JAX models."""

from __future__ import annotations

import math
import sys

import pytest

from pipeline.bench import torch_peer
from pipeline.bench.measure import NOT_INSTALLED, OUT_OF_MEMORY
from pipeline.bench.peaks import Peak
from pipeline.bench.peers import measure_point
from pipeline.bench.points import POINTS, Point
from pipeline.bench.report import markdown
from pipeline.bench.run import model_rows


def test_missing_torch_is_recorded_not_zero(workload_for, monkeypatch):
    w = workload_for(POINTS["tiny-mlp"])  # (imports digits through scikit-learn, which probes torch)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert torch_peer.torch_module() is None
    assert torch_peer.unavailable(w)[0] == NOT_INSTALLED
    measured = measure_point(w.point, w, ("pipeline", "torch_eager", "torch_compile"), echo=lambda s: None)
    rows = {r["impl"]: r for r in model_rows({"batch": w.point.batch, "point": "tiny-mlp", "family": "mlp",
                                               "precision": "fp32", "run_id": "x", "device_kind": "cpu",
                                               "device_count": 1, "backend": "cpu", "cpu_count": 2,
                                               "time_utc": "now"}, w, measured, Peak(1e9, "test"))}
    for impl in ("torch_eager", "torch_compile"):
        assert rows[impl]["status"] == NOT_INSTALLED
        assert rows[impl].get("steps_per_s") is None
        assert rows["pipeline"][f"vs_{impl}"] is None
    assert rows["pipeline"]["status"] == "ok" and rows["pipeline"]["steps_per_s"] > 0
    assert rows["jax_bare"]["status"] == "skipped"
    assert "| not installed | not installed |" in markdown(list(rows.values()))


def test_too_large_point_is_out_of_memory_with_its_size(workload_for):
    # 2 x 2^21 hidden units: ~4.4e12 parameters, far beyond any device; nothing is allocated.
    point = Point("huge", "mlp", "images:16x16x1", 16, overrides=("model.hidden=2097152,2097152",))
    w = workload_for(point)
    measured = measure_point(point, w, ("pipeline", "jax_bare"), echo=lambda s: None)
    by_impl = {m.impl: m for m in measured}
    for impl in ("pipeline", "jax_bare"):
        assert by_impl[impl].status == OUT_OF_MEMORY
        assert f"{w.param_count:,} parameters" in by_impl[impl].detail


def test_real_allocation_failure_counts_as_out_of_memory():
    import jax.numpy as jnp

    from pipeline.bench.measure import is_out_of_memory

    with pytest.raises(Exception) as info:
        jnp.zeros((1 << 44,), jnp.float32).block_until_ready()  # 64 TiB
    assert is_out_of_memory(info.value)


@pytest.mark.parametrize("name", ["mlp-h32-b32", "cnn-c8-16-b32", "tiny-lm"])
def test_torch_twins_have_the_jax_parameter_count(workload_for, name):
    torch = pytest.importorskip("torch")
    from pipeline.bench import torch_models

    point = POINTS.get(name) or Point("tiny-lm", "transformer", "tokens:512x64", 4, overrides=(
        "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.context=64"))
    w = workload_for(point)
    model = torch_models.build(w.cfg.model, w.info.feature_shape, w.info.output_size)
    assert sum(p.numel() for p in model.parameters()) == w.param_count
    xs, _ = w.host_batches(1)
    x = torch.from_numpy(xs[0])
    out = model(x.long() if w.info.task == "language_modeling" else x)
    expected = (w.point.batch, *w.info.label_shape, w.info.output_size)
    assert tuple(out.shape) == expected and math.isfinite(float(out.detach().float().sum()))


def test_a_torch_peer_refused_before_setup_is_recorded_and_the_point_goes_on(workload_for, monkeypatch):
    """The accelerator suite's path: the pipeline's program needs more memory than is free, so the
    torch peers are refused before they build anything; closing them must not end the suite."""
    pytest.importorskip("torch")
    from pipeline.bench import peers

    w = workload_for(POINTS["tiny-mlp"])
    monkeypatch.setattr(peers, "device_free_bytes", lambda: 1)  # 1 byte free: every program is too big
    measured = {m.impl: m for m in measure_point(w.point, w, ("pipeline", "torch_eager"), echo=lambda s: None)}
    assert measured["pipeline"].status == "ok"
    assert measured["torch_eager"].status == OUT_OF_MEMORY and "free" in measured["torch_eager"].detail
