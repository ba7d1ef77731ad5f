"""A refill's put and PBT's exploit compiled ahead, beside the training calls: their first call then
compiles nothing, and does exactly what it does compiled at that call."""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest

from pipeline.train.compile_ahead import like
from tests.sweep.test_pbt import _population

pytestmark = pytest.mark.heavy  # a population trained: `scripts/test --all` (CI) runs it

COMPILES: collections.Counter[str] = collections.Counter()
WATCHED = ("population_exploit", "_put_member")


def _count(event: str, duration: float, **kwargs) -> None:
    name = str(kwargs.get("fun_name", ""))
    if event in ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration"):
        for fun in WATCHED:
            if fun in name:
                COMPILES[(fun, event.rsplit("/", 1)[-1])] += 1


jax.monitoring.register_event_duration_secs_listener(_count)


def _states(pop) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(jax.device_get(pop.states()))]


def test_an_exploit_compiled_ahead_compiles_nothing_at_its_first_call(home):
    results = []
    for ahead in (True, False):
        pop, leaves = _population(home, vmap=True)
        parents = np.array([1, 1, 3, 3])
        hparams = {i: np.asarray([0.5, 0.25, 0.125, 0.0625]) for i in leaves["optimizer.learning_rate"]}
        if ahead:
            pop.exploit_ahead(np.arange(4), hparams)  # what PBT passes: no copy yet, the same shapes
            pop.ahead["exploit"].wait()
        COMPILES.clear()
        pop.exploit(parents, hparams)
        compiled_at_call = sum(COMPILES.values())
        assert compiled_at_call == 0 if ahead else compiled_at_call > 0, COMPILES
        results.append(_states(pop))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_put_compiled_ahead_compiles_nothing_at_its_first_call(home):
    results = []
    for ahead in (True, False):
        pop, _ = _population(home, vmap=True)
        member = jax.tree.map(lambda a: a[2] * 0 + a[3], jax.device_get(pop.states()))  # a host state, as refill's
        member = jax.tree.map(jax.numpy.asarray, member)
        jax.clear_caches()  # the put program is one for the process: compiled afresh in both cases
        if ahead:
            pop.put_ahead(member)
            pop.ahead["put"].wait()
        COMPILES.clear()
        pop.put(1, member)
        compiled_at_call = sum(COMPILES.values())
        assert compiled_at_call == 0 if ahead else compiled_at_call > 0, COMPILES
        results.append(_states(pop))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(np.array_equal(a[1], a[3]) for a in results[0])  # slot 1 now holds what slot 3 held


def test_like_keeps_what_the_compile_cache_keys_on():
    committed = jax.device_put(np.zeros(3, np.float32), jax.devices()[0])
    weak = jax.numpy.asarray(1.0)
    got = like({"c": committed, "w": weak, "h": np.int32(4)})
    assert got["c"].sharding == committed.sharding and got["w"].sharding is None and got["w"].weak_type
    assert (got["h"].shape, got["h"].dtype) == ((), np.int32)
