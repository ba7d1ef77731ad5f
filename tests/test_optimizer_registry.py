"""Optimizers and schedules by registry: each built-in equals Optax's own, populations equal solo
runs, and a user's own registered from an experiment file trains through `pipeline train`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pipeline
from pipeline.config import ConfigError, OptimizerConfig
from pipeline.experiments import load_module
from pipeline.models import MLPConfig, build_model
from pipeline.optim import decay_mask, make_optimizer, schedule_multiplier
from pipeline.registry import RegistryError, is_registered
from tests.conftest import ROOT, records_under, run_cli
from tests.sweep.conftest import TINY, read_sweep
from tests.test_optim import LR, STEPS, TOTAL, WD, assert_trees_close, gradients, run_updates

B1, B2, MOMENTUM = 0.8, 0.95, 0.7
NEW_OPTIMIZERS = ("lion", "lamb", "adafactor", "rmsprop", "adagrad", "nesterov")
BUILT_IN = ("adafactor", "adagrad", "adam", "adamw", "lamb", "lion", "momentum", "nesterov", "rmsprop", "sgd")


@pytest.fixture(scope="module")
def params():
    """Real MLP parameters: kernels (2-D), which weight decay touches, and biases (1-D), which it does not."""
    _, params, _ = nnx.split(build_model(MLPConfig(hidden=(4,)), (3,), 2, seed=0), nnx.Param, ...)
    return params


def coupled(tx: optax.GradientTransformation, wd: float) -> optax.GradientTransformation:
    """L2 added to the gradient in front of ``tx``: the decay of optimizers without a weight_decay argument."""
    return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), tx) if wd else tx


def optax_own(name: str, lr: optax.ScalarOrSchedule, wd: float) -> optax.GradientTransformation:
    """Optax's optimizer ``name`` with the arguments the config means."""
    return {
        "lion": lambda: optax.lion(lr, b1=B1, b2=B2, weight_decay=wd, mask=decay_mask),
        "lamb": lambda: optax.lamb(lr, b1=B1, b2=B2, weight_decay=wd, mask=decay_mask),
        "adafactor": lambda: optax.adafactor(lr, weight_decay_rate=wd, weight_decay_mask=decay_mask),
        "rmsprop": lambda: coupled(optax.rmsprop(lr, decay=B2), wd),
        "adagrad": lambda: coupled(optax.adagrad(lr), wd),
        "nesterov": lambda: coupled(optax.sgd(lr, momentum=MOMENTUM, nesterov=True), wd),
    }[name]()


def config(name: str, **kw) -> OptimizerConfig:
    return OptimizerConfig(name=name, learning_rate=LR, b1=B1, b2=B2, momentum=MOMENTUM, **kw)


def final_params(params, updates):
    return jax.tree.map(lambda p, u: p + u.sum(0), params, updates)


@pytest.mark.parametrize("wd", [0.0, WD])
@pytest.mark.parametrize("name", NEW_OPTIMIZERS)
def test_each_new_optimizer_equals_optax_own(params, name, wd):
    grads = jax.tree.map(lambda g: g[:3], gradients(params))  # three steps
    ours = run_updates(make_optimizer(config(name, weight_decay=wd), TOTAL), params, grads)
    theirs = run_updates(optax_own(name, LR, wd), params, grads)
    assert_trees_close(ours, theirs, rtol=1e-5, atol=1e-7)
    assert_trees_close(final_params(params, ours), final_params(params, theirs), rtol=1e-5, atol=1e-7)


def optax_schedule(schedule: str, peak: float, warmup: int, decay_rate: float = 0.1) -> optax.Schedule:
    """Optax's own schedule for ``schedule``, peaking at ``peak``, over TOTAL steps."""
    if schedule == "warmup_linear" and warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                     optax.linear_schedule(peak, 0.0, TOTAL - warmup)], [warmup])
    return {
        "onecycle": lambda: optax.cosine_onecycle_schedule(TOTAL, peak),
        "linear": lambda: optax.linear_schedule(peak, 0.0, TOTAL),
        "warmup_linear": lambda: optax.linear_schedule(peak, 0.0, TOTAL),
        "exponential": lambda: optax.exponential_decay(peak, TOTAL, decay_rate),
    }[schedule]()


