"""`pipeline bench EXPERIMENT_FILE` reads the experiment's dataset from the user's store (`--store`,
`$PIPELINE_STORE`), as `pipeline train` does, and fails in one line when no implementation of a point can
run; the accel suite's report goes into this checkout's docs, or where --docs says, never the current folder."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline.bench import accel, points
from pipeline.bench.points import SMOKE

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = """
from pipeline.config import Config
from pipeline.models import MLPConfig


def config():
    return Config(data="mine", steps=50, batch_size=16, model=MLPConfig(hidden=(8,)))
"""


def experiment_file(folder: Path) -> Path:
    path = folder / "mine_mlp.py"
    path.write_text(EXPERIMENT)
    return path


def test_an_experiment_on_an_imported_dataset_is_measured_on_the_users_store(cli, workdir, monkeypatch):
    monkeypatch.setattr(points, "QUICK", SMOKE)  # the experiment point's timing budget: a short one
    assert cli("data", "import", "builtin:digits", "--name", "mine").code == 0
    out = workdir / "results"
    r = cli("bench", str(experiment_file(workdir)), "--peers", "pipeline", "--out", str(out))
    assert r.code == 0, r.err
    rows = {row["impl"]: row for row in pq.read_table(out / "bench.parquet").to_pylist()}
    assert rows["pipeline"]["status"] == "ok" and rows["pipeline"]["data"] == "mine"
    assert rows["pipeline"]["params"] == 64 * 8 + 8 + 8 * 10 + 10  # digits: 64 features, 10 classes
    assert not (out / "store" / "mine").exists()  # the benchmark's own store was not asked


def test_a_point_no_implementation_can_run_fails_in_one_line(cli, workdir):
    empty = workdir / "empty-store"
    out = workdir / "results"
    r = cli("bench", str(experiment_file(workdir)), "--peers", "pipeline", "--out", str(out), "--store", str(empty))
    assert r.code == 2
    assert r.err.strip().splitlines()[-1] == (
        f"error: point mine_mlp: every implementation unavailable: no dataset 'mine' in the store {empty} "
        "(datasets: none)")
    rows = pq.read_table(out / "bench.parquet").to_pylist()  # recorded all the same
    assert {row["status"] for row in rows} == {"unavailable"}
    assert "| mine_mlp |" in r.out and (out / "bench.md").is_file()


def test_the_accel_report_goes_into_a_checkout_only(tmp_path):
    assert accel.default_docs() == ROOT / "docs" / "benchmarks"  # this checkout
    installed = tmp_path / "lib" / "python3.11" / "site-packages" / "pipeline" / "bench" / "accel.py"
    installed.parent.mkdir(parents=True)
    installed.touch()
    assert accel.default_docs(installed) is None  # an installed package: only --docs DIR
    (installed.parents[2] / "docs" / "benchmarks").mkdir(parents=True)
    assert accel.default_docs(installed) is None  # a docs/ folder without the project's pyproject.toml
    checkout = tmp_path / "src"
    (checkout / "pipeline" / "bench").mkdir(parents=True)
    (checkout / "docs" / "benchmarks").mkdir(parents=True)
    (checkout / "pyproject.toml").touch()
    assert accel.default_docs(checkout / "pipeline" / "bench" / "accel.py") == checkout / "docs" / "benchmarks"


def test_the_help_says_where_the_report_goes(cli):
    r = cli("bench", "--help")
    assert r.code == 0
    assert "this repository's checkout" in " ".join(r.out.split())
