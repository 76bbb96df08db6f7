"""Files that survive a crash: the one way the package replaces a file, appends a line to one or
makes a rename durable.

Used by the blob store, the relay's queue and counter files, the IMAP poller's state file, and the
campaigns' resume state and suppression files (appended).
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


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` (ending in a newline) to ``path`` and fsync it; a new file is private and
    its folder fsync'd.  A torn last line (a crash while writing) is ended first, so that this line
    is not lost with it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        if end and os.pread(fd, 1, end - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
