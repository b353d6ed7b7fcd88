"""The one atomic file writer: a file appears under its name complete, or not at all.

    with atomic_write(path) as f:      # f writes to PATH_FOLDER/.NAME.partial
        torch.save(obj, f)             # on success: flush, fsync(file), os.replace, fsync(folder)

Why each step: the bytes go to ``.NAME.partial`` in the same folder (``os.replace`` is atomic
only within one file system); ``fsync`` of the file before the rename, because otherwise a
power loss can leave the new name pointing at an empty or truncated file (the rename reaches
the disk before the data); ``fsync`` of the folder after it, because the rename itself lives in
the folder's entry and is not durable until the folder is flushed. A failure (or an exception
in the ``with`` body) removes the partial file and leaves any previous ``path`` untouched.

Used for every file mlcdist publishes: checkpoints and the ``latest`` pointer
(``checkpoint.py``), eval's feature cache, shards, ``dataset.json`` and the converter's
progress file (``data/shards.py``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def partial_path(path: Path) -> Path:
    """Where :func:`atomic_write` stages ``path``: a hidden ``.NAME.partial`` beside it."""
    return path.with_name(f".{path.name}.partial")


def fsync_dir(folder: Path) -> None:
    """Make renames and new entries in ``folder`` durable (a no-op where folders cannot be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """An open ``.NAME.partial`` that :meth:`commit` puts under ``path`` (see module docstring)
    and :meth:`discard` removes; for writers that keep a file open across calls (a shard)."""

    def __init__(self, path: str | Path, mode: str = "wb"):
        if "w" not in mode:
            raise ValueError(f"AtomicFile: mode {mode!r} must write ('wb' or 'w')")
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.handle: IO = open(self.partial, mode)

    def commit(self) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.partial, self.path)
        except BaseException:
            self.discard()
            raise
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        try:
            self.handle.close()  # flushes what is buffered: fails again on a full disk
        except OSError:
            pass
        finally:
            self.partial.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """A file object whose bytes appear under ``path`` only when the block ends without error."""
    file = AtomicFile(path, mode)
    try:
        yield file.handle
    except BaseException:
        file.discard()
        raise
    file.commit()


def write_text(path: str | Path, text: str) -> None:
    """``path.write_text(text)``, atomically and durably."""
    with atomic_write(path, "w") as f:
        f.write(text)


def rename_into_place(src: Path, dst: Path) -> None:
    """``os.replace(src, dst)`` (e.g. a staged folder) made durable by fsyncing ``dst``'s folder."""
    os.replace(src, dst)
    fsync_dir(dst.parent)
