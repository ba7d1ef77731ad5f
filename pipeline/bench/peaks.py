"""Peak arithmetic throughput of a device, and model FLOPs utilisation (MFU).

Accelerators: a table of dense (not sparse) peaks per chip from the vendors' data
sheets, by precision. ``fp32`` means what XLA runs a float32 matrix multiply with at its
default precision: TF32 tensor cores on NVIDIA GPUs since Ampere, bfloat16 passes on
TPUs. CPUs: no table is honest across models and clocks, so the peak is measured on the
spot as the best of a few large matrix multiplies in the point's precision. Set
PIPELINE_PEAK_TFLOPS to override either.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp

# (substring of the lower-cased device kind, {precision: dense TFLOP/s}); first match wins.
KNOWN_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("gh200", {"bf16": 989.0, "fp32": 494.5}),
    ("h200", {"bf16": 989.0, "fp32": 494.5}),
    ("h100 pcie", {"bf16": 756.0, "fp32": 378.0}),
    ("h100", {"bf16": 989.0, "fp32": 494.5}),
    ("h800", {"bf16": 989.0, "fp32": 494.5}),
    ("b200", {"bf16": 2250.0, "fp32": 1100.0}),
    ("a100", {"bf16": 312.0, "fp32": 156.0}),
    ("a800", {"bf16": 312.0, "fp32": 156.0}),
    ("l40s", {"bf16": 362.0, "fp32": 183.0}),
    ("l40", {"bf16": 181.0, "fp32": 90.5}),
    ("l4", {"bf16": 121.0, "fp32": 60.0}),
    ("a10", {"bf16": 125.0, "fp32": 62.5}),
    ("rtx 4090", {"bf16": 165.0, "fp32": 82.6}),
    ("tpu v6", {"bf16": 918.0, "fp32": 918.0}),
    ("tpu v5 lite", {"bf16": 197.0, "fp32": 197.0}),
    ("tpu v5e", {"bf16": 197.0, "fp32": 197.0}),
    ("tpu v5", {"bf16": 459.0, "fp32": 459.0}),  # v5p
    ("tpu v4", {"bf16": 275.0, "fp32": 275.0}),
    ("tpu v3", {"bf16": 123.0, "fp32": 123.0}),
)


@dataclass(frozen=True)
class Peak:
    flops: float | None  # per second, one device
    source: str  # "table: h100", "measured: 1024^3 matmul", "PIPELINE_PEAK_TFLOPS", "unknown"


def table_peak(device_kind: str, precision: str) -> Peak | None:
    kind = device_kind.lower()
    for key, peaks in KNOWN_PEAKS:
        if key in kind:
            return Peak(peaks[precision] * 1e12, f"table: {key} {precision} dense")
    return None


@functools.cache
def measured_matmul_peak(precision: str, n: int = 1024, repeats: int = 30) -> Peak:
    """Best FLOP/s of an n x n matrix multiply on the default device (CPUs)."""
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return Peak(2 * n**3 / best, f"measured: best {n}x{n} {precision} matmul of {repeats}")


def device_peak(precision: str) -> Peak:
    override = os.environ.get("PIPELINE_PEAK_TFLOPS")
    if override:
        return Peak(float(override) * 1e12, "PIPELINE_PEAK_TFLOPS")
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return measured_matmul_peak(precision)
    return table_peak(device.device_kind, precision) or Peak(None, f"unknown: no peak for '{device.device_kind}'")


def mfu(flops_per_step: float | None, seconds_per_step: float | None, peak_flops: float | None,
        devices: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of the devices used."""
    if not flops_per_step or not seconds_per_step or not peak_flops:
        return None
    return flops_per_step / seconds_per_step / (peak_flops * devices)
