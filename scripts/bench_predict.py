"""Rows per second of `pipeline predict` against `load_run` and a hand-written batched loop.

A tiny regression MLP (regression_mlp, hidden 64,64, 8 named features) is trained on 4,000 rows;
then ROWS new rows in a Parquet file are predicted two ways, each reading the file and writing a
Parquet file of predictions, in this process after one warm-up of each (compilation not timed):

* `pipeline.predict(run, file, out=...)`: what `pipeline predict RUN FILE --out OUT` runs (the
  streamed reader, one compiled program per batch, the atomic writer);
* `pipeline.load_run(run)` and `model(x[i:i + B])` over the whole array read with pyarrow, the
  outputs concatenated and written with `pq.write_table`: what a user writes by hand.

Prints a Markdown table of the medians of --repeats runs.

    .venv/bin/python scripts/bench_predict.py --rows 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=8192, help="rows per call, both ways")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as folder:
        root = Path(folder)
        os.environ["PIPELINE_STORE"], os.environ["PIPELINE_RUNS"] = str(root / "data"), str(root / "runs")
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        import pipeline

        names = [f"f{i}" for i in range(8)]
        rng = np.random.default_rng(0)
        train = pd.DataFrame(rng.normal(size=(4000, 8)).astype(np.float32), columns=names)
        train["y"] = train.to_numpy() @ rng.normal(size=8).astype(np.float32)
        run = pipeline.fit("regression_mlp", data=train, target="y", run_dir=root / "run",
                           overrides={"steps": 200, "eval_every": 100, "plot": False}).run_dir
        source = root / "new.parquet"
        pq.write_table(pa.table({n: rng.normal(size=args.rows).astype(np.float32) for n in names}), source,
                       row_group_size=65536)

        def with_predict() -> None:
            pipeline.predict(run, source, out=root / "a.parquet", batch_rows=args.batch)

        def by_hand() -> None:
            model = pipeline.load_run(run)
            x = np.stack([c.to_numpy() for c in pq.read_table(source, columns=names).columns], axis=1)
            out = np.concatenate([np.asarray(model(x[i:i + args.batch])) for i in range(0, len(x), args.batch)])
            pq.write_table(pa.table({"prediction": out[:, 0]}), root / "b.parquet")

        results = {}
        for name, job in (("pipeline predict", with_predict), ("load_run + batched loop", by_hand)):
            job()  # warm-up: compilation and first reads
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                job()
                times.append(time.perf_counter() - start)
            results[name] = statistics.median(times)
        print(f"| way | rows | seconds (median of {args.repeats}) | rows/s |\n|---|---|---|---|")
        for name, seconds in results.items():
            print(f"| {name} | {args.rows:,} | {seconds:.2f} | {args.rows / seconds:,.0f} |")


if __name__ == "__main__":
    main()
