"""Find an experiment by name (``experiments/NAME.py``) or path and load its config."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from pipeline.config import Config, apply_overrides
from pipeline.errors import PipelineError

PACKAGE_EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


class ExperimentError(PipelineError):
    pass


def search_dirs() -> list[Path]:
    return [Path.cwd() / "experiments", PACKAGE_EXPERIMENTS]


def available() -> list[str]:
    names: set[str] = set()
    for folder in search_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    return sorted(names)


def find(name: str) -> Path:
    if name.endswith(".py") or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ExperimentError(f"experiment file {name} does not exist")
        return path
    for folder in search_dirs():
        path = folder / f"{name}.py"
        if path.is_file():
            return path
    raise ExperimentError(f"unknown experiment '{name}' (experiments: {', '.join(available()) or 'none'})")


def load_module(name: str) -> ModuleType:
    path = find(name)
    spec = importlib.util.spec_from_file_location(f"pipeline_experiment_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a broken experiment file: one line here, the traceback with --debug
        raise ExperimentError(f"experiment {path}: {_one_line(exc)}") from exc
    if not hasattr(module, "config"):
        raise ExperimentError(f"experiment {path} has no config() function")
    return module


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def experiment_name(name: str) -> str:
    return Path(name).stem


def load_config(name: str, overrides: list[str] | None = None) -> Config:
    """The experiment's ``config()`` with ``KEY=VALUE`` overrides applied and validated."""
    module = load_module(name)
    try:
        cfg = module.config()
    except Exception as exc:
        raise ExperimentError(f"experiment {module.__file__}: config() failed: {_one_line(exc)}") from exc
    if not isinstance(cfg, Config):
        raise ExperimentError(f"experiment {module.__file__}: config() returned {type(cfg).__name__}, "
                              "not a pipeline.config.Config")
    return apply_overrides(cfg, list(overrides or []))
