"""One process's share of a streamed split.

``python -m tests.distributed.stream_epochs STORE NAME BATCH EPOCHS TAIL...``

Run under ``pipeline launch``: each process opens the pipeline's StreamingReader as training does
for its process (``shard_index=jax.process_index()``, ``shard_count=jax.process_count()``, the
mesh of every device of every process), one reader for each TAIL policy in turn, reads EPOCHS
epochs of device batches and prints one JSON line: its process index and, for each TAIL, the
steps of an epoch, the rows its row groups hold and for each epoch the row ids it fed to its
own devices (read back from the addressable shards of each batch; a row's first feature is its
id; padding rows are left out by the mask).
"""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np


def main(store_root: str, name: str, batch_size: int, epochs: int, tails: list[str]) -> dict:
    from pipeline import distributed

    distributed.initialize()
    import jax

    from pipeline.data import Store
    from pipeline.sharding import make_mesh

    mesh = make_mesh()
    return {"process": jax.process_index(), "processes": jax.process_count(), "devices": mesh.devices.size,
            **{tail: read(Store(store_root), name, batch_size, epochs, tail, mesh) for tail in tails}}


def read(store, name: str, batch_size: int, epochs: int, tail: str, mesh) -> dict:
    import jax

    from pipeline.data.stream import StreamingReader

    reader = StreamingReader(store, name, "train", batch_size, seed=7, shuffle_buffer=32,
                             shard_index=jax.process_index(), shard_count=jax.process_count(), tail=tail, mesh=mesh)
    seen: list[list[int]] = []
    local_devices = set(jax.local_devices())
    with reader:
        batches = reader.iterate(0)
        for _ in range(epochs):
            ids: list[int] = []
            for batch in itertools.islice(batches, reader.steps_per_epoch):
                x, mask = batch[0], (batch[2] if tail == "pad" else None)
                assert x.shape[0] == batch_size  # the global batch, of which this process holds its block
                shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
                assert {s.device for s in shards} == local_devices
                masks = {} if mask is None else {s.index[0].start: np.asarray(s.data) for s in mask.addressable_shards}
                for shard in shards:
                    rows = np.asarray(shard.data)
                    if mask is not None:
                        rows = rows[masks[shard.index[0].start] == 1.0]
                    ids.extend(int(i) for i in rows[:, 0])
            seen.append(ids)
        batches.close()
    return {"steps_per_epoch": reader.steps_per_epoch, "rows": reader.rows, "epochs": seen}


if __name__ == "__main__":
    store_root, name, batch, epochs, *tails = sys.argv[1:]
    print(json.dumps(main(store_root, name, int(batch), int(epochs), tails)), flush=True)
