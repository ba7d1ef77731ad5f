"""Benchmark points and the suites that group them.

A point is one (model, size, batch, precision) to measure; its model is given as
config overrides, so the pipeline runs it exactly as ``pipeline train`` would. The data
is a built-in dataset or a synthetic one made on first use (see ``synthetic.py``).

A point's family says how it is measured: a model family (``mlp``, ``cnn``,
``transformer``, or any registered one) side by side with the peers; ``data`` with the
store's readers; ``loop``, ``first-step``, ``sweep``, ``sweep-run``, ``stream`` and
``trace`` in the ways ``results.GROUPS`` names, with ``model`` as the model family.
Suite names, point names and experiment files (paths ending in ``.py``) never overlap,
so ``pipeline bench NAME`` is never ambiguous (tests/bench/test_suites.py checks it).
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
    family: str  # a model family (mlp, cnn, resnet, vit, transformer, ...) or a way of measuring (data, loop, ...)
    data: str  # a built-in dataset name or a synthetic spec (synthetic.py)
    batch: int
    precision: str = "fp32"
    overrides: tuple[str, ...] = ()  # KEY=VALUE for the model (and anything else in Config)
    steps_per_call: int = 0  # 0: the loop's automatic choice, as in `pipeline train`
    budget: Budget = field(default_factory=Budget)
    experiment: str = ""  # an experiment file or name: its config is the point's (its own model included)
    model: str = ""  # the model family of a point whose family is a way of measuring (loop, sweep, ...)
    population: int = 0  # sweep families: members of the population
    accelerator: bool = False  # sized for an accelerator: the accel suite runs `cpu_standin` on a CPU instead
    cpu_standin: str = ""

    @property
    def model_overrides(self) -> tuple[str, ...]:
        return self.overrides if self.experiment else (f"model.name={self.model or self.family}", *self.overrides)


QUICK = Budget(warmup=2, rounds=15, round_s=0.1)
# cpu-small's points sit near their scanned floor: twice the cycles for a tighter paired ratio.
PAIRED = Budget(warmup=2, rounds=30, round_s=0.1)
ACCEL = Budget(warmup=2, rounds=5, round_s=0.5)
SMOKE = Budget(warmup=1, rounds=3, round_s=0.02, max_units=5)


PROCESSES = Budget(warmup=0, rounds=3)  # whole processes: `rounds` of each way, the median kept
TRACE = Budget(warmup=1, rounds=3)  # calls traced after one untraced warm-up call


def _lm(name: str, d: int, layers: int, heads: int, context: int, vocab: int, batch: int,
        precision: str = "bf16", k: int = 10, family: str = "transformer", budget: Budget = ACCEL,
        standin: str = "") -> Point:
    return Point(name, family, f"tokens:{vocab}x{context}", batch, precision,
                 (f"model.d_model={d}", f"model.n_layers={layers}", f"model.n_heads={heads}",
                  f"model.context={context}"), steps_per_call=k, budget=budget, model="transformer",
                 accelerator=bool(standin) or vocab > 1024, cpu_standin=standin)


def _digits_mlp(name: str, family: str, budget: Budget, population: int = 0, extra: tuple[str, ...] = ()) -> Point:
    return Point(name, family, "digits", 32, overrides=("model.hidden=32", *extra), budget=budget, model="mlp",
                 population=population)


POINTS: dict[str, Point] = {p.name: p for p in [
    # Tiny shapes for a test of the whole command.
    Point("tiny-mlp", "mlp", "digits", 16, overrides=("model.hidden=8",), budget=SMOKE),
    # Small models on the 8x8 digits: bound by framework overhead, not arithmetic.
    Point("mlp-h32-b32", "mlp", "digits", 32, overrides=("model.hidden=32",), budget=PAIRED),
    Point("cnn-c8-16-b32", "cnn", "digits", 32, overrides=("model.channels=8,16", "model.hidden=32"),
          budget=PAIRED),
    Point("mlp-h128-b64", "mlp", "digits", 64, overrides=("model.hidden=128",), budget=QUICK),
    # Sizes where arithmetic starts to matter.
    Point("mlp-h1024x2-b256", "mlp", "images:28x28x1", 256, overrides=("model.hidden=1024,1024",), budget=QUICK),
    Point("mlp-h4096x3-b1024-bf16", "mlp", "images:28x28x1", 1024, "bf16",
          overrides=("model.hidden=4096,4096,4096",), steps_per_call=20, budget=ACCEL, accelerator=True,
          cpu_standin="mlp-h512x2-b128-bf16"),
    Point("mlp-h512x2-b128-bf16", "mlp", "images:28x28x1", 128, "bf16", overrides=("model.hidden=512,512",),
          steps_per_call=20, budget=QUICK),
    Point("cnn-c32-64-b128", "cnn", "images:32x32x3", 128, overrides=("model.channels=32,64", "model.hidden=128"),
          steps_per_call=20, budget=QUICK),
    Point("cnn-c64-128-256-b256-bf16", "cnn", "images:32x32x3", 256, "bf16",
          overrides=("model.channels=64,128,256", "model.hidden=256"), steps_per_call=10, budget=ACCEL,
          accelerator=True, cpu_standin="cnn-c8-16-b32"),
    # Image families beside the CNN: ResNet-20 (0.27M) and a ViT of 2.7M (images_resnet, images_vit), each
    # with a tiny CPU stand-in of its family.
    Point("resnet20-b128-bf16", "resnet", "images:32x32x3", 128, "bf16", overrides=("model.depth=20",),
          steps_per_call=10, budget=ACCEL, accelerator=True, cpu_standin="resnet8-w8-b32"),
    Point("resnet8-w8-b32", "resnet", "images:32x32x3", 32, overrides=("model.depth=8", "model.width=8"),
          steps_per_call=10, budget=QUICK),
    Point("vit-d192-l6-p4-b128-bf16", "vit", "images:32x32x3", 128, "bf16",
          overrides=("model.patch=4", "model.dim=192", "model.depth=6", "model.heads=3"), steps_per_call=10,
          budget=ACCEL, accelerator=True, cpu_standin="vit-d32-l1-p8-b32"),
    Point("vit-d32-l1-p8-b32", "vit", "images:32x32x3", 32,
          overrides=("model.patch=8", "model.dim=32", "model.depth=1", "model.heads=2"), steps_per_call=10,
          budget=QUICK),
    # Decoder language models, named by their approximate parameter count.
    _lm("lm-mini-bf16", 128, 2, 4, 128, 512, 8, k=5, budget=QUICK),
    _lm("lm-5m", 256, 6, 4, 256, 256, 8, precision="fp32", k=5),
    _lm("lm-25m", 512, 8, 8, 512, 256, 16),
    _lm("lm-125m", 768, 12, 12, 1024, 50304, 16, standin="lm-mini-bf16"),
    _lm("lm-350m", 1024, 24, 16, 1024, 50304, 16),
    _lm("lm-1b", 2048, 18, 16, 1024, 50304, 8, k=5),
    # A jax.profiler trace of the pipeline's steps (the accel suite).
    _lm("trace-lm-125m", 768, 12, 12, 1024, 50304, 16, family="trace", budget=TRACE, standin="trace-lm-mini"),
    _lm("trace-lm-mini", 128, 2, 4, 128, 512, 8, k=5, family="trace", budget=TRACE),
    # Reader throughput (the data suite).
    Point("read-256k-x64", "data", "table:262144x64", 4096, budget=QUICK),
    # The training loop (the loop suite): K steps per dispatch against one; a warm compilation cache.
    _digits_mlp("loop-mlp-h32-b32", "loop", QUICK),
    _digits_mlp("first-step-mlp-h32-b32", "first-step", PROCESSES),
    # Sweeps: 8 learning rates x 4 seeds, steady state in one process and whole sweeps as processes.
    _digits_mlp("sweep-mlp-h32-b32-x32", "sweep", QUICK, population=32),
    _digits_mlp("sweep-run-mlp-h32-b32-x32", "sweep-run", Budget(warmup=0, rounds=1), population=32,
                extra=("steps=2000",)),
    # Training fed by the streaming reader against the device-resident split (the stream-train suite).
    Point("stream-mlp-h1024x2-b256", "stream", "images:28x28x1", 256, overrides=("model.hidden=1024,1024",),
          steps_per_call=50, budget=Budget(warmup=1, rounds=5, round_s=0.5), model="mlp"),
]}

SUITES: dict[str, tuple[str, ...]] = {
    "tiny": ("tiny-mlp",),
    "cpu-small": ("mlp-h32-b32", "cnn-c8-16-b32"),
    "mlp": ("mlp-h32-b32", "mlp-h128-b64", "mlp-h1024x2-b256", "mlp-h4096x3-b1024-bf16"),
    "cnn": ("cnn-c8-16-b32", "cnn-c32-64-b128", "cnn-c64-128-256-b256-bf16"),
    "transformer": ("lm-5m", "lm-25m", "lm-125m", "lm-350m", "lm-1b"),
    "data": ("read-256k-x64",),
    "loop": ("loop-mlp-h32-b32", "first-step-mlp-h32-b32"),
    "sweep": ("sweep-mlp-h32-b32-x32", "sweep-run-mlp-h32-b32-x32"),
    "stream-train": ("stream-mlp-h1024x2-b256",),
    # `pipeline bench accel` (scripts/bench_accel): the MFU target's point first, then one of each kind,
    # the larger language models last. On a CPU the points sized for accelerators are recorded as
    # skipped and their stand-ins run instead.
    "accel": ("lm-125m", "mlp-h32-b32", "mlp-h4096x3-b1024-bf16", "cnn-c64-128-256-b256-bf16",
              "resnet20-b128-bf16", "vit-d192-l6-p4-b128-bf16",
              "sweep-mlp-h32-b32-x32", "trace-lm-125m", "lm-350m", "lm-1b"),
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
