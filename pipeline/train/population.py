"""Populations: the train states of one or many members, stepped together.

``SoloPopulation`` steps its members one at a time with the solo programs: a run is a
``SoloPopulation`` of one, and a ``--no-vmap`` sweep one of many. ``VmapPopulation`` stacks the
members' states along a new leading axis and steps them all with the vmapped programs. Both
expose the same small interface (step, fetch, eval_sums, stop, keep_only, states), so the
engine does not know which it drives. Each takes its batches from a feed (``feeds.py``) and
places its states on that feed's mesh.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from pipeline.config import Config
from pipeline.data.device import EvalBatches
from pipeline.optim.traced import init_population
from pipeline.sharding import batch_sharding, replicated
from pipeline.train.compile_ahead import CompileAhead, like
from pipeline.train.exploit import make_exploit
from pipeline.train.feeds import Feed
from pipeline.train.programs import Programs
from pipeline.train.state import InitialStates, StepSpec, TrainState


def split_members(tree: Any, mesh: Mesh) -> Any:
    """Members (the leading axis) split over the devices when their count divides, else replicated.

    Split, each device steps its own members and nothing passes between devices; replicated,
    each member's batch is split instead (data parallelism, as a run does).
    """
    return jax.device_put(tree, batch_sharding(mesh, jax.tree.leaves(tree)[0].shape[0]))


def stack(states: list[TrainState]) -> TrainState:
    """Member states along a new leading axis, stacked on the host (no small programs to compile).

    Each distinct array is copied off its device once, every copy started before any is waited on:
    what ``jax.device_get`` does, without its cost per leaf (members built from one model share its
    arrays, and a population of 8 has some 250 leaves)."""
    distinct = {id(a): a for state in states for a in jax.tree.leaves(state) if isinstance(a, jax.Array)}
    for a in distinct.values():
        a.copy_to_host_async()
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(a) for a in leaves]), *states)


def _put_member(state: Any, live: jax.Array, member: Any, slot: jax.Array) -> tuple[Any, jax.Array]:
    """``member`` into row ``slot`` of the stacked ``state``, and that slot live: one program, whatever the slot."""
    state = jax.tree.map(lambda a, m: jax.lax.dynamic_update_index_in_dim(a, m.astype(a.dtype), slot, 0), state, member)
    return state, jax.lax.dynamic_update_index_in_dim(live, jnp.ones((), live.dtype), slot, 0)


@functools.cache
def _placed_put(treedef: Any, state_shardings: tuple, live_sharding: Any, member_sharding: Any) -> Any:
    """``_put_member`` compiled to leave the population where it was (its outputs placed as its inputs)
    and to place the new member itself: no placement calls around it. One per placement, so every
    population of a group (and the compile ahead of its first put) shares it."""
    placed = jax.tree.unflatten(treedef, state_shardings)
    return jax.jit(_put_member, donate_argnums=(0, 1), in_shardings=(placed, live_sharding, member_sharding, None),
                   out_shardings=(placed, live_sharding))


def fresh_population(initial: InitialStates, cfgs: list[Config]) -> tuple[list[StepSpec], TrainState]:
    """``initial(cfg)`` for each of ``cfgs``: their specs, and their states stacked (``stack``), leaf for leaf.

    Members built from one model (its arrays shared) have their optimizer states made together, by
    one compiled call (``traced.init_population``), instead of a call each: on a CPU that one call
    costs about what each of the calls it replaces did, and the optimizer's leaves (most of a
    state's) come out stacked."""
    built = [initial(cfg, optimizer=False) for cfg in cfgs]
    specs, states = [spec for spec, _ in built], [state for _, state in built]
    first = jax.tree.leaves(states[0].params)
    one_model = all(all(a is b for a, b in zip(first, jax.tree.leaves(s.params))) for s in states)
    opt_state = init_population([spec.tx for spec in specs], states[0].params) if one_model else None
    if opt_state is None:
        return specs, stack([s.replace(opt_state=spec.tx.init(s.params)) for spec, s in zip(specs, states)])
    return specs, stack(states).replace(opt_state=opt_state)


def unstack(state: Any, size: int) -> list[Any]:
    """Host arrays in: host arrays out (each member is placed on the device by its population)."""
    return [jax.tree.map(lambda a, i=i: a[i], state) for i in range(size)]


def inherit_order(feed: Feed, parents: np.ndarray) -> Feed:
    """PBT: each member's data order becomes its parent's (``parents[i]``), on the host."""
    feed.seeds = [feed.seeds[int(p)] for p in parents]
    feed.which = np.asarray(feed.which)[np.asarray(parents)]
    return feed


