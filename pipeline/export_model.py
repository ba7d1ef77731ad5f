"""``pipeline export``: a trained run's model as a file that runs without this package.

Both formats take a batch of features as stored (any number of rows; normalization is inside)
and give the model's raw outputs, what ``load_run(run_dir)(x)`` gives: logits for
classification, the outputs for regression.

* ``stablehlo``: ``jax.export`` of the model with its weights as constants and a symbolic batch
  dimension, lowered for CPU, CUDA and TPU where it can be (else for this machine's platform),
  serialized. ``jax.export.deserialize(data).call(x)`` runs it with plain ``jax``.
* ``onnx``: ``jax2onnx`` (the ``onnx`` extra), input ``x`` with a dynamic batch dimension,
  output ``outputs``; the task, class names and feature names are in the model's metadata
  properties. It is checked in ``onnxruntime`` before it is written.

Either file is checked against the JAX model on a small batch, then written atomically
(pipeline/durable/files.py); anything that fails leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ConfigError
from pipeline.data.dataset import DatasetInfo
from pipeline.errors import PipelineError, first_line, one_line_errors

FORMATS = ("stablehlo", "onnx")
ONNX_EXTRA = "pip install 'pipeline[onnx]'"
PLATFORMS = ("cpu", "cuda", "tpu")
CHECK_ROWS = 3  # rows the written file is checked on (a batch size other than 1 or the tracing one)
TOLERANCE = {"stablehlo": 1e-5, "onnx": 1e-4}  # largest difference from the JAX model, relative to its outputs


class ExportError(PipelineError):
    """A model the chosen exporter cannot take, or whose export does not run: one line."""


@dataclass
class ExportResult:
    out: Path
    format: str
    input_shape: tuple[Any, ...]  # ("b", *feature_shape): "b" is any number of rows
    input_dtype: str
    bytes: int
    platforms: tuple[str, ...]  # StableHLO: where the file runs; ONNX: ("onnxruntime",)


@one_line_errors
def export(run_dir: str | Path, format: str = "stablehlo", out: str | Path | None = None,
           which: str = "best") -> ExportResult:
    """Write ``run_dir``'s model (its ``which`` checkpoint) to ``out`` in ``format``: stablehlo or onnx."""
    from pipeline.api import load_run

    if format not in FORMATS:
        raise ConfigError(f"bad value for '--format': {format!r}; choose {' or '.join(FORMATS)}")
    if out is None:
        raise ConfigError("export() needs out=FILE")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"bad value for '--out': {out} is a folder; give a file name")
    if format == "onnx":
        require_onnx_extra()
    model = load_run(run_dir, which=which)
    info: DatasetInfo = model._surface.info
    function = model_constant_function(model)
    sample = sample_features(info)
    expected = np.asarray(model(sample))
    if format == "stablehlo":
        data, platforms = stablehlo_bytes(function, info)
        check_close(format, run_stablehlo(data, sample), expected)
    else:
        data, platforms = onnx_bytes(function, info), ("onnxruntime",)
        check_close(format, run_onnx(data, sample), expected)
    write_file(out, data)
    return ExportResult(out, format, ("b", *info.feature_shape), info.feature_dtype, len(data), platforms)


def model_constant_function(model: Any) -> Callable[[Any], Any]:
    """``x -> model(x)`` with the weights inside as constants: what an exported file holds."""
    from pipeline.predict import model_function

    apply, params, rest = model_function(model)
    return lambda x: apply(params, rest, x)


def sample_features(info: DatasetInfo) -> np.ndarray:
    """A few rows of plausible features, seeded: the training split's mean and spread where known."""
    rng = np.random.default_rng(0)
    shape = (CHECK_ROWS, *info.feature_shape)
    if np.dtype(info.feature_dtype).kind in "iu":  # token ids: valid ones
        return rng.integers(0, max(1, info.num_classes), size=shape).astype(info.feature_dtype)
    x = rng.normal(size=shape)
    stats = info.feature_stats
    if stats.get("mean") and stats.get("std"):
        mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
        if mean.size == int(np.prod(info.feature_shape)):
            x = x * std.reshape(info.feature_shape) + mean.reshape(info.feature_shape)
    return x.astype(info.feature_dtype)


