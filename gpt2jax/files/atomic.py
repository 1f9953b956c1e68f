"""Files replaced whole and durably: a reader sees the old file or the new one, even after a crash."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Makes the renames inside directory durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: str | Path, text: str | bytes) -> None:
    """Replaces ``path`` by a file holding ``text`` (or bytes): readers see the old file or the new one, whole.

    The bytes and the rename are made durable, so after a crash the file is the old one or the new one.
    """
    path = Path(path)
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error
    try:
        with os.fdopen(descriptor, "wb" if isinstance(text, bytes) else "w") as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide the file from other users
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
