"""The compiled programs of a population: K train steps a call and a whole-split evaluation.

``solo_programs`` step one member (a run, or a ``--no-vmap`` sweep's members one at a time);
``vmapped_programs`` step a whole population in ONE program, ``jit(vmap(train step))`` (the
purejaxrl pattern), freezing a member whose loss turns non-finite inside that program.
The state is donated to every train call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from pipeline.train.state import StepSpec, TrainState, place_state
from pipeline.train.step import eval_sums, train_many, train_scan, train_step


@dataclass(frozen=True)
class Programs:
    run: Callable
    evaluate: Callable
    steps_per_call: int
    place: Callable | None = None  # a member state onto the programs' shardings (default: replicated)
    run_leaves: OverLeaves | None = None  # ``run`` over a state's leaves: what ``SoloPopulation`` calls


class OverLeaves:
    """``fn(state, *args) -> (state, out)`` jitted over the state's leaves, a list of arrays.

    A train state's nnx Variables flatten and unflatten through Python callbacks at every call
    of a jitted function, a host cost that is a visible share of a small model's call; a list of
    arrays crosses in C++ (docs/benchmarks.md has the figures). So a member's state stays a list of
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

    # On CPU, LLVM's -O1 compiles this program in about half the time at the same speed (`pipeline
    # bench sweep`); XLA's own optimizations run as usual.
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    run = population_train_stream if stream else population_train
    return Programs(jax.jit(run, donate_argnums=0, compiler_options=options), jax.jit(population_eval),
                    steps_per_call)
