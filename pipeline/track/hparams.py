"""The hyperparameters that tell runs of one experiment apart, as one short cell of ``pipeline runs list``.

Read from each run's ``config.json`` alone (no experiment file is imported: listing runs loads no
JAX): of the runs of one experiment, the config keys whose values are not the same in all of them,
which are the keys a sweep or the command line's overrides changed.
"""

from __future__ import annotations

from typing import Any

# Keys that change how a run is recorded, placed or shown, not what it learns; ``data.name`` and
# ``steps`` have columns of their own.
NOT_HYPERPARAMETERS = ("plot", "log", "profile", "mlflow_uri", "checkpoint_every", "checkpoint_keep",
                       "checkpoint_minutes", "eval_batch_size", "steps_per_call", "data.name", "data.prefetch",
                       "data.shuffle_buffer", "data.max_device_bytes", "mesh.", "steps")
WIDTH = 30  # characters of the cell: the listing stays readable in 120 columns
SHORT = {"learning_rate": "lr", "weight_decay": "wd"}  # the two keys nearly every sweep changes


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"learning_rate": 0.1}}`` as ``{"optimizer.learning_rate": 0.1}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_hyperparameter(key: str) -> bool:
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_HYPERPARAMETERS)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The hyperparameter keys (dotted) whose values are not the same in every one of ``configs``."""
    flat = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    missing = object()
    return [k for k in keys if _is_hyperparameter(k) and len({repr(f.get(k, missing)) for f in flat}) > 1]


def cell(config: dict[str, Any], keys: list[str], width: int = WIDTH) -> str:
    """``lr=0.01 hidden=100,100``: each key by its last part (whole where two parts clash; ``SHORT``),
    cut at ``width`` characters with ``+N`` for the keys left out."""
    flat = flatten(config)
    tails = [SHORT.get(t, t) for t in (k.rpartition(".")[2] for k in keys)]
    items = [f"{tail if tails.count(tail) == 1 else key}={_text(flat.get(key, '-'))}"
             for key, tail in zip(keys, tails)]
    shown: list[str] = []
    for i, item in enumerate(items):
        rest = len(items) - i - 1
        more = f" +{rest}" if rest else ""
        if shown and len(" ".join([*shown, item]) + more) > width:
            return " ".join(shown) + f" +{len(items) - i}"
        shown.append(item)
    return " ".join(shown)


def hparams_cells(experiments: list[str], configs: list[dict[str, Any]]) -> list[str]:
    """For each run (its experiment's name and its config), what differs among the runs of that experiment."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(experiments):
        groups.setdefault(name, []).append(i)
    cells = [""] * len(configs)
    for members in groups.values():
        keys = differing_keys([configs[i] for i in members])
        for i in members:
            cells[i] = cell(configs[i], keys) if keys else ""
    return cells
