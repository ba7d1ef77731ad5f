"""Images into the store: an image folder and Hugging Face image Parquet, checked against Pillow's own decode.

The images are scikit-learn's digits rendered at 16x16 (nearest neighbour from 8x8), odd rows as
PNG and even rows as JPEG, in ``train/CLASS/`` and ``test/CLASS/`` folders (every fifth row is test).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import Config, apply_overrides
from pipeline.data import Store
from pipeline.data.images import center_box
from pipeline.data.stats import feature_stats
from pipeline.models.normalize import Standardized
from pipeline.train.state import normalization
from tests.data.test_import_cli import expect_error

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images / 16 * 255).astype(np.uint8)
    return np.repeat(np.repeat(pixels, 2, axis=1), 2, axis=2), digits.target  # 16x16


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits") / "images"
    images, labels = digit_images()
    for i, (image, label) in enumerate(zip(images, labels)):
        target = root / ("test" if i % 5 == 0 else "train") / str(label)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"{i:04d}.{'png' if i % 2 else 'jpg'}")
    return root


def pillow(path_or_bytes, mode: str = "L") -> np.ndarray:
    """Pillow's own decode of one image, as (H, W, C)."""
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as image:
        pixels = np.asarray(image.convert(mode))
    return pixels.reshape(*pixels.shape[:2], -1)


def stored(store: Store, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    data = store.read(name, split)
    return data.x, data.y


def test_image_folder_is_pillows_decode_with_its_splits(cli, workdir, folder):
    result = cli("data", "import", str(folder), "--name", "imgs")
    assert result.code == 0, result.err
    store = Store(workdir / "data")
    info = store.info("imgs")
    assert (info.feature_shape, info.feature_dtype, info.task) == ((16, 16, 1), "uint8", "classification")
    assert info.class_names == [str(i) for i in range(10)]
    for split in ("train", "test"):
        files = sorted((folder / split).glob("*/*"))
        x, y = stored(store, "imgs", split)
        assert info.rows[split] == len(files) == len(x)
        expected = np.stack([pillow(f) for f in files])  # PNG and JPEG alike: Pillow's decode of that file
        np.testing.assert_array_equal(x, expected)
        np.testing.assert_array_equal(y, [int(f.parent.name) for f in files])
    png = [i for i, f in enumerate(sorted((folder / "train").glob("*/*"))) if f.suffix == ".png"]
    images, labels = digit_images()
    by_name = {f"{i:04d}": image for i, image in enumerate(images)}
    train_files = sorted((folder / "train").glob("*/*"))
    x, _ = stored(store, "imgs", "train")
    for i in png:  # PNG is lossless: exactly the rendered pixels
        np.testing.assert_array_equal(x[i, :, :, 0], by_name[train_files[i].stem])
    # Per-channel statistics of the train split, in pixel units.
    mean, std = feature_stats(info)
    assert mean.shape == std.shape == (1,)
    np.testing.assert_allclose(mean, [x.astype(np.float64).mean()], rtol=1e-6)
    np.testing.assert_allclose(std, [x.astype(np.float64).std()], rtol=1e-6)


def test_without_a_test_folder_the_test_fraction_holds_out(cli, workdir, folder):
    result = cli("data", "import", str(folder / "train"), "--name", "pool", "--test-fraction", "0.25", "--seed", "3")
    assert result.code == 0, result.err
    info = Store(workdir / "data").info("pool")
    total = len(list((folder / "train").glob("*/*")))
    assert info.rows == {"train": total - round(0.25 * total), "test": round(0.25 * total)}


def test_resize_is_a_center_crop_then_a_bilinear_resize(cli, workdir, tmp_path):
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (2, 16, 32, 3), dtype=np.uint8)
    for label, image in zip("ab", wide):
        (tmp_path / "wide" / label).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "wide" / label / "0.png")
    assert cli("data", "import", str(tmp_path / "wide"), "--name", "same", "--image-size", "16,16").code == 0
    x, _ = stored(Store(workdir / "data"), "same", "train")
    x_test, _ = stored(Store(workdir / "data"), "same", "test")
    got = {bytes(a) for a in np.concatenate([x, x_test])}
    assert got == {bytes(np.ascontiguousarray(a[:, 8:24])) for a in wide}  # the centered 16x16, untouched
    assert cli("data", "import", str(tmp_path / "wide"), "--name", "small", "--image-size", "4,6",
               "--channels", "1").code == 0
    x, _ = stored(Store(workdir / "data"), "small", "train")
    x_test, _ = stored(Store(workdir / "data"), "small", "test")
    expected = []
    for image in wide:
        gray = Image.fromarray(image).convert("L")
        expected.append(np.asarray(gray.resize((6, 4), Image.Resampling.BILINEAR, box=center_box(32, 16, (4, 6)))))
    assert {bytes(a) for a in np.concatenate([x, x_test])} == {bytes(e[..., None]) for e in expected}