@pytest.mark.parametrize("schedule, warmup, decay_rate", [
    ("onecycle", 0, 0.1), ("linear", 0, 0.1), ("exponential", 0, 0.1), ("exponential", 0, 0.5),
    ("warmup_linear", 3, 0.1), ("warmup_linear", 0, 0.1),
])
def test_each_new_schedule_is_optax_schedule_over_its_peak(schedule, warmup, decay_rate):
    cfg = OptimizerConfig(schedule=schedule, warmup_steps=warmup, decay_rate=decay_rate)
    multiplier = schedule_multiplier(cfg, TOTAL)
    peak = 0.37
    reference = optax_schedule(schedule, peak, warmup, decay_rate)
    counts = jnp.arange(STEPS + 1)  # past TOTAL too: the tail counts
    np.testing.assert_allclose(np.asarray(jax.vmap(multiplier)(counts)),
                               np.asarray(jax.vmap(reference)(counts)) / peak, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, schedule, warmup", [
    ("lion", "warmup_linear", 3), ("lamb", "onecycle", 0), ("nesterov", "exponential", 0), ("rmsprop", "linear", 0),
])
def test_a_scheduled_optimizer_equals_optax_with_a_scheduled_learning_rate(params, name, schedule, warmup):
    grads = gradients(params)
    cfg = config(name, weight_decay=WD, schedule=schedule, warmup_steps=warmup)
    assert_trees_close(run_updates(make_optimizer(cfg, TOTAL), params, grads),
                       run_updates(optax_own(name, optax_schedule(schedule, LR, warmup), WD), params, grads),
                       rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, lr_scaled", [("lion", True), ("adafactor", False)])
def test_decoupled_weight_decay_skips_biases(params, name, lr_scaled):
    """Zero gradients: only the decay moves anything. Lion's decay is scaled by the learning rate,
    Adafactor's (its weight_decay_rate) is not."""
    zero = jax.tree.map(lambda p: jnp.zeros((1, *p.shape)), params)
    updates = run_updates(make_optimizer(config(name, weight_decay=WD), TOTAL), params, zero)
    scale = LR * WD if lr_scaled else WD
    for p, u in zip(jax.tree.leaves(params), jax.tree.leaves(updates), strict=True):
        expected = -scale * np.asarray(p) if np.ndim(p) >= 2 else np.zeros(np.shape(p))
        np.testing.assert_allclose(np.asarray(u)[0], expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", NEW_OPTIMIZERS)
def test_a_population_of_learning_rates_equals_solo_runs(params, name):
    grads = jax.tree.map(lambda g: g[:3], gradients(params))
    tx = make_optimizer(config(name, weight_decay=WD, schedule="warmup_linear", warmup_steps=1), TOTAL)

    def member(lr):
        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        state = tx.init(params)
        state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
        return jax.lax.scan(body, (params, state), grads)[0][0]

    rates = jnp.asarray([1e-3, 1e-2, 0.3], jnp.float32)
    together = jax.jit(jax.vmap(member))(rates)
    for i, lr in enumerate(rates):
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], together), jax.jit(member)(lr), rtol=1e-6)


def test_a_lion_sweep_population_equals_its_solo_runs(tmp_path):
    space = ["optimizer.name=lion", "optimizer.weight_decay=0.01", "optimizer.learning_rate=choice(3e-4;1e-3;3e-3)"]
    with records_under(tmp_path):
        swept = [run_cli("sweep", "digits_mlp", *TINY, *space, flag, "--json") for flag in ("--vmap", "--no-vmap")]
        for r in swept:
            assert r.code == 0, r.err
        population, solo = (read_sweep(Path(json.loads(r.out.strip().splitlines()[-1])["sweep_dir"]))
                            for r in swept)
    assert json.loads((population.folder / "summary.json").read_text())["populations"] == 1
    assert [t["status"] for t in population.trials] == ["done"] * 3
    for a, b in zip(population.trials, solo.trials, strict=True):
        assert a["final_test_loss"] == pytest.approx(b["final_test_loss"], rel=1e-5)
        np.testing.assert_allclose(population.curve(a["trial"])[1], solo.curve(b["trial"])[1], rtol=1e-5)


