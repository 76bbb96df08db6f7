"""Mail files as a stream of ``(source_ref, raw bytes)``, one message at a time.

mbox files are split on the fly (``mailbox.mbox`` would index the whole file first), so a
mailbox of any size costs the memory of one message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

SourceItem = tuple[str, bytes]


def iter_mbox(path: str | Path) -> Iterator[SourceItem]:
    """Messages of an mbox (mboxrd/mboxo): a "From " line at the file start or after a blank
    line starts a message; ">From " quoting inside a body is undone."""
    path = Path(path)
    number = 0
    lines: list[bytes] = []
    previous_blank = True
    started = False
    with open(path, "rb") as handle:
        for line in handle:
            if line.startswith(b"From ") and previous_blank:
                if started:
                    yield f"{path}#{number}", _finish(lines)
                    number += 1
                lines = []
                started = True
                previous_blank = False
                continue
            previous_blank = line in (b"\n", b"\r\n")
            if started:
                # mboxrd quoting: one '>' is removed from any line of the form >+From
                if line.startswith(b">") and line.lstrip(b">").startswith(b"From "):
                    line = line[1:]
                lines.append(line)
    if started:
        yield f"{path}#{number}", _finish(lines)


def _finish(lines: list[bytes]) -> bytes:
    # The blank line before the next "From " separator belongs to the mbox, not the message.
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]
    return b"".join(lines)


def iter_maildir(path: str | Path) -> Iterator[SourceItem]:
    """Messages of a maildir (cur/ and new/), in file name order (delivery time first)."""
    path = Path(path)
    for folder in ("cur", "new"):
        directory = path / folder
        if directory.is_dir():
            for name in sorted(os.listdir(directory)):
                file = directory / name
                if file.is_file() and not name.startswith("."):
                    yield str(file), file.read_bytes()


def iter_eml_dir(path: str | Path) -> Iterator[SourceItem]:
    """Every ``*.eml`` file below ``path``, sorted by path."""
    for file in sorted(Path(path).rglob("*.eml")):
        if file.is_file():
            yield str(file), file.read_bytes()


def iter_mail_sources(paths: Iterable[str | Path]) -> Iterator[SourceItem]:
    """Messages from each path by its kind: a ``.eml`` file, an mbox file, a maildir (a folder
    with cur/new/tmp) or a folder of ``.eml`` files."""
    for raw_path in paths:
        path = Path(raw_path)
        if not path.exists():
            raise ValueError(f"no such mailbox: {path}")
        if path.is_file():
            if path.suffix.lower() == ".eml":
                yield str(path), path.read_bytes()
            else:
                yield from iter_mbox(path)
        elif (path / "cur").is_dir() or (path / "new").is_dir():
            yield from iter_maildir(path)
        else:
            yield from iter_eml_dir(path)
