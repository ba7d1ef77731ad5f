"""The results table: one row per (point, implementation), appended to a Parquet dataset folder.

``OUT/bench.parquet/`` holds one part per ``append`` (``part-NANOSECONDS-PID-RANDOM.parquet``),
written through a new temporary file, fsync and a rename: an append never reads or rewrites
what is there, so benchmarks appending at the same time never lose each other's rows, and
``pyarrow.parquet.read_table``, pandas and DuckDB (``OUT/bench.parquet/*.parquet``) read the
folder as one table. A results file written before (``bench.parquet`` one file) becomes the
folder's first part at the next append.

Every row carries the environment (device, backend, versions, commit), the point's
config and every figure, and the ratio of its throughput to each peer's measured in the
same run (``vs_<impl>``: how many times faster this row is; the median of the two's paired
rounds where they were timed round-robin, else this row's steps/s over that implementation's;
for rows timed as whole processes without steps, such as the time to a first step, that implementation's
seconds over this row's), so any row read alone says how it compares. Figures a row does not have are null, never zero;
its ``status`` says why (``not installed``, ``out of memory``, ...).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

import pyarrow as pa

from pipeline.bench.points import BenchError
from pipeline.durable.files import make_folders, write_parquet
from pipeline.durable.records import CorruptFile, parquet_files, read_parquet, read_parquet_files
from pipeline.durable.renames import new_folder_beside, replace_folder

TABLE = "bench.parquet"
# What a model point is measured with: the pipeline and its peers.
IMPLS = ("pipeline", "jax_bare", "jax_bare_scan", "torch_eager", "torch_compile")
READERS = ("pyarrow_read", "store_read", "stream_reader")
# The ways the other point families compare, by family (points.py): a family not named here is a
# model family, measured with IMPLS.
GROUPS: dict[str, tuple[str, ...]] = {
    "data": READERS,
    "loop": ("scanned", "host_loop"),  # K steps per dispatch vs one
    "first-step": ("warm_cache", "cold_cache"),  # `pipeline train` processes to the first step
    "sweep": ("population", "sequential"),  # steady-state member-steps: one vmapped program vs solo ones
    "sweep-run": ("sweep_vmap", "sweep_no_vmap", "train_processes"),  # whole sweeps as a user runs them
    "stream": ("resident", "streaming"),  # training from the device-resident split vs the streaming reader
    "trace": ("traced",),  # the pipeline's steps under jax.profiler
}
ALL_IMPLS = tuple(dict.fromkeys((*IMPLS, *(i for group in GROUPS.values() for i in group))))


def impls_of(family: str) -> tuple[str, ...]:
    """The implementations (ways) a point of this family is measured with."""
    return GROUPS.get(family, IMPLS)


def is_model_family(family: str) -> bool:
    return family not in GROUPS

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
    # Added with the loop, sweep, stream-train and accel suites (older parts read them as null).
    ("wall_s", pa.float64()), ("step_cpu_s", pa.float64()), ("artifact", pa.string()),
    *[(f"vs_{impl}", pa.float64()) for impl in ALL_IMPLS if impl not in (*IMPLS, *READERS)],
])


def to_table(rows: list[dict]) -> pa.Table:
    unknown = {k for row in rows for k in row} - set(SCHEMA.names)
    if unknown:
        raise ValueError(f"result rows have columns outside the schema: {sorted(unknown)}")
    return pa.Table.from_pylist([{name: row.get(name) for name in SCHEMA.names} for row in rows], schema=SCHEMA)


def append(folder: Path, rows: list[dict]) -> Path:
    """Append ``rows`` to ``folder/bench.parquet/`` as a new part; returns the table's path."""
    make_folders(folder)
    path = folder / TABLE
    new = to_table(rows)
    if not path.is_dir():
        _make_table_folder(path)
    name = f"part-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.parquet"
    write_parquet(new, path / name)
    return path


def _make_table_folder(path: Path) -> None:
    """Make ``bench.parquet/``; the rows of an older single-file table become its first part.

    Two processes doing this at once take turns (``.bench.parquet.lock``), so neither loses rows.
    """
    import fcntl

    lock = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_dir():
            return
        if not os.path.lexists(path):
            make_folders(path)
            return
        if path.is_symlink() or not path.is_file():
            raise BenchError(f"{path}: not a results table (a symbolic link or a special file)")
        try:
            read_parquet(path)
        except CorruptFile as exc:
            raise BenchError(f"{path}: cannot read the existing results: {exc}") from None
        new = new_folder_beside(path, "new")
        try:
            os.link(path, new / f"part-{0:020d}-legacy.parquet")
        except OSError:  # a file system without hard links
            shutil.copyfile(path, new / f"part-{0:020d}-legacy.parquet")
        replace_folder(new, path)
    finally:
        os.close(lock)


def read(folder: Path) -> pa.Table:
    """Every row appended to ``folder/bench.parquet`` (parts of older schemas promoted to this one)."""
    table = read_parquet_files(parquet_files(folder / TABLE))
    missing = [f for f in SCHEMA if f.name not in table.column_names]
    for f in missing:
        table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table
