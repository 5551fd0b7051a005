"""Writing files that must never be seen half-written."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write to; once the block ends, the file is
    flushed to disk and renamed over `path` in one step. Readers see the old file or the new one,
    never a mix, and two processes writing at once leave one of their files whole (each writes
    its own temporary). If the block fails, `path` is left as it was. A symbolic link stays a
    link: the file it points to is the one replaced. An error about the temporary names `path`,
    the file the user asked for."""
    path = path.resolve() if path.is_symlink() else path
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield partial
        with partial.open("rb+") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
    except OSError as problem:
        if problem.filename == str(partial):
            problem.filename = str(path)
        raise
    finally:
        partial.unlink(missing_ok=True)
