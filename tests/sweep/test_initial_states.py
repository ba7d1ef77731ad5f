"""``InitialStates``: a sweep's fresh member states, equal leaf for leaf to ``create_state``'s, with the
model built once per (seed, model config) instead of once per trial; a population's made together
(``fresh_population``) equal to its members' stacked."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pipeline.config import apply_overrides
from pipeline.data import Store, ensure_dataset
from pipeline.experiments import load_module
from pipeline.optim.traced import init_population
from pipeline.train import population
from pipeline.train.population import fresh_population, stack
from pipeline.train.state import InitialStates, create_state

BASE = ["model.hidden=16", "steps=40", "model.dropout=0.1", "label_smoothing=0.1", "optimizer.weight_decay=1e-4"]
TRIALS = [  # optimizer keys (one model), another seed, another traced model value, the loss's own key
    [], ["optimizer.learning_rate=0.3", "optimizer.b1=0.6"], ["optimizer.weight_decay=0.02"], ["seed=3"],
    ["seed=3", "optimizer.learning_rate=1e-5"], ["model.dropout=0.4"], ["label_smoothing=0.2"],
]


def test_each_trial_gets_create_states_state_and_a_model_is_built_once_per_seed_and_model(home):
    base = apply_overrides(load_module("digits_mlp").config(), BASE)
    cfgs = [apply_overrides(base, o) for o in TRIALS]
    info = ensure_dataset(Store(home / "data"), "digits")
    initial = InitialStates(info, 40)
    made = [initial(c) for c in cfgs]
    for cfg, (spec, state) in zip(cfgs, made, strict=True):
        want_spec, want = create_state(cfg, info, 40)
        assert jax.tree.structure(state) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert spec.graphdef == want_spec.graphdef and spec.key_leaves == want_spec.key_leaves
    # Seeds 0 and 3 at dropout 0.1, and seed 0 at dropout 0.4: three builds for seven trials.
    assert len(initial.models) == 3
    # The shared arrays are read, never written: the hyperparameters are each trial's own.
    stacked = jax.device_get(stack([s for _, s in made]))
    smoothing = stacked.hparams["label_smoothing"]
    np.testing.assert_allclose(smoothing, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2])
    kernel = max(jax.tree.leaves(stacked.params), key=lambda a: a.size)  # a weight matrix, drawn from the seed
    np.testing.assert_array_equal(kernel[0], kernel[1])  # one seed: one initialization
    assert not np.array_equal(kernel[0], kernel[3])  # another seed: another one


POPULATIONS = {  # (trials, optimizer states made together): one model, one optimizer kind; or one call a member
    "adamw": ([[], ["optimizer.learning_rate=0.3", "optimizer.b1=0.6"], ["optimizer.weight_decay=0.02"],
               ["label_smoothing=0.2", "optimizer.b2=0.9"]], True),
    "momentum": ([["optimizer.name=momentum", "optimizer.momentum=0.9"],
             ["optimizer.name=momentum", "optimizer.momentum=0.5", "optimizer.learning_rate=0.2"]], True),
    "clipped": ([["optimizer.clip_norm=1.0"], ["optimizer.clip_norm=0.5", "optimizer.learning_rate=0.2"]], True),
    "two-models": ([[], ["seed=3"], ["seed=3", "optimizer.learning_rate=1e-5"]], False),
    "grad-accum": ([["grad_accum=2"], ["grad_accum=2", "optimizer.learning_rate=0.2"]], False),
}


@pytest.mark.parametrize(("trials", "together"), POPULATIONS.values(), ids=POPULATIONS.keys())
def test_a_population_made_together_is_its_members_stacked(home, monkeypatch, trials, together):
    base = apply_overrides(load_module("digits_mlp").config(), BASE)
    cfgs = [apply_overrides(base, o) for o in trials]
    info = ensure_dataset(Store(home / "data"), "digits")
    made = []
    monkeypatch.setattr(population, "init_population", lambda *a: made.append(init_population(*a)) or made[-1])
    specs, state = fresh_population(InitialStates(info, 40), cfgs)
    assert [m is not None for m in made] == ([True] if together else [False] * len(made))
    one_by_one = stack([InitialStates(info, 40)(c)[1] for c in cfgs])
    assert jax.tree.structure(state) == jax.tree.structure(one_by_one)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(one_by_one), strict=True):
        assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert len(specs) == len(cfgs)
