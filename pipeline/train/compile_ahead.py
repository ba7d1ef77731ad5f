"""A small program compiled on a thread of its own, beside a population's training calls.

A refill's put and PBT's exploit are compiled at their first use, between two training calls,
where the whole population waits for them (about 0.15 s each on a CPU). Compiled ahead, for the
shapes and placements they will be called with, they cost nothing at that boundary: the
compile overlaps the calls in flight (XLA compiles without the interpreter lock), and the
program's first call finds it in JAX's cache. ``wait`` before that first call, so it is never
compiled twice.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import jax
import numpy as np


def like(tree: Any) -> Any:
    """Each leaf as the abstract value a call would see: shape, dtype, weak type, and its placement
    when it is committed to one (an uncommitted array or a host array goes where the call puts it:
    a program with ``in_shardings`` places it itself)."""

    def one(leaf: Any) -> jax.ShapeDtypeStruct:
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, weak_type=leaf.weak_type,
                                        sharding=leaf.sharding if leaf.committed else None)
        leaf = np.asarray(leaf)
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)

    return jax.tree.map(one, tree)


class CompileAhead:
    def __init__(self, program: Any, *args_like: Any):
        self.thread = threading.Thread(target=self._compile, args=(program, args_like), daemon=True,
                                       name="pipeline-compile-ahead")
        self.thread.start()

    @staticmethod
    def _compile(program: Any, args_like: tuple) -> None:
        # A program that cannot compile fails at its first call instead, with the caller's traceback.
        with contextlib.suppress(Exception):
            program.lower(*args_like).compile()

    def wait(self) -> None:
        self.thread.join()
