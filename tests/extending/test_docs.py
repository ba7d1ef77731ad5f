"""docs/extending.md runs as written, and quotes docs/examples/resmlp.py exactly.

Conventions of the page (HTML comments do not show when it is rendered):

* A fenced ``python`` block right after the line ``<!-- from examples/resmlp.py -->`` quotes the
  example file. Each quoted piece is a verbatim part of the file, and the pieces, in page order,
  hold every non-blank line of the file in the file's order: the page quotes all of it, in order,
  and nothing else.
* Every other ``sh`` and ``python`` block runs, in page order, in one fresh folder that holds only
  a copy of resmlp.py, with PIPELINE_STORE, PIPELINE_RUNS and PIPELINE_SWEEPS pointing inside it;
  each must exit 0. ``sh`` blocks run in bash (``set -euo pipefail``) where ``pipeline`` and
  ``python`` are this interpreter; ``python`` blocks run as ``python -c BLOCK`` in that folder.
* ``<!-- no-run -->`` on the line before a block keeps it from running.
* A ``text`` block whose first line starts with ``$ `` shows commands that fail: each ``$ COMMAND``
  line runs in a second fresh folder (resmlp.py and the variants in VARIANTS, the copies the page
  describes) and must exit 2 with the line that follows it on standard error, ``/tmp/demo`` (the
  folder the page's lines were made in) standing for that folder. Other ``text`` blocks are output.
* A ``diff`` block is a change to resmlp.py: each run of ``-`` lines followed by ``+`` lines
  replaces those lines of the file.

The runs are subprocesses with hard timeouts; all of them take about two minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGE = ROOT / "docs" / "extending.md"
EXAMPLE = ROOT / "docs" / "examples" / "resmlp.py"
QUOTE = "<!-- from examples/resmlp.py -->"
NO_RUN = "<!-- no-run -->"
DEMO = "/tmp/demo"
BLOCK_TIMEOUT = 300  # seconds for one block; the slowest (pipeline bench) takes about 15
ERROR_TIMEOUT = 120

# The copies of resmlp.py that the page's error lines name, each with the one change it describes:
# file -> [(text of resmlp.py, its replacement), ...]; no replacements for an unchanged copy.
VARIANTS = {
    "flat.py": [("h = self.embed(x.reshape(x.shape[0], -1))", "h = self.embed(x)")],
    "head.py": [("self.head = nnx.Linear(cfg.width, out_features, rngs=rngs)",
                 "self.head = nnx.Linear(cfg.width, 1, rngs=rngs)")],
    "widths.py": [("from dataclasses import dataclass\n", "from dataclasses import dataclass, field\n"),
                  ("    blocks: int = 2\n",
                   "    blocks: int = 2\n    widths: list[int] = field(default_factory=lambda: [64, 64])\n")],
    "named.py": [('name: str = "resmlp"', 'name: str = "res_mlp"')],
    "traced.py": [("    dropout: float = 0.1  #", "    dropout: float = pipeline.traced(0.1, switch=True)  #")],
    "wide.py": [],
}


@dataclass
class Block:
    lang: str
    text: str
    marker: str  # the HTML comment on the line before the fence, or ""
    line: int  # where the block's first line is in the page (1-based)


def blocks(page: str = "") -> list[Block]:
    """The fenced blocks of the page, in order."""
    lines = (page or PAGE.read_text()).splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = before if before.startswith("<!--") else ""
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        out.append(Block(fence.group(1), "\n".join(lines[i + 1:end]) + "\n", marker, i + 2))
        i = end + 1
    return out


def quoted() -> list[Block]:
    return [b for b in blocks() if b.marker == QUOTE]


def runnable() -> list[Block]:
    return [b for b in blocks() if b.lang in ("sh", "python") and b.marker not in (QUOTE, NO_RUN)]


def failing_commands() -> list[tuple[str, str]]:
    """(command, the error line it prints) for every ``$ `` line of the page's text blocks."""
    pairs = []
    for b in blocks():
        lines = b.text.splitlines()
        if b.lang != "text" or not lines or not lines[0].startswith("$ "):
            continue
        for i, line in enumerate(lines):
            if line.startswith("$ "):
                assert i + 1 < len(lines) and not lines[i + 1].startswith("$ "), f"line {b.line + i}: no output"
                pairs.append((line[2:], lines[i + 1]))
    return pairs