def hf_parquet(folder: Path, out: Path) -> dict[str, list[Path]]:
    """HF ``datasets`` layout: data/{split}-00000-of-00001.parquet, image as a {bytes, path} struct,
    a ClassLabel target whose names are in the schema's "huggingface" metadata."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    files = {}
    (out / "data").mkdir(parents=True)
    for split in ("train", "test"):
        files[split] = sorted((folder / split).glob("*/*"))
        images = pa.array([{"bytes": f.read_bytes(), "path": f.name} for f in files[split]], type=image_type)
        labels = pa.array([int(f.parent.name) for f in files[split]], pa.int64())
        table = pa.table({"image": images, "label": labels}).replace_schema_metadata(metadata)
        pq.write_table(table, out / "data" / f"{split}-00000-of-00001.parquet", row_group_size=300)
    return files


def test_hf_image_parquet_is_pillows_decode_with_its_splits(cli, workdir, folder, tmp_path):
    files = hf_parquet(folder, tmp_path / "hf")
    result = cli("data", "import", str(tmp_path / "hf"), "--name", "hf", "--target", "label", "--block-mb", "0.01")
    assert result.code == 0, result.err
    store = Store(workdir / "data")
    info = store.info("hf")
    assert (info.feature_shape, info.feature_dtype) == ((16, 16, 1), "uint8")
    assert info.class_names[:2] == ["zero", "one"] and info.num_classes == 10
    for split in ("train", "test"):
        x, y = stored(store, "hf", split)
        np.testing.assert_array_equal(x, np.stack([pillow(f.read_bytes()) for f in files[split]]))
        np.testing.assert_array_equal(y, [int(f.parent.name) for f in files[split]])
    # The same images as a folder make the same pixels and labels: one decoder.
    assert cli("data", "import", str(folder), "--name", "fromfolder").code == 0
    np.testing.assert_array_equal(store.read("hf", "train").x, store.read("fromfolder", "train").x)


def test_digits_cnn_trains_on_the_image_folder(cli, workdir, folder):
    from pipeline.experiments import load_experiment
    from pipeline.train.prepare import prepare

    assert cli("data", "import", str(folder), "--name", "imgs").code == 0
    cfg, _, _ = load_experiment("digits_cnn", ["data=imgs", "steps=200", "eval_every=200"])
    prepared = prepare(cfg, Store(workdir / "data"))
    assert prepared.train.x.dtype == np.uint8  # the device-resident split stays uint8 on the device
    assert isinstance(nnx_model(prepared), Standardized)
    result = cli("train", "digits_cnn", "data=imgs", "steps=200", "eval_every=200", "--no-progress", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out.strip().splitlines()[-1])
    assert summary["metrics"]["test/accuracy"] >= 0.9


def nnx_model(prepared):
    from flax import nnx

    return nnx.merge(prepared.spec.graphdef, prepared.state.params, prepared.state.rest)


def test_uint8_images_become_float_standardized_per_channel():
    from flax import nnx

    from pipeline.data.dataset import DatasetInfo

    info = DatasetInfo("im", "classification", (4, 5, 3), "uint8", (), "int32", 2,
                       feature_stats={"mean": [10.0, 20.0, 30.0], "std": [2.0, 4.0, 0.0], "min": 0.0, "max": 255.0,
                                      "per": "channel"})
    mean, std = normalization(Config(data="im"), info)
    np.testing.assert_array_equal(mean, [10, 20, 30])
    off_mean, off_std = normalization(apply_overrides(Config(data="im"), ["data.normalize=false"]), info)
    np.testing.assert_array_equal(off_mean, [0, 0, 0])
    np.testing.assert_array_equal(off_std, [255, 255, 255])
    inner = nnx.Linear(60, 2, rngs=nnx.Rngs(0))
    flat = nnx.Sequential(lambda x: x.reshape(x.shape[0], -1), inner)
    model = Standardized(flat, mean, std)
    x = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    expected = flat(((x.astype(np.float32) - mean) / np.where(std > 0, std, 1)).astype(np.float32))
    np.testing.assert_allclose(model(x), expected, rtol=1e-6, atol=1e-6)


# -- bad input: one line naming the file or folder, nothing stored -------------------------------------

def two_classes(root: Path, size: tuple[int, int] = (8, 8)) -> None:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(np.full(size, 40 * i, np.uint8)).save(root / label / f"{i}.png")


def test_a_corrupt_image_is_one_line_naming_it(cli, workdir, tmp_path):
    two_classes(tmp_path / "bad")
    (tmp_path / "bad" / "b" / "junk.png").write_bytes(b"not an image at all")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "bad"), "--name", "d"],
                 "junk.png: cannot decode the image")


def test_a_truncated_image_is_one_line_naming_it(cli, workdir, tmp_path):
    two_classes(tmp_path / "cut", size=(64, 64))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(buffer, "PNG")
    (tmp_path / "cut" / "a" / "half.png").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "cut"), "--name", "d", "--image-size", "64,64"],
                 "half.png: cannot decode the image")


def test_mixed_sizes_without_image_size_name_two_files(cli, workdir, tmp_path):
    two_classes(tmp_path / "mixed")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "mixed" / "b" / "tall.png")
    line = expect_error(cli, workdir, ["data", "import", str(tmp_path / "mixed"), "--name", "d"],
                        "tall.png: 9x8 pixels but ", "a/0.png has 8x8", "--image-size")
    assert cli("data", "import", str(tmp_path / "mixed"), "--name", "d", "--image-size", "8,8").code == 0, line


def test_one_class_folder_is_one_line_naming_it(cli, workdir, tmp_path):
    (tmp_path / "one" / "cat").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "one" / "cat" / f"{i}.png")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "one"), "--name", "d"],
                 f"{tmp_path / 'one' / 'cat'}: the only class folder")


def test_an_unreadable_image_in_parquet_names_the_file_and_row(cli, workdir, folder, tmp_path):
    hf_parquet(folder, tmp_path / "hf")
    path = tmp_path / "hf" / "data" / "test-00000-of-00001.parquet"
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[7]["bytes"] = b"\x89PNG broken"
    image_type = table.schema.field("image").type
    pq.write_table(table.set_column(0, "image", pa.array(images, type=image_type)), path)
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "hf"), "--name", "d", "--target", "label"],
                 "test-00000-of-00001.parquet: column 'image' row 7: cannot decode the image")
