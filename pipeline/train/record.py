"""The run folder of a training run: its config, its dataset's metadata, and whether a re-run may resume it."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import Config, ConfigError, flat_keys, from_dict, to_dict
from pipeline.data.dataset import DatasetInfo
from pipeline.track.run_dir import read_json, write_json

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
# Keys that may change when a run is resumed: they extend or re-schedule it without
# changing what the saved state means.
RESUMABLE_CHANGES = (
    "steps", "epochs", "eval_every", "checkpoint_every", "checkpoint_keep", "patience", "steps_per_call",
)


def open_run_dir(run_dir: Path, experiment: str, cfg: Config, info: DatasetInfo, experiment_file: str = "") -> bool:
    """Create or reopen ``run_dir``; True when it holds an earlier run of the same config.

    A folder made by a different config is refused with the keys that differ. ``dataset.json``
    keeps the dataset's metadata (shapes, classes, feature statistics), so the trained model
    can be loaded back without the store (``pipeline.load_run``); ``experiment_file`` is the
    file that defined it (its model family may be registered there).
    """
    config_path = run_dir / CONFIG_FILE
    resuming = config_path.is_file()
    if resuming:
        saved = from_dict(Config, read_json(config_path)["config"])
        old, new = flat_keys(saved), flat_keys(cfg)
        differing = [k for k in new if old.get(k) != new[k] and k not in RESUMABLE_CHANGES]
        if differing:
            shown = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in differing)
            raise ConfigError(f"run folder {run_dir} was made by a different config: {shown}; "
                              "use another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / DATASET_FILE, json.loads(info.to_json()))
    record = {"experiment": experiment, "config": to_dict(cfg)}
    if experiment_file:
        record["experiment_file"] = experiment_file
    write_json(config_path, record)
    return resuming


def read_run(run_dir: Path) -> tuple[str, Config, DatasetInfo]:
    """The experiment name, config and dataset metadata of a run folder.

    A model family the config names that is not registered yet is looked for in the run's
    experiment file, which is loaded (run) for that.
    """
    from pipeline.registry import is_registered

    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / DATASET_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no {CONFIG_FILE} or {DATASET_FILE})")
    saved = read_json(run_dir / CONFIG_FILE)
    family = saved.get("config", {}).get("model", {}).get("name", "")
    if family and not is_registered(family) and saved.get("experiment_file"):
        from pipeline.experiments import load_module

        load_module(saved["experiment_file"])
    info = DatasetInfo.from_json(json.dumps(read_json(run_dir / DATASET_FILE)))
    return saved.get("experiment", ""), from_dict(Config, saved["config"]), info
