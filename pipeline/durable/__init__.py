"""Durable local files: the bottom layer every record and dataset write stands on.

It imports only the standard library, pyarrow and ``pipeline.errors``. One idea a module:

* ``files``    atomic writes (a new O_EXCL temporary file, fsync, rename, fsync of the folder),
               fsync of a path, a tree or a folder, making and removing folders;
* ``renames``  ``renameat2``: a rename that refuses an existing target, an atomic exchange, and
               replacing a folder as a whole with its roll-back;
* ``locks``    an ``fcntl.flock`` on a lock file that holds one JSON line naming its holder;
* ``folder_locks``  the per-process locks of run and sweep folders, built on ``locks``;
* ``staging``  a folder tree written beside its name (``.NAME.tmp-ID``, locked) and renamed into
               place whole; abandoned staging folders (their lock free) are recognised and removed;
* ``records``  reading back JSON and Parquet records, a damaged one being one line (``CorruptFile``).
"""
