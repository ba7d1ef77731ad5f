"""The Python surface and the records under hostile input: one-line ``PipelineError``s, readers that write nothing.

``pipeline.fit``, ``pipeline.load_run`` and the loaded model raise only ``PipelineError`` subclasses
whose message is one line naming the path (or, for the model, the shape) at fault; ``load_run`` and
``pipeline runs show/list/plot`` take no lock and leave the folder they read as it was; a record
nested too deeply is one line, never a ``RecursionError``; an import refused for a value past
float32 prints its one line and no numpy warning. One tiny run is trained for the whole module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import pipeline
from pipeline.api import ModelInputError
from pipeline.durable.records import CorruptFile, json_depth, read_json
from pipeline.errors import PathError, PipelineError
from tests.conftest import ROOT, records_under, run_subprocess
from tests.test_reliability_runs import Holder, fake_run, one_line

TINY = ["steps=20", "model.hidden=8", "eval_every=10", "plot=false", "data=digits"]
DEEP = "[" * 100_000 + "]" * 100_000  # far past Python's recursion limit


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A store and a runs root for the module."""
    with records_under(tmp_path_factory.mktemp("api-errors")) as root:
        yield root


@pytest.fixture(scope="module")
def trained(home) -> Path:
    """One tiny trained run (best and latest checkpoints), never changed by the tests: they copy it."""
    return pipeline.fit("digits_mlp", overrides=TINY, run_dir=home / "runs" / "trained").run_dir


def copy_run(trained: Path, to: Path) -> Path:
    """A copy of the trained run without the lock file its training left."""
    shutil.copytree(trained, to)
    (to / ".lock").unlink(missing_ok=True)
    return to


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``, hidden ones and the folder itself included: type, size, mtime, content hash."""
    entries = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        entries[str(path.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return entries


def assert_one_line_error(call: Callable[[], object], names: str, kind: type = PipelineError) -> str:
    with pytest.raises(PipelineError) as caught:
        call()
    assert isinstance(caught.value, kind), type(caught.value)
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message, message
    assert names in message, (names, message)
    return message


# -- the public Python surface ------------------------------------------------------------------
def truncate_checkpoint_files(run: Path, which: str) -> Path:
    """Cut every data file of the ``which`` checkpoint in half; returns its step folder."""
    checkpoints = run / "checkpoints" / ("best" if which == "best" else "")
    step = max((p for p in checkpoints.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for part in step.rglob("*"):
        if part.is_file() and "ocdbt.process_" in str(part):
            part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    return step


def case_run_dir_is_a_file(home, trained, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    return lambda: pipeline.fit("digits_mlp", overrides=TINY, run_dir=target), str(target)


def case_run_dir_under_a_file(home, trained, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    target = tmp_path / "a-file" / "run"
    return lambda: pipeline.fit("digits_mlp", overrides=TINY, run_dir=target), str(target)


def case_missing_run(home, trained, tmp_path):
    return lambda: pipeline.load_run(tmp_path / "no-such-run"), str(tmp_path / "no-such-run")


def case_run_is_a_file(home, trained, tmp_path):
    (tmp_path / "a-file").write_text("x")
    return lambda: pipeline.load_run(tmp_path / "a-file"), str(tmp_path / "a-file")


def case_damaged_config(home, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    (run / "config.json").write_text('{"experiment": "digits_mlp", "config": {')
    return lambda: pipeline.load_run(run), str(run / "config.json")


def case_deep_config(home, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    (run / "config.json").write_text(DEEP)
    return lambda: pipeline.load_run(run), str(run / "config.json")


def case_deep_dataset_record(home, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    (run / "dataset.json").write_text('{"a": ' * 50_000 + "1" + "}" * 50_000)
    return lambda: pipeline.load_run(run, which="latest"), str(run / "dataset.json")


def case_truncated_best(home, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    step = truncate_checkpoint_files(run, "best")
    return lambda: pipeline.load_run(run, which="best"), str(step)


def case_truncated_latest(home, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    step = truncate_checkpoint_files(run, "latest")
    return lambda: pipeline.load_run(run, which="latest"), str(step)


def case_no_best_checkpoint(home, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "best")  # as an exported sweep trial whose final state was not its best
    return lambda: pipeline.load_run(run, which="best"), str(run)


CASES = [case_run_dir_is_a_file, case_run_dir_under_a_file, case_missing_run, case_run_is_a_file,
         case_damaged_config, case_deep_config, case_deep_dataset_record, case_truncated_best,
         case_truncated_latest, case_no_best_checkpoint]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("case_") for c in CASES])
def test_public_surface_raises_one_line_pipeline_errors(home, trained, tmp_path, case):
    call, path = case(home, trained, tmp_path)
    before = {p: snapshot(p) for p in tmp_path.iterdir() if p.is_dir()}
    assert_one_line_error(call, path)
    # Nothing was written: no lock file, no checkpoints/best made for the run without one.
    assert {p: snapshot(p) for p in tmp_path.iterdir() if p.is_dir()} == before


@pytest.mark.parametrize("features, needs", [
    (np.zeros((3, 63), np.float32), "not shape (3, 63)"),
    (np.zeros((8, 8), np.float32), "not shape (8, 8); one example is x[None]"),
    (np.array([["a"] * 64]), "not <U1 values"),
    ([[0.0] * 64] * 2, "as a numpy or JAX array, not a list"),
], ids=["wrong-width", "one-example", "text", "list"])
def test_the_loaded_model_refuses_features_it_cannot_take_in_one_line(trained, features, needs):
    model = pipeline.load_run(trained, which="latest")
    message = assert_one_line_error(lambda: model(features), needs, ModelInputError)
    assert message.startswith("the model takes a batch of shape (N, 8, 8) of float32"), message
    # What it took before it still takes: a batch as stored, and the flat rows an MLP flattens to anyway.
    assert np.asarray(model(np.zeros((2, 8, 8), np.float32))).shape == (2, 10)
    assert np.asarray(model(np.zeros((2, 64), np.float32))).shape == (2, 10)


READ_ONLY_FIT = """
import json, sys
import pipeline
try:
    pipeline.fit("digits_mlp", overrides=["steps=20", "model.hidden=8"], run_dir=sys.argv[1])
