"""Populations: the train states of many trials, stepped together.

``VmapPopulation`` stacks the members' solo ``TrainState``s along a new leading axis and
runs K steps of all of them in ONE compiled program, ``jit(vmap(train_many))`` over the
device-resident data (the purejaxrl pattern). A member whose loss turns non-finite is
frozen inside that program: it keeps its previous state while the others move on.

``SoloPopulation`` holds the same members and steps them one at a time with the solo
programs of ``pipeline train`` (``--no-vmap``): the reference a population must match.
Both expose the same small interface, so the sweep loop does not know which it drives.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.data.device import DeviceSplit, EvalBatches, batch_sharding, data_mesh, place_indices, replicated
from pipeline.data.order import EpochOrder
from pipeline.train.loop import compiled
from pipeline.train.state import StepSpec, TrainState
from pipeline.train.step import eval_sums, train_step

# How many times each program was traced, i.e. compiled: tests assert on it.
TRACES: collections.Counter[str] = collections.Counter()


@dataclass(frozen=True)
class Programs:
    run: Callable
    evaluate: Callable
    steps_per_call: int


def on_mesh(tree: Any) -> Any:
    """Committed like the data (and like the programs' outputs), so each program compiles once."""
    return jax.device_put(tree, replicated(data_mesh()))


def split_members(tree: Any) -> Any:
    """Members (the leading axis) split over the devices when their count divides, else replicated.

    Split, each device steps its own members and nothing passes between devices; replicated,
    each member's batch is split instead (data parallelism, as ``pipeline train`` does).
    """
    mesh = data_mesh()
    return jax.device_put(tree, batch_sharding(mesh, jax.tree.leaves(tree)[0].shape[0]))


def members_split(count: int) -> bool:
    return jax.device_count() > 1 and count % jax.device_count() == 0


def stack(states: list[TrainState]) -> TrainState:
    """Member states along a new leading axis, stacked on the host (no small programs to compile)."""
    return jax.tree.map(lambda *leaves: np.stack(leaves), *jax.device_get(states))


def _select(keep_P: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    return jnp.where(keep_P.reshape(keep_P.shape + (1,) * (new.ndim - 1)), new, old)


def vmapped_programs(spec: StepSpec, steps_per_call: int):
    """K steps of a whole population (state donated), and its evaluation: two compiled programs.

    ``train_many`` vmapped, with one change measured to matter: members that share a data
    seed (the usual case: one data seed, many learning rates) share one array of batch
    indices (``idx_UxKxB``, one row per distinct seed) instead of each carrying a copy.
    """
    step_all = jax.vmap(functools.partial(train_step, spec))
    evaluate_all = jax.vmap(functools.partial(eval_sums, spec), in_axes=(0, None, None, None))

    def run(state: TrainState, live_P: jax.Array, which_P: jax.Array, x_all, y_all, idx_UxKxB: jax.Array):
        TRACES["train"] += 1
        idx_KxPxB = jnp.swapaxes(idx_UxKxB[which_P], 0, 1)

        def body(s, idx_PxB):
            return step_all(s, x_all[idx_PxB], y_all[idx_PxB])

        new, metrics_KxP = jax.lax.scan(body, state, idx_KxPxB)
        metrics_PxK = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), metrics_KxP)
        keep_P = live_P & jnp.all(jnp.isfinite(metrics_PxK["loss"]), axis=1)
        # Frozen (diverged or stopped) members keep their state: one select, inside the program.
        return jax.tree.map(functools.partial(_select, keep_P), new, state), metrics_PxK, keep_P

    def evaluate(state: TrainState, x, y, mask):
        TRACES["eval"] += 1
        return evaluate_all(state, x, y, mask)

    # On CPU, LLVM's -O1 halves this program's compile time and leaves its speed as it was
    # (measured on the digits MLP population of scripts/bench_sweep): XLA's own optimizations run as usual.
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    return Programs(jax.jit(run, donate_argnums=0, compiler_options=options), jax.jit(evaluate), steps_per_call)


def solo_programs(spec: StepSpec, steps_per_call: int) -> Programs:
    """The two programs of ``pipeline train`` itself."""
    return Programs(*compiled(spec), steps_per_call)


class MemberOrders:
    """Every member's batch order: one ``EpochOrder`` per distinct data seed.

    ``which`` maps members to seeds; the distinct orders are padded to ``slots`` rows so a
    group's vmapped program has one input shape, and so one compile, for all its populations.
    """

    def __init__(self, seeds: list[int], train: DeviceSplit, batch_size: int, slots: int = 1):
        self.seeds, self.train, self.batch_size, self.slots = list(seeds), train, batch_size, slots
        distinct = list(dict.fromkeys(self.seeds))
        self.orders = [EpochOrder(train.rows, batch_size, seed) for seed in distinct]
        self.which = np.array([distinct.index(seed) for seed in self.seeds], np.int32)

    def distinct(self, first_step: int, k: int) -> jax.Array:
        """(max(slots, distinct seeds), K, batch) row indices on the devices.

        Every device holds them whole when the members are split over the devices; otherwise
        the batch is split, as ``pipeline train`` splits it.
        """
        idx = [order.indices(first_step, k) for order in self.orders]
        idx = np.stack(idx + [idx[0]] * (self.slots - len(idx)))
        return on_mesh(idx) if members_split(len(self.seeds)) else place_indices(idx, data_mesh())

    def member(self, i: int, first_step: int, k: int) -> jax.Array:
        """(K, batch) row indices of member ``i``, placed as ``pipeline train`` places them."""
        return place_indices(self.orders[self.which[i]].indices(first_step, k), data_mesh())

    def keep_only(self, positions: list[int]) -> MemberOrders:
        return MemberOrders([self.seeds[i] for i in positions], self.train, self.batch_size, self.slots)


