"""Sweep test helpers: run ``pipeline`` in-process (module-scoped folders) and read back what it wrote."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import Result, records_under
from tests.conftest import run_cli as pipeline  # the sweep tests call it pipeline(...)

# A tiny, quick configuration: every sweep in these tests starts from it.
TINY = ["model.hidden=16", "steps=40", "eval_every=20", "batch_size=32", "--no-progress"]


@dataclass
class Swept:
    result: Result
    summary: dict
    trials: list[dict]  # trials.parquet rows, by trial id
    folder: Path

    def curve(self, trial: int, split: str = "train", name: str = "loss") -> tuple[np.ndarray, np.ndarray]:
        t = pq.read_table(self.folder / "curves.parquet").to_pydict()
        sel = ((np.asarray(t["trial"]) == trial) & (np.asarray(t["split"], object) == split)
               & (np.asarray(t["name"], object) == name))
        return np.asarray(t["step"])[sel], np.asarray(t["value"])[sel]


def read_sweep(folder: Path, result: Result | None = None, summary: dict | None = None) -> Swept:
    rows = sorted(pq.read_table(folder / "trials.parquet").to_pylist(), key=lambda row: row["trial"])
    return Swept(result, summary or {}, rows, folder)


def sweep(*args: str) -> Swept:
    """``pipeline sweep ARGS --json``, which must succeed; vmapped populations unless ``--no-vmap``
    (these tests are about populations: the plan chooser is tested on its own)."""
    forced = () if "--no-vmap" in args or "--vmap" in args else ("--vmap",)
    r = pipeline("sweep", *args, *forced, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out.strip().splitlines()[-1])
    return read_sweep(Path(summary["sweep_dir"]), r, summary)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One store, runs root and sweeps root for a test module, set through the environment."""
    with records_under(tmp_path_factory.mktemp("sweep")) as root:
        yield root


# Traces of the vmapped population's programs, counted from JAX's own monitoring events (each
# trace is one compilation): {"train": N, "eval": M}.
TRACES: collections.Counter[str] = collections.Counter()
_NAMES = {"population_train": "train", "population_train_stream": "train", "population_eval": "eval"}


def _count_trace(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/jaxpr_trace_duration" and kwargs.get("fun_name") in _NAMES:
        TRACES[_NAMES[kwargs["fun_name"]]] += 1


jax.monitoring.register_event_duration_secs_listener(_count_trace)


@pytest.fixture
def traces():
    """Compilations of the population programs during a test."""
    TRACES.clear()
    return TRACES
