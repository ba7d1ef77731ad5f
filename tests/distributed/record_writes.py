"""``pipeline`` with a record of what this process writes.

``python -m tests.distributed.record_writes LOG_DIR ROOT ARGS...`` runs ``pipeline ARGS...`` in
this process (as ``python -m pipeline`` would) with an audit hook (``sys.addaudithook``) that
appends to ``LOG_DIR/writes-<PIPELINE_PROCESS_ID>.txt`` one line ``EVENT<TAB>PATH`` for every
file opened for writing, renamed onto, created as a folder or removed under ROOT. Python's own
file operations raise these events (the run folder's records are written through ``os.open``
and ``os.replace``); native writers (Orbax's TensorStore) do not, which is fine for what the
tests ask: who wrote the run folder's records, and how often.
"""

from __future__ import annotations

import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def main(log_dir: str, root: str, args: list[str]) -> int:
    log = open(os.path.join(log_dir, f"writes-{os.environ.get('PIPELINE_PROCESS_ID', '0')}.txt"), "a")  # noqa: SIM115
    root = os.path.realpath(root) + os.sep

    def note(event: str, path) -> None:
        if isinstance(path, (str, bytes, os.PathLike)) and not isinstance(path, int):
            full = os.path.realpath(os.fsdecode(path))
            if full.startswith(root):
                log.write(f"{event}\t{full[len(root):]}\n")
                log.flush()

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[2], int) and args[2] & WRITE_FLAGS:  # (path, mode, flags)
            note("open", args[0])
        elif event == "os.rename":
            note("rename", args[1])
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            note(event.split(".")[-1], args[0])

    sys.addaudithook(hook)
    from pipeline.cli import main as pipeline_main

    return pipeline_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
