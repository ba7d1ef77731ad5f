"""``data.augment``: flip, crop, cutout and mixup inside the train step, equal to numpy references,
drawn from each member's own seed and step, never in evaluation, and one line when misspelled."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from pipeline.data import Store, import_arrays
from pipeline.experiments import load_config
from pipeline.train.augment import augment, augment_plan, draw, parse_augment, step_key
from pipeline.train.parts import prepare, stack, vmapped_programs
from pipeline.train.step import apply_model, eval_sums, train_step
from tests.conftest import records_under, run_cli

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

H, W, C, B = 8, 8, 3, 64
FULL = "flip,crop:2,cutout:3,mixup:0.4"
CNN = ["data=tiny_images", "model.channels=4", "model.hidden=8", "batch_size=16"]
SHORT = ["steps=12", "eval_every=6", "--no-progress"]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A store with a small uint8 image dataset (N, 8, 8, 3) and a tabular one."""
    with records_under(tmp_path_factory.mktemp("augment")) as root:
        rng = np.random.default_rng(0)
        x = rng.integers(1, 256, (200, H, W, C), dtype=np.uint8)
        y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype(np.int64)  # top vs bottom
        import_arrays(Store(), "tiny_images", x, y, task="classification")
        import_arrays(Store(), "tiny_table", rng.normal(size=(100, 5)).astype(np.float32),
                      rng.integers(0, 2, 100), task="classification")
        yield root


def _images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (B, H, W, C), dtype=np.uint8)  # no natural zeros


# -- numpy references -----------------------------------------------------------------------------
def np_flip(x, flip_B):
    return np.where(flip_B[:, None, None, None], x[:, :, ::-1], x)


def np_crop(x, pad, offset_Bx2):
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return np.stack([padded[i, r:r + H, c:c + W] for i, (r, c) in enumerate(offset_Bx2)])


def np_cutout(x, side, centre_Bx2):
    out = x.copy()
    for i, (r, c) in enumerate(centre_Bx2):
        top, left = r - side // 2, c - side // 2
        out[i, max(top, 0):max(top + side, 0), max(left, 0):max(left + side, 0)] = 0
    return out


def np_mixup(x, perm_B, lam):
    xf = x.astype(np.float32)
    return lam * xf + (1.0 - lam) * xf[perm_B]


def _draws(text: str, key):
    return jax.tree.map(np.asarray, draw(parse_augment(text), key, B, H, W))


# -- the augmentations against numpy --------------------------------------------------------------
def test_flip_and_crop_equal_numpy_for_a_fixed_key():
    x, key = _images(), jax.random.key(3)
    d = _draws("flip,crop:2", key)
    out, mix = jax.jit(functools.partial(augment, parse_augment("flip,crop:2")))(key, x, np.arange(B))
    assert mix is None and out.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(out), np_crop(np_flip(x, d.flip_B), 2, d.offset_Bx2))
    # The draws cover what they should: both flips, every offset of the 5 x 5 padded positions' rows and columns.
    assert set(d.flip_B.tolist()) == {False, True}
    assert set(d.offset_Bx2.ravel().tolist()) == {0, 1, 2, 3, 4}
    # Zero padding: a crop shifted by 2 rows has 2 rows of zeros.
    shifted = np.where(d.offset_Bx2[:, 0] == 0)[0][0]
    assert not np.asarray(out)[shifted, :2].any()


