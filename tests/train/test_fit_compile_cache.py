"""``pipeline.fit`` in a loop (an Optuna objective) compiles its programs once: the Python API turns
on the command line's persistent compilation cache, unless the process set up a cache of its own."""

from __future__ import annotations

import collections
import os

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

import pipeline
from tests.conftest import records_under

TINY = ["steps=20", "model.hidden=8", "eval_every=10", "plot=false", "data=digits"]
EVENTS: collections.Counter[str] = collections.Counter()


def _count(event: str, duration: float = 0.0, **kwargs) -> None:
    EVENTS[event.rsplit("/", 1)[-1]] += 1


jax.monitoring.register_event_duration_secs_listener(_count)
jax.monitoring.register_event_listener(lambda event, **kwargs: _count(event))


@pytest.fixture
def no_cache_yet():
    """A process whose JAX has no cache folder (as a user's script starts), restored after."""
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", before)
    compilation_cache.reset_cache()


def test_a_second_fit_loads_its_programs_instead_of_compiling(tmp_path, no_cache_yet):
    with records_under(tmp_path):
        pipeline.fit("digits_mlp", overrides=[*TINY, "optimizer.learning_rate=0.01"], run_dir=tmp_path / "a")
        assert jax.config.jax_compilation_cache_dir == os.environ["PIPELINE_COMPILE_CACHE"]
        jax.clear_caches()  # nothing kept in memory: what a second fit finds is on disk
        EVENTS.clear()
        pipeline.fit("digits_mlp", overrides=[*TINY, "optimizer.learning_rate=0.03"], run_dir=tmp_path / "b")
    # A traced value changed: every program the second fit asked for was loaded from disk, none compiled.
    assert EVENTS["compile_requests_use_cache"] >= 2 and EVENTS["cache_misses"] == 0, EVENTS
    assert EVENTS["cache_hits"] == EVENTS["compile_requests_use_cache"]


def test_a_cache_the_user_set_up_is_kept(tmp_path, no_cache_yet):
    mine = tmp_path / "my-cache"
    jax.config.update("jax_compilation_cache_dir", str(mine))
    with records_under(tmp_path):
        pipeline.fit("digits_mlp", overrides=TINY, run_dir=tmp_path / "a")
    assert jax.config.jax_compilation_cache_dir == str(mine)
