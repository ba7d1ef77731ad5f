"""The run folder of a training run: its config, and whether a re-run may resume it."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config, ConfigError, flat_keys, from_dict, to_dict
from pipeline.track.run_dir import read_json, write_json

# Keys that may change when a run is resumed: they extend or re-schedule it without
# changing what the saved state means.
RESUMABLE_CHANGES = (
    "steps", "epochs", "eval_every", "checkpoint_every", "checkpoint_keep", "patience", "steps_per_call",
)


def open_run_dir(run_dir: Path, experiment: str, cfg: Config) -> bool:
    """Create or reopen ``run_dir``; True when it holds an earlier run of the same config.

    A folder made by a different config is refused with the keys that differ.
    """
    config_path = run_dir / "config.json"
    if config_path.is_file():
        saved = from_dict(Config, read_json(config_path)["config"])
        old, new = flat_keys(saved), flat_keys(cfg)
        differing = [k for k in new if old.get(k) != new[k] and k not in RESUMABLE_CHANGES]
        if differing:
            shown = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in differing)
            raise ConfigError(f"run folder {run_dir} was made by a different config: {shown}; "
                              "use another --run-dir")
        write_json(config_path, {"experiment": experiment, "config": to_dict(cfg)})
        return True
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_path, {"experiment": experiment, "config": to_dict(cfg)})
    return False
