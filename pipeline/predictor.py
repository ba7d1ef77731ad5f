"""The trained model as a user calls it: arrays, DataFrames or Arrow tables in; outputs, class names,
probabilities and the run's metrics out.

``load_run`` gives back the NNX module itself, its class swapped for a subclass of its own
(``with_surface``): state, graph, attributes and class name are the module's (``nnx.split`` and
attribute access work as before), and the subclass adds

* a call that takes a pandas DataFrame or a pyarrow Table, its columns matched by the feature
  names stored at import (any order; the target column, if present, is ignored), and a single
  row given without its batch axis (1-D features only: ``x.shape == (F,)`` is ``x[None]``);
* ``predict`` (class names for classification, outputs otherwise), ``predict_proba``
  (classification) and ``evaluate`` (the objective's metrics, computed by the run's own
  evaluation program, so they equal ``summary.json``'s for the same rows).

Arrays are passed on as given, as before: the model's own failure on features it cannot take
is then turned into one line (``ModelInputError``) naming the shape it needs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.data.dataset import DatasetInfo
from pipeline.data.from_python import is_frame
from pipeline.errors import PipelineError

SHOWN_COLUMNS = 8  # columns a message lists before "..."


class ModelInputError(PipelineError):
    """Features (or labels) a loaded model cannot take: one line naming what it needs."""


@dataclass(frozen=True)
class Surface:
    """What the model knows besides its weights: its dataset's metadata and the run's evaluation."""

    info: DatasetInfo
    spec: Any  # the run's StepSpec: objective, compute dtype, PRNG key leaves
    eval_batch_size: int


def with_surface(model: Any, surface: Surface) -> Any:
    """``model``, its class now a subclass of its own with ``Predictor``'s methods and ``surface``.

    The methods are copied into the subclass (not inherited from a second base), so its instance
    layout is its base's and ``__class__`` can be assigned; ``_base`` is the model's own class.
    """
    cls = type(model)
    namespace = {name: value for name, value in vars(Predictor).items() if name not in ("__dict__", "__weakref__")}
    namespace.update({"_surface": surface, "_base": cls, "__module__": cls.__module__,
                      "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
    model.__class__ = type(cls.__name__, (cls,), namespace)
    return model


class Predictor:
    """The methods ``with_surface`` gives the model's subclass; ``_surface`` and ``_base`` are set there."""

    _surface: Surface
    _base: type

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        info = self._surface.info
        x = features_of(x, info)
        try:
            return self._base.__call__(self, x, *args, **kwargs)
        except (TypeError, ValueError, AttributeError) as exc:
            problem = input_problem(x, tuple(info.feature_shape), info.feature_dtype)
            if problem is None:
                raise
            raise ModelInputError(problem) from exc

    def predict(self, x: Any) -> np.ndarray:
        """Classification: the class of each row, as its name (integers when every class name is one);
        language modelling: token ids; regression: the outputs, (N,) for a scalar target."""
        info = self._surface.info
        out = np.asarray(self(x))
        if info.task == "classification":
            ids = out.argmax(-1)
            return class_values(info.class_names)[ids] if info.class_names else ids
        if info.task == "language_modeling":
            return out.argmax(-1)
        return out[:, 0] if info.label_shape == () and out.ndim == 2 and out.shape[1] == 1 else out

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities (N, classes), columns in the order of ``class_names``."""
        import jax

        info = self._surface.info
        if info.task == "regression":
            raise PipelineError(f"predict_proba is for classification; the model was trained on the regression "
                                f"dataset '{info.name}': use predict")
        return np.asarray(jax.nn.softmax(np.asarray(self(x), np.float32), axis=-1))

    @property
    def class_names(self) -> list[str]:
        return list(self._surface.info.class_names)

    @property
    def feature_names(self) -> list[str]:
        return list(self._surface.info.feature_names)

    def evaluate(self, data: Any, y: Any = None, *, split: str = "test", store: Any = None) -> dict[str, float]:
        """The objective's metrics (``loss``, ``accuracy``, ``mse``, ...) on ``data``.

        ``data`` is a dataset name in the store (its ``split``), a DataFrame or Arrow table with the
        target column, ``(x, y)`` or ``x`` with ``y``; labels as they were given at import (class
        names or values; a stored split holds them as ids already). Computed by the run's evaluation
        program (same batches, same sums), so a run's test split gives ``summary.json``'s test metrics.
        """
        from pipeline.data.dataset import Split

        info = self._surface.info
        if isinstance(data, str):
            split_data = stored_split(data, split, info, store)
        elif is_frame(data):
            split_data = frame_split(data, info)
        else:
            if y is None:
                if not (isinstance(data, (tuple, list)) and len(data) == 2):
                    raise ModelInputError("evaluate() takes a dataset name, a frame with the target column, "
                                          f"(x, y) or x and y, not {type(data).__name__}")
                data, y = data
            x = evaluation_features(features_of(data, info), info)
            split_data = Split(x, labels_of(np.asarray(y), info))
            if len(split_data.y) != len(x):
                raise ModelInputError(f"evaluate(): {len(x)} rows of features but {len(split_data.y)} labels")
        if len(split_data) == 0:
            raise ModelInputError("evaluate(): no rows")
        return evaluate_split(self, self._surface, split_data)


# -- features ---------------------------------------------------------------------------------------

def features_of(x: Any, info: DatasetInfo) -> Any:
    """A frame as the stored features; a single 1-D row as a batch of one; anything else as given."""
    if is_frame(x):
        return frame_features(x, info)
    if hasattr(x, "to_frame") and hasattr(x, "index"):  # a pandas Series: one row (df.iloc[i]) or a column
        if info.feature_names and set(map(str, x.index)) & set(info.feature_names):
            return frame_features(x.to_frame().T.infer_objects(), info)
        x = x.to_numpy()
    shape = tuple(info.feature_shape)
    given = getattr(x, "shape", None)
    integers = np.dtype(info.feature_dtype).kind in "iu"
    if given is not None and len(shape) == 1 and len(given) == 1 and (tuple(given) == shape or integers):
        return x[None]
    return x


def _shown(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN_COLUMNS else ""
    return ", ".join(names[:SHOWN_COLUMNS]) + more


def frame_columns(table: Any, info: DatasetInfo) -> list[str]:
    """The stored feature columns, checked against the frame's: one line naming a missing or extra one."""
    names = list(info.feature_names)
    if not names:
        shape = ", ".join(map(str, info.feature_shape))
        raise ModelInputError(f"the model's dataset '{info.name}' was imported without column names (from arrays "
                              f"or an .npz); give it a numpy array of shape (N, {shape})")
    columns = list(table.column_names)
    missing = [n for n in names if n not in columns]
    if missing:
        raise ModelInputError(f"the frame has no column '{missing[0]}'"
                              + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
                              + f"; the model takes the columns {_shown(names)}")
    extra = [c for c in columns if c not in names and c != info.target]
    if extra:
        raise ModelInputError(f"the frame has column '{extra[0]}'"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                              + f" the model was not trained on; it takes the columns {_shown(names)}")
    return names


