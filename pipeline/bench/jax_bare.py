"""The floor for framework overhead: a plain ``jax.jit`` + Optax loop on device batches.

Written the way a person writes it by hand: the same NNX model merged inside a jitted
step, ``optax.adam``, a cross-entropy (or squared error) loss, the batches gathered once
on the host and placed on the device before timing. ``jax_bare`` dispatches one step
per call; ``jax_bare_scan`` runs the same step K times in one ``lax.scan`` per call, as
the pipeline does (reported separately, so both floors are visible).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pipeline.bench.measure import Measurement, Runner, check_fits, device_peak_bytes, program_bytes, xla_flops
from pipeline.bench.timing import Timing
from pipeline.bench.workload import Workload
from pipeline.models import build_model

BATCHES_ON_DEVICE = 16  # distinct batches the per-step loop cycles through


def make_step(workload: Workload):
    """(step, params, opt_state, rest): a pure step on (params, opt_state, rest, x, y)."""
    cfg = workload.cfg
    model = build_model(cfg.model, workload.info.feature_shape, workload.info.output_size, cfg.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(cfg.optimizer.learning_rate)
    dtype = jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32
    regression = workload.info.task == "regression"

    def loss_fn(params, rest, x, y):
        params = jax.tree.map(lambda a: a.astype(dtype), params)
        if jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(dtype)
        model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables: batch norm updates them
        out = model(x).astype(jnp.float32)  # train mode: batch statistics where the model has them
        if regression:
            loss = jnp.mean((out - y.reshape(out.shape)) ** 2)
        else:
            loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
        return loss, nnx.split(model, nnx.Param, ...)[2]

    def step(params, opt_state, rest, x, y):
        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, y)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, opt_state = tx.update(grads, opt_state, params)
        new_rest = jax.tree.map(lambda n, o: n.astype(o.dtype), new_rest, rest)
        return optax.apply_updates(params, updates), opt_state, new_rest, loss

    return step, params, tx.init(params), rest


class BareRunner(Runner):
    """One jitted step per dispatch, cycling through batches already on the device."""

    impl = "jax_bare"

    def __init__(self, workload: Workload):
        super().__init__()
        self.workload = workload

    def setup(self) -> None:
        step, params, opt_state, rest = make_step(self.workload)
        xs, ys = self.workload.host_batches(BATCHES_ON_DEVICE)
        self.batches = [(jax.device_put(xs[i]), jax.device_put(ys[i])) for i in range(BATCHES_ON_DEVICE)]
        self.step = jax.jit(step, donate_argnums=(0, 1, 2))
        start = time.perf_counter()
        program = self.step.lower(params, opt_state, rest, *self.batches[0]).compile()
        self.m.compile_s = time.perf_counter() - start
        self.m.flops_xla = xla_flops(program)
        self.m.mem_program_bytes = program_bytes(program)
        check_fits(program, "the bare step")
        self.carry, self.count = (params, opt_state, rest), 0

    def run(self, units: int) -> None:
        p, o, r = self.carry
        for _ in range(units):
            x, y = self.batches[self.count % BATCHES_ON_DEVICE]
            p, o, r, _loss = self.step(p, o, r, x, y)
            self.count += 1
        jax.block_until_ready(p)
        self.carry = (p, o, r)

    def result(self, timing: Timing) -> Measurement:
        m = super().result(timing)
        m.mem_peak_bytes = device_peak_bytes()
        return m

    def close(self) -> None:
        self.carry = self.batches = self.step = None


class BareScanRunner(BareRunner):
    """The same step K times in one ``lax.scan`` per dispatch, over K batches on the device."""

    impl = "jax_bare_scan"

    def __init__(self, workload: Workload, steps_per_call: int):
        super().__init__(workload)
        self.steps_per_unit = steps_per_call

    def setup(self) -> None:
        step, params, opt_state, rest = make_step(self.workload)
        xs, ys = self.workload.host_batches(self.steps_per_unit)
        self.xs, self.ys = jax.device_put(xs), jax.device_put(ys)

        def many(params, opt_state, rest, xs, ys):
            def body(carry, batch):
                p, o, r, loss = step(*carry, *batch)
                return (p, o, r), loss

            return jax.lax.scan(body, (params, opt_state, rest), (xs, ys))

        self.many = jax.jit(many, donate_argnums=(0, 1, 2))
        start = time.perf_counter()
        program = self.many.lower(params, opt_state, rest, self.xs, self.ys).compile()
        self.m.compile_s = time.perf_counter() - start
        self.m.mem_program_bytes = program_bytes(program)
        check_fits(program, "the bare scan")
        self.carry = (params, opt_state, rest)

    def run(self, units: int) -> None:
        carry = self.carry
        for _ in range(units):
            carry, _losses = self.many(*carry, self.xs, self.ys)
        jax.block_until_ready(carry)
        self.carry = carry

    def close(self) -> None:
        self.carry = self.xs = self.ys = self.many = None
