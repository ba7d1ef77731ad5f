"""Populations: the train states of one or many members, stepped together.

``SoloPopulation`` steps its members one at a time with the solo compiled programs: a run
is a ``SoloPopulation`` of one, and a sweep with ``--no-vmap`` one of many.
``VmapPopulation`` stacks the members' states along a new leading axis and runs K steps of
all of them in ONE compiled program, ``jit(vmap(train step))`` (the purejaxrl pattern). A
member whose loss turns non-finite is frozen inside that program: it keeps its previous state
while the others move on. Both expose the same small interface, so the engine does not know
which it drives.

A feed gives the batches of each call: ``ResidentFeed`` row indices into the split on the
device, ``StreamFeed`` K batches read from disk; one batch order per distinct data seed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.data.device import DeviceSplit, EvalBatches, batch_sharding, data_mesh, place_indices, replicated
from pipeline.data.order import EpochOrder
from pipeline.data.stream import StreamingReader
from pipeline.train.state import StepSpec, TrainState, place_state
from pipeline.train.step import eval_sums, train_many, train_scan, train_step


@dataclass(frozen=True)
class Programs:
    run: Callable
    evaluate: Callable
    steps_per_call: int
    place: Callable | None = None  # a member state onto the programs' shardings (default: ``on_mesh``)
    run_leaves: OverLeaves | None = None  # ``run`` over a state's leaves: what ``SoloPopulation`` calls


class OverLeaves:
    """``fn(state, *args) -> (state, out)`` jitted over the state's leaves, a list of arrays.

    A train state's nnx Variables flatten and unflatten through Python callbacks at every call
    of a jitted function: 0.4 ms of host time a call for the digits MLP, whose call of K steps
    takes 13 ms on a CPU. A list of arrays crosses in C++. So a member's state stays a list of
    leaves between calls, and becomes a ``TrainState`` only where one is needed (evaluation,
    checkpoints). One compiled program per state structure, as for ``fn`` itself.
    """

    def __init__(self, fn: Callable, shardings: StepShardings | None = None):
        self.fn, self.shardings = fn, shardings
        self.by_tree: dict[Any, Callable] = {}

    def jitted(self, treedef: Any) -> Callable:
        """The program for states of this structure: ``(leaves, *args) -> (leaves, out)``."""
        if treedef not in self.by_tree:
            def over_leaves(leaves: list, *args: Any) -> tuple[list, Any]:
                state, out = self.fn(jax.tree.unflatten(treedef, leaves), *args)
                return jax.tree.leaves(state), out

            over_leaves.__name__ = getattr(self.fn, "func", self.fn).__name__  # compile logs name the step
            s = self.shardings
            if s is None:
                self.by_tree[treedef] = jax.jit(over_leaves, donate_argnums=0)
            else:
                state = jax.tree.leaves(s.state)
                self.by_tree[treedef] = jax.jit(over_leaves, donate_argnums=0, in_shardings=(state, *s.call_args),
                                                out_shardings=(state, s.replicated))
        return self.by_tree[treedef]


@dataclass(frozen=True)
class StepShardings:
    """Explicit shardings of a run's programs: the state's (by the FSDP rule), the data arguments'
    of a call (after the state), an evaluation's, and the replicated outputs (metrics)."""

    state: Any
    call_args: tuple
    eval_args: tuple
    replicated: Any


def on_mesh(tree: Any) -> Any:
    """Committed like the data (and like the programs' outputs), so each program compiles once."""
    return jax.device_put(tree, replicated(data_mesh()))


def split_members(tree: Any) -> Any:
    """Members (the leading axis) split over the devices when their count divides, else replicated.

    Split, each device steps its own members and nothing passes between devices; replicated,
    each member's batch is split instead (data parallelism, as a run does).
    """
    mesh = data_mesh()
    return jax.device_put(tree, batch_sharding(mesh, jax.tree.leaves(tree)[0].shape[0]))


def members_split(count: int) -> bool:
    return jax.device_count() > 1 and count % jax.device_count() == 0