def frame_features(frame: Any, info: DatasetInfo) -> np.ndarray:
    """A frame's feature columns, picked by name, as the import made them (same code: ``FeaturePlan``)."""
    from pipeline.data.features import FeaturePlan
    from pipeline.data.frames import FrameTables, as_table
    from pipeline.data.layout import Layout

    table = as_table("the frame", frame)
    names = frame_columns(table, info)
    shape, dtype = tuple(info.feature_shape), info.feature_dtype
    if table.num_rows == 0:
        return np.zeros((0, *shape), dtype)
    tables = FrameTables({"dataframe": table.select(names)}, Layout().read_block_bytes)
    plan = FeaturePlan.of(tables, names)
    if plan.shape != shape:
        raise ModelInputError(f"the frame's columns {_shown(names)} make features of shape {plan.shape}; "
                              f"the model takes {shape}")
    plan.dtype = dtype
    return np.concatenate([plan.array(chunk) for chunk in tables.chunks(names, names)])


def evaluation_features(x: Any, info: DatasetInfo) -> np.ndarray:
    """Features for the run's evaluation program: the stored shape and dtype (flat rows reshaped)."""
    shape = tuple(info.feature_shape)
    problem = input_problem(x, shape, info.feature_dtype)
    x = np.asarray(x)
    if problem is None and x.shape[1:] != shape and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        x = x.reshape(len(x), *shape)  # flat rows of images, as an MLP takes them
    elif problem is None and x.shape[1:] != shape:
        problem = f"evaluate() takes features of shape (N, {', '.join(map(str, shape))}), not {x.shape}"
    if problem is not None:
        raise ModelInputError(problem)
    return x.astype(info.feature_dtype, copy=False)


def input_problem(x: Any, shape: tuple[int, ...], dtype: str) -> str | None:
    """Why a model trained on features of ``shape`` and ``dtype`` cannot take ``x``; None if it could."""
    wanted = f"a batch of shape (N, {', '.join(map(str, shape))}) of {dtype}" if shape else f"(N,) of {dtype}"
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        return f"the model takes {wanted} as a numpy or JAX array, not a {type(x).__name__}"
    try:
        kind = np.dtype(x.dtype).kind
    except TypeError:
        kind = "O"
    integers = np.dtype(dtype).kind in "iu"
    if kind not in ("iu" if integers else "biuf"):
        return f"the model takes {wanted}, not {x.dtype} values"
    given = tuple(x.shape)
    if len(given) != len(shape) + 1:
        one = "; one example is x[None]" if given == shape else ""
        return f"the model takes {wanted}, not shape {given}{one}"
    if not integers and given[1:] != shape:  # token sequences may be shorter than the stored ones
        return f"the model takes {wanted}, not shape {given}"
    return None


