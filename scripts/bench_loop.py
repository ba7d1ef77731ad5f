"""Benchmarks of the training loop (see scripts/bench_loop). Prints a Markdown table."""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from pipeline.config import apply_overrides
from pipeline.data import Store, ensure_dataset
from pipeline.experiments import load_config
from pipeline.train.loop import Batches, compiled, prepare

OVERRIDES = ["model.hidden=32", "batch_size=32", "steps=2000"]


def scanned_vs_host_loop(store: Store, steps: int = 2000, repeats: int = 5) -> dict[str, float]:
    cfg = apply_overrides(load_config("digits_mlp"), OVERRIDES)
    prep = prepare(cfg, store)
    k = prep.steps_per_call
    # The same program either way; the host loop dispatches it with K = 1, one call per step,
    # each call's row indices made by the loop's own Batches.
    run, _evaluate = compiled(prep.spec)

    def make(per_call: int):
        def loop(state):
            batches = Batches(dataclasses.replace(prep, steps_per_call=per_call), 0)
            for _ in range(steps // per_call):
                state, metrics = run(state, *batches.args())
            jax.block_until_ready(metrics)
            return state

        return loop

    results = {}
    for name, fn in (("scanned", make(k)), ("host", make(1))):
        state = jax.tree.map(lambda a: a.copy(), prep.state)
        state = fn(state)  # warm-up: compile
        times = []
        for _ in range(repeats):
            state = jax.tree.map(lambda a: a.copy(), prep.state)
            t = time.perf_counter()
            fn(state)
            times.append(time.perf_counter() - t)
        results[name] = steps / statistics.median(times)
    results["k"] = k
    return results


def time_to_first_step(cache: Path, store: Path) -> float:
    """Seconds from the start of training (imports and data loading done) to the first step's metrics.

    Read from the run's own metrics table (its ``wall_s`` column), in a fresh process each time.
    """
    with tempfile.TemporaryDirectory() as runs:
        cmd = [sys.executable, "-m", "pipeline", "train", "digits_mlp", *OVERRIDES[:2], "steps=4",
               "eval_every=4", "steps_per_call=1", "--no-progress", "--store", str(store),
               "--compile-cache", str(cache), "--run-dir", f"{runs}/r"]
        subprocess.run(cmd, check=True, capture_output=True)
        import pyarrow.parquet as pq

        table = pq.read_table(f"{runs}/r/metrics.parquet").to_pydict()
        return min(w for w, split in zip(table["wall_s"], table["split"], strict=True) if split == "train")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "data")
        ensure_dataset(store, "digits")
        loop = scanned_vs_host_loop(store)
        cold = [time_to_first_step(Path(tmp) / f"cache{i}", store.root) for i in range(3)]
        warm = [time_to_first_step(Path(tmp) / "cache0", store.root) for _ in range(3)]
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
    print("| measurement | pipeline | reference | ratio |")
    print("|---|---|---|---|")
    print(f"| digits MLP h32 b32, steps/s: scanned K={loop['k']} vs host loop | {loop['scanned']:,.0f} | "
          f"{loop['host']:,.0f} | {loop['scanned'] / loop['host']:.1f}x |")
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"| time to first step (s): warm vs cold compile cache | {w:.2f} | {c:.2f} | {w / c:.2f}x |")


if __name__ == "__main__":
    main()