def test_cutout_and_mixup_equal_numpy_for_a_fixed_key():
    x, y, key = _images(1), np.arange(B) % 4, jax.random.key(11)
    d = _draws("cutout:3,mixup:0.4", key)
    out, mix = augment(parse_augment("cutout:3,mixup:0.4"), key, x, y)
    np.testing.assert_allclose(np.asarray(out), np_mixup(np_cutout(x, 3, d.centre_Bx2), d.perm_B, d.lam), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(mix.y_other), y[d.perm_B])
    assert 0.0 < float(mix.lam) < 1.0 and float(mix.lam) == pytest.approx(float(d.lam))
    assert sorted(d.perm_B.tolist()) == list(range(B))
    # Cutout alone: the square, clipped at the borders, is the only zeros of each image.
    cut, _ = augment(parse_augment("cutout:3"), key, x, y)
    zeros_B = (np.asarray(cut) == 0).all(-1).sum(axis=(1, 2))
    r, c = d.centre_Bx2[:, 0], d.centre_Bx2[:, 1]
    area_B = (np.minimum(r + 2, H) - np.maximum(r - 1, 0)) * (np.minimum(c + 2, W) - np.maximum(c - 1, 0))
    np.testing.assert_array_equal(zeros_B, area_B)
    assert area_B.min() < 9 == area_B.max()  # some squares were clipped at a border, some not


def test_every_augmentation_runs_in_one_order_whatever_the_list():
    x, y, key = _images(2), np.arange(B), jax.random.key(5)
    d = _draws(FULL, key)
    expected = np_mixup(np_cutout(np_crop(np_flip(x, d.flip_B), 2, d.offset_Bx2), 3, d.centre_Bx2), d.perm_B, d.lam)
    for text in (FULL, "mixup:0.4, cutout:3,crop:2,flip"):
        out, _ = augment(parse_augment(text), key, x, y)
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)


def test_bad_spellings_and_shapes_are_one_line():
    for text, says in (("blur", "unknown augmentation 'blur'"), ("flip:1", "'flip' takes no argument"),
                       ("crop", "'crop:' needs a whole number"), ("cutout:-2", "'cutout:-2' needs a whole number"),
                       ("mixup:0", "'mixup:0' needs a positive alpha"), ("flip,flip", "'flip' is listed twice")):
        with pytest.raises(ConfigError, match="^bad value for 'data.augment': " + says):
            parse_augment(text)
    assert parse_augment("") is None and parse_augment(" , ") is None
    with pytest.raises(ConfigError, match=r"image features \(H, W, C\); dataset 't' has features of shape \(64,\)"):
        augment_plan("flip", (64,), "t")
    with pytest.raises(ConfigError, match="'crop:8' does not fit dataset 't' .8 x 8 images.; use at most crop:7"):
        augment_plan("crop:8", (8, 8, 3), "t")


# -- inside the train step ------------------------------------------------------------------------
def _cfg(*overrides: str):
    return load_config("digits_cnn", [*CNN, "model.dropout=0", *overrides])


def _prepared(home, *overrides: str):
    return prepare(_cfg(*overrides), Store(), steps_per_call=1)


def test_the_train_step_augments_with_the_members_seed_and_step(home):
    prep = _prepared(home, f"data.augment={FULL}", "seed=5")
    spec, state = prep.spec, prep.state.replace(step=jnp.asarray(7, jnp.int32))
    x = np.asarray(prep.train.x[:16])
    y = np.asarray(prep.train.y[:16])
    _, metrics = jax.jit(functools.partial(train_step, spec))(state, x, y)
    d = jax.tree.map(np.asarray, draw(spec.augment, step_key(jnp.uint32(5), jnp.int32(7)), 16, H, W))
    xa = np_mixup(np_cutout(np_crop(np_flip(x, d.flip_B), 2, d.offset_Bx2), 3, d.centre_Bx2), d.perm_B, d.lam)
    out, _ = apply_model(spec, state.params, state.rest, jnp.asarray(xa), train=True)
    ce = functools.partial(optax.softmax_cross_entropy_with_integer_labels, out)
    expected = d.lam * ce(y).mean() + (1 - d.lam) * ce(y[d.perm_B]).mean()
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)


