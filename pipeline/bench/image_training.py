"""Image training steps per second: an imported image folder against a PyTorch ``DataLoader``.

``python -m pipeline.bench.image_training [--images N] [--batch B] [--steps S] [--rounds R] [--workers 0,2]
[--out F]``
writes N 32x32 RGB PNGs in 10 class folders (``train/CLASS/`` plus a small ``test/``) to a
temporary folder, imports it (``pipeline data import``), and trains the same CNN (the digits CNN:
conv 16, 32, dense 128, Adam 1e-3) with flip and 4-pixel crop augmentation three ways:

* ``pipeline resident``: the split on the device, ``data.augment=flip,crop:4`` in the compiled step;
* ``pipeline streamed``: the same, ``data.max_device_bytes=0`` (the streaming reader feeds it);
* ``torch eager, W workers``: ``DataLoader`` over an ImageFolder-style Dataset (Pillow decode per
  item, random flip, random crop of the 4-pixel zero-padded image, ToTensor, Normalize with the
  import's per-channel statistics), the torch twin of the CNN in eager mode (workers started
  by forkserver, since this process already runs JAX's threads).

Same batch size and steps; warm-up (compilation, worker start, the first epoch) excluded. All
four are set up first, then timed S steps each in R rounds, the order rotated every round, so a
shared machine's load falls on all alike; the table gives the median steps/s and the median of
the rounds' paired ratios. The torch loop takes the faster of 1 thread and torch's default
(picked during warm-up), so its figure is its best case. ``--out`` writes every round as Parquet.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.config import Config, OptimizerConfig, apply_overrides
from pipeline.models import CNNConfig

AUGMENT = "flip,crop:4"
PAD = 4
CLASSES = 10
SIZE = 32
LONG_RUN = 1_000_000  # steps of the config: the loop picks its long-run steps per call, never the run's end


@dataclass
class Row:
    impl: str
    steps: int
    seconds: float
    batch: int
    steps_per_call: int = 1
    workers: int = 0
    threads: int = 0
    round: int = 0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


# -- the image folder ------------------------------------------------------------------------------

def write_image_folder(root: Path, train: int, test: int, seed: int = 0) -> None:
    """``root/{train,test}/CLASS/*.png``: smooth random 32x32 pictures tinted by class."""
    rng = np.random.default_rng(seed)
    tints = rng.integers(0, 256, (CLASSES, 3))
    for split, count in (("train", train), ("test", test)):
        for i in range(count):
            label = i % CLASSES
            small = (rng.integers(0, 256, (4, 4, 3)) + tints[label]) // 2
            picture = Image.fromarray(small.astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            picture.save(folder / f"{i:06d}.png")


def image_files(folder: Path) -> tuple[list[Path], list[int]]:
    """ImageFolder's listing: class ids follow the sorted class folder names."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((folder / name).glob("*.png"))]
    return [f for f, _ in files], [c for _, c in files]


# -- the pipeline ----------------------------------------------------------------------------------

def model_config() -> CNNConfig:
    return CNNConfig(channels=(16, 32), kernel_size=3, pool="max", norm="none", hidden=(128,), activation="relu")


def pipeline_config(name: str, batch: int, streamed: bool) -> Config:
    base = Config(data=name, steps=LONG_RUN, eval_every=LONG_RUN, checkpoint_every=0, batch_size=batch,
                  model=model_config(), optimizer=OptimizerConfig(name="adam", learning_rate=1e-3))
    overrides = [f"data.augment={AUGMENT}", "data.validation_fraction=0"]
    return apply_overrides(base, overrides + (["data.max_device_bytes=0"] if streamed else []))


class PipelineFeed:
    """The pipeline's own loop on one feed (PipelineRunner: ``prepare``, the run's compiled K-step call)."""

    def __init__(self, store, name: str, batch: int, streamed: bool):
        from pipeline.bench.pipeline_loop import PipelineRunner
        from pipeline.bench.points import Point
        from pipeline.bench.workload import Workload

        cfg = pipeline_config(name, batch, streamed)
        workload = Workload(Point("image-folder-cnn", "cnn", name, batch), cfg, store.info(name), store)
        self.impl, self.streamed, self.threads = ("pipeline streamed" if streamed else "pipeline resident"), streamed, 0
        self.runner = PipelineRunner(workload, self.impl, cfg, input_share=False)

    def setup(self) -> None:
        runner = self.runner
        runner.setup()
        if (runner.prep.reader is not None) != self.streamed:
            raise RuntimeError(f"{self.impl}: the pipeline picked the other feed")
        self.steps_per_call = runner.steps_per_unit
        runner.run(max(1, math.ceil(runner.prep.steps_per_epoch / self.steps_per_call)))  # an epoch, compiled

    def steps_for(self, steps: int) -> int:
        return math.ceil(steps / self.steps_per_call) * self.steps_per_call

    def run(self, steps: int) -> None:
        self.runner.run(steps // self.steps_per_call)

    def close(self) -> None:
        self.runner.close()


# -- PyTorch ---------------------------------------------------------------------------------------

def flip_crop(image_CxHxW, flip: bool, top: int, left: int, pad: int):
    """torchvision's RandomHorizontalFlip then RandomCrop(padding=pad) with the draws given."""
    import torch.nn.functional as F

    _, h, w = image_CxHxW.shape
    if flip:
        image_CxHxW = image_CxHxW.flip(-1)
    padded = F.pad(image_CxHxW, (pad, pad, pad, pad))  # zeros: black, before Normalize
    return padded[:, top:top + h, left:left + w]


class FolderDataset:
    """ImageFolder with the usual CIFAR transforms, written in plain torch (no torchvision here)."""

    def __init__(self, files: list[Path], labels: list[int], mean, std, pad: int = PAD):
        import torch

        self.files, self.labels, self.pad = files, labels, pad
        self.mean = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.as_tensor(std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torch

        with Image.open(self.files[i]) as image:
            pixels = np.array(image.convert("RGB"))  # a writable copy, as ToTensor makes
        x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255.0)  # ToTensor
        flip = bool(torch.rand(()) < 0.5)
        top, left = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
        x = flip_crop(x, flip, top, left, self.pad)
        return (x - self.mean) / self.std, self.labels[i]  # Normalize


class TorchTrainer:
    def __init__(self, dataset: FolderDataset, batch: int, workers: int):
        import torch
        import torch.nn.functional as F

        from pipeline.bench import torch_models

        torch.manual_seed(0)
        self.torch = torch
        self.model = torch_models.build(model_config(), (SIZE, SIZE, 3), CLASSES)
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                                  num_workers=workers, persistent_workers=workers > 0,
                                                  # not fork: this process already runs JAX's threads
                                                  multiprocessing_context="forkserver" if workers else None)
        self.batches = self._forever()
        self.loss = F.cross_entropy

    def _forever(self):
        while True:
            yield from self.loader

    def run(self, steps: int) -> None:
        for _ in range(steps):
            x_BxCxHxW, y = next(self.batches)
            self.opt.zero_grad(set_to_none=True)
            out = self.model(x_BxCxHxW.movedim(1, -1))  # the twin takes channels last, as the pipeline's model
            loss = self.loss(out, y)
            loss.backward()
            self.opt.step()
        if not math.isfinite(loss.item()):
            raise RuntimeError("non-finite loss in the torch loop")

    def pick_threads(self, steps: int) -> int:
        """The faster of 1 thread and torch's default on ``steps`` steps (warm-up, not timed)."""
        default = self.torch.get_num_threads()
        best, best_s = default, float("inf")
        for threads in sorted({1, default}):
            self.torch.set_num_threads(threads)
            start = time.perf_counter()
            self.run(steps)
            if time.perf_counter() - start < best_s:
                best, best_s = threads, time.perf_counter() - start
        self.torch.set_num_threads(best)
        return best


class TorchFeed:
    """The PyTorch loop over the image files with ``workers`` DataLoader workers."""

    steps_per_call = 1

    def __init__(self, files: list[Path], labels: list[int], mean, std, batch: int, workers: int):
        self.impl, self.workers = f"torch eager, {workers} workers", workers
        self.make = lambda: TorchTrainer(FolderDataset(files, labels, mean, std), batch, workers)
        self.epoch = len(files) // batch
        self.trainer = None

    def setup(self) -> None:
        self.trainer = self.make()
        self.default_threads = self.trainer.torch.get_num_threads()
        self.trainer.run(self.epoch)  # an epoch: workers started, files in the page cache
        self.threads = self.trainer.pick_threads(20)

    def steps_for(self, steps: int) -> int:
        return steps

    def run(self, steps: int) -> None:
        self.trainer.torch.set_num_threads(self.threads)
        self.trainer.run(steps)
        self.trainer.torch.set_num_threads(self.default_threads)  # the pipeline's turn next

    def close(self) -> None:
        if self.trainer is not None:
            self.trainer.batches.close()  # the DataLoader's iterator: its workers stop
            self.trainer = None


def interleaved(feeds: list, steps: int, rounds: int, batch: int) -> list[Row]:
    """Each feed timed ``rounds`` times, in an order rotated every round, so load from other
    processes on a shared machine falls on all of them alike."""
    rows = []
    for r in range(rounds):
        for feed in feeds[r % len(feeds):] + feeds[:r % len(feeds)]:
            n = feed.steps_for(steps)
            start = time.perf_counter()
            feed.run(n)
            rows.append(Row(feed.impl, n, time.perf_counter() - start, batch, feed.steps_per_call,
                            getattr(feed, "workers", 0), feed.threads, r))
    return rows


# -- the command -----------------------------------------------------------------------------------

def channel_stats(info) -> tuple[np.ndarray, np.ndarray]:
    """The import's per-channel (mean, std) on [0, 1]: the same standardization as the pipeline's."""
    from pipeline.data.stats import feature_stats

    mean, std = feature_stats(info)
    return np.asarray(mean, np.float32) / 255.0, np.asarray(std, np.float32) / 255.0


def summary(rows: list[Row]) -> list[tuple[str, Row, float, float]]:
    """Per feed: its first row, the median steps/s over rounds, and the median of the rounds'
    ratios resident / this (paired: the two were timed in the same round)."""
    resident = {r.round: r.steps_per_s for r in rows if r.impl == "pipeline resident"}
    out = []
    for impl in dict.fromkeys(r.impl for r in rows):
        mine = [r for r in rows if r.impl == impl]
        ratios = [resident[r.round] / r.steps_per_s for r in mine]
        out.append((impl, mine[0], float(np.median([r.steps_per_s for r in mine])), float(np.median(ratios))))
    return out


def table(rows: list[Row]) -> str:
    lines = [f"{'impl':26s} {'steps':>6s} {'K':>4s} {'threads':>7s} {'steps/s':>9s} {'resident / this':>15s}"]
    for impl, first, rate, ratio in summary(rows):
        lines.append(f"{impl:26s} {first.steps:6d} {first.steps_per_call:4d} {first.threads or '-':>7} "
                     f"{rate:9.1f} {ratio:14.2f}x")
    return "\n".join(lines)


def write_rows(rows: list[Row], out: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {key: [getattr(r, key) for r in rows] for key in
               ("impl", "round", "steps", "seconds", "batch", "steps_per_call", "workers", "threads",
                "steps_per_s")}
    pq.write_table(pa.table(columns), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="training images (a tenth more go to test/)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200, help="timed steps a round (pipeline: K's multiple)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", default="0,2", help="DataLoader num_workers to measure, comma list")
    parser.add_argument("--out", help="write the results here as Parquet")
    args = parser.parse_args(argv)
    from pipeline.data import Store, import_dataset

    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        write_image_folder(folder, args.images, max(CLASSES, args.images // 10))
        store = Store(Path(tmp) / "store")
        info = import_dataset(store, str(folder), "image-folder", image_size=(SIZE, SIZE), channels=3)
        files, labels = image_files(folder / "train")
        mean, std = channel_stats(info)
        feeds = [PipelineFeed(store, info.name, args.batch, streamed) for streamed in (False, True)]
        feeds += [TorchFeed(files, labels, mean, std, args.batch, w) for w in workers]
        try:
            for feed in feeds:
                feed.setup()
            rows = interleaved(feeds, args.steps, args.rounds, args.batch)
        finally:
            for feed in feeds:
                feed.close()
    print(f"{args.images} PNGs {SIZE}x{SIZE} RGB, {CLASSES} classes, CNN 16,32 / 128, batch {args.batch}, "
          f"data.augment={AUGMENT}, {cores} cores, median of {args.rounds} interleaved rounds")
    print(table(rows))
    if args.out:
        write_rows(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
