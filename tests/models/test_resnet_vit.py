"""The ResNet and ViT families: parameter counts against closed forms and published ones, shapes, batch
norm in train and eval mode, the patch embedding against a reshape and a matmul, learning on a tiny
uint8 image dataset (a folder of PNGs) through their experiment files, and a population of 2 equal to its solo runs."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest
from flax import nnx
from PIL import Image

import pipeline
from pipeline.config import Config, ConfigError, OptimizerConfig, apply_overrides
from pipeline.data import Store
from pipeline.data.dataset import DatasetInfo
from pipeline.models import ResNetConfig, ViTConfig, build_model
from pipeline.models.resnet import BasicBlock
from pipeline.registry import family
from pipeline.train.state import create_state
from pipeline.train.step import train_step
from tests.conftest import records_under, run_cli
from tests.sweep.conftest import sweep

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

TINY_RESNET = ResNetConfig(depth=8, width=4)
TINY_VIT = ViTConfig(patch=4, dim=16, depth=2, heads=2)
DATA = "tinyimages"
# Overrides that shrink the experiment files' runs to seconds on a CPU: tiny models, 30 steps of 16.
FAST = ("steps=30", "epochs=0", "batch_size=16", "eval_every=30", "eval_batch_size=64",
        "optimizer.warmup_steps=0", "--no-progress")
SHRINK = {"images_resnet": ("model.depth=8", "model.width=4"),
          "images_vit": ("model.dim=16", "model.depth=1", "model.heads=2")}


def n_params(model: nnx.Module) -> int:
    return sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract(cfg, shape: tuple[int, ...], classes: int) -> nnx.Module:
    """The model's structure only (nothing allocated): ResNet-18 has 11M parameters."""
    return nnx.eval_shape(lambda: build_model(cfg, shape, classes, seed=0))


