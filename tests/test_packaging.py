"""Packaging: the built-in experiments ship with the package, and ./experiments shadows them with a note."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from pipeline import experiments
from tests.conftest import ROOT

BUILTIN = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if not p.stem.startswith("_"))
QUIET = ["--no-progress", "--no-compile-cache"]


def test_every_package_is_listed_in_pyproject():
    """packages are listed (a find cannot map experiments/), so a new subpackage must be added there."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pipeline").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert set(setuptools["packages"]) == on_disk | {"pipeline._experiments"}
    assert setuptools["package-dir"] == {"pipeline._experiments": "experiments"}
    assert (ROOT / "experiments" / "__init__.py").is_file()  # a regular package: editable installs find it


def test_builtin_experiments_are_the_repository_folder(tmp_path, monkeypatch, capsys):
    """From a source checkout or an editable install the built-ins are the repository's experiments/."""
    assert BUILTIN, "no experiments/*.py in the repository"
    assert experiments.builtin_dir().resolve() == (ROOT / "experiments").resolve()
    monkeypatch.chdir(tmp_path)  # no ./experiments here
    assert experiments.available() == BUILTIN
    for name in BUILTIN:
        assert experiments.find(name).resolve() == (ROOT / "experiments" / f"{name}.py").resolve()
    with pytest.raises(experiments.ExperimentError, match="unknown experiment '__init__'"):
        experiments.find("__init__")
    monkeypatch.chdir(ROOT)  # ./experiments is the built-in folder itself: nothing is shadowed
    experiments.find(BUILTIN[0])
    assert "shadows" not in capsys.readouterr().err
    assert not [m for m in sys.modules if m.startswith("pipeline._experiments.")]  # never imported as modules


def test_a_local_experiment_shadows_the_builtin_one_with_a_note(cli, workdir, monkeypatch):
    """./experiments/digits_mlp.py wins over the built-in one, and says so on stderr."""
    local = workdir / "experiments" / "digits_mlp.py"
    local.parent.mkdir()
    # A copy of the packaged file as it is now (its content is not fixed), with another default budget.
    source = experiments.builtin_dir() / "digits_mlp.py"
    local.write_text(source.read_text() + "\n\n_packaged_config = config\n\n\ndef config():\n"
                     "    from pipeline.config import apply_overrides\n\n"
                     "    return apply_overrides(_packaged_config(), ['steps=30'])\n")
    monkeypatch.chdir(workdir)

    r = cli("train", "digits_mlp", "--json", *QUIET)
    assert r.code == 0, r.err
    note = "note: experiments/digits_mlp.py in this folder shadows the built-in experiment digits_mlp"
    assert note in r.err.splitlines()
    assert r.err.count("shadows") == 1
    summary = json.loads(r.out.strip().splitlines()[-1])
    assert summary["experiment"] == "digits_mlp" and summary["steps"] == 30  # the local file's default

    # Another name is still found among the built-ins, without a note.
    other = next(name for name in BUILTIN if name != "digits_mlp")
    assert experiments.find(other).resolve() == (ROOT / "experiments" / f"{other}.py").resolve()
    assert sorted(experiments.available()) == BUILTIN


def _run(args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _not_source(folder: str, names: list[str]) -> set[str]:
    """What a copy of the source tree for building leaves out: caches, and at the top the venv, the git
    folder, run outputs and earlier in-tree build outputs (whose stale files could end up in the wheel)."""
    skip = {n for n in names if n in {"__pycache__", ".pytest_cache", ".ruff_cache"} or n.endswith(".egg-info")}
    if Path(folder) == ROOT:
        skip |= set(names) & {".git", ".venv", "build", "dist", ".whl", "data", "runs", "sweeps", "bench-results"}
    return skip


_CHECK_INSTALLED = """
import importlib.resources, json, sys
from pathlib import Path
import pipeline
from pipeline import experiments
folder = importlib.resources.files("pipeline._experiments")
print(json.dumps({"package": str(Path(pipeline.__file__).parent), "folder": str(folder),
                  "builtin_dir": str(experiments.builtin_dir()),
                  "files": sorted(p.name for p in folder.iterdir() if p.name.endswith(".py")),
                  "available": experiments.available(),
                  "imported": [m for m in sys.modules if m.startswith("pipeline._experiments.")]}))
"""


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_a_builtin_experiment_from_any_folder(tmp_path):
    """pip wheel, a fresh venv (no system site-packages), then `pipeline train digits_mlp` from an empty folder."""
    # Build from a copy: an in-tree build leaves build/ in the checkout, whose stale files can end up in wheels.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_not_source)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(src)],
         timeout=300)
    (wheel,) = wheels.glob("pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"pipeline/_experiments/{name}.py" for name in BUILTIN} <= names
    assert not [n for n in names if n.startswith("experiments/")]  # no top-level 'experiments' package

    # The environment of the user: nothing of this checkout or of the test's venv leaks in.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=180, env=env)
    python = venv / "bin" / "python"
    # Pin the dependencies to this environment's versions: reproducible, and served from pip's cache.
    frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], timeout=120).stdout
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(line for line in frozen.splitlines()
                                     if "==" in line and not line.lower().startswith("pipeline==")) + "\n")
    start = time.monotonic()
    _run([str(python), "-m", "pip", "install", "-q", "-c", str(constraints), str(wheel)], timeout=1200, env=env)
    print(f"wheel and dependencies installed in {time.monotonic() - start:.0f} s")

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    installed = json.loads(_run([str(python), "-c", _CHECK_INSTALLED], timeout=300, cwd=empty, env=env)
                           .stdout.strip().splitlines()[-1])
    site = Path(installed["package"])
    assert site.parent.name == "site-packages" and site.is_relative_to(venv)
    assert Path(installed["folder"]) == Path(installed["builtin_dir"]) == site / "_experiments"
    assert installed["files"] == sorted(["__init__.py", *(f"{name}.py" for name in BUILTIN)])
    assert installed["available"] == BUILTIN and installed["imported"] == []

    run_env = {**env, "PIPELINE_STORE": str(tmp_path / "store"), "PIPELINE_RUNS": str(tmp_path / "runs"),
               "PIPELINE_COMPILE_CACHE": str(tmp_path / "jax-cache")}
    proc = subprocess.run([str(venv / "bin" / "pipeline"), "train", "digits_mlp", "steps=100", "--json",
                           "--no-progress"], capture_output=True, text=True, timeout=600, cwd=empty, env=run_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shadows" not in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    accuracy = summary["metrics"]["test/accuracy"]
    assert isinstance(accuracy, int | float) and accuracy > 0.3
    assert Path(summary["run_dir"]).is_relative_to(tmp_path / "runs")
    assert sorted(p.name for p in empty.iterdir()) == []  # nothing written into the folder it ran from