def stack(states: list[TrainState]) -> TrainState:
    """Member states along a new leading axis, stacked on the host (no small programs to compile)."""
    return jax.tree.map(lambda *leaves: np.stack(leaves), *jax.device_get(states))


def unstack(state: Any, size: int) -> list[Any]:
    """Host arrays in: host arrays out (each member is placed on the device by its population)."""
    return [jax.tree.map(lambda a, i=i: a[i], state) for i in range(size)]


def _select(keep_P: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    return jnp.where(keep_P.reshape(keep_P.shape + (1,) * (new.ndim - 1)), new, old)


def solo_programs(spec: StepSpec, steps_per_call: int, stream: bool = False,
                  shardings: StepShardings | None = None) -> Programs:
    """K train steps of one member (state donated) and a whole-split evaluation.

    The device-resident program gathers its batches by the row indices it is given; the
    streaming one scans K stacked batches. K is the leading axis of either. With ``shardings``
    both are compiled with explicit in and out shardings (the state keeps its own, so each
    compiles once) and members are placed on them.
    """
    train = functools.partial(train_scan if stream else train_many, spec)
    leaves = OverLeaves(train, shardings)
    if shardings is None:
        run = jax.jit(train, donate_argnums=0)
        return Programs(run, jax.jit(functools.partial(eval_sums, spec)), steps_per_call, run_leaves=leaves)
    s = shardings
    run = jax.jit(train, donate_argnums=0, in_shardings=(s.state, *s.call_args), out_shardings=(s.state, s.replicated))
    evaluate = jax.jit(functools.partial(eval_sums, spec), in_shardings=(s.state, *s.eval_args),
                       out_shardings=s.replicated)
    return Programs(run, evaluate, steps_per_call, functools.partial(place_state, shardings=s.state), leaves)


def vmapped_programs(spec: StepSpec, steps_per_call: int, stream: bool = False) -> Programs:
    """K steps of a whole population (state donated), and its evaluation: two compiled programs.

    Members that share a data seed (the usual case: one data seed, many learning rates) share
    one row of batches (``U`` rows, one per distinct seed; ``which_P`` picks each member's)
    instead of each carrying a copy.
    """
    step_all = jax.vmap(functools.partial(train_step, spec))
    evaluate_all = jax.vmap(functools.partial(eval_sums, spec), in_axes=(0, None, None, None))

    def per_step(rows_UxK: Any, which_P: jax.Array) -> Any:
        """(U, K, ...) -> (K, P, ...): what each member sees at each of the K steps."""
        return jax.tree.map(lambda a: jnp.swapaxes(a[which_P], 0, 1), rows_UxK)

    def scan_population(state: TrainState, live_P: jax.Array, xs_KxP: Any, batch_of: Callable):
        def body(s, x_P):
            return step_all(s, *batch_of(x_P))

        new, metrics_KxP = jax.lax.scan(body, state, xs_KxP)
        metrics_PxK = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), metrics_KxP)
        keep_P = live_P & jnp.all(jnp.isfinite(metrics_PxK["loss"]), axis=1)
        # Frozen (diverged or stopped) members keep their state: one select, inside the program.
        return jax.tree.map(functools.partial(_select, keep_P), new, state), metrics_PxK, keep_P

    def population_train(state, live_P, which_P, x_all, y_all, idx_UxKxB):
        return scan_population(state, live_P, per_step(idx_UxKxB, which_P),
                               lambda idx_PxB: (x_all[idx_PxB], y_all[idx_PxB]))

    def population_train_stream(state, live_P, which_P, x_UxKxB, y_UxKxB):
        return scan_population(state, live_P, per_step((x_UxKxB, y_UxKxB), which_P), lambda batch: batch)

    def population_eval(state: TrainState, x, y, mask):
        return evaluate_all(state, x, y, mask)

    # On CPU, LLVM's -O1 halves this program's compile time and leaves its speed as it was
    # (measured on the digits MLP population of `pipeline bench sweep`): XLA's own optimizations run as usual.
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    run = population_train_stream if stream else population_train
    return Programs(jax.jit(run, donate_argnums=0, compiler_options=options), jax.jit(population_eval),
                    steps_per_call)