def resnet_params(depth: int, width: int, channels: int, classes: int, projection: bool) -> int:
    """Counted by hand: 3x3 convolutions without bias, two parameters per channel for each batch norm."""
    stages = [(width * 2**i, 2) for i in range(4)] if depth == 18 else [(width * 2**i, (depth - 2) // 6)
                                                                         for i in range(3)]
    total = 9 * channels * width + 2 * width  # stem
    previous = width
    for out, blocks in stages:
        total += 9 * previous * out + 9 * out * out * (2 * blocks - 1) + 2 * out * 2 * blocks
        if projection and previous != out:
            total += previous * out + 2 * out  # 1x1 convolution and its batch norm
        previous = out
    return total + previous * classes + classes


def vit_params(dim: int, depth: int, patch: int, channels: int, patches: int, classes: int, cls: bool,
               mlp: int) -> int:
    embed = patch * patch * channels * dim + dim
    tokens = patches + cls
    block = 2 * 2 * dim + 4 * dim * dim + dim * mlp + mlp + mlp * dim + dim  # 2 LayerNorms, qkv+out (no bias), MLP
    return embed + cls * dim + tokens * dim + depth * block + 2 * dim + dim * classes + classes


# -- registration, counts and shapes ---------------------------------------------------------------

def test_both_are_registered_through_the_public_registry():
    assert pipeline.register_model is pipeline.registry.register_model
    assert family("resnet").origin.endswith("pipeline/models/resnet.py") and family("resnet").config is ResNetConfig
    assert family("vit").origin.endswith("pipeline/models/vit.py") and family("vit").config is ViTConfig
    cfg = apply_overrides(Config(model="resnet"), ["model.name=vit", "model.patch=2", "model.pool=mean"])
    assert cfg.model == ViTConfig(patch=2, pool="mean", depth=20)  # `depth` is shared: it carries over
    # From the MLP, the fields the two share (activation, dropout) keep the MLP's values.
    assert apply_overrides(Config(), ["model.name=vit"]).model == ViTConfig(activation="relu")


def test_resnet20_and_resnet18_have_their_published_parameter_counts():
    # ResNet-20 (He et al. 2016, option A shortcuts): 0.27M; the CIFAR ResNet-18: 11,173,962.
    assert n_params(abstract(ResNetConfig(depth=20), (32, 32, 3), 10)) == 269_722
    assert n_params(abstract(ResNetConfig(depth=56), (32, 32, 3), 10)) == 853_018  # 0.85M in the paper
    assert n_params(abstract(ResNetConfig(depth=18), (32, 32, 3), 10)) == 11_173_962


@pytest.mark.parametrize("depth, width, shortcut", [(20, 0, "auto"), (20, 0, "conv"), (32, 8, "pad"),
                                                    (18, 0, "auto"), (18, 8, "pad")])
def test_resnet_parameters_equal_the_closed_form(depth, width, shortcut):
    cfg = ResNetConfig(depth=depth, width=width, shortcut=shortcut)
    projection = shortcut == "conv" or (shortcut == "auto" and depth == 18)
    want = resnet_params(depth, width or (64 if depth == 18 else 16), 3, 10, projection)
    assert n_params(abstract(cfg, (32, 32, 3), 10)) == want


@pytest.mark.parametrize("pool, mlp_dim", [("cls", 0), ("mean", 24)])
def test_vit_parameters_equal_the_closed_form(pool, mlp_dim):
    cfg = dataclasses.replace(TINY_VIT, pool=pool, mlp_dim=mlp_dim)
    want = vit_params(16, 2, 4, 3, (16 // 4) * (24 // 4), 7, pool == "cls", mlp_dim or 64)
    assert n_params(abstract(cfg, (16, 24, 3), 7)) == want


def output_shape(cfg, shape: tuple[int, ...], classes: int, batch: int = 3) -> tuple[int, ...]:
    """The model's output shape, traced abstractly (nothing computed)."""
    return nnx.eval_shape(lambda: build_model(cfg, shape, classes, seed=0)(jnp.ones((batch, *shape)))).shape


@pytest.mark.parametrize("cfg", [TINY_RESNET, ResNetConfig(depth=18, width=4), TINY_VIT,
                                 dataclasses.replace(TINY_VIT, pool="mean")],
                         ids=["resnet", "resnet18", "vit", "vit-mean"])
@pytest.mark.parametrize("shape", [(16, 16, 3), (16, 8), (8, 12, 1)])
def test_outputs_are_batch_by_classes(cfg, shape):
    assert output_shape(cfg, shape, 5) == (3, 5)


def test_resnet_stages_halve_the_image_and_double_the_channels():
    def block_shapes():
        model = build_model(ResNetConfig(depth=14, width=4), (16, 16, 3), 5, seed=0)
        h = jax.nn.relu(model.stem_bn(model.stem(jnp.ones((2, 16, 16, 3)))))
        shapes = []
        for block in model.blocks:
            h = block(h)
            shapes.append(h)
        return shapes

    shapes = [a.shape[1:] for a in nnx.eval_shape(block_shapes)]
    assert shapes == [(16, 16, 4)] * 2 + [(8, 8, 8)] * 2 + [(4, 4, 16)] * 2


def test_pad_shortcut_subsamples_and_appends_zero_channels():
    block = BasicBlock(4, 8, 2, "pad", rngs=nnx.Rngs(0))  # 4 -> 8 channels at stride 2
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    out = block.shortcut(x)
    np.testing.assert_array_equal(out[..., :4], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(out[..., 4:], 0.0)


@pytest.mark.parametrize("config, shape, match", [
    (ResNetConfig(), (64,), r"features of shape \(64,\); model.name=resnet expects \(H, W\) or \(H, W, C\) images"),
    (ViTConfig(patch=4), (18, 16, 3), r"\(18, 16, 3\); model.name=vit needs H and W that are multiples of "
                                      r"model.patch=4"),
])
def test_shapes_they_cannot_take_fail_at_build(config, shape, match):
    with pytest.raises(ConfigError, match=match):
        build_model(config, shape, 3, seed=0)


@pytest.mark.parametrize("override, message", [
    ("model.depth=19", "bad value for 'model.depth': 19; model.name=resnet takes 6n+2"),
    ("model.shortcut=none", "bad value for 'model.shortcut': 'none'; choose one of auto, pad, conv"),
])
def test_bad_resnet_values_fail_before_anything_runs(cli, override, message):
    r = cli("train", "images_resnet", override, "--no-progress")
    assert r.code != 0 and r.err.strip() == f"error: {message}" + (
        " (8, 14, 20, 32, 44, 56, 110, ...) or 18" if "depth" in override else "")


def test_vit_heads_must_divide_dim(cli):
    r = cli("train", "images_vit", "model.heads=5", "--no-progress")
    assert r.code != 0 and r.err.strip() == "error: bad value for 'model.heads': 5 does not divide model.dim=192"


# -- batch norm in train and eval mode --------------------------------------------------------------

def _bn_stats(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


@nnx.jit
def forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)  # under nnx.jit the batch norms' running statistics update in place, as eagerly


def test_batch_norm_updates_running_statistics_in_train_mode_only():
    model = build_model(TINY_RESNET, (8, 8, 3), 5, seed=0)
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3)) + 2.0
    others = x.at[1:].set(jax.random.normal(jax.random.key(2), (5, 8, 8, 3)))  # the same first image
    before = _bn_stats(model)
    model.eval()
    np.testing.assert_allclose(forward(model, x)[0], forward(model, others)[0], rtol=1e-5, atol=1e-6)  # on its own
    assert all(np.array_equal(a, b) for a, b in zip(before, _bn_stats(model), strict=True))
    model.train()
    assert not np.allclose(forward(model, x)[0], forward(model, others)[0], atol=1e-3)  # batch statistics
    after = _bn_stats(model)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))  # every mean and variance
    # The stem's running mean after two train calls from 0 with momentum 0.9: 0.1 * m1 * 0.9 + 0.1 * m2.
    fresh = build_model(TINY_RESNET, (8, 8, 3), 5, seed=0)
    conv_out = [fresh.stem(b).mean(axis=(0, 1, 2)) for b in (x, others)]
    np.testing.assert_allclose(model.stem_bn.mean[...], 0.09 * conv_out[0] + 0.1 * conv_out[1], rtol=1e-4, atol=1e-6)


