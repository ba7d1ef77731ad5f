"""Time to result, as a user waits for it: whole processes, timed from the shell, in one run.

1. `pipeline train digits_mlp model.hidden=32 batch_size=32 steps=20000` against a plain PyTorch
   script training the same model for the same steps (scripts/torch_digits_mlp.py), alternated.
2. `pipeline sweep digits_mlp` (its 16 trials, the plan measured) against `--no-vmap`, `--vmap`, and
   the same 16 trials as separate `pipeline train` processes.

The store is imported once beforehand and the compilation cache is warm (as after a user's first
run). Prints a Markdown table; medians of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["train", "digits_mlp", "model.hidden=32", "batch_size=32", "steps=20000", "--no-progress"]


def timed(argv: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-sweeps", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="time-to-result-"))
    env = {**os.environ, "PIPELINE_STORE": str(work / "data"), "PIPELINE_RUNS": str(work / "runs"),
           "PIPELINE_SWEEPS": str(work / "sweeps")}
    pipe = [sys.executable, "-m", "pipeline"]
    timed([*pipe, "data", "import", "builtin:digits", "--name", "digits"], work, env)
    timed([*pipe, *TRAIN, "steps=100"], work, env)  # warms the compilation cache
    rows = []
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(timed([*pipe, *TRAIN], work, env)[0])
        theirs.append(timed([sys.executable, str(ROOT / "scripts" / "torch_digits_mlp.py")], work, env)[0])
    a, b = statistics.median(ours), statistics.median(theirs)
    rows.append(("`pipeline train` digits MLP h32 b32, 20000 steps, whole process", a,
                 "plain PyTorch script, same model and steps", b, a / b))
    if not args.skip_sweeps:
        ways = {"default (plan measured)": [], "--vmap": ["--vmap"], "--no-vmap": ["--no-vmap"]}
        for flags in ways.values():  # each way's programs in the compilation cache before any is timed
            timed([*pipe, "sweep", "digits_mlp", "--no-progress", "--json", *flags], work, env)
        times: dict[str, list[float]] = {name: [] for name in ways}
        for repeat in range(args.repeats):  # interleaved, in a rotating order: no way always goes first
            names = list(ways)[repeat % len(ways):] + list(ways)[:repeat % len(ways)]
            for name in names:
                seconds, out = timed([*pipe, "sweep", "digits_mlp", "--no-progress", "--json", *ways[name]], work, env)
                times[name].append(seconds)
                if name.startswith("default"):
                    plan = json.loads(out.strip().splitlines()[-1])["plans"]
                runs = [(seconds, out)]
        sweep = {name: statistics.median(t) for name, t in times.items()}
        trials = json.loads((next((work / "sweeps").iterdir()) / "sweep.json").read_text())["trials"]
        summary = json.loads(runs[-1][1].strip().splitlines()[-1])
        overrides = [r["overrides"] for r in __import__("pyarrow.parquet", fromlist=["x"]).read_table(
            Path(summary["sweep_dir"]) / "trials.parquet").to_pylist()]
        start = time.perf_counter()
        for o in overrides[:trials]:
            timed([*pipe, "train", "digits_mlp", *o, "--no-progress"], work, env)
        separate = time.perf_counter() - start
        default = sweep["default (plan measured)"]
        rows.append(("`pipeline sweep digits_mlp` (16 trials), plan measured", default, "`--no-vmap`",
                     sweep["--no-vmap"], sweep["--no-vmap"] / default))
        rows.append(("`pipeline sweep digits_mlp`, plan measured", default, "`--vmap`", sweep["--vmap"],
                     sweep["--vmap"] / default))
        rows.append(("`pipeline sweep digits_mlp`, plan measured", default, f"{trials} separate `pipeline train`",
                     separate, separate / default))
        print(f"plan chosen: {json.dumps(plan)}")
    print("| pipeline | s | reference | s | ratio |\n|---|---|---|---|---|")
    for what, x, ref, y, ratio in rows:
        print(f"| {what} | {x:.2f} | {ref} | {y:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