except BaseException as exc:
    print(json.dumps({"types": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}))
"""


def test_fit_into_a_read_only_folder_is_one_line(home, tmp_path):
    """``chmod 0o555`` as an ordinary user. Root ignores permissions: there, a read-only tmpfs is mounted
    over the folder in a private mount namespace (``unshare --mount``) for a child process."""
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    target = read_only / "run"
    if os.geteuid() != 0:
        read_only.chmod(0o555)
        try:
            message = assert_one_line_error(
                lambda: pipeline.fit("digits_mlp", overrides=TINY, run_dir=target), str(target),
                PathError)
        finally:
            read_only.chmod(0o755)
        assert message == f"{target}: Permission denied"
        return
    if shutil.which("unshare") is None:
        pytest.skip("running as root (permissions are not enforced) and no unshare(1) to mount a read-only folder")
    mount = 'mount -t tmpfs -o ro,size=1m tmpfs "$0" && exec "$@"'
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", mount, str(read_only), sys.executable, "-c",
                           READ_ONLY_FIT, str(target)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"running as root and a read-only tmpfs cannot be mounted here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["types"][:2] == ["PathError", "PipelineError"], result
    assert result["message"] == f"{target}: Read-only file system", result
    assert not target.exists()


# -- readers take no lock and write nothing ------------------------------------------------------
def read_everything(run: Path, cli) -> None:
    """``load_run`` (best and latest, and a call of each model), ``runs show`` and ``runs list``."""
    best, latest = pipeline.load_run(run), pipeline.load_run(run, which="latest")
    assert np.asarray(best(np.zeros((2, 8, 8), np.float32))).shape == (2, 10)
    assert np.asarray(latest(np.zeros((2, 8, 8), np.float32))).shape == (2, 10)
    shown = cli("runs", "show", str(run))
    assert shown.code == 0 and shown.err == "" and f"run          {run}" in shown.out, shown
    listed = cli("runs", "list", "--runs", str(run.parent))
    assert listed.code == 0 and listed.err == "" and "digits_mlp" in listed.out, listed


def test_readers_leave_the_run_folder_unchanged(trained, tmp_path, cli):
    run = copy_run(trained, tmp_path / "run")
    # A temporary folder of a save in progress: a reader must not clean it up.
    (run / "checkpoints" / "30.orbax-checkpoint-tmp-1700000000000000").mkdir()
    before = snapshot(run)
    read_everything(run, cli)
    assert snapshot(run) == before  # byte for byte, mtimes included: no .lock, no checkpoints/best made, ...
    with Holder(run):  # another process holds the folder's lock: readers neither wait nor are refused
        held = snapshot(run)
        read_everything(run, cli)
        assert snapshot(run) == held
    (run / ".lock").unlink()  # the holder's (a released folder lock keeps its file)
    before = snapshot(run)
    plotted = cli("runs", "plot", str(run))
    assert plotted.code == 0 and plotted.out.strip() == str(run / "curves.png"), plotted
    after = snapshot(run)
    # `runs plot` writes its picture, through a new file and a rename, and nothing else.
    assert sorted(set(after) - set(before)) == ["curves.png"]
    assert {k: v for k, v in after.items() if k not in (".", "curves.png")} == \
        {k: v for k, v in before.items() if k != "."}


# -- hostile records ------------------------------------------------------------------------------
def test_runs_list_skips_a_hostile_record_and_warns_once(cli, tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "a-good")
    hostile = fake_run(root / "b-hostile")
    (hostile / "config.json").write_text(DEEP)
    fake_run(root / "c-good")
    result = cli("runs", "list", "--runs", str(root))
    assert result.code == 0, result
    assert result.err.splitlines() == [f"warning: skipped {hostile}: {hostile / 'config.json'}: damaged record "
                                       "(JSON nested more than 100 levels deep)"]
    assert str(root / "a-good") in result.out and str(root / "c-good") in result.out
    assert "b-hostile" not in result.out


@pytest.mark.parametrize("record", ["summary.json", "config.json"])
def test_runs_show_refuses_a_hostile_record_in_one_line(cli, tmp_path, record):
    run = fake_run(tmp_path / "run")
    (run / record).write_text('{"steps": ' * 50_000 + "1" + "}" * 50_000)
    line = one_line(cli("runs", "show", str(run)))
    assert line == f"error: {run / record}: damaged record (JSON nested more than 100 levels deep)"


def test_json_depth_counts_brackets_outside_strings_only(tmp_path):
    assert json_depth('{"a": [1, {"b": "[[[[{{"}], "c": "\\"]]"}') == 3
    assert json_depth("[" * 10 + "]" * 10) == 10
    assert json_depth("[" * 1_000_000, limit=100) == 101  # stops counting past the limit
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"nested": [[[[{"ok": "[[[[[[["}]]]]}))
    assert read_json(path)["nested"][0][0][0][0] == {"ok": "[[[[[[["}
    path.write_text("[" + "1" * 5000 + "]")  # past Python's 4300-digit limit for int(): a ValueError, not JSON's
    with pytest.raises(CorruptFile, match=r"r\.json: damaged record \(Exceeds the limit"):
        read_json(path)


# -- numpy stays quiet beside a refusal -----------------------------------------------------------
@pytest.fixture
def huge_values(tmp_path) -> dict[str, Path]:
    """Sources whose float64 values do not fit float32: a feature and a regression label of 1e300."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x, y = rng.random((40, 4)), np.arange(40) % 2
    x[3, 2] = 1e300
    np.savez(tmp_path / "feature.npz", x=x, y=y)
    labels = rng.random(40)
    labels[5] = -1e300
    np.savez(tmp_path / "label.npz", x=rng.random((40, 4)), y=labels)
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 2], "t": y}), tmp_path / "feature.parquet")
    return {"feature.npz": tmp_path / "feature.npz", "label.npz": tmp_path / "label.npz",
            "feature.parquet": tmp_path / "feature.parquet"}


@pytest.mark.parametrize("source, message", [
    ("feature.npz", "row 3 has a NaN or infinite feature value"),
    ("label.npz", "row 5 has a NaN or infinite label"),
    ("feature.parquet", "row 3 column 'b' has a NaN or infinite value"),
])
def test_an_import_past_float32_is_one_line_and_no_numpy_warning(cli, huge_values, source, message):
    target = ["--target", "t"] if source.endswith(".parquet") else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = one_line(cli("data", "import", str(huge_values[source]), "--name", "huge", *target))
    assert message in line and str(huge_values[source]) in line, line
    assert [str(w.message) for w in caught] == []


def test_the_npz_import_of_1e300_prints_exactly_one_stderr_line(workdir, huge_values):
    result = run_subprocess(["data", "import", str(huge_values["feature.npz"]), "--name", "huge"])
    assert result.code == 2, result
    assert result.err.splitlines() == [f"error: {huge_values['feature.npz']} (all rows): row 3 has a NaN or "
                                       "infinite feature value"], result.err
