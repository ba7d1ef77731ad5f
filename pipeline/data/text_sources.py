"""The documents of a text source, by split: text files, or a text column of Parquet or CSV files.

* A folder or a glob of text files (``TEXT_SUFFIXES``): one document a file, in sorted path order.
* A single text file: one document a paragraph (text between blank lines), so it can be split.
* ``--text-column COL`` of a table source (tables.py): one document a row; null and empty values
  are skipped.

Files that name a split (``train/``, ``test-*.txt``, splits.py) keep it, as table sources do.
Files are read as UTF-8; anything else is one line naming the file and the byte.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.data import fs as fsx
from pipeline.data.images import SUFFIXES as IMAGE_SUFFIXES
from pipeline.data.layout import Layout
from pipeline.data.splits import group_by_split
from pipeline.data.tables import TableFiles
from pipeline.data.validate import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst", ".tex", ".html", ".htm", ".py", ".c", ".h",
                 ".cc", ".cpp", ".js", ".ts", ".java", ".go", ".rs", ".sh")
TABLE_SUFFIXES = (".csv", ".parquet", ".npz")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")


def holds_text(source: str) -> bool:
    """A text file, a glob of them, or a folder with text files and no table or image files."""
    try:
        fs, path = fsx.resolve(source)
        if any(c in path for c in fsx.GLOB_CHARS):
            return path.lower().endswith(TEXT_SUFFIXES)
        found = fsx.kind(fs, path)
    except (DataError, OSError, pa.ArrowException):
        return False  # the table or image import names what is wrong with it
    if found == pafs.FileType.File:
        return path.lower().endswith(TEXT_SUFFIXES)
    if found == pafs.FileType.Directory:  # a README beside images or tables does not make text
        return (bool(fsx.files_under(fs, path, TEXT_SUFFIXES)) and not fsx.files_under(fs, path, TABLE_SUFFIXES)
                and not fsx.files_under(fs, path, IMAGE_SUFFIXES))
    return False


def file_documents(source: str) -> dict[str, list[str]]:
    """``{split: documents}`` of text files: a file each, or a lone file's paragraphs."""
    fs, paths = fsx.expand(source, TEXT_SUFFIXES)
    folder = fsx.source_folder(fs, source)
    splits = group_by_split(source, folder, paths)
    if folder is None:
        return {"train": [p for p in _PARAGRAPH_BREAK.split(_read_text(fs, paths[0])) if p.strip()]}
    return {split: [t for t in (_read_text(fs, p) for p in files) if t] for split, files in splits.items()}


def _read_text(fs: pafs.FileSystem, path: str) -> str:
    try:
        with fs.open_input_stream(path) as stream:
            data = stream.read()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read: {fsx.first_line(exc)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x})") from None


def column_documents(source: str, column: str, layout: Layout) -> dict[str, list[str]]:
    """``{split: documents}`` of one text column of a table source, a row each."""
    tables = TableFiles(source, layout)
    if column not in tables.columns:
        raise DataError(f"{tables.paths[0]}: no text column '{column}' (columns: {', '.join(tables.columns)})")
    kind = tables.column_type(column)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise DataError(f"{tables.paths[0]}: column '{column}' is {kind}, not text")
    found: dict[str, list[str]] = {}
    for split, paths in tables.splits.items():
        docs = found.setdefault(split, [])
        for chunk in tables.chunks([column], paths=paths):
            docs.extend(t for t in chunk.batch.column(0).to_pylist() if t)
    return found
