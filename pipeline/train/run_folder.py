"""The run folder of a training run: its config, its dataset's metadata, whether a re-run may resume it,
and reading its checkpoints back without writing anything there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, flat_keys, from_dict, to_dict
from pipeline.data.dataset import DatasetInfo
from pipeline.durable.files import make_folders, write_json
from pipeline.durable.folder_locks import hold_folder
from pipeline.durable.records import CorruptFile, read_json_object
from pipeline.errors import PipelineError, first_line

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
# Keys that may change when a run is resumed: they extend or re-schedule it, or lay it out on
# other devices (a checkpoint restores onto any mesh), without changing what the saved state means.
RESUMABLE_CHANGES = (
    "steps", "epochs", "eval_every", "checkpoint_every", "checkpoint_minutes", "checkpoint_keep", "patience",
    "steps_per_call", "plot", "log", "profile", "mesh.data", "mesh.fsdp",
)


RUN_FILES = {CONFIG_FILE, DATASET_FILE, "metrics.parquet", "checkpoints", "summary.json", "curves.png"}


def saved_config(path: Path) -> tuple[dict, Config]:
    """The record of ``config.json`` and the config in it; a damaged file is one line naming it."""
    saved = read_json_object(path, ("config",))
    if not isinstance(saved["config"], dict):
        raise CorruptFile(f"{path}: damaged record ('config' is not an object)")
    try:
        return saved, from_dict(Config, saved["config"])
    except ConfigError as exc:
        raise CorruptFile(f"{path}: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise CorruptFile(f"{path}: damaged record ({type(exc).__name__}: {exc})") from None


def check_not_foreign(run_dir: Path) -> None:
    """Refuse an existing folder that holds something else than a run (a ``--run-dir`` typo)."""
    if (run_dir / CONFIG_FILE).is_file() or not run_dir.is_dir():
        return
    foreign = sorted(e for e in os.listdir(run_dir) if not e.startswith(".") and e not in RUN_FILES)
    if foreign:
        raise ConfigError(f"bad value for '--run-dir': {run_dir} exists and is not a run folder "
                          f"(it holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})")


def open_run_dir(run_dir: Path, experiment: str, cfg: Config, info: DatasetInfo, experiment_file: str = "") -> bool:
    """Create or reopen ``run_dir``; True when it holds an earlier run of the same config.

    The folder is locked for this process first (``RUN_DIR/.lock``): a run folder another
    process is training into is refused, naming its pid and host. A folder made by a
    different config is refused with the keys that differ, and an existing folder that holds
    something else than a run is refused. ``dataset.json`` keeps the dataset's metadata
    (shapes, classes, feature statistics), so the trained model can be loaded back without
    the store (``pipeline.load_run``); ``experiment_file`` is the file that defined it (its
    model family may be registered there).
    """
    make_folders(run_dir)
    hold_folder(run_dir, "run folder")  # a no-op when the command already holds it
    config_path = run_dir / CONFIG_FILE
    resuming = config_path.is_file()
    if resuming:
        _, saved = saved_config(config_path)
        old, new = flat_keys(saved), flat_keys(cfg)
        differing = [k for k in new if old.get(k) != new[k] and k not in RESUMABLE_CHANGES]
        if differing:
            shown = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in differing)
            raise ConfigError(f"run folder {run_dir} was made by a different config: {shown}; "
                              "use another --run-dir")
    else:
        check_not_foreign(run_dir)
    write_json(run_dir / DATASET_FILE, json.loads(info.to_json()))
    record = {"experiment": experiment, "config": to_dict(cfg)}
    if experiment_file:
        record["experiment_file"] = experiment_file
    write_json(config_path, record)
    return resuming


def read_run(run_dir: Path) -> tuple[str, Config, DatasetInfo]:
    """The experiment name, config and dataset metadata of a run folder.

    A model family or objective the config names that is not registered yet is looked for in the
    run's experiment file, which is loaded (run) for that.
    """
    from pipeline.registry import is_registered

    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / DATASET_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no {CONFIG_FILE} or {DATASET_FILE})")
    saved = read_json_object(run_dir / CONFIG_FILE, ("config",))
    model = saved["config"].get("model", {}) if isinstance(saved["config"], dict) else {}
    family = model.get("name", "") if isinstance(model, dict) else ""
    objective = saved["config"].get("objective", "") if isinstance(saved["config"], dict) else ""
    missing = (family and not is_registered(family)) or (objective and not is_registered(objective, "objective"))
    if missing and saved.get("experiment_file"):
        from pipeline.experiments import load_module

        load_module(saved["experiment_file"])
    _, cfg = saved_config(run_dir / CONFIG_FILE)
    data = read_json_object(run_dir / DATASET_FILE)
    try:
        info = DatasetInfo.from_json(json.dumps(data))
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFile(f"{run_dir / DATASET_FILE}: damaged record ({type(exc).__name__}: {exc})") from None
    return saved.get("experiment", ""), cfg, info


def read_checkpoint(directory: Path, like_state: Any | Callable[[dict], Any]) -> tuple[Any, dict] | None:
    """The newest checkpoint in ``directory`` (``RUN_DIR/checkpoints``, ``.../best``, a sweep population's
    folder) as host arrays shaped like ``like_state`` (or ``like_state(meta)``), and its meta item.

    A reader: it takes no lock and writes nothing, so a process training into the folder meanwhile
    is not disturbed. Orbax opens the folder with nothing to create (a missing ``best/`` stays
    missing) and no clean-up of temporary folders (they may be a running save's). A checkpoint
    deleted by that process while it is read (its ``checkpoint_keep``) is read again from the
    newest one. None when the folder holds no checkpoint; one that cannot be read (truncated,
    damaged, another format) is one line naming its folder (``CorruptFile``).
    """
    import jax

    from pipeline.train.checkpoint import _ocp, barrier_prefix  # Orbax, with its INFO logging quieted

    directory = Path(directory)
    if not directory.is_dir():
        return None
    _drop_late_read_callbacks()
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(
        create=False, cleanup_tmp_directories=False, save_root_metadata=False, enable_async_checkpointing=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=barrier_prefix(directory, "read")))
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    step, failure = None, None
    with ocp.CheckpointManager(directory.resolve(), options=options, item_handlers=handlers) as manager:
        for _ in range(3):  # the newest step may be deleted by a training process while it is read
            manager.reload()
            newest = manager.latest_step()
            if newest is None or newest == step:
                break
            step = newest
            try:
                meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
                like = jax.device_get(like_state(meta) if callable(like_state) else like_state)
                restored = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()))
                return restored["state"], dict(restored["meta"])
            except PipelineError:
                raise
            except Exception as exc:  # noqa: BLE001 - Orbax and tensorstore raise ValueError, OSError, ...
                failure = exc
    if step is None:
        return None
    reason = f"{type(failure).__name__}: {first_line(failure)}"
    if len(reason) > 300:
        reason = reason[:297] + "..."
    raise CorruptFile(f"{directory / str(step)}: unreadable checkpoint ({reason})")


_LATE_CALLBACKS_DROPPED = False


def _drop_late_read_callbacks() -> None:
    """Keep the reads a failed restore leaves behind off the terminal (a hook installed once, at the first read).

    When one read of a checkpoint fails, Orbax closes its asyncio loop while tensorstore still
    completes the other reads it had started; each then calls back into the closed loop, and Python
    prints that ``RuntimeError: Event loop is closed`` as a traceback beside the one-line error
    (any time later, from tensorstore's threads). The hook drops exactly those; every other
    unraisable exception goes to the hook that was there before.
    """
    global _LATE_CALLBACKS_DROPPED
    if _LATE_CALLBACKS_DROPPED:
        return
    import sys

    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    sys.unraisablehook = hook
    _LATE_CALLBACKS_DROPPED = True