def test_every_built_in_is_registered_and_pipeline_exports_the_registrations():
    assert all(is_registered(name, "optimizer") for name in BUILT_IN)
    schedules = ("constant", "cosine", "warmup_cosine", "linear", "warmup_linear", "exponential", "onecycle")
    assert all(is_registered(name, "schedule") for name in schedules)
    assert pipeline.register_optimizer.__module__ == pipeline.register_schedule.__module__ == "pipeline.registry"


# -- a user's own, from an experiment file -----------------------------------------------------
USER_FILE = """
import optax
import pipeline
from pipeline import Config, OptimizerConfig
from pipeline.models import MLPConfig


def plain_sgd(learning_rate):
    return optax.sgd(learning_rate)


def falling(cfg, total_steps):
    return optax.linear_schedule(1.0, 0.0, total_steps)


pipeline.register_optimizer("plain_sgd", plain_sgd, traced=("learning_rate",))
pipeline.register_schedule("falling", falling)


def config():
    return Config(data="digits", steps=60, eval_every=30, batch_size=32, model=MLPConfig(hidden=(16,)),
                  optimizer=OptimizerConfig(name="plain_sgd", schedule="falling", learning_rate=0.5,
                                            weight_decay=1e-3))
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


def train(*args: str) -> dict:
    r = run_cli("train", *args, "--no-progress", "--json")
    assert r.code == 0, r.err
    return json.loads(r.out.strip().splitlines()[-1])


def one_error(*args: str) -> str:
    r = run_cli(*args)
    assert r.code == 2, (r.code, r.err)
    assert r.err.count("\n") == 1 and r.err.startswith("error: ") and "Traceback" not in r.err, r.err
    return r.err.strip()


def test_a_users_optimizer_and_schedule_train_through_the_cli_as_the_built_ins_do(cli, workdir):
    path = write(workdir, "mine", USER_FILE)
    mine = train(str(path))
    saved = json.loads((Path(mine["run_dir"]) / "config.json").read_text())["config"]["optimizer"]
    assert (saved["name"], saved["schedule"]) == ("plain_sgd", "falling")
    # The same optimizer and schedule, built in: the same run, step for step.
    built_in = train(str(path), "optimizer.name=sgd", "optimizer.schedule=linear")
    assert mine["metrics"]["test/loss"] == pytest.approx(built_in["metrics"]["test/loss"], rel=1e-6)
    assert mine["metrics"]["test/loss"] < 1.5  # it learned (chance is ln 10 = 2.3)


DOC_MARK = "<!-- tested: tests/test_optimizer_registry.py runs this file -->\n```python\n"


@pytest.fixture(scope="module")
def doc_example(tmp_path_factory) -> Path:
    """The experiment file of docs/optimizers.md, as written there (one file: it registers once per process)."""
    text = (ROOT / "docs" / "optimizers.md").read_text()
    return write(tmp_path_factory.mktemp("docs"), "adabelief_mlp", text.split(DOC_MARK)[1].split("```")[0])


def test_the_documented_example_trains_through_the_cli(doc_example, workdir):
    summary = train(str(doc_example), "steps=60", "eval_every=30")
    assert summary["steps"] == 60 and summary["metrics"]["test/loss"] < 1.5


def test_the_documented_optimizer_is_optax_adabelief_without_decay(doc_example, params):
    load_module(str(doc_example))  # registers adabelief and halving (again, from the same file: no clash)
    grads = jax.tree.map(lambda g: g[:3], gradients(params))
    ours = make_optimizer(config("adabelief", schedule="halving"), 4)  # 0.5 from update 2, 0.25 from 3
    theirs = optax.adabelief(optax.piecewise_constant_schedule(LR, {2: 0.5, 3: 0.5}), b1=B1, b2=B2)
    assert_trees_close(run_updates(ours, params, grads), run_updates(theirs, params, grads), rtol=1e-5, atol=1e-7)


def test_unknown_optimizer_or_schedule_is_one_line_listing_the_registered_ones(cli, workdir):
    line = one_error("train", "digits_mlp", "optimizer.name=nadamw", "steps=5")
    assert line.startswith("error: bad value for 'optimizer.name': 'nadamw'; choose one of ")
    listed = line.split("choose one of ")[1].split(", ")
    assert set(BUILT_IN) <= set(listed) and listed == sorted(listed)
    line = one_error("train", "digits_mlp", "optimizer.schedule=triangle", "steps=5")
    assert "bad value for 'optimizer.schedule': 'triangle'; choose one of " in line and "onecycle" in line
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


def test_a_bad_decay_rate_is_one_line_before_any_run_is_stored(cli, workdir):
    line = one_error("train", "digits_mlp", "optimizer.schedule=exponential", "optimizer.decay_rate=0", "steps=5")
    assert line == ("error: bad value for 'optimizer.decay_rate': 0.0 must be in (0, 1] (the multiplier the "
                    "exponential schedule reaches at the last step)")
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


BAD_REGISTRATIONS = {
    "wrong_args": ("""
        import optax, pipeline
        pipeline.register_optimizer("wrong_args", lambda lr: optax.sgd(lr), traced=("learning_rate",))
        def config():
            return pipeline.Config(optimizer=pipeline.OptimizerConfig(name="wrong_args"))
        """, "wrong_args.py: optimizer 'wrong_args': its factory(lr) cannot be called with keyword arguments "
             "(learning_rate)"),
    "untraced": ("""
        import optax, pipeline
        pipeline.register_optimizer("untraced", lambda learning_rate, eps: optax.adam(learning_rate, eps=eps),
                                    traced=("learning_rate", "eps"))
        def config():
            return pipeline.Config(steps=5, optimizer=pipeline.OptimizerConfig(name="untraced"))
        """, "untraced.py: optimizer 'untraced': traced=('learning_rate', 'eps') names eps, not a traced field of "
             "OptimizerConfig; choose from learning_rate, weight_decay, momentum, b1, b2, clip_norm"),
    "not_optax": ("""
        import pipeline
        pipeline.register_optimizer("not_optax", lambda learning_rate: learning_rate * 2)
        def config():
            return pipeline.Config(steps=5, optimizer=pipeline.OptimizerConfig(name="not_optax"))
        """, "not_optax.py: optimizer 'not_optax': its factory returned float, not an optax.GradientTransformation"),
    "takes_adam": ("""
        import optax, pipeline
        pipeline.register_optimizer("adam", lambda learning_rate: optax.sgd(learning_rate))
        def config():
            return pipeline.Config()
        """, "takes_adam.py: optimizer 'adam' is registered twice (first in "),
    "bad_schedule": ("""
        import pipeline
        pipeline.register_schedule("bad_schedule", lambda count: 1.0)
        def config():
            return pipeline.Config()
        """, "bad_schedule.py: schedule 'bad_schedule': its factory(count) cannot be called with "
             "(cfg, total_steps)"),
}


@pytest.mark.parametrize("name", sorted(BAD_REGISTRATIONS))
def test_a_broken_registration_is_one_line_naming_its_file(cli, workdir, name):
    text, expected = BAD_REGISTRATIONS[name]
    line = one_error("train", str(write(workdir, name, text)), "--no-progress")
    assert str(workdir) in line and expected in line, line
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


def test_a_bad_decay_rate_fails_when_the_optimizer_is_made():
    with pytest.raises(ConfigError, match="optimizer.decay_rate"):
        make_optimizer(OptimizerConfig(schedule="exponential", decay_rate=1.5), TOTAL)
    with pytest.raises(RegistryError, match="unknown schedule 'nope'; registered schedules: constant, "):
        make_optimizer(OptimizerConfig(schedule="nope"), TOTAL)
