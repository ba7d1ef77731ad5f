"""The streaming reader: same examples as the device-resident path, an order that is a pure function
of (seed, step), exact resume, and shards that partition every epoch."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data import DataError
from pipeline.data.budget import fits_on_device, split_bytes
from pipeline.data.stream import StreamingReader
from tests.data.conftest import numbered, write_numbered

B = 10  # 130 rows: 13 full batches an epoch


@pytest.fixture
def store_n(store):
    write_numbered(store, "n")
    return store


def reader(store, **kw) -> StreamingReader:
    args = dict(batch_size=B, seed=0, shuffle_buffer=25, prefetch=2)
    return StreamingReader(store, "n", "train", **{**args, **kw})


def take(r: StreamingReader, start: int, count: int) -> list[tuple[np.ndarray, ...]]:
    it = r.iterate(start)
    out = [tuple(np.asarray(a) for a in next(it)) for _ in range(count)]
    it.close()
    return out


def ids(batches) -> np.ndarray:
    """Row numbers of the examples in order (feature 0 of row i is i)."""
    return np.concatenate([b[0][:, 0] for b in batches]).astype(int)


def test_streaming_and_device_resident_give_the_same_examples(store_n):
    from pipeline.data.order import EpochOrder

    whole = store_n.read("n", "train")
    with reader(store_n) as r:
        assert r.steps_per_epoch == 13
        batches = take(r, 0, 2 * 13)
    first = batches[0]
    assert first[0].shape == (B, *whole.x.shape[1:]) and first[0].dtype == whole.x.dtype
    assert first[1].shape == (B, *whole.y.shape[1:]) and first[1].dtype == whole.y.dtype
    idx = EpochOrder(len(whole), B, 0).indices(0, 13)
    resident = whole.x[idx.reshape(-1)][:, 0].astype(int)
    for epoch in range(2):
        streamed = ids(batches[13 * epoch:13 * (epoch + 1)])
        assert sorted(streamed) == sorted(resident) == list(range(130))
        # The labels travel with their rows.
        labels = np.concatenate([b[1] for b in batches[13 * epoch:13 * (epoch + 1)]])
        np.testing.assert_array_equal(labels, numbered(130).y[streamed])
    assert list(ids(batches[:13])) != list(ids(batches[13:]))  # each epoch has its own order
    assert list(ids(batches[:13])) != list(range(130))  # and it is shuffled


def test_same_seed_same_order_other_seed_other_order(store_n):
    with reader(store_n) as a, reader(store_n, prefetch=1, read_ahead=1) as b, reader(store_n, seed=1) as c:
        order_a, order_b, order_c = (ids(take(r, 0, 30)) for r in (a, b, c))
    np.testing.assert_array_equal(order_a, order_b)  # prefetch depth and read-ahead do not change it
    assert not np.array_equal(order_a, order_c)


@pytest.mark.parametrize("start", [5, 13, 20])
def test_resume_mid_epoch_reproduces_the_rest(store_n, start):
    with reader(store_n) as r:
        straight = take(r, 0, 30)
        state = r.state(start)
    assert state == {"epoch": start // 13, "offset": start % 13, "seed": 0, "steps_per_epoch": 13}
    with reader(store_n) as resumed:
        step = resumed.restore(state)
        assert step == start
        again = take(resumed, step, 30 - start)
    for want, got in zip(straight[start:], again):
        np.testing.assert_array_equal(want[0], got[0])
        np.testing.assert_array_equal(want[1], got[1])
    with reader(store_n, seed=5) as other, pytest.raises(DataError, match="reader seed 0 differs"):
        other.restore(state)


def test_shards_cover_every_example_once_per_epoch(store_n):
    shards = [reader(store_n, batch_size=9, shard_index=s, shard_count=3, tail="pad") for s in range(3)]
    try:
        assert len({r.steps_per_epoch for r in shards}) == 1
        steps = shards[0].steps_per_epoch
        assert steps == 17  # 13 groups dealt 5/4/4: the largest shard has 50 rows, 3 a step
        for epoch in range(2):
            seen = []
            for r in shards:
                for x, _, mask in take(r, epoch * steps, steps):
                    assert x.shape == (3, 3) and mask.shape == (3,)
                    seen.extend(x[mask == 1.0, 0].astype(int))
                    assert (x[mask == 0.0] == 0).all()
            assert sorted(seen) == list(range(130))
    finally:
        for r in shards:
            r.close()


def test_drop_tail_and_pad_tail(store_n):
    with reader(store_n, batch_size=12) as drop, reader(store_n, batch_size=12, tail="pad") as pad:
        assert drop.steps_per_epoch == 10 and pad.steps_per_epoch == 11
        dropped = ids(take(drop, 0, 10))
        padded = take(pad, 0, 11)
    assert len(set(dropped)) == 120 and set(dropped) <= set(range(130))
    masks = np.stack([b[2] for b in padded])
    assert masks.sum() == 130 and masks[:-1].all() and masks[-1].sum() == 130 - 120
    real = np.concatenate([b[0][b[2] == 1.0, 0] for b in padded]).astype(int)
    assert sorted(real) == list(range(130))


def test_reader_on_a_non_local_filesystem():
    """A store inside fsspec's in-memory filesystem, through pyarrow's filesystem layer."""
    fsspec = pytest.importorskip("fsspec")
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from pipeline.data import Store

    memory = fsspec.filesystem("memory")
    root = "/test-stream-store"
    try:
        store = Store(root, filesystem=PyFileSystem(FSSpecHandler(memory)))
        info = write_numbered(store, "n")
        assert store.names() == ["n"] and memory.exists(f"{root}/n/train/part-00003.parquet")
        np.testing.assert_array_equal(store.read("n", "train").x, numbered(130).x)
        with reader(store) as r:
            assert sorted(ids(take(r, 0, 13))) == list(range(130))
        from pipeline.data.verify import verify_dataset

        assert verify_dataset(store, "n")["fingerprint"] == info.fingerprint
    finally:
        memory.rm(root, recursive=True)


def test_budget_decides_the_path(store_n):
    info = store_n.info("n")
    assert split_bytes(info) == 130 * (3 * 4 + 4)
    assert fits_on_device(info, 2080) and not fits_on_device(info, 2079)


def test_bad_reader_arguments(store_n):
    with pytest.raises(DataError, match="batch size 10 does not split evenly over 3 shards"):
        reader(store_n, shard_count=3)
    with pytest.raises(DataError, match="batch size 200 is more than the 130 rows"):
        reader(store_n, batch_size=200)
    with pytest.raises(DataError, match="13 row groups cannot be shared by 20 shards"):
        reader(store_n, batch_size=20, shard_count=20)
    with pytest.raises(DataError, match="tail policy 'keep'"):
        reader(store_n, tail="keep")


SHARDED = """
import sys, numpy as np, jax
from pipeline.data import Store
from pipeline.data.stream import StreamingReader
assert jax.device_count() == 8
with StreamingReader(Store(sys.argv[1]), "n", "train", batch_size=16, seed=0, shuffle_buffer=25) as r:
    x, y = next(r.iterate(3))
    assert x.sharding.spec == jax.sharding.PartitionSpec("data"), x.sharding
    assert sorted(s.data.shape[0] for s in x.addressable_shards) == [2] * 8
    print(" ".join(str(int(v)) for v in np.asarray(x)[:, 0]))
"""


@pytest.mark.slow
def test_batches_split_over_eight_devices_hold_the_same_rows(store_n):
    """With 8 (host) devices each holds 1/8 of a batch, and the batch is the one a single device gets."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED, str(store_n.root)], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    with reader(store_n, batch_size=16) as r:
        want = take(r, 3, 1)[0][0][:, 0].astype(int)
    assert proc.stdout.split() == [str(v) for v in want]