def test_evaluation_is_unchanged_by_augment(home):
    plain, augmented = _prepared(home), _prepared(home, f"data.augment={FULL}")
    assert augmented.spec.augment is not None and plain.spec.augment is None
    assert set(augmented.state.hparams) - set(plain.state.hparams) == {"seed"}
    for a, b in zip(jax.tree.leaves(plain.state.params), jax.tree.leaves(augmented.state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # augmentation leaves the initial model alone
    for split in ("val", "test"):
        ev = plain.evals[split]
        sums = [jax.device_get(jax.jit(functools.partial(eval_sums, p.spec))(p.state, ev.x, ev.y, ev.mask))
                for p in (plain, augmented)]
        assert sums[0] == sums[1]


def test_population_members_draw_their_own_crops_and_equal_their_solo_steps(home):
    """Four members identical but for their seed: their first losses differ (only the crops differ),
    and each member's loss is its solo step's; four equal seeds give four equal losses."""
    prep = _prepared(home, "data.augment=crop:2")
    train = prep.train
    idx = np.arange(16, dtype=np.int32)[None, None]  # (U=1, K=1, B)

    def losses(seeds: list[int]) -> np.ndarray:
        states = [prep.state.replace(hparams={**prep.state.hparams, "seed": jnp.uint32(s)}) for s in seeds]
        run = vmapped_programs(prep.spec, 1).run
        _, metrics, _ = run(stack(states), jnp.ones(4, bool), jnp.zeros(4, jnp.int32), train.x, train.y, idx)
        return np.asarray(metrics["loss"][:, 0])

    population = losses([0, 1, 2, 3])
    assert len(set(population.tolist())) == 4
    assert len(set(losses([2, 2, 2, 2]).tolist())) == 1
    solo = jax.jit(functools.partial(train_step, prep.spec))
    for seed, loss in zip([0, 1, 2, 3], population, strict=True):
        state = prep.state.replace(hparams={**prep.state.hparams, "seed": jnp.uint32(seed)})
        _, metrics = solo(state, train.x[:16], train.y[:16])
        np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-6)


# -- through the command line ---------------------------------------------------------------------
def _sweep(*args: str) -> tuple[dict, list[dict], dict]:
    r = run_cli("sweep", "digits_cnn", *CNN, *SHORT, f"data.augment={FULL}", "seed=range(4)", *args, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out.strip().splitlines()[-1])
    folder = Path(summary["sweep_dir"])
    trials = sorted(pq.read_table(folder / "trials.parquet").to_pylist(), key=lambda row: row["trial"])
    curves = pq.read_table(folder / "curves.parquet").to_pandas()
    train_loss = curves[(curves.split == "train") & (curves.name == "loss")]
    return summary, trials, {t: g.sort_values("step").value.to_numpy() for t, g in train_loss.groupby("trial")}


def test_a_sweep_equals_its_no_vmap_twin_and_a_member_its_solo_run(home):
    population, trials, curves = _sweep("--vmap")
    twin, twin_trials, twin_curves = _sweep("--no-vmap")
    assert population["vmap"] and not twin["vmap"] and len(trials) == 4
    for t in range(4):
        assert len(curves[t]) == 12
        np.testing.assert_allclose(curves[t], twin_curves[t], rtol=1e-5)
        np.testing.assert_allclose(trials[t]["final_test_loss"], twin_trials[t]["final_test_loss"], rtol=1e-5)
    r = run_cli("train", "digits_cnn", *trials[2]["overrides"], "--json")
    assert r.code == 0, r.err
    solo = json.loads(r.out.strip().splitlines()[-1])
    metrics = pq.read_table(Path(solo["run_dir"]) / "metrics.parquet").to_pandas()
    solo_curve = metrics[(metrics.split == "train") & (metrics.name == "loss")].sort_values("step").value.to_numpy()
    np.testing.assert_allclose(solo_curve, curves[2], rtol=1e-5)
    assert not np.allclose(curves[0], curves[1])  # the members are not one run four times


def test_bad_augment_is_one_line_and_stores_nothing(home):
    runs = home / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    for args, says in (([*CNN, "data.augment=flip,blur"], "unknown augmentation 'blur'"),
                       (["data=tiny_table", "data.augment=crop:2"], "features of shape (5,)")):
        r = run_cli("train", "digits_cnn", *args, *SHORT)
        assert r.code != 0
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and "'data.augment'" in lines[0] and says in lines[0], r.err
    assert (set(runs.iterdir()) if runs.exists() else set()) == before  # no run folder was made
