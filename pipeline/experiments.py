"""Find an experiment by name (``experiments/NAME.py``) or path and load its config.

A name is looked up first in ``./experiments`` of the current folder, then among the built-in
experiments. Those are the repository's top-level ``experiments/`` folder, shipped in the wheel as
the package ``pipeline._experiments`` (``[tool.setuptools] package-dir`` in pyproject.toml) and
located with ``importlib.resources``: in a wheel install that is ``site-packages/pipeline/_experiments``,
in an editable install the repository's ``experiments/`` itself. Experiment files are never imported
as modules of that package; ``load_module`` runs them by path.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from pipeline.config import Config, apply_overrides
from pipeline.errors import PipelineError, typed_line

BUILTIN_PACKAGE = "pipeline._experiments"


class ExperimentError(PipelineError):
    pass


@cache
def builtin_dir() -> Path | None:
    """The folder of the built-in experiments, or None when this installation has none."""
    try:
        folder = importlib.resources.files(BUILTIN_PACKAGE)
    except ModuleNotFoundError:
        # A source tree on sys.path without an install, or an editable install made before the
        # package mapping existed: the checkout's own experiments/ folder.
        checkout = Path(__file__).resolve().parent.parent
        folder = checkout / "experiments"
        return folder if (checkout / "pyproject.toml").is_file() and folder.is_dir() else None
    # Installed as plain files (wheel or editable): a real folder that experiment files run from.
    path = Path(str(folder))
    return path if path.is_dir() else None


def local_dir() -> Path:
    return Path.cwd() / "experiments"


def search_dirs() -> list[Path]:
    """Where a name is looked up, first match wins: ``./experiments``, then the built-in ones."""
    builtin = builtin_dir()
    return [local_dir()] + ([builtin] if builtin is not None else [])


def _names(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}


def available() -> list[str]:
    names: set[str] = set()
    for folder in search_dirs():
        names.update(_names(folder))
    return sorted(names)


def _note_shadowing(local: Path, name: str) -> None:
    """One line on stderr when ./experiments hides a built-in experiment of the same name."""
    builtin = builtin_dir()
    if builtin is None:
        return
    packaged = builtin / f"{name}.py"
    if packaged.is_file() and packaged.resolve() != local.resolve():
        print(f"note: experiments/{name}.py in this folder shadows the built-in experiment {name}", file=sys.stderr)


def find(name: str) -> Path:
    if name.endswith(".py") or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ExperimentError(f"experiment file {name} does not exist")
        return path
    if not name.startswith("_"):  # _private.py files are helpers, not experiments
        for folder in search_dirs():
            path = folder / f"{name}.py"
            if path.is_file():
                if folder == local_dir():
                    _note_shadowing(path, name)
                return path
    raise ExperimentError(f"unknown experiment '{name}' (experiments: {', '.join(available()) or 'none'})")


def load_module(name: str) -> ModuleType:
    path = find(name)
    spec = importlib.util.spec_from_file_location(f"pipeline_experiment_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # In sys.modules while it runs, like any imported module: dataclasses and typing resolve its names.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except PipelineError:  # already one line naming the file (a registration refused)
        raise
    except Exception as exc:  # a broken experiment file: one line here, the traceback with --debug
        raise ExperimentError(f"experiment {path}: {typed_line(exc)}") from exc
    if not hasattr(module, "config"):
        raise ExperimentError(f"experiment {path} has no config() function")
    return module




def experiment_name(name: str) -> str:
    return Path(name).stem


def load_config(name: str, overrides: list[str] | None = None) -> Config:
    """The experiment's ``config()`` with ``KEY=VALUE`` overrides applied and validated."""
    return load_experiment(name, overrides)[0]


def load_experiment(name: str, overrides: list[str] | None = None) -> tuple[Config, Path, list]:
    """``load_config``, the experiment file it came from, and the hooks its ``hooks()`` lists (if any)."""
    module = load_module(name)
    try:
        cfg = module.config()
    except Exception as exc:
        raise ExperimentError(f"experiment {module.__file__}: config() failed: {typed_line(exc)}") from exc
    if not isinstance(cfg, Config):
        raise ExperimentError(f"experiment {module.__file__}: config() returned {type(cfg).__name__}, "
                              "not a pipeline.config.Config")
    hooks = []
    if hasattr(module, "hooks"):
        try:
            hooks = list(module.hooks())
        except Exception as exc:
            raise ExperimentError(f"experiment {module.__file__}: hooks() failed: {typed_line(exc)}") from exc
    return apply_overrides(cfg, list(overrides or [])), Path(module.__file__).resolve(), hooks
