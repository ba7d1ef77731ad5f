"""The accelerator suite's own parts: its time budget, its results folder named after the device,
the report it leaves in ``docs/benchmarks/accel-DEVICE.md`` of this repository's checkout (or in
``--docs DIR``; an installed package copies it nowhere else), and the GPU memory it leaves PyTorch.

``pipeline bench accel`` (and ``scripts/bench_accel``, which installs what it needs first) runs
on any machine JAX runs on. On a CPU the points sized for an accelerator are recorded as
skipped and small stand-ins run instead (``points.plan``), so the suite still ends with a table.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

SUITE = "accel"
DEFAULT_MINUTES = 7.5  # start nothing after this; a whole try fits about ten minutes on one GPU


def device_slug() -> str:
    """The first device's kind as a file name: ``nvidia-h100-80gb-hbm3``, ``tpu-v5-lite``, ``cpu``."""
    import jax

    return re.sub(r"[^a-z0-9]+", "-", jax.local_devices()[0].device_kind.lower()).strip("-") or "unknown"


def default_docs(package_file: Path = Path(__file__)) -> Path | None:
    """``docs/benchmarks`` of the checkout this package runs from (a source tree or an editable
    install); None for an installed package: the report is copied only where ``--docs`` says, never
    into whatever folder the command happens to run in."""
    checkout = package_file.resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "docs" / "benchmarks").is_dir():
        return checkout / "docs" / "benchmarks"
    return None


def publish(results: Path, docs: Path, slug: str) -> Path | None:
    """Copy the run's ``bench.md`` (and ``bench.png``) to ``docs/accel-SLUG.md`` (``.png``)."""
    md = results / "bench.md"
    if not md.is_file():
        return None
    docs.mkdir(parents=True, exist_ok=True)
    target = docs / f"accel-{slug}.md"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(md, tmp)
    tmp.replace(target)
    if (results / "bench.png").is_file():
        shutil.copyfile(results / "bench.png", docs / f"accel-{slug}.png")
    return target


def share_gpu_with_torch(peers: tuple[str, ...]) -> None:
    """With a PyTorch peer to run, JAX takes half a GPU's memory instead of 75% (unless the
    environment says otherwise), so the torch peers have the other half. Must run before
    JAX starts its backend; it changes nothing on CPUs and TPUs."""
    if any(p.startswith("torch") for p in peers) and not any(
            k in os.environ for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                                      "XLA_PYTHON_CLIENT_ALLOCATOR")):
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.5"
