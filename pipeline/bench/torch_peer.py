"""The PyTorch peers: the same model, batch and precision, in eager mode and with torch.compile.

PyTorch is optional (the ``bench`` extra). Without it these peers are recorded as
``not installed``, never as zero. The loop is what a PyTorch user writes: batches
already on the device, ``zero_grad`` / forward / loss / ``backward`` / ``Adam.step``, with
``autocast`` to bfloat16 for ``precision=bf16`` (parameters stay float32, as in the
pipeline). ``torch_compile`` compiles the model (forward and, through AOTAutograd, its
backward); its compile time is the first step's time less a steady step.

On CPU, PyTorch's OpenMP threads fall apart when other processes hold the cores (a step
of a tiny model can take 100x longer); each torch peer is therefore run with the faster
of one thread and PyTorch's default thread count, tried during warm-up: the peers get
their best case, which makes the ratios conservative for the pipeline.
"""

from __future__ import annotations

import contextlib
import importlib
import time

import jax

from pipeline.bench.measure import NOT_INSTALLED, UNAVAILABLE, Measurement, Runner
from pipeline.bench.timing import Timing
from pipeline.bench.workload import Workload

BATCHES_ON_DEVICE = 16


def torch_module():
    """The torch module, or None when it cannot be imported."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


def unavailable(workload: Workload) -> tuple[str, str] | None:
    """(status, why) when the torch peers cannot run here; None when they can."""
    torch = torch_module()
    if torch is None:
        return NOT_INSTALLED, "pip install -e '.[bench]' adds PyTorch"
    backend = jax.default_backend()
    if backend == "gpu" and not torch.cuda.is_available():
        return UNAVAILABLE, f"torch {torch.__version__} has no CUDA device here"
    if backend not in ("cpu", "gpu"):
        return UNAVAILABLE, f"no PyTorch peer on {backend}"
    from pipeline.bench.torch_models import TWINS  # torch is importable by now

    if workload.cfg.model.name not in TWINS:
        return UNAVAILABLE, f"no torch twin for model '{workload.cfg.model.name}'"
    return None


class TorchRunner(Runner):
    def __init__(self, workload: Workload, compile_model: bool):
        self.impl = "torch_compile" if compile_model else "torch_eager"
        super().__init__()
        self.workload, self.compile_model = workload, compile_model
        self.device = None  # set by setup; close() may come first (a point refused before it)

    def setup(self) -> None:
        import torch
        import torch.nn.functional as F

        from pipeline.bench import torch_models

        w = self.workload
        cuda = jax.default_backend() == "gpu"
        self.device = torch.device("cuda" if cuda else "cpu")
        if cuda:
            torch.set_float32_matmul_precision("high")  # TF32, as XLA's default precision on GPUs
        torch.manual_seed(0)
        model = torch_models.build(w.cfg.model, w.info.feature_shape, w.info.output_size).to(self.device)
        model.train()
        self.model = model
        self.forward = torch.compile(model) if self.compile_model else model
        opt = torch.optim.Adam(model.parameters(), lr=w.cfg.optimizer.learning_rate)
        xs, ys = w.host_batches(BATCHES_ON_DEVICE)
        tokens = w.info.task == "language_modeling"
        self.batches = [(torch.from_numpy(xs[i]).to(self.device, torch.long if tokens else torch.float32),
                         torch.from_numpy(ys[i]).to(self.device, torch.float32 if w.info.task == "regression"
                                                    else torch.long))
                        for i in range(BATCHES_ON_DEVICE)]
        bf16 = w.cfg.precision == "bf16"
        regression = w.info.task == "regression"
        forward = self.forward

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16
                        else contextlib.nullcontext())
            with autocast:
                out = forward(x)
            out = out.float()
            if regression:
                loss = F.mse_loss(out, y.reshape(out.shape))
            else:
                loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
            loss.backward()
            opt.step()
            return loss

        self.step, self.count, self.torch, self.threads = step, 0, torch, None
        self.m.extra = {"params": sum(p.numel() for p in model.parameters())}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        self.run(1)  # torch.compile compiles here, on first use
        self.first_s = time.perf_counter() - start
        self.threads = self.pick_threads() if self.device.type == "cpu" else None
        self.m.extra["threads"] = self.threads

    def pick_threads(self) -> int:
        """The faster of 1 thread and torch's default, on a few steps of this model."""
        default = self.torch.get_num_threads()
        best, best_s = default, float("inf")
        for threads in sorted({1, default}):
            self.torch.set_num_threads(threads)
            self.run(3)
            start = time.perf_counter()
            self.run(10)
            took = time.perf_counter() - start
            if took < best_s:
                best, best_s = threads, took
        self.torch.set_num_threads(default)
        return best

    def run(self, units: int) -> None:
        if self.threads is not None:
            self.torch.set_num_threads(self.threads)
        for _ in range(units):
            x, y = self.batches[self.count % BATCHES_ON_DEVICE]
            self.step(x, y)
            self.count += 1
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def result(self, timing: Timing) -> Measurement:
        m = super().result(timing)
        if self.compile_model:
            m.compile_s = max(self.first_s - timing.median, 0.0)
        if self.device.type == "cuda":
            m.mem_peak_bytes = int(self.torch.cuda.max_memory_allocated())
        return m

    def close(self) -> None:
        self.step = self.batches = self.model = self.forward = None
        if self.device is not None and self.device.type == "cuda":
            self.torch.cuda.empty_cache()
