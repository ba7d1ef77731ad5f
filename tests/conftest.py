"""Shared fixtures: an isolated store and runs root, and the CLI in-process or as a subprocess; the
tiers of the suite (which tests start processes)."""

from __future__ import annotations

import contextlib
import dis
import inspect
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent

# Commands run in-process turn on JAX's persistent compilation cache: keep the tests' entries
# out of the user's cache, in one folder per test session (set before pytest-xdist starts its
# workers, so they share it).
os.environ.setdefault("PIPELINE_COMPILE_CACHE", tempfile.mkdtemp(prefix="pipeline-test-cache-"))

# A shell that starts the tests in the background (`scripts/test &`) leaves SIGINT ignored, and Python
# then keeps it ignored: the tests of Ctrl-C would see nothing, and their child processes inherit the
# ignore. Ctrl-C is what they test, so it gets Python's own handler, as in a terminal.
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session", autouse=True)
def _one_compile_cache_per_session():
    """JAX's persistent compilation cache, on from the first test (in the session's folder above).

    Every command turns it on for a user, so once one in-process command had run, the tests after it
    used it anyway, in an order that depended on which test came first. On from the start, a program
    that several tests compile (the tiny MLP's step in the bench tests, a sweep's population) is
    compiled once per session and loaded from disk afterwards, by both xdist workers: about a fifth
    of the default tier's CPU time. The folder is new each session, so nothing carries over between
    runs; the compile-cache tests run their own commands in fresh processes and folders.
    """
    from pipeline import compile_cache

    compile_cache.enable()


