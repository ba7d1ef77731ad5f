"""Locations on any filesystem pyarrow understands: local paths, ``file://``, ``s3://``, ``gs://``, ...

A location that pyarrow cannot open itself (``memory://``, ``gcs://`` spellings of fsspec, ...)
is opened with fsspec, when it is installed, and wrapped in ``pyarrow.fs.PyFileSystem``.
Paths inside a filesystem are plain ``/``-separated strings.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.data.validate import DataError

GLOB_CHARS = "*?["


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for a local path or a URI."""
    text = str(location)
    if "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(text)
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        arrow_error = exc
    try:
        import fsspec
    except ImportError:
        raise DataError(f"{text}: {first_line(arrow_error)} (install fsspec for more filesystems)") from None
    try:
        fs, path = fsspec.core.url_to_fs(text)
    except (ValueError, ImportError) as exc:
        raise DataError(f"{text}: {first_line(exc)}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def kind(fs: pafs.FileSystem, path: str) -> pafs.FileType:
    return fs.get_file_info(path).type


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return kind(fs, path) == pafs.FileType.Directory


def is_file(fs: pafs.FileSystem, path: str) -> bool:
    return kind(fs, path) == pafs.FileType.File


def children(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    if not is_dir(fs, path):
        return []
    return sorted(fs.get_file_info(pafs.FileSelector(path, recursive=False)), key=lambda i: i.path)


def files_under(fs: pafs.FileSystem, path: str, suffixes: tuple[str, ...], recursive: bool = True) -> list[str]:
    """Files below ``path`` ending in one of ``suffixes``, sorted; hidden names are skipped."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    found = []
    for info in infos:
        rel = info.path[len(path.rstrip("/")) + 1:]
        if info.type != pafs.FileType.File or any(p.startswith((".", "_")) for p in rel.split("/")):
            continue
        if info.path.lower().endswith(suffixes):
            found.append(info.path)
    return sorted(found)


def expand(location: str, suffixes: tuple[str, ...]) -> tuple[pafs.FileSystem, list[str]]:
    """A file, a folder (every matching file below it) or a glob (``data/*.csv``) as a list of files."""
    fs, path = resolve(location)
    if not any(c in path for c in GLOB_CHARS):
        found = kind(fs, path)
        if found == pafs.FileType.File:
            return fs, [path]
        if found == pafs.FileType.Directory:
            files = files_under(fs, path, suffixes)
            if not files:
                raise DataError(f"{location}: no {' or '.join(suffixes)} files in the folder")
            return fs, files
        raise DataError(f"{location}: no such file or folder")
    base, pattern = _glob_parts(path)
    if not is_dir(fs, base):
        raise DataError(f"{location}: no such folder '{base}'")
    recursive = "/" in pattern or "**" in pattern
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=recursive))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File
                   and fnmatch.fnmatchcase(i.path[len(base.rstrip("/")) + 1:], pattern))
    if not files:
        raise DataError(f"{location}: no files match")
    return fs, files


def _glob_parts(path: str) -> tuple[str, str]:
    """``/data/hf/*/x-*.csv`` -> (``/data/hf``, ``*/x-*.csv``): the folder before the first glob character."""
    parts = path.split("/")
    fixed = next(i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS))
    return "/".join(parts[:fixed]) or "/", "/".join(parts[fixed:])


def source_folder(fs: pafs.FileSystem, location: str) -> str | None:
    """The folder a folder or glob source lists files below; None for a single file.

    Paths relative to it are what split names are read from (``train/x.parquet``,
    ``data/test-00000-of-00001.parquet``), so nothing above the source can look like a split.
    """
    path = resolve(location)[1]
    if any(c in path for c in GLOB_CHARS):
        return _glob_parts(path)[0]
    return path if is_dir(fs, path) else None


def file_size(fs: pafs.FileSystem, path: str) -> int:
    return int(fs.get_file_info(path).size or 0)


def remove_tree(fs: pafs.FileSystem, path: str) -> None:
    """Delete a folder and everything in it; a missing folder is fine."""
    try:
        if is_dir(fs, path):
            fs.delete_dir(path)
    except (OSError, pa.ArrowException):
        pass
