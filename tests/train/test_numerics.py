"""Numerical truth of training: gradients, one step by hand, a closed-form solution, determinism.

The reference is an independent numpy float64 implementation of the same MLP and losses:
finite differences of it check ``jax.grad`` of the pipeline's ``loss_fn`` (float32, so the
tolerances are float32's), and its hand-written backward pass plus the textbook update rules
give the parameters after a step of each optimizer.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest
from flax import nnx

from pipeline.bench.pipeline_loop import Batches
from pipeline.config import Config, OptimizerConfig
from pipeline.data import Store, import_dataset
from pipeline.data.dataset import DatasetInfo
from pipeline.experiments import load_config
from pipeline.models import MLPConfig
from pipeline.train.evaluation import finalize
from pipeline.train.prepare import prepare
from pipeline.train.programs import solo_programs
from pipeline.train.run import train
from pipeline.train.state import create_state
from pipeline.train.step import loss_fn, train_step

ACT = {
    "tanh": (np.tanh, lambda h, z: 1 - h**2),
    "gelu": (lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))), None),
    "relu": (lambda z: np.maximum(z, 0), lambda h, z: (z > 0).astype(np.float64)),
}
RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 3)).astype(np.float32)
Y_CLASS = np.array([0, 2, 1, 1, 0, 2], np.int32)
Y_REG = RNG.normal(size=6).astype(np.float32)


def info_for(task: str) -> DatasetInfo:
    classes = 3 if task == "classification" else 0
    return DatasetInfo(name="tiny", task=task, feature_shape=(3,), feature_dtype="float32", label_shape=(),
                       label_dtype="int32" if classes else "float32", num_classes=classes)


def to_numpy(params) -> dict[str, np.ndarray]:
    """Flat float64 copies: 'layers.0.kernel', 'head.bias', ..."""
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]
    return {".".join(str(getattr(k, "key", k)) for k in path): np.asarray(v, np.float64) for path, v in flat}


def np_forward(p: dict[str, np.ndarray], x: np.ndarray, activation: str):
    """Pre-activations, activations and output of the numpy MLP."""
    act = ACT[activation][0]
    zs, hs, h = [], [x.astype(np.float64)], x.astype(np.float64)
    i = 0
    while f"layers.{i}.kernel" in p:
        z = h @ p[f"layers.{i}.kernel"] + p[f"layers.{i}.bias"]
        h = act(z)
        zs.append(z)
        hs.append(h)
        i += 1
    return zs, hs, h @ p["head.kernel"] + p["head.bias"]


def np_loss_and_dout(out: np.ndarray, y: np.ndarray, task: str, smoothing: float):
    """The objective's training loss and its gradient with respect to the model output."""
    if task == "regression":
        err = out - y.reshape(out.shape)
        return np.mean(err**2), 2 * err / err.size
    c = out.shape[-1]
    z = out - out.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    target = np.eye(c)[y] * (1 - smoothing) + smoothing / c
    return -(target * logp).sum(-1).mean(), (np.exp(logp) - target) / len(y)


def np_loss(p, x, y, task, activation, smoothing=0.0) -> float:
    return np_loss_and_dout(np_forward(p, x, activation)[2], y, task, smoothing)[0]


def np_grads(p, x, y, task, activation, smoothing=0.0) -> dict[str, np.ndarray]:
    """Backpropagation by hand."""
    zs, hs, out = np_forward(p, x, activation)
    _, d = np_loss_and_dout(out, y, task, smoothing)
    g = {"head.kernel": hs[-1].T @ d, "head.bias": d.sum(0)}
    d = d @ p["head.kernel"].T
    for i in reversed(range(len(zs))):
        d = d * ACT[activation][1](hs[i + 1], zs[i])
        g[f"layers.{i}.kernel"], g[f"layers.{i}.bias"] = hs[i].T @ d, d.sum(0)
        d = d @ p[f"layers.{i}.kernel"].T
    return g


def finite_differences(p, fn, eps=1e-6) -> dict[str, np.ndarray]:
    grads = {}
    for name, value in p.items():
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus, minus = dict(p), dict(p)
            plus[name] = value.copy()
            plus[name][idx] += eps
            minus[name] = value.copy()
            minus[name][idx] -= eps
            g[idx] = (fn(plus) - fn(minus)) / (2 * eps)
        grads[name] = g
    return grads


def jax_loss_and_grads(cfg: Config, task: str, x, y):
    spec, state = create_state(cfg, info_for(task), total_steps=10)
    fn = jax.jit(lambda params: jax.value_and_grad(loss_fn, has_aux=True)(params, spec, state, x, y))
    (loss, _), grads = fn(state.params)
    return state, float(loss), to_numpy(grads)


