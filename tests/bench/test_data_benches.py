"""The two data benchmarks' non-timing logic: the torch augmentation is the pipeline's, and the
streaming reader and Grain read the same rows."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.bench import grain_stream, image_training
from pipeline.data import Store

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

torch = pytest.importorskip("torch")


def test_torch_flip_crop_is_the_pipelines_augmentation_for_the_same_draws():
    import jax.numpy as jnp

    from pipeline.train.augment import Augment, Draws, apply

    rng = np.random.default_rng(0)
    x_BxHxWxC = rng.integers(0, 256, (6, 9, 7, 3), dtype=np.uint8)
    flips = np.array([True, False, True, False, True, False])
    offsets = rng.integers(0, 2 * image_training.PAD + 1, (6, 2)).astype(np.int32)
    offsets[0], offsets[1] = (0, 0), (2 * image_training.PAD, 2 * image_training.PAD)  # both extreme corners
    draws = Draws(jnp.asarray(flips), jnp.asarray(offsets), None, None, None)
    expected = np.asarray(apply(Augment(flip=True, crop=image_training.PAD), draws, jnp.asarray(x_BxHxWxC)))
    for i in range(len(x_BxHxWxC)):
        image_CxHxW = torch.from_numpy(x_BxHxWxC[i]).permute(2, 0, 1)
        got = image_training.flip_crop(image_CxHxW, bool(flips[i]), int(offsets[i, 0]), int(offsets[i, 1]),
                                       image_training.PAD)
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected[i])


def test_folder_dataset_decodes_normalizes_and_keeps_the_shape(tmp_path):
    image_training.write_image_folder(tmp_path, train=20, test=10)
    files, labels = image_training.image_files(tmp_path / "train")
    assert len(files) == 20 and sorted(set(labels)) == list(range(image_training.CLASSES))
    dataset = image_training.FolderDataset(files, labels, mean=[0.5] * 3, std=[0.25] * 3, pad=0)
    x, y = dataset[3]
    pixels = np.asarray(image_training.Image.open(files[3]).convert("RGB"), np.float32) / 255.0
    raw = x.permute(1, 2, 0).numpy() * 0.25 + 0.5
    # pad 0: no crop; the image is itself or its mirror
    assert np.allclose(raw, pixels, atol=1e-6) or np.allclose(raw, pixels[:, ::-1], atol=1e-6)
    assert y == labels[3]


def test_both_readers_read_every_row_once_an_epoch(tmp_path):
    pytest.importorskip("grain")
    store = Store(tmp_path / "store")
    info = grain_stream.write_dataset(store, "rows", 384, row_group_mb=0.05, file_mb=0.3)
    files = store.files("rows", "train")
    assert len(files) > 2
    batch = 64
    reader, batches = grain_stream.stream_batches(store, "rows", batch, shuffle_buffer=100, prefetch=2,
                                                  on_device=False)
    try:
        streamed = [next(batches) for _ in range(reader.steps_per_epoch)]
    finally:
        batches.close()
        reader.close()
    grained = list(grain_stream.grain_batches(files, info.feature_shape, batch, shuffle_buffer=100, prefetch=2,
                                              epochs=1))
    for got in (streamed, grained):
        assert [b[0].shape for b in got] == [(batch, *grain_stream.SHAPE)] * (384 // batch)
        ids = np.concatenate([grain_stream.row_ids(x) for x, _ in got])
        np.testing.assert_array_equal(np.sort(ids), np.arange(384))
        labels = np.concatenate([y for _, y in got])
        np.testing.assert_array_equal(labels, ids % 10)
    stream_ids = np.concatenate([grain_stream.row_ids(x) for x, _ in streamed])
    assert not np.array_equal(stream_ids, np.arange(384))  # shuffled