def check_close(format: str, got: np.ndarray, expected: np.ndarray) -> None:
    got = np.asarray(got)
    if got.shape != expected.shape:
        raise ExportError(f"the {format} export gives outputs of shape {got.shape}, the model {expected.shape}")
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    worst = float(np.abs(got.astype(np.float64) - expected).max(initial=0.0)) / scale
    if not worst <= TOLERANCE[format]:
        raise ExportError(f"the {format} export's outputs differ from the model's by {worst:.2g} (relative), "
                          f"more than {TOLERANCE[format]:g}; nothing was written")


def write_file(out: Path, data: bytes) -> None:
    from pipeline.durable.files import write_into_new_folders

    write_into_new_folders(out, lambda handle: handle.write(data))


# -- StableHLO --------------------------------------------------------------------------------------

def stablehlo_bytes(function: Callable[[Any], Any], info: DatasetInfo) -> tuple[bytes, tuple[str, ...]]:
    """``jax.export`` with a symbolic batch size, for every platform it lowers to (else this one)."""
    import jax
    from jax import export as jax_export

    (batch,) = jax_export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, *info.feature_shape), np.dtype(info.feature_dtype))
    try:
        try:
            exported = jax_export.export(jax.jit(function), platforms=PLATFORMS)(spec)
        except Exception:  # noqa: BLE001 - an op without a lowering for another platform: this one only
            exported = jax_export.export(jax.jit(function))(spec)
    except Exception as exc:  # noqa: BLE001 - shape polymorphism and lowering raise many kinds
        raise ExportError(f"cannot export the model to StableHLO with any batch size: "
                          f"{type(exc).__name__}: {first_line(exc)}") from None
    return bytes(exported.serialize()), tuple(exported.platforms)


def run_stablehlo(data: bytes, x: np.ndarray) -> np.ndarray:
    from jax import export as jax_export

    return np.asarray(jax_export.deserialize(bytearray(data)).call(x))


# -- ONNX -------------------------------------------------------------------------------------------

def require_onnx_extra() -> None:
    import importlib.util

    missing = [name for name in ("jax2onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"--format onnx needs the onnx extra ({', '.join(missing)} not installed): {ONNX_EXTRA}")


def onnx_bytes(function: Callable[[Any], Any], info: DatasetInfo) -> bytes:
    """``jax2onnx.to_onnx`` with a dynamic batch dimension; the dataset's meaning in the metadata."""
    import jax
    import onnx
    from jax import export as jax_export
    from jax2onnx import to_onnx

    (batch,) = jax_export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, *info.feature_shape), np.dtype(info.feature_dtype))
    quiet = [logging.getLogger(name) for name in ("onnx_ir", "jax2onnx")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:  # conversion notes, not errors: keep the command's output to its one line
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():  # jax2onnx's own use of deprecated Flax APIs is not the user's business
            warnings.simplefilter("ignore", DeprecationWarning)
            proto = to_onnx(function, [spec], model_name="pipeline_model", input_names=["x"],
                            output_names=["outputs"])
    except Exception as exc:  # noqa: BLE001 - an op or a model jax2onnx has no rule for, among others
        raise ExportError(f"jax2onnx cannot convert the model: {type(exc).__name__}: {first_line(exc)}") from None
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    onnx.helper.set_model_props(proto, {
        "task": info.task, "class_names": json.dumps(list(info.class_names)),
        "feature_names": json.dumps(list(info.feature_names)), "feature_dtype": info.feature_dtype,
        "feature_shape": json.dumps(list(info.feature_shape)), "dataset": info.name})
    try:
        return proto.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GiB limit
        raise ExportError(f"the ONNX model cannot be serialized: {first_line(exc)}") from None


def run_onnx(data: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/... types
        raise ExportError(f"the ONNX model does not run in onnxruntime: {type(exc).__name__}: "
                          f"{first_line(exc)}") from None