class VmapPopulation:
    def __init__(self, programs: Programs, state: TrainState, live: np.ndarray, feed: Feed, first_step: int):
        self.programs, self.run, self.evaluate = programs, programs.run, programs.evaluate
        self.feed, self.mesh = feed, feed.mesh
        self.state = split_members(state, self.mesh)
        self.live = split_members(np.asarray(live), self.mesh)
        self.step_count = first_step
        self.which = split_members(feed.which, self.mesh)
        self.ahead: dict[str, CompileAhead] = {}  # small programs being compiled beside the calls
        self.exploit_program: tuple[tuple[int, ...] | None, Any] = (None, None)  # (leaf order, program)

    def step(self, k: int | None = None) -> Any:
        """One call of ``k`` steps (default: the programs' K) for every member."""
        k = k or self.programs.steps_per_call
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

    def _wait_ahead(self, name: str) -> None:
        """A program compiled ahead is done compiling before its first call (never compiled twice)."""
        ahead = self.ahead.pop(name, None)
        if ahead is not None:
            ahead.wait()

    def _put_program(self) -> Any:
        shardings, treedef = jax.tree.flatten(self._state_shardings())
        return _placed_put(treedef, tuple(shardings), self.live.sharding, replicated(self.mesh))

    def _state_shardings(self) -> Any:
        return jax.tree.map(lambda a: a.sharding, self.state)

    def put_ahead(self, member: TrainState) -> None:
        """Compile ``put`` for members like ``member`` now, beside the next calls (``compile_ahead``)."""
        self.ahead["put"] = CompileAhead(self._put_program(), like(self.state), like(self.live), like(member),
                                         like(np.int32(0)))

    def put(self, slot: int, state: TrainState) -> None:
        """A new member's state into ``slot``, live from the next call (a refill: no shape changes)."""
        self._wait_ahead("put")
        self.state, self.live = self._put_program()(self.state, self.live, state, np.int32(slot))

    def keep_only(self, slots: list[int]) -> None:
        """Repack to the given slots (successive halving frees the stopped members' compute)."""
        idx = jnp.asarray(slots)  # on the device, then re-split: no round trip through the host
        self.state = split_members(jax.tree.map(lambda a: a[idx], self.state), self.mesh)
        self.live = split_members(self.live[idx], self.mesh)
        self.feed = self.feed.keep_only(slots)
        self.which = split_members(self.feed.which, self.mesh)

    def states(self) -> Any:
        """The members' states stacked, on the devices (what a checkpoint saves)."""
        return self.state

    def _exploit_program(self, order: tuple[int, ...]) -> Any:
        if self.exploit_program[0] != order:
            placed = (self._state_shardings(), self.which.sharding)
            self.exploit_program = (order, make_exploit(tuple((i,) for i in order), placed))
        return self.exploit_program[1]

    @staticmethod
    def _exploit_args(parents: np.ndarray, hparams: dict[int, np.ndarray]) -> tuple:
        order = tuple(sorted(hparams))
        return jnp.asarray(parents, jnp.int32), tuple(jnp.asarray(hparams[i]) for i in order)

    def exploit_ahead(self, parents: np.ndarray, hparams: dict[int, np.ndarray]) -> None:
        """Compile ``exploit`` for arguments like these now, beside the next calls (``compile_ahead``)."""
        program = self._exploit_program(tuple(sorted(hparams)))
        self.ahead["exploit"] = CompileAhead(program, like(self.state), like(self.which),
                                             *like(self._exploit_args(parents, hparams)))

    def exploit(self, parents: np.ndarray, hparams: dict[int, np.ndarray]) -> None:
        """PBT: member i becomes a copy of member ``parents[i]`` (its whole state and data order), then
        takes the values ``hparams`` ({leaf index: (P,) values}); one compiled gather, whoever copies whom."""
        self._wait_ahead("exploit")
        program = self._exploit_program(tuple(sorted(hparams)))
        self.state, self.which = program(self.state, self.which, *self._exploit_args(parents, hparams))
        self.feed = inherit_order(self.feed, parents)


class SoloPopulation:
    """The members, each stepped by the solo compiled programs: a run is one of one."""

    def __init__(self, programs: Programs, states: list[TrainState], live: np.ndarray, feed: Feed,
                 first_step: int):
        # Committed like the data and the programs' outputs, so each program compiles once.
        place = programs.place or (lambda tree: jax.device_put(tree, replicated(feed.mesh)))
        placed = [place(s) for s in states]
        self.place = place
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

    def step(self, k: int | None = None) -> Any:
        """One call of ``k`` steps (default: the programs' K) for each live member."""
        handles, k = {}, k or self.programs.steps_per_call
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

    def put(self, slot: int, state: TrainState) -> None:
        """A new member's state into ``slot``, live from the next call (a refill)."""
        self.leaves[slot] = jax.tree.leaves(self.place(jax.device_get(state)))
        self.live[slot] = True

    def keep_only(self, slots: list[int]) -> None:
        self.leaves = [self.leaves[i] for i in slots]
        self.live = self.live[slots]
        self.feed = self.feed.keep_only(slots)

    def states(self) -> Any:
        """The members' states stacked (on the host)."""
        return stack(self.members)

    def exploit_ahead(self, parents: np.ndarray, hparams: dict[int, np.ndarray]) -> None:
        """Nothing to compile ahead: a member's exploit is a copy of its buffers, no program."""

    def exploit(self, parents: np.ndarray, hparams: dict[int, np.ndarray]) -> None:
        """What ``VmapPopulation.exploit`` does, member by member: a copied member gets its own buffers
        (each member's are donated to its calls)."""
        old = list(self.leaves)
        for i, parent in enumerate(int(p) for p in parents):
            leaves = list(old[parent])
            if parent != i:
                leaves = [jax.device_put(a, a.sharding, may_alias=False) for a in leaves]
            for j, values in hparams.items():
                a = leaves[j]
                leaves[j] = jax.device_put(np.broadcast_to(np.asarray(values[i], a.dtype), a.shape), a.sharding)
            self.leaves[i] = leaves
        self.feed = inherit_order(self.feed, parents)