@contextlib.contextmanager
def records_under(root: Path):
    """The store (``data/``), runs and sweeps roots under ``root`` for the block, through the
    environment: what a module-scoped ``home`` fixture yields."""
    with pytest.MonkeyPatch.context() as mp:
        for name, folder in (("STORE", "data"), ("RUNS", "runs"), ("SWEEPS", "sweeps")):
            mp.setenv(f"PIPELINE_{name}", str(root / folder))
        yield root


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh folder holding the store (data/) and runs (runs/), set through the environment."""
    monkeypatch.setenv("PIPELINE_STORE", str(tmp_path / "data"))
    monkeypatch.setenv("PIPELINE_RUNS", str(tmp_path / "runs"))
    return tmp_path


def run_cli(*args: str) -> Result:
    """``pipeline ARGS...`` in this process (no re-import of JAX); returns code, stdout, stderr.

    Output is caught with ``contextlib.redirect_*``, not ``capsys``, so module-scoped fixtures can
    use it too (the sweep tests share one sweep between tests).
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse errors
            code = int(exc.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(workdir):
    """``run_cli`` with the store and runs root in this test's own folder (``workdir``)."""
    return run_cli


def run_subprocess(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> Result:
    """Run ``python -m pipeline ARGS...`` as a user would, in a separate process."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def wait_for(path: Path, seconds: float = 120.0) -> Path:
    """A file a background process writes (plots are drawn after a run returns)."""
    import time

    deadline = time.time() + seconds
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear within {seconds} s"
        time.sleep(0.1)
    return path


# -- tiers: which tests start processes ------------------------------------------------------------
# Every Python process the tests start is `sys.executable ...` (run_subprocess included), so these
# two names are what a test that starts one must mention; a test that only runs `mount` stays in process.
SUBPROCESS_NAMES = frozenset({"run_subprocess", "executable"})
TESTS = ROOT / "tests"


def _codes(code: types.CodeType):
    """A code object and every code object nested in it (inner functions, lambdas, comprehensions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _starts_processes(obj, seen: set) -> bool:
    """Whether a function (or a class's methods) defined under tests/ mentions ``SUBPROCESS_NAMES``,
    itself or through the tests' own functions and classes it calls (its global names, followed)."""
    if isinstance(obj, type):
        return any(_starts_processes(v, seen) for v in vars(obj).values())
    func = inspect.unwrap(getattr(obj, "__func__", obj))
    code = getattr(func, "__code__", None)
    if code is None or code in seen or not code.co_filename.startswith(str(TESTS)):
        return False
    seen.add(code)
    codes = list(_codes(code))
    if any(set(c.co_names) & SUBPROCESS_NAMES for c in codes):
        return True
    called = {i.argval for c in codes for i in dis.get_instructions(c) if i.opname == "LOAD_GLOBAL"}
    helpers = (func.__globals__.get(name) for name in called)
    return any(_starts_processes(h, seen) for h in helpers if inspect.isfunction(h) or inspect.isclass(h))


def _in_tests(func) -> bool:
    return getattr(getattr(inspect.unwrap(func), "__code__", None), "co_filename", "").startswith(str(TESTS))


def _fixture_defs(item):
    for name, defs in item._fixtureinfo.name2fixturedefs.items():
        if name != "_no_python_children":
            yield from defs


def pytest_collection_modifyitems(config, items):
    """The tiers of the suite, as markers (registered in pyproject.toml).

    ``scripts/test`` runs ``-m "not (subprocess or heavy) or contract"``: every test that stays in this
    process and is not marked ``heavy`` by hand (a long one: a model family trained, a whole search),
    plus the few subprocess tests marked ``contract`` by hand (the command line as a shell meets it:
    exit codes, one-line errors, ``--json``, signals). ``scripts/test --all`` runs everything.

    ``subprocess`` is added here, not by hand: to every test whose function or fixtures, or the
    helpers defined under tests/ that they call, mention ``run_subprocess`` or ``sys.executable``
    (read from the compiled code, so comments and strings do not count). A test that starts a
    Python process some other way (through the library: ``pipeline launch``, the bench's
    whole-process points) is caught at run time by ``_no_python_children`` and then carries an
    explicit ``@pytest.mark.subprocess``.

    ``xdist_group`` is added to every test that uses a module-scoped fixture of the tests (a trained
    run, a sweep, a compiled program shared by a module): under ``--dist loadgroup`` those tests
    run on one worker, so the fixture is built once, not once per worker.
    """
    seen: dict[str, bool] = {}
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        defs = list(_fixture_defs(item))
        if not item.get_closest_marker("subprocess"):
            found = _starts_processes(item.function, set())
            for fixturedef in defs:
                key = f"{fixturedef.baseid}::{fixturedef.argname}"
                if key not in seen:
                    seen[key] = _starts_processes(fixturedef.func, set())
                found = found or seen[key]
            if found:
                item.add_marker(pytest.mark.subprocess)
        if not item.get_closest_marker("xdist_group") and any(d.scope == "module" and _in_tests(d.func) for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def _words(args) -> list[str]:
    argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    return [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in argv]


def _is_python(words: list[str]) -> bool:
    return any(sys.executable in w or os.path.basename(w.split(" ")[0]).startswith("python") for w in words)


def _is_background_plot(words: list[str]) -> bool:
    """``[nice -n 10] python -m pipeline runs plot FOLDER``, started by pipeline.track.background.plot_later."""
    return any(words[i:i + 4] == ["-m", "pipeline", "runs", "plot"] for i in range(len(words)))


@pytest.fixture(autouse=True)
def _no_python_children(request, monkeypatch):
    """While a test not marked ``subprocess`` runs, starting a Python process fails it at once, with a
    message naming the command (and again at teardown, should the start have been in a thread that
    swallowed the failure). This backs the reading of the code in pytest_collection_modifyitems, so
    a test that starts Python processes cannot slip into the default tier. It watches
    ``subprocess.Popen`` (which ``subprocess.run`` and the library use), not ``os.fork`` or
    ``multiprocessing``.

    One process is let through, changed: the plot a finished run or sweep draws in the background
    (``plot_later``) runs ``true`` instead, unless the test is marked ``plots``. No test waits for it;
    it would only cost CPU. Module-scoped fixtures (test_population's sweeps) are outside any test
    and draw their plots for real.
    """
    if request.node.get_closest_marker("subprocess"):
        yield
        return
    original = subprocess.Popen.__init__
    real_plots = request.node.get_closest_marker("plots") is not None
    in_threads: list[str] = []  # starts whose failure a thread may have swallowed

    def guarded(self, args, *rest, **kwargs):
        words = _words(args)
        if _is_background_plot(words):
            if not real_plots:
                args = [shutil.which("true") or "true"]
        elif _is_python(words):
            command = " ".join(words)[:200]
            if threading.current_thread() is not threading.main_thread():
                in_threads.append(command)
            pytest.fail(f"{request.node.nodeid} starts a Python process ({command}) but is not marked "
                        "`subprocess`: mark it @pytest.mark.subprocess (see tests/conftest.py)", pytrace=False)
        return original(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    yield
    assert not in_threads, f"started a Python process while not marked `subprocess`: {in_threads}"
