"""Reading back the records the pipeline wrote: a damaged one is one line naming the file.

JSON and Parquet that cannot be parsed raise ``CorruptFile`` (a ``PipelineError``: the command
line prints its one line); errors of the file system itself (missing, no permission, I/O) stay
``OSError``. JSON nested deeper than ``MAX_JSON_DEPTH`` is refused before it is parsed: the
pipeline writes nothing that deep, and a hostile record must not reach Python's recursion limit
(in the parser, or later in the code that walks what it returned).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError

# Records nest a few levels (a config's sections, a sweep's space); far below Python's recursion limit.
MAX_JSON_DEPTH = 100

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a string literal, escapes included
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class CorruptFile(PipelineError):
    """A record the pipeline wrote that cannot be read back: one line naming the file."""


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply ``text`` nests arrays and objects, counted without parsing (no recursion);
    the count stops at ``limit + 1``. Brackets inside strings do not count."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = deepest = 0
    for char in brackets:
        if char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def read_json(path: Path) -> Any:
    """The JSON a record holds; a damaged or hostile file is one line naming it (CorruptFile)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise CorruptFile(f"{path}: damaged record (not UTF-8 text)") from None
    if json_depth(text) > MAX_JSON_DEPTH:
        raise CorruptFile(f"{path}: damaged record (JSON nested more than {MAX_JSON_DEPTH} levels deep)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptFile(f"{path}: damaged record (not JSON: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno})") from None
    except ValueError as exc:  # a number of more than 4300 digits (Python's limit on int conversions)
        raise CorruptFile(f"{path}: damaged record ({_first_line(exc)})") from None
    except RecursionError:  # not reached after the depth check; kept so that none can ever escape
        raise CorruptFile(f"{path}: damaged record (JSON nested too deeply)") from None


def read_json_object(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``read_json`` of a file that must hold an object with the ``required`` keys."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise CorruptFile(f"{path}: damaged record (a JSON {type(data).__name__}, not an object)")
    missing = [k for k in required if k not in data]
    if missing:
        raise CorruptFile(f"{path}: damaged record (no {', '.join(repr(k) for k in missing)})")
    return data


def read_parquet(path: Path, **kwargs: Any) -> pa.Table:
    """A Parquet file or dataset folder; a damaged one is one line naming it (CorruptFile).

    Errors of the file system itself (missing, no permission, I/O) stay ``OSError``.
    """
    try:
        return pq.read_table(path, **kwargs)
    except OSError as exc:
        if exc.errno is not None or not isinstance(exc, pa.ArrowException):
            raise
        raise CorruptFile(f"{path}: damaged Parquet ({_first_line(exc)})") from None
    except pa.ArrowException as exc:
        raise CorruptFile(f"{path}: damaged Parquet ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    # pyarrow names the file it could not open; the message already does.
    return re.sub(r"^Could not open Parquet input source '[^']*': ", "", first)


def read_parquet_files(files: list[Path], schema: pa.Schema | None = None) -> pa.Table:
    """The files of a Parquet dataset folder as one table, in the order given, each read on its own
    (a damaged one is named; tables of older schemas are promoted to the newest)."""
    tables = []
    for f in files:
        table = read_parquet(f)
        if schema is not None and table.schema != schema:
            try:
                table = table.select(schema.names).cast(schema)
            except (KeyError, pa.ArrowException) as exc:
                raise CorruptFile(f"{f}: damaged Parquet (columns {table.schema.names}, not {schema.names}: "
                                  f"{_first_line(exc)})") from None
        tables.append(table)
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def parquet_files(folder: Path) -> list[Path]:
    """The data files of a Parquet dataset folder as pyarrow reads them: sorted, hidden (``.``/``_``) skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return [folder] if folder.is_file() else []
    return sorted(p for p in folder.iterdir() if not p.name.startswith((".", "_")) and p.is_file())