def test_the_train_step_carries_the_running_statistics_and_evaluation_leaves_them():
    info = DatasetInfo(name="t", task="classification", feature_shape=(8, 8, 3), feature_dtype="float32",
                       label_shape=(), label_dtype="int32", num_classes=3)
    cfg = Config(model=TINY_RESNET, batch_size=8, optimizer=OptimizerConfig(learning_rate=1e-2))
    spec, state = create_state(cfg, info, total_steps=10)
    x = jax.random.normal(jax.random.key(2), (8, 8, 8, 3)) + 1.0
    new_state, _ = jax.jit(functools.partial(train_step, spec))(state, x, jnp.arange(8) % 3)
    stats = lambda s: nnx.state(nnx.merge(spec.graphdef, s.params, s.rest), nnx.BatchStat)  # noqa: E731
    assert not np.allclose(stats(new_state)["stem_bn"]["mean"][...], 0.0)
    evaluated = nnx.merge(spec.eval_graphdef, new_state.params, new_state.rest)
    evaluated(x)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(evaluated, nnx.BatchStat), stats(new_state))


# -- the ViT's patch embedding and attention ---------------------------------------------------------

@pytest.mark.parametrize("shape, patch", [((8, 12, 3), 4), ((6, 6), 3), ((8, 8, 2), 1)])
def test_patch_embedding_is_a_reshape_and_a_matmul(shape, patch):
    model = build_model(dataclasses.replace(TINY_VIT, patch=patch, depth=1), shape, 3, seed=0)
    x = jax.random.normal(jax.random.key(3), (2, *shape))
    h, w = shape[0] // patch, shape[1] // patch
    c = shape[2] if len(shape) == 3 else 1
    # (B, h, p, w, p, C) -> (B, h, w, p, p, C) -> one row of p*p*C values per patch, row-major patches.
    rows = x.reshape(2, h, patch, w, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(2, h * w, patch * patch * c)
    kernel = model.embed.kernel[...].reshape(patch * patch * c, 16)  # (p, p, C, dim), flattened the same way
    want = rows @ kernel + model.embed.bias[...]
    np.testing.assert_allclose(model.patch_embed(x), want, rtol=1e-5, atol=1e-5)


def test_every_patch_sees_every_other():
    # Full attention: changing the last patch changes the class token and the first patch's output.
    model = build_model(dataclasses.replace(TINY_VIT, pool="mean"), (8, 8, 3), 3, seed=0)
    x = jax.random.normal(jax.random.key(4), (1, 8, 8, 3))
    tokens = lambda im: model.norm(functools.reduce(lambda h, b: b(h), model.blocks,  # noqa: E731
                                                    model.patch_embed(im) + model.positions[...]))
    changed = x.at[:, 4:, 4:, :].add(1.0)
    assert not np.allclose(tokens(x)[:, 0], tokens(changed)[:, 0], atol=1e-4)


# -- training through the experiment files on a tiny uint8 image dataset ---------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One store, runs and sweeps root for the module, with DATA: 160 PNGs of 16x16x3 in 2 class folders,
    told apart by their red channel, imported as a user would (uint8 images)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 160)
    x = rng.integers(0, 180, (160, 16, 16, 3)).astype(np.uint8)
    x[..., 0] += (40 * y).astype(np.uint8)[:, None, None]
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = root / "png" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    with records_under(root):
        r = run_cli("data", "import", str(root / "png"), "--name", DATA, "--image-size", "16,16")
        assert r.code == 0, r.err
        info = Store().info(DATA)
        assert info.feature_dtype == "uint8" and tuple(info.feature_shape) == (16, 16, 3)
        yield root


