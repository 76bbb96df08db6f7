"""Files that survive a crash: the one way the package replaces a file or makes a rename durable.

Used by the blob store, the relay's queue and counter files and the IMAP poller's state file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Write a private temporary file beside ``path``, fsync it, rename it over ``path`` and fsync
    the folder: after a crash ``path`` holds the old or the new content, never a mix, and
    concurrent writers never share a temporary file.  The temporary name is ``.<name>.*.tmp``, so a
    reader that lists the folder can tell a leftover from a crash."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
