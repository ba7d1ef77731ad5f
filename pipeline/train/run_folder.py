"""The run folder of a training run: its config, its dataset's metadata, whether a re-run may resume it,
and reading its checkpoints back without writing anything there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.config import Config, ConfigError, flat_keys, from_dict, to_dict
from pipeline.data.dataset import DatasetInfo
from pipeline.durable.files import make_folders, write_json
from pipeline.durable.folder_locks import hold_folder
from pipeline.durable.records import CorruptFile, read_json_object

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
# Keys that may change when a run is resumed: they extend or re-schedule it, or lay it out on
# other devices (a checkpoint restores onto any mesh), without changing what the saved state means.
RESUMABLE_CHANGES = (
    "steps", "epochs", "eval_every", "checkpoint_every", "checkpoint_minutes", "checkpoint_keep", "patience",
    "steps_per_call", "plot", "log", "mlflow_uri", "profile", "mesh.data", "mesh.fsdp",
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