# -- labels -----------------------------------------------------------------------------------------

def class_values(names: list[str]) -> np.ndarray:
    """Class names as predictions: integers when every name is one (labels given as integers), else text."""
    if names and all(n.removeprefix("-").isdigit() for n in names):
        return np.array([int(n) for n in names])
    return np.array(names)


def labels_of(y: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Labels as given at import, as the stored ones: class names to ids, numbers to float32."""
    import pyarrow as pa

    if info.task == "regression":
        if y.dtype.kind not in "biuf":
            raise ModelInputError(f"the labels must be numbers for the regression dataset '{info.name}', "
                                  f"not {y.dtype}")
        return y.astype(np.float32).reshape(len(y), *info.label_shape)
    if info.task != "classification" or not info.class_names:
        return y.astype(np.int32)
    return class_ids(pa.array(y.ravel().tolist() if y.dtype.kind == "O" else y.ravel()), info).reshape(y.shape)


def class_ids(column: Any, info: DatasetInfo) -> np.ndarray:
    """Raw label values (an Arrow array) as class ids; one line naming a value that is not a class."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.data.labels import as_text
    from pipeline.data.tensors import to_numpy

    if pa.types.is_floating(column.type):  # 3.0 is the class "3", as the import named it
        whole = pc.equal(column, pc.floor(column))
        if pc.all(whole).as_py():
            column = pc.cast(column, pa.int64())
    ids = pc.index_in(as_text(column), value_set=pa.array(info.class_names, pa.string()))
    if ids.null_count:
        row = int(np.argmax(to_numpy(pc.is_null(ids))))
        raise ModelInputError(f"label '{column[row].as_py()}' (row {row}) is not a class of the model "
                              f"(classes: {_shown(list(info.class_names))})")
    return to_numpy(ids).astype(np.int32)


# -- evaluation -------------------------------------------------------------------------------------

def stored_split(name: str, split: str, info: DatasetInfo, store: Any) -> Any:
    """A split of a dataset in the store, checked to be the model's kind of data."""
    from pipeline.data import Store

    store = store if store is not None else Store()
    other = store.info(name)
    if split not in other.rows:
        raise ModelInputError(f"dataset '{name}' has no {split} split (it has {', '.join(other.rows)})")
    if (other.task, tuple(other.feature_shape), other.class_names) != (info.task, tuple(info.feature_shape),
                                                                        info.class_names):
        raise ModelInputError(f"dataset '{name}' ({other.task}, features {tuple(other.feature_shape)}) is not the "
                              f"model's kind of data ({info.task}, features {tuple(info.feature_shape)}"
                              + (", other classes" if other.task == info.task == "classification" else "") + ")")
    return store.read(name, split)


def frame_split(frame: Any, info: DatasetInfo) -> Any:
    """Features and labels of a frame that holds the target column."""
    from pipeline.data.dataset import Split
    from pipeline.data.frames import as_table

    table = as_table("the frame", frame)
    if not info.target or info.target not in table.column_names:
        what = (f"the target column '{info.target}'" if info.target
                else "a target column (the dataset has no name for it)")
        raise ModelInputError(f"evaluate(frame) needs {what}; or give (x, y)")
    x = frame_features(table, info)
    column = table.column(info.target).combine_chunks()
    if column.null_count:
        raise ModelInputError(f"the frame's target column '{info.target}' has empty values")
    if info.task == "classification" and info.class_names:
        return Split(x, class_ids(column, info))
    return Split(x, labels_of(column.to_numpy(zero_copy_only=False), info))


def evaluate_split(model: Any, surface: Surface, split: Any) -> dict[str, float]:
    """``eval_sums`` of the run (its batch size, padding and objective) on the model's current weights."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from pipeline.data.device import eval_batches
    from pipeline.sharding import make_mesh
    from pipeline.train.evaluation import finalize
    from pipeline.train.state import TrainState, raw_keys
    from pipeline.train.step import eval_sums

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    spec = replace(surface.spec, eval_graphdef=graphdef)
    state = TrainState(params=params, rest=raw_keys(rest), opt_state=None, step=jnp.zeros((), jnp.int32),
                       hparams={}, ema=None)
    batches = eval_batches(split, surface.eval_batch_size, make_mesh(devices=jax.devices()[:1]))
    sums = jax.jit(functools.partial(eval_sums, spec))(state, batches.x, batches.y, batches.mask)
    return finalize(spec.objective, sums)