class ResidentFeed:
    """Batches of the device-resident split, as row indices: one ``EpochOrder`` per distinct seed.

    ``which`` maps members to seeds; the distinct orders are padded to ``slots`` rows so a
    group's vmapped program has one input shape, and so one compile, for all its populations.
    """

    stream = False

    def __init__(self, seeds: list[int], train: DeviceSplit, batch_size: int, slots: int = 1):
        self.seeds, self.train, self.batch_size, self.slots = list(seeds), train, batch_size, slots
        distinct = list(dict.fromkeys(self.seeds))
        self.orders = [EpochOrder(train.rows, batch_size, seed) for seed in distinct]
        self.which = np.array([distinct.index(seed) for seed in self.seeds], np.int32)

    def population_args(self, first_step: int, k: int) -> tuple:
        """``(x, y, idx)``: idx (max(slots, distinct seeds), K, batch) row indices on the devices.

        Every device holds them whole when the members are split over the devices; otherwise
        the batch is split, as a run splits it.
        """
        idx = [order.indices(first_step, k) for order in self.orders]
        idx = np.stack(idx + [idx[0]] * (self.slots - len(idx)))
        placed = on_mesh(idx) if members_split(len(self.seeds)) else place_indices(idx, data_mesh())
        return self.train.x, self.train.y, placed

    def member_args(self, i: int, first_step: int, k: int) -> tuple:
        """``(x, y, idx)`` of member ``i``: its (K, batch) row indices, the batch split over the devices."""
        idx = place_indices(self.orders[self.which[i]].indices(first_step, k), data_mesh())
        return self.train.x, self.train.y, idx

    def keep_only(self, positions: list[int]) -> ResidentFeed:
        return ResidentFeed([self.seeds[i] for i in positions], self.train, self.batch_size, self.slots)

    def close(self) -> None:
        pass


class StreamFeed:
    """K batches a call read from disk, one reader per distinct data seed, shared by its members.

    Calls must come in step order (the readers prefetch ahead); a population's members all
    stand at the same step, so each reader is read once per call whatever the members.
    """

    stream = True

    def __init__(self, seeds: list[int], open_reader: Callable[[int], StreamingReader], first_step: int,
                 slots: int = 1, readers: dict[int, tuple[StreamingReader, Any]] | None = None):
        self.seeds, self.open_reader, self.slots = list(seeds), open_reader, slots
        distinct = list(dict.fromkeys(self.seeds))
        self.which = np.array([distinct.index(seed) for seed in self.seeds], np.int32)
        self.readers = readers or {}
        for seed in distinct:
            if seed not in self.readers:
                reader = open_reader(seed)
                self.readers[seed] = (reader, reader.iterate(first_step))
        self.distinct = distinct
        self._call: tuple[int, list[tuple]] | None = None  # (first step, the batches of each distinct seed)

    def _batches(self, first_step: int, k: int) -> list[tuple]:
        if self._call is None or self._call[0] != first_step:
            per_seed = []
            for seed in self.distinct:
                stream = self.readers[seed][1]
                batches = [next(stream) for _ in range(k)]
                per_seed.append(tuple(jnp.stack(parts) for parts in zip(*batches, strict=True)))
            self._call = (first_step, per_seed)
        return self._call[1]

    def population_args(self, first_step: int, k: int) -> tuple:
        """``(x, y)``, each (max(slots, distinct seeds), K, batch, ...)."""
        per_seed = self._batches(first_step, k)
        per_seed = per_seed + [per_seed[0]] * (self.slots - len(per_seed))
        return tuple(jnp.stack(parts) for parts in zip(*per_seed, strict=True))

    def member_args(self, i: int, first_step: int, k: int) -> tuple:
        return self._batches(first_step, k)[self.which[i]]

    def keep_only(self, positions: list[int]) -> StreamFeed:
        seeds = [self.seeds[i] for i in positions]
        for seed in set(self.readers) - set(seeds):
            self._close(*self.readers.pop(seed))
        return StreamFeed(seeds, self.open_reader, 0, self.slots, self.readers)

    def reader_state(self, step: int) -> dict:
        """The position of the first member's reader, for the checkpoint's meta."""
        return self.readers[self.seeds[0]][0].state(step)

    @staticmethod
    def _close(reader: StreamingReader, stream: Any) -> None:
        stream.close()
        reader.close()

    def close(self) -> None:
        for reader, stream in self.readers.values():
            self._close(reader, stream)
        self.readers = {}


