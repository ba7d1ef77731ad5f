"""Bad sweep input, as a user meets it: one clear line naming the key or value, exit 2, no folder damaged."""

from __future__ import annotations

import hashlib

import pytest

from tests.sweep.conftest import TINY, pipeline, sweep

CASES = [
    (["optimizer.learnin_rate=choice(1e-3;1e-2)"],
     "unknown config key 'optimizer.learnin_rate'; did you mean optimizer.learning_rate"),
    (["optimizer.learning_rate=loguniform(1e-4)"],
     "bad space for 'optimizer.learning_rate': 'loguniform(1e-4)' takes 2 numbers, not 1"),
    (["optimizer.learning_rate=choice(fast;slow)"], "bad value for 'optimizer.learning_rate': 'fast' is not"),
    (["optimizer.learning_rate=normal(0,1)"], "bad space for 'optimizer.learning_rate': unknown function 'normal'"),
    (["seed=choice()"], "bad space for 'seed': 'choice()' has an empty choice"),
    (["seed=range(5,2)"], "bad space for 'seed': 'range(5,2)' has low 5 > high 2"),
    (["seed=range(3,3)"], "bad space for 'seed': 'range(3,3)' is empty"),
    (["optimizer.learning_rate=loguniform(0,1)"],
     "bad space for 'optimizer.learning_rate': 'loguniform(0,1)' is a log scale and must stay above zero"),
    (["optimizer.learning_rate=loguniform(1e-4,1e-1)", "--strategy", "random", "--trials", "0"],
     "bad value for '--trials': 0 must be at least 1"),
    (["optimizer.learning_rate=loguniform(1e-4,1e-1)"],
     "grid search cannot enumerate 'optimizer.learning_rate': loguniform(1e-4,1e-1) is a continuous interval"),
    (["optimizer.learning_rate=choice(-1;1e-3)"],
     "trial 0 (optimizer.learning_rate=-1.0): bad value for 'optimizer.learning_rate': must be positive"),
    (["seed=uniform(0,1)"], "bad space for 'seed': uniform(...) needs a float key"),
    (["seed=range(2)", "--rungs", "30"], "bad value for '--rungs': 30 must be an evaluation step"),
    (["seed=range(2)", "--max-population", "0"], "bad value for '--max-population': 0 must be at least 1"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[c[1][:40] for c in CASES])
def test_bad_space_is_one_line_and_writes_nothing(home, args, message):
    r = pipeline("sweep", "digits_mlp", *TINY, *args)
    assert r.code == 2
    assert r.err.startswith("error: ") and message in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not (home / "sweeps").exists()


def test_empty_space(home):
    r = pipeline("sweep", "regression_mlp", "steps=10")  # no KEY=SPACE and no sweep() in the experiment
    assert r.code == 2
    assert "error: the search space is empty" in r.err
    assert not (home / "sweeps").exists()


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}  # .lock: who holds it


def test_resume_with_another_space_is_refused_untouched(home):
    s = sweep("digits_mlp", *TINY, "optimizer.learning_rate=choice(1e-3;1e-2)")
    before = _digest(s.folder)
    for args, named in ((["optimizer.learning_rate=choice(1e-3;3e-2)"], "space"),
                        (["optimizer.learning_rate=choice(1e-3;1e-2)", "--strategy", "random", "--trials", "2"],
                         "strategy"),
                        (["optimizer.learning_rate=choice(1e-3;1e-2)", "model.hidden=8"], "space")):
        r = pipeline("sweep", "digits_mlp", *TINY, *args, "--sweep-dir", str(s.folder))
        assert r.code == 2
        assert f"error: sweep folder {s.folder} was made by a different sweep ({named}:" in r.err, r.err
        assert "use another --sweep-dir" in r.err and len(r.err.strip().splitlines()) == 1
        assert _digest(s.folder) == before
    (home / "plain").mkdir()
    (home / "plain" / "notes.txt").write_text("mine")
    r = pipeline("sweep", "digits_mlp", *TINY, "seed=range(2)", "--sweep-dir", str(home / "plain"))
    assert r.code == 2 and "exists and is not a sweep folder" in r.err
    assert [p.name for p in (home / "plain").iterdir()] == ["notes.txt"]
