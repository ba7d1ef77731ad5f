"""Decisions every process takes alike: process 0's value shared, a vote of all, and the call-boundary
agreement of the training loop (a checkpoint by process 0's clock, a Ctrl-C on any one process)."""

from __future__ import annotations

import json

import pytest

from pipeline import distributed
from tests.distributed.test_launch import launch, lines, python

AGREE = """
    import json
    from pipeline import distributed
    assert distributed.initialize()
    import jax
    me = jax.process_index()
    name = distributed.share("folder", f"chosen-by-{me}")
    again = distributed.share("folder", f"second-by-{me}")
    everyone = distributed.all_true("check", True)
    not_everyone = distributed.all_true("check", me == 0)
    agree = distributed.CallAgreement("loop")
    seen = []
    for boundary in range(1, 9):
        due = (boundary % 3 == 0) if me == 0 else (boundary == 2)  # only process 0's clock counts
        seen.append(agree(due, me == 1 and boundary >= 4))  # Ctrl-C on process 1 from boundary 4 on
        if boundary == 5:
            distributed.all_true("barrier", True)  # process 1 has voted by now
    print("result", json.dumps({"name": name, "again": again, "everyone": everyone, "not_everyone": not_everyone,
                                "seen": seen}))
"""


def test_one_process_agrees_with_itself_at_no_cost():
    agree = distributed.CallAgreement("loop")
    assert not agree.several
    assert agree(True, False) == (True, False) and agree(False, True) == (False, True)
    assert distributed.share("x", {"a": 1}) == {"a": 1}
    assert distributed.all_true("y", False) is False


@pytest.mark.slow
def test_processes_agree_on_process_0s_values_and_on_any_ones_interrupt():
    proc = launch("-n", "2", *python(AGREE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [json.loads(next(line for line in lines(proc.stdout, rank) if line.startswith("result"))[7:])
               for rank in (0, 1)]
    assert results[0] == results[1]
    out = results[0]
    assert (out["name"], out["again"]) == ("chosen-by-0", "second-by-0")
    assert out["everyone"] is True and out["not_everyone"] is False
    due = [d for d, _ in out["seen"]]
    raised = [r for _, r in out["seen"]]
    assert due == [False, False, True, False, False, True, False, False]
    assert raised[:3] == [False] * 3 and raised[5:] == [True] * 3  # the same boundaries on both
    assert raised == sorted(raised)