def apply_diff(text: str, diff: str) -> str:
    """Replace each run of ``-`` lines of ``diff`` (followed by ``+`` lines) in ``text``."""
    hunks: list[tuple[list[str], list[str]]] = []
    for line in diff.splitlines():
        sign, body = line[:1], line[1:]
        if sign == "-":
            if not hunks or hunks[-1][1]:
                hunks.append(([], []))
            hunks[-1][0].append(body)
        elif sign == "+":
            assert hunks, f"a + line before any - line: {line!r}"
            hunks[-1][1].append(body)
    for old, new in hunks:
        before = "\n".join(old) + "\n"
        assert text.count(before) == 1, f"not once in resmlp.py: {before!r}"
        text = text.replace(before, "\n".join(new) + "\n")
    return text


def environment(folder: Path) -> dict[str, str]:
    return {**os.environ, "PIPELINE_STORE": str(folder / "data"), "PIPELINE_RUNS": str(folder / "runs"),
            "PIPELINE_SWEEPS": str(folder / "sweeps"), "PIPELINE_PYTHON": sys.executable}


# `pipeline` and `python` in a shell block are the interpreter that runs the tests (its venv).
SHELL_PRELUDE = ('pipeline() { "$PIPELINE_PYTHON" -m pipeline "$@"; }\n'
                 'python() { "$PIPELINE_PYTHON" "$@"; }\n')


def run_block(block: Block, folder: Path, timeout: float = BLOCK_TIMEOUT) -> subprocess.CompletedProcess:
    if block.lang == "sh":
        args = ["bash", "-euo", "pipefail", "-c", SHELL_PRELUDE + block.text]
    else:
        args = [sys.executable, "-c", block.text]
    return subprocess.run(args, cwd=folder, env=environment(folder), capture_output=True, text=True,
                          timeout=timeout)


def fresh_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copy(EXAMPLE, root / "resmlp.py")
    return root


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- fast: what the page quotes and changes ------------------------------------------------------


def test_the_quoted_pieces_are_the_whole_example_file_in_order():
    source = EXAMPLE.read_text()
    pieces = quoted()
    assert len(pieces) >= 5, "the page should quote the example in pieces"
    for piece in pieces:
        assert piece.lang == "python", f"line {piece.line}: a quote of resmlp.py should be a python block"
        assert piece.text in source, f"line {piece.line}: this piece is not verbatim in {EXAMPLE.name}"
    wanted = [line for line in source.splitlines() if line.strip()]
    got = [line for piece in pieces for line in piece.text.splitlines() if line.strip()]
    assert got == wanted, "the quoted pieces, in page order, must hold every non-blank line of the file in order"


def test_the_page_has_blocks_to_run_and_errors_to_check():
    kinds = [b.lang for b in runnable()]
    assert kinds.count("sh") >= 4 and kinds.count("python") >= 4, kinds
    assert len(failing_commands()) >= 8


def test_the_diff_applies_to_the_example_and_gives_valid_python():
    diffs = [b for b in blocks() if b.lang == "diff"]
    assert len(diffs) == 1
    changed = apply_diff(EXAMPLE.read_text(), diffs[0].text)
    assert "pipeline.traced(0.1, switch=True)" in changed and "nnx.Dropout(" not in changed
    compile(changed, "resmlp_traced.py", "exec")


def test_the_variants_change_what_they_say():
    source = EXAMPLE.read_text()
    for name, changes in VARIANTS.items():
        for old, _ in changes:
            assert source.count(old) == 1, f"{name}: {old!r} is not once in resmlp.py"
    named = {word for command, _ in failing_commands() for word in shlex.split(command) if word.endswith(".py")}
    assert named == set(VARIANTS) | {"resmlp.py"}, named


