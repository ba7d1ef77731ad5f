"""Images decoded per second: ``pipeline data import`` of an image folder against a plain Pillow loop.

``python -m pipeline.bench.image_import [--images N] [--size H,W] [--out-size H,W] [--rounds R]``
writes N JPEGs (a smooth random picture each, two classes) to a temporary folder, then times,
best of R rounds each:

* ``pillow loop``: one process, for each file: open, convert("RGB"), resize, ``np.asarray``;
* ``import (threads)`` and ``import (processes)``: the whole import into a temporary store
  (listing, decoding on the pool, writing Parquet, statistics, fsync, rename).

Both pools must store the same pixels (checked). Prints one line each and the ratios.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(root: Path, count: int, size: tuple[int, int]) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        picture = Image.fromarray(small).resize((size[1], size[0]), Image.Resampling.BICUBIC)
        folder = root / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        files.append(folder / f"{i:06d}.jpg")
        picture.save(files[-1], quality=90)
    return sorted(files)


def pillow_loop(files: list[Path], out: tuple[int, int]) -> float:
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            np.asarray(image.convert("RGB").resize((out[1], out[0]), Image.Resampling.BILINEAR))
    return len(files) / (time.perf_counter() - start)


def pipeline_import(folder: Path, out: tuple[int, int], pool: str, store_root: Path) -> tuple[float, np.ndarray]:
    from pipeline.data import Store, import_dataset

    store = Store(store_root)
    name = f"bench-{pool}"
    start = time.perf_counter()
    info = import_dataset(store, str(folder), name, image_size=out, channels=3, overwrite=store.exists(name),
                          image_pool=pool)
    rate = sum(info.rows.values()) / (time.perf_counter() - start)
    return rate, store.read(name, "train").x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", default="240,320", help="source images H,W")
    parser.add_argument("--out-size", default="64,64", help="--image-size of the import, H,W")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    size = tuple(int(s) for s in args.size.split(","))
    out = tuple(int(s) for s in args.out_size.split(","))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_images(Path(tmp) / "images", args.images, size)
        best = {"pillow loop": 0.0, "import (threads)": 0.0, "import (processes)": 0.0}
        pixels = {}
        for _ in range(args.rounds):
            best["pillow loop"] = max(best["pillow loop"], pillow_loop(files, out))
            for pool, key in (("thread", "import (threads)"), ("process", "import (processes)")):
                rate, pixels[pool] = pipeline_import(Path(tmp) / "images", out, pool, Path(tmp) / "store")
                best[key] = max(best[key], rate)
        if not np.array_equal(pixels["thread"], pixels["process"]):
            raise SystemExit("error: the thread and process pools stored different pixels")
    print(f"{args.images} JPEGs {size[0]}x{size[1]} -> {out[0]}x{out[1]} RGB, {cores} cores, best of {args.rounds}")
    for key, rate in best.items():
        print(f"  {key:20s} {rate:8,.0f} images/s  ({rate / best['pillow loop']:.2f}x the Pillow loop)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