Feed = ResidentFeed | StreamFeed


class VmapPopulation:
    def __init__(self, programs: Programs, state: TrainState, live: np.ndarray, feed: Feed, first_step: int):
        self.programs, self.run, self.evaluate = programs, programs.run, programs.evaluate
        self.state = split_members(state)
        self.live = split_members(np.asarray(live))
        self.feed = feed
        self.step_count = first_step
        self.which = split_members(feed.which)

    def step(self) -> Any:
        k = self.programs.steps_per_call
        args = self.feed.population_args(self.step_count, k)
        self.state, metrics, self.live = self.run(self.state, self.live, self.which, *args)
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
        self.feed = self.feed.keep_only(slots)
        self.which = split_members(self.feed.which)

    def states(self) -> Any:
        """The members' states stacked, on the devices (what a checkpoint saves)."""
        return self.state


class SoloPopulation:
    """The members, each stepped by the solo compiled programs: a run is one of one."""

    def __init__(self, programs: Programs, states: list[TrainState], live: np.ndarray, feed: Feed,
                 first_step: int):
        placed = [(programs.place or on_mesh)(s) for s in states]
        # Each member as its leaves between calls (``OverLeaves``); every member has one structure.
        self.treedef = jax.tree.structure(placed[0])
        self.leaves = [jax.tree.leaves(s) for s in placed]
        self.programs, self.evaluate = programs, programs.evaluate
        self.run = programs.run_leaves.jitted(self.treedef)
        self.live = np.array(live, bool)
        self.feed = feed
        self.step_count = first_step

    @property
    def members(self) -> list[TrainState]:
        return [self.member(i) for i in range(len(self.leaves))]

    def member(self, i: int) -> TrainState:
        return jax.tree.unflatten(self.treedef, self.leaves[i])

    def step(self) -> Any:
        handles, k = {}, self.programs.steps_per_call
        for i in np.flatnonzero(self.live):
            args = self.feed.member_args(int(i), self.step_count, k)
            self.leaves[i], handles[int(i)] = self.run(self.leaves[i], *args)
        self.step_count += k
        return handles

    def fetch(self, handle: dict[int, Any]) -> dict[str, np.ndarray]:
        host = jax.device_get(handle)
        first = next(iter(host.values()), None)
        if first is None:
            return {}
        if len(self.leaves) == 1:  # a run: no padding to build
            return {k: np.asarray(v)[None] for k, v in first.items()}
        out = {k: np.full((len(self.leaves), len(v)), np.nan) for k, v in first.items()}
        for i, metrics in host.items():
            for k, v in metrics.items():
                out[k][i] = v
        return out

    def eval_sums(self, evals: dict[str, EvalBatches]) -> dict[str, dict[str, np.ndarray]]:
        live = np.flatnonzero(self.live)
        per = {}
        for i in live:
            state = self.member(int(i))
            per[int(i)] = {n: self.evaluate(state, b.x, b.y, b.mask) for n, b in evals.items()}
        per = jax.device_get(per)
        out: dict[str, dict[str, np.ndarray]] = {}
        for split in evals:
            names = per[int(live[0])][split] if len(live) else {}
            out[split] = {k: np.full(len(self.leaves), np.nan) for k in names}
            for i in live:
                for k, v in per[int(i)][split].items():
                    out[split][k][i] = v
        return out

    def stop(self, slots: list[int]) -> None:
        self.live[slots] = False

    def keep_only(self, slots: list[int]) -> None:
        self.leaves = [self.leaves[i] for i in slots]
        self.live = self.live[slots]
        self.feed = self.feed.keep_only(slots)

    def states(self) -> Any:
        """The members' states stacked (on the host)."""
        return stack(self.members)
