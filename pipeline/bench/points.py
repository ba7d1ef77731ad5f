"""Benchmark points and the suites that group them.

A point is one (model, size, batch, precision) to measure; its model is given as
config overrides, so the pipeline runs it exactly as ``pipeline train`` would. The data
is a built-in dataset or a synthetic one made on first use (see ``synthetic.py``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from pipeline.bench.timing import Budget
from pipeline.errors import PipelineError


class BenchError(PipelineError):
    """A bad suite or point name, or a results folder that cannot be used."""


@dataclass(frozen=True)
class Point:
    name: str
    family: str  # mlp | cnn | transformer | data
    data: str  # a built-in dataset name or a synthetic spec (synthetic.py)
    batch: int
    precision: str = "fp32"
    overrides: tuple[str, ...] = ()  # KEY=VALUE for the model (and anything else in Config)
    steps_per_call: int = 0  # 0: the loop's automatic choice, as in `pipeline train`
    budget: Budget = field(default_factory=Budget)
    experiment: str = ""  # an experiment file or name: its config is the point's (its own model included)

    @property
    def model_overrides(self) -> tuple[str, ...]:
        return self.overrides if self.experiment else (f"model.name={self.family}", *self.overrides)


QUICK = Budget(warmup=2, rounds=15, round_s=0.1)
ACCEL = Budget(warmup=2, rounds=5, round_s=0.5)
SMOKE = Budget(warmup=1, rounds=3, round_s=0.02, max_units=5)


def _lm(name: str, d: int, layers: int, heads: int, context: int, vocab: int, batch: int,
        precision: str = "bf16", k: int = 10) -> Point:
    return Point(name, "transformer", f"tokens:{vocab}x{context}", batch, precision,
                 (f"model.d_model={d}", f"model.n_layers={layers}", f"model.n_heads={heads}",
                  f"model.context={context}"), steps_per_call=k, budget=ACCEL)


POINTS: dict[str, Point] = {p.name: p for p in [
    # Tiny shapes for a test of the whole command.
    Point("tiny-mlp", "mlp", "digits", 16, overrides=("model.hidden=8",), budget=SMOKE),
    # Small models on the 8x8 digits: bound by framework overhead, not arithmetic.
    Point("mlp-h32-b32", "mlp", "digits", 32, overrides=("model.hidden=32",), budget=QUICK),
    Point("cnn-c8-16-b32", "cnn", "digits", 32, overrides=("model.channels=8,16", "model.hidden=32"),
          budget=QUICK),
    Point("mlp-h128-b64", "mlp", "digits", 64, overrides=("model.hidden=128",), budget=QUICK),
    # Sizes where arithmetic starts to matter.
    Point("mlp-h1024x2-b256", "mlp", "images:28x28x1", 256, overrides=("model.hidden=1024,1024",), budget=QUICK),
    Point("mlp-h4096x3-b1024-bf16", "mlp", "images:28x28x1", 1024, "bf16",
          overrides=("model.hidden=4096,4096,4096",), steps_per_call=20, budget=ACCEL),
    Point("cnn-c32-64-b128", "cnn", "images:32x32x3", 128, overrides=("model.channels=32,64", "model.hidden=128"),
          steps_per_call=20, budget=QUICK),
    Point("cnn-c64-128-256-b256-bf16", "cnn", "images:32x32x3", 256, "bf16",
          overrides=("model.channels=64,128,256", "model.hidden=256"), steps_per_call=10, budget=ACCEL),
    # Decoder language models, named by their approximate parameter count.
    _lm("lm-5m", 256, 6, 4, 256, 256, 8, precision="fp32", k=5),
    _lm("lm-25m", 512, 8, 8, 512, 256, 16),
    _lm("lm-125m", 768, 12, 12, 1024, 50304, 16),
    _lm("lm-350m", 1024, 24, 16, 1024, 50304, 16),
    _lm("lm-1b", 2048, 18, 16, 1024, 50304, 8, k=5),
    # Reader throughput (the data suite).
    Point("read-256k-x64", "data", "table:262144x64", 4096, budget=QUICK),
]}

SUITES: dict[str, tuple[str, ...]] = {
    "tiny": ("tiny-mlp",),
    "cpu-small": ("mlp-h32-b32", "cnn-c8-16-b32"),
    "mlp": ("mlp-h32-b32", "mlp-h128-b64", "mlp-h1024x2-b256", "mlp-h4096x3-b1024-bf16"),
    "cnn": ("cnn-c8-16-b32", "cnn-c32-64-b128", "cnn-c64-128-256-b256-bf16"),
    "transformer": ("lm-5m", "lm-25m", "lm-125m", "lm-350m", "lm-1b"),
    "data": ("read-256k-x64",),
    # scripts/bench_accel: about 8 minutes on one modern GPU, the MFU target's points first.
    "accel": ("lm-125m", "lm-1b", "lm-350m", "mlp-h32-b32", "mlp-h4096x3-b1024-bf16", "cnn-c64-128-256-b256-bf16"),
}


def select(names: list[str]) -> list[tuple[str, Point]]:
    """(suite, point) pairs for suite and point names, in order, without repeats.

    A point named on its own belongs to the suite "adhoc". No names means ``cpu-small``.
    """
    chosen: list[tuple[str, Point]] = []
    seen: set[str] = set()
    for name in names or ["cpu-small"]:
        if name in SUITES:
            members = [(name, POINTS[p]) for p in SUITES[name]]
        elif name in POINTS:
            members = [("adhoc", POINTS[name])]
        elif name.endswith(".py") or "/" in name:
            members = [("experiment", experiment_point(name))]
        else:
            raise unknown_name(name)
        for suite, point in members:
            if point.name not in seen:
                seen.add(point.name)
                chosen.append((suite, point))
    return chosen


def experiment_point(name: str) -> Point:
    """A point for an experiment file: its model, data, batch and precision, as ``pipeline train`` runs it."""
    from pipeline.experiments import experiment_name, load_config

    cfg = load_config(name)
    return Point(experiment_name(name), cfg.model.name, cfg.data.name, cfg.batch_size, cfg.precision,
                 budget=QUICK, experiment=name)


def unknown_name(name: str) -> BenchError:
    close = difflib.get_close_matches(name, [*SUITES, *POINTS], n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return BenchError(f"unknown suite or point '{name}'{hint}; suites: {', '.join(SUITES)}; "
                      f"points: {', '.join(POINTS)}; or the path of an experiment file")
