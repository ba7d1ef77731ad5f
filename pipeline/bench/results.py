"""The results table: one row per (point, implementation), appended to a Parquet file.

Every row carries the environment (device, backend, versions, commit), the point's
config and every figure, and the ratio of its throughput to each peer's measured in the
same run (``vs_<impl>``: this row's steps/s over that implementation's), so any row
read alone says how it compares. Figures a row does not have are null, never zero;
its ``status`` says why (``not installed``, ``out of memory``, ...).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.bench.points import BenchError

TABLE = "bench.parquet"
IMPLS = ("pipeline", "jax_bare", "jax_bare_scan", "torch_eager", "torch_compile")
READERS = ("pyarrow_read", "store_read", "stream_reader")

SCHEMA = pa.schema([
    ("run_id", pa.string()), ("time_utc", pa.string()), ("suite", pa.string()), ("point", pa.string()),
    ("impl", pa.string()), ("status", pa.string()), ("detail", pa.string()),
    ("family", pa.string()), ("data", pa.string()), ("batch", pa.int64()), ("precision", pa.string()),
    ("steps_per_call", pa.int64()), ("config", pa.string()), ("params", pa.int64()),
    ("tokens_per_example", pa.int64()),
    ("device_kind", pa.string()), ("device_count", pa.int64()), ("backend", pa.string()), ("cpu_count", pa.int64()),
    ("python", pa.string()), ("git_commit", pa.string()),
    ("jax", pa.string()), ("jaxlib", pa.string()), ("flax", pa.string()), ("optax", pa.string()),
    ("numpy", pa.string()), ("pyarrow", pa.string()), ("torch", pa.string()),
    ("compile_s", pa.float64()), ("step_s", pa.float64()), ("step_s_p25", pa.float64()),
    ("step_s_p75", pa.float64()), ("step_s_min", pa.float64()), ("step_s_max", pa.float64()),
    ("spread", pa.float64()), ("timed_steps", pa.int64()), ("rounds", pa.int64()),
    ("steps_per_s", pa.float64()), ("examples_per_s", pa.float64()), ("tokens_per_s", pa.float64()),
    ("bytes_per_s", pa.float64()),
    ("flops_xla", pa.float64()), ("flops_analytic", pa.float64()), ("flops_model", pa.float64()),
    ("peak_flops", pa.float64()), ("peak_source", pa.string()), ("mfu", pa.float64()), ("mfu_xla", pa.float64()),
    ("mem_peak_bytes", pa.int64()), ("mem_program_bytes", pa.int64()), ("input_share", pa.float64()),
    *[(f"vs_{impl}", pa.float64()) for impl in (*IMPLS, *READERS)],
])


def to_table(rows: list[dict]) -> pa.Table:
    unknown = {k for row in rows for k in row} - set(SCHEMA.names)
    if unknown:
        raise ValueError(f"result rows have columns outside the schema: {sorted(unknown)}")
    return pa.Table.from_pylist([{name: row.get(name) for name in SCHEMA.names} for row in rows], schema=SCHEMA)


def append(folder: Path, rows: list[dict]) -> Path:
    """Append ``rows`` to ``folder/bench.parquet`` (rewritten whole, then renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TABLE
    new = to_table(rows)
    if path.exists():
        try:
            old = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise BenchError(f"{path}: cannot read the existing results: {exc}") from None
        new = pa.concat_tables([old, new], promote_options="permissive")
    fd, tmp = tempfile.mkstemp(prefix=".bench.", suffix=".parquet", dir=folder)
    os.close(fd)
    try:
        pq.write_table(new, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(folder: Path) -> pa.Table:
    return pq.read_table(folder / TABLE)
