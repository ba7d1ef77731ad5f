"""What each command imports: the light commands never load JAX, and training loads nothing it does not
need before its first step (checkpointing, plotting and benchmarking are imported on first use)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

HEAVY = ("jax", "matplotlib", "orbax.checkpoint", "flax")
# The command line's own argument definitions for `pipeline bench` (argparse only) are no bench module.
PARSER_ONLY = ("pipeline.bench", "pipeline.bench.command")


def modules_after(argv: list[str], tmp_path, before_first_step: bool = False) -> dict:
    """Run ``pipeline ARGV`` in a fresh interpreter; the heavy modules loaded (at the first step, if asked)."""
    script = textwrap.dedent(f"""
        import json, os, sys
        os.environ["PIPELINE_STORE"] = {str(tmp_path / 'data')!r}
        os.environ["PIPELINE_RUNS"] = {str(tmp_path / 'runs')!r}
        seen = {{}}
        def loaded():
            return sorted(m for m in sys.modules if m in {HEAVY!r}
                          or (m.startswith("pipeline.bench") and m not in {PARSER_ONLY!r}))
        if {before_first_step!r}:
            from pipeline.train import population
            original = population.SoloPopulation.step
            def first(self):
                seen.setdefault("first_step", loaded())
                return original(self)
            population.SoloPopulation.step = first
        from pipeline.cli import main
        try:
            code = main({argv!r})
        except SystemExit as exc:
            code = exc.code
        seen["end"] = loaded()
        print(json.dumps({{"code": code, **seen}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["data", "list"], ["runs", "list"], ["--help"], ["train", "--help"]])
def test_light_commands_import_no_jax(argv, tmp_path):
    seen = modules_after(argv, tmp_path)
    assert seen["code"] in (0, None) and seen["end"] == [], seen


def test_train_imports_no_plotting_checkpointing_or_bench_before_its_first_step(tmp_path):
    seen = modules_after(["train", "digits_mlp", "steps=20", "eval_every=10", "--no-progress"], tmp_path,
                         before_first_step=True)
    assert seen["code"] == 0
    assert seen["first_step"] == ["flax", "jax"], seen  # orbax, matplotlib and the bench come later if ever
    assert "orbax.checkpoint" in seen["end"]  # the final checkpoint
    assert "matplotlib" not in seen["end"]  # plots are drawn by a background process