def _losses(run_dir) -> tuple[float, float]:
    t = pq.read_table(run_dir / "metrics.parquet").to_pandas()
    train = t[(t["split"] == "train") & (t["name"] == "loss")].sort_values("step")["value"].to_numpy()
    return float(train[:3].mean()), float(train[-3:].mean())


@pytest.mark.parametrize("experiment", ["images_resnet", "images_vit"])
def test_a_few_steps_on_tiny_images_reduce_the_loss(home, experiment):
    run_dir = home / f"run-{experiment}"
    lr = "optimizer.learning_rate=0.05" if experiment == "images_resnet" else "optimizer.learning_rate=3e-3"
    r = run_cli("train", experiment, f"data={DATA}", *SHRINK[experiment], *FAST, lr, "--run-dir", str(run_dir))
    assert r.code == 0, r.err
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["data"]["augment"] == "flip,crop:4"  # the experiment's augmentation was on
    first, last = _losses(run_dir)
    assert last < 0.5 * first, (first, last)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"]["test/accuracy"] >= 0.9, summary["metrics"]


@pytest.mark.parametrize("experiment", ["images_resnet", "images_vit"])
def test_a_population_of_two_learning_rates_equals_the_solo_runs(home, experiment):
    args = (experiment, f"data={DATA}", *SHRINK[experiment], *FAST, "steps=12", "eval_every=6",
            "optimizer.learning_rate=choice(0.01;0.03)")
    population = sweep(*args)
    solo = sweep(*args, "--no-vmap")
    assert population.summary["populations"] == 1 and len(population.trials) == 2
    for a, b in zip(population.trials, solo.trials, strict=True):
        assert a["status"] == b["status"] == "done"
        np.testing.assert_allclose(population.curve(a["trial"])[1], solo.curve(b["trial"])[1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a["final_test_loss"], b["final_test_loss"], rtol=1e-5)