# -- slow: everything runs as written ------------------------------------------------------------


@pytest.mark.slow
def test_every_block_runs_as_written_in_a_fresh_folder(tmp_path):
    folder = fresh_folder(tmp_path / "fresh")
    for block in runnable():
        try:
            result = run_block(block, folder)
        except subprocess.TimeoutExpired:
            pytest.fail(f"docs/extending.md line {block.line}: the {block.lang} block ran over {BLOCK_TIMEOUT} s")
        assert result.returncode == 0, (f"docs/extending.md line {block.line}: the {block.lang} block exited "
                                        f"{result.returncode}\n{block.text}\nstdout:\n{tail(result.stdout)}\n"
                                        f"stderr:\n{tail(result.stderr)}")


@pytest.mark.slow
def test_the_python_blocks_also_run_as_one_session(tmp_path):
    """Pasted one after another into one interpreter (a notebook), as well as one by one."""
    folder = fresh_folder(tmp_path / "session")
    session = Block("python", "\n".join(b.text for b in runnable() if b.lang == "python"), "", 0)
    result = run_block(session, folder)
    assert result.returncode == 0, tail(result.stderr)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A folder with resmlp.py and the copies of it that the page's error lines name."""
    folder = fresh_folder(tmp_path_factory.mktemp("errors") / "demo")
    source = EXAMPLE.read_text()
    for name, changes in VARIANTS.items():
        text = source
        for old, new in changes:
            text = text.replace(old, new)
        (folder / name).write_text(text)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("command, error", failing_commands(), ids=[c for c, _ in failing_commands()])
def test_each_error_line_is_what_its_command_prints(demo, command, error):
    assert command.startswith("pipeline "), command
    args = [sys.executable, "-m", "pipeline", *shlex.split(command)[1:]]
    result = subprocess.run(args, cwd=demo, env=environment(demo), capture_output=True, text=True,
                            timeout=ERROR_TIMEOUT)
    printed = [line.replace(str(demo.resolve()), DEMO).replace(str(demo), DEMO)
               for line in result.stderr.splitlines()]
    assert result.returncode == 2, f"exit {result.returncode}\n{tail(result.stderr)}"
    assert error in printed, f"the page says:\n{error}\nthe command printed:\n" + "\n".join(printed)


@pytest.mark.slow
def test_the_dropout_sweep_is_three_groups_as_written_and_one_population_traced(demo):
    """The page's claim: the file as it is sweeps dropout in 3 groups; with the diff applied, in one population."""
    diff = next(b for b in blocks() if b.lang == "diff")
    (demo / "resmlp_traced.py").write_text(apply_diff(EXAMPLE.read_text(), diff.text))
    sweep = next(b for b in runnable() if b.lang == "sh" and "model.dropout=" in b.text)
    command = shlex.split(sweep.text.strip())
    assert command[:3] == ["pipeline", "sweep", "resmlp.py"], command
    for file, groups in (("resmlp.py", 3), ("resmlp_traced.py", 1)):
        args = [sys.executable, "-m", "pipeline", "sweep", file, *command[3:]]
        result = subprocess.run(args, cwd=demo, env=environment(demo), capture_output=True, text=True,
                                timeout=BLOCK_TIMEOUT)
        assert result.returncode == 0, tail(result.stderr)
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert (summary["trials"], summary["groups"], summary["populations"]) == (3, groups, groups), file


@pytest.mark.slow
def test_the_readme_python_line_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    lines = [line.strip() for line in readme.splitlines()
             if line.lstrip().startswith("python -c") and "pipeline.fit" in line]
    assert lines, "README's short tour should show pipeline.fit from Python"
    for line in lines:
        args = shlex.split(line, comments=True)
        result = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=environment(tmp_path),
                                capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        assert result.returncode == 0, f"{line}\n{tail(result.stderr)}"
        assert "test/accuracy" in result.stdout, result.stdout