@pytest.mark.parametrize("task, activation, smoothing", [
    ("classification", "tanh", 0.1), ("classification", "gelu", 0.0), ("regression", "relu", 0.0),
])
def test_gradients_match_finite_differences(task, activation, smoothing):
    y = Y_CLASS if task == "classification" else Y_REG
    cfg = Config(model=MLPConfig(hidden=(4, 3), activation=activation), label_smoothing=smoothing)
    state, loss, grads = jax_loss_and_grads(cfg, task, X, y)
    p = to_numpy(state.params)
    assert loss == pytest.approx(np_loss(p, X, y, task, activation, smoothing), rel=1e-6)
    fd = finite_differences(p, lambda q: np_loss(q, X, y, task, activation, smoothing))
    assert set(grads) == set(fd) == set(p)
    for name in p:
        np.testing.assert_allclose(grads[name], fd[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_gradient_through_dropout_matches_a_directional_difference_of_loss_fn():
    # Dropout's mask depends on the model's RNG stream (state), not on the parameters, so the loss
    # is a smooth function of them; a central difference of loss_fn itself (float32) must agree.
    cfg = Config(model=MLPConfig(hidden=(5,), activation="tanh", dropout=0.3))
    spec, state = create_state(cfg, info_for("classification"), total_steps=10)
    value_and_grad = jax.jit(lambda p, s: jax.value_and_grad(lambda q: loss_fn(q, spec, s, X, Y_CLASS)[0])(p))
    loss, grads = value_and_grad(state.params, state)
    g = jax.tree.map(np.asarray, grads)
    norm = math.sqrt(sum(float((v**2).sum()) for v in jax.tree.leaves(g)))
    eps = 1e-2
    for direction in (jax.tree.map(lambda v: v / np.float32(norm), g),
                      jax.tree.map(lambda v: RNG.normal(size=v.shape).astype(np.float32) / 4, g)):
        along = sum(float((a * b).sum()) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
        moved = [value_and_grad(jax.device_put(jax.tree.map(lambda p, d, s=s: np.asarray(p) + np.float32(s) * d,
                                                            state.params, direction)), state)[0] for s in (eps, -eps)]
        central = (float(moved[0]) - float(moved[1])) / (2 * eps)
        assert central == pytest.approx(along, rel=2e-3, abs=2e-4)
    no_dropout = state.replace(rest=jax.tree.map(lambda a: jnp.zeros_like(a) if a.dtype == jnp.float32 else a,
                                                 state.rest))  # the rate, a Hyperparameter, set to 0
    assert float(loss) != pytest.approx(float(value_and_grad(state.params, no_dropout)[0]), rel=1e-3)
    assert value_and_grad._cache_size() == 1  # the rate is traced: no recompilation


# One step (two for stateful optimizers) against the textbook update rules in numpy.
def np_update(name: str, g: dict, p: dict, slots: dict, t: int, opt: OptimizerConfig) -> dict:
    if opt.clip_norm > 0:
        norm = math.sqrt(sum((v**2).sum() for v in g.values()))
        g = {k: v * min(1.0, opt.clip_norm / norm) for k, v in g.items()}
    decay = {k: (opt.weight_decay * p[k] if k.endswith("kernel") else 0.0) for k in p}  # biases are not decayed
    new = {}
    for k in p:
        if name == "sgd":
            step = g[k] + decay[k]
        elif name == "momentum":
            slots[k] = g[k] + decay[k] + opt.momentum * slots.get(k, 0.0)
            step = slots[k]
        else:
            gk = g[k] + (decay[k] if name == "adam" else 0.0)
            m = opt.b1 * slots.get(("m", k), 0.0) + (1 - opt.b1) * gk
            v = opt.b2 * slots.get(("v", k), 0.0) + (1 - opt.b2) * gk**2
            slots[("m", k)], slots[("v", k)] = m, v
            step = (m / (1 - opt.b1**t)) / (np.sqrt(v / (1 - opt.b2**t)) + 1e-8)
            if name == "adamw":
                step = step + decay[k]
        new[k] = p[k] - opt.learning_rate * step
    return new


@pytest.mark.parametrize("opt", [
    OptimizerConfig(name="sgd", learning_rate=0.5),
    OptimizerConfig(name="sgd", learning_rate=0.5, weight_decay=0.1, clip_norm=0.05),
    OptimizerConfig(name="momentum", learning_rate=0.3, momentum=0.8),
    OptimizerConfig(name="adam", learning_rate=0.01, b1=0.8, b2=0.95),
    OptimizerConfig(name="adamw", learning_rate=0.01, weight_decay=0.2),
], ids=["sgd", "sgd-l2-clip", "momentum", "adam", "adamw"])
def test_train_steps_against_golden_numbers(opt):
    cfg = Config(model=MLPConfig(hidden=(5,), activation="tanh"), label_smoothing=0.1, optimizer=opt)
    spec, state = create_state(cfg, info_for("classification"), total_steps=10)
    step = jax.jit(functools.partial(train_step, spec))
    p, slots = to_numpy(state.params), {}
    for t in (1, 2):
        g = np_grads(p, X, Y_CLASS, "classification", "tanh", 0.1)
        p = np_update(opt.name, g, p, slots, t, opt)
        state, metrics = step(state, X, Y_CLASS)
        got = to_numpy(state.params)
        for name in p:
            np.testing.assert_allclose(got[name], p[name], rtol=1e-5, atol=1e-6, err_msg=f"step {t} {name}")
    assert int(state.step) == 2


def test_learning_rate_in_the_state_changes_the_step_without_recompiling():
    cfg = Config(model=MLPConfig(hidden=(5,), activation="tanh"), optimizer=OptimizerConfig(name="sgd"))
    spec, state = create_state(cfg, info_for("classification"), total_steps=10)
    step = jax.jit(functools.partial(train_step, spec))
    p = to_numpy(state.params)
    g = np_grads(p, X, Y_CLASS, "classification", "tanh")
    for lr in (0.1, 0.7):
        hp = state.opt_state.hyperparams
        moved = state.replace(opt_state=state.opt_state._replace(hyperparams={**hp, "learning_rate": jnp.float32(lr)}))
        got = to_numpy(step(moved, X, Y_CLASS)[0].params)
        for name in p:
            np.testing.assert_allclose(got[name], p[name] - lr * g[name], rtol=1e-5, atol=1e-6)
    assert step._cache_size() == 1


# Closed form: a linear model trained by full-batch gradient descent reaches least squares.
N_TRAIN, N_TEST = 48, 16


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """A store holding 'lin': y = x w + b + noise, imported from an .npz like a user would."""
    root = tmp_path_factory.mktemp("numerics")
    rng = np.random.default_rng(42)
    x = rng.normal(size=(N_TRAIN + N_TEST, 3)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.5]) + 0.7 + 0.3 * rng.normal(size=len(x))).astype(np.float32)
    np.savez(root / "lin.npz", x=x[:N_TRAIN], y=y[:N_TRAIN], x_test=x[N_TRAIN:], y_test=y[N_TRAIN:])
    store = Store(root / "data")
    import_dataset(store, str(root / "lin.npz"), "lin")
    return store


def test_linear_model_converges_to_least_squares(store):
    cfg = load_config("regression_mlp", [
        "data=lin", "model.hidden=", "optimizer.name=sgd", "optimizer.schedule=constant",
        "optimizer.learning_rate=0.2", f"batch_size={N_TRAIN}", "steps=400", "eval_every=400",
        "data.validation_fraction=0",  # least squares over every training row
    ])
    assert cfg.model.hidden == ()
    prep = prepare(cfg, store)
    programs = solo_programs(prep.spec, 0)
    run, evaluate = programs.run, programs.evaluate
    state, batches = prep.state, Batches(prep, 0)
    for _ in range(prep.total_steps // prep.steps_per_call):
        state, _ = run(state, *batches.args())
    p = to_numpy(state.params)
    # Tabular floats are standardized by default (data.normalize=auto): the model is
    # head((x - mean) * scale), so in the features' own units its weights are w * scale.
    assert set(p) == {"inner.head.kernel", "inner.head.bias"}
    stats = to_numpy(state.rest)
    train, test = store.read("lin", "train"), store.read("lin", "test")
    np.testing.assert_allclose(stats["mean"], train.x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(1 / stats["scale"], train.x.std(0), rtol=1e-5)
    w = p["inner.head.kernel"][:, 0] * stats["scale"]
    b = p["inner.head.bias"] - (stats["mean"] * w).sum()
    design = np.hstack([train.x, np.ones((N_TRAIN, 1))]).astype(np.float64)
    solution = np.linalg.lstsq(design, train.y.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(w, solution[:3], atol=2e-5)
    np.testing.assert_allclose(b, solution[3:], atol=2e-5)

    b = prep.evals["test"]
    metrics = finalize(prep.spec.objective, evaluate(state, b.x, b.y, b.mask))
    pred = test.x.astype(np.float64) @ solution[:3] + solution[3]
    assert metrics["mse"] == pytest.approx(np.mean((pred - test.y) ** 2), rel=1e-4)


# Determinism: the metrics table is a function of the config alone.
def metrics_without_wall_time(store: Store, run_dir, **changes):
    cfg = dataclasses.replace(load_config("regression_mlp", [
        "data=lin", "model.hidden=8", "model.dropout=0.1", "batch_size=8", "steps=20", "eval_every=10",
        "checkpoint_every=20",
    ]), **changes)
    train(cfg, "regression_mlp", run_dir, store, show_progress=False)
    return pq.read_table(run_dir / "metrics.parquet").drop_columns(["wall_s"])


@pytest.mark.slow
def test_same_seed_same_metrics_different_seed_different(store, tmp_path):
    first = metrics_without_wall_time(store, tmp_path / "a")
    assert first.num_rows > 0 and set(first.column("split").to_pylist()) == {"train", "val", "test"}
    assert first.equals(metrics_without_wall_time(store, tmp_path / "b"))
    other = metrics_without_wall_time(store, tmp_path / "c", seed=1)
    assert other.drop_columns(["value"]).equals(first.drop_columns(["value"]))  # same steps and names
    assert not np.allclose(other.column("value").to_numpy(), first.column("value").to_numpy())