class VmapPopulation:
    def __init__(self, programs: Programs, state: TrainState, live: np.ndarray, orders: MemberOrders,
                 first_step: int):
        self.programs, self.run, self.evaluate = programs, programs.run, programs.evaluate
        self.state = split_members(state)
        self.live = split_members(np.asarray(live))
        self.orders, self.train = orders, orders.train
        self.step_count = first_step
        self.which = split_members(orders.which)

    def step(self) -> Any:
        k = self.programs.steps_per_call
        idx = self.orders.distinct(self.step_count, k)
        self.state, metrics, self.live = self.run(self.state, self.live, self.which, self.train.x, self.train.y, idx)
        self.step_count += k
        return metrics

    def fetch(self, handle: Any) -> dict[str, np.ndarray]:
        """Device metrics of one call -> ``{name: (P, K) array}`` on the host."""
        return {k: np.asarray(v) for k, v in jax.device_get(handle).items()}

    def eval_sums(self, evals: dict[str, EvalBatches]) -> dict[str, dict[str, np.ndarray]]:
        """``{split: {sum name: (P,) array}}`` for every member."""
        out = {name: self.evaluate(self.state, b.x, b.y, b.mask) for name, b in evals.items()}
        return {s: {k: np.asarray(v) for k, v in sums.items()} for s, sums in jax.device_get(out).items()}

    def stop(self, slots: list[int]) -> None:
        mask = np.ones(self.live.shape, bool)
        mask[slots] = False
        self.live = self.live & jnp.asarray(mask)

    def keep_only(self, slots: list[int]) -> None:
        """Repack to the given slots (successive halving frees the stopped members' compute)."""
        idx = jnp.asarray(slots)  # on the device, then re-split: no round trip through the host
        self.state = split_members(jax.tree.map(lambda a: a[idx], self.state))
        self.live = split_members(self.live[idx])
        self.orders = self.orders.keep_only(slots)
        self.which = split_members(self.orders.which)

    def host_state(self) -> Any:
        return jax.device_get(self.state)


class SoloPopulation:
    """The same members, each stepped by the solo compiled programs of ``pipeline train``."""

    def __init__(self, programs: Programs, states: list[TrainState], live: np.ndarray, orders: MemberOrders,
                 first_step: int):
        self.programs, self.run, self.evaluate = programs, programs.run, programs.evaluate
        self.states = [on_mesh(s) for s in states]
        self.live = np.array(live, bool)
        self.orders, self.train = orders, orders.train
        self.step_count = first_step

    def step(self) -> Any:
        handles, k = {}, self.programs.steps_per_call
        for i in np.flatnonzero(self.live):
            idx = self.orders.member(int(i), self.step_count, k)
            self.states[i], handles[int(i)] = self.run(self.states[i], self.train.x, self.train.y, idx)
        self.step_count += k
        return handles

    def fetch(self, handle: dict[int, Any]) -> dict[str, np.ndarray]:
        host = jax.device_get(handle)
        first = next(iter(host.values()), None)
        if first is None:
            return {}
        out = {k: np.full((len(self.states), len(v)), np.nan) for k, v in first.items()}
        for i, metrics in host.items():
            for k, v in metrics.items():
                out[k][i] = v
        return out

    def eval_sums(self, evals: dict[str, EvalBatches]) -> dict[str, dict[str, np.ndarray]]:
        live = np.flatnonzero(self.live)
        per = {int(i): {n: self.evaluate(self.states[i], b.x, b.y, b.mask) for n, b in evals.items()}
               for i in live}
        per = jax.device_get(per)
        out: dict[str, dict[str, np.ndarray]] = {}
        for split in evals:
            names = per[int(live[0])][split] if len(live) else {}
            out[split] = {k: np.full(len(self.states), np.nan) for k in names}
            for i in live:
                for k, v in per[int(i)][split].items():
                    out[split][k][i] = v
        return out

    def stop(self, slots: list[int]) -> None:
        self.live[slots] = False

    def keep_only(self, slots: list[int]) -> None:
        self.states = [self.states[i] for i in slots]
        self.live = self.live[slots]
        self.orders = self.orders.keep_only(slots)

    def host_state(self) -> Any:
        return stack(self.states)


def unstack(state: Any, size: int) -> list[Any]:
    """Host arrays in: host arrays out (each member is placed on the device by its population)."""
    return [jax.tree.map(lambda a, i=i: a[i], state) for i in range(size)]
