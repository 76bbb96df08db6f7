"""The blob store of big mail: a content-addressed folder (claim check, docs/pipeline.md).

A mail larger than ``mail.inline_max_bytes`` is written here under its SHA-256 before its
``mail.raw`` record (which then carries only the digest and size) is produced, so a record
never points at a blob that is not durable yet.  Blobs are immutable and named by content:
writing the same mail twice is a no-op, several processes may write concurrently (each writes
a private temporary file and renames it into place), and a reader verifies the digest, so a
truncated or altered file is detected instead of being correlated.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.durable import fsync_dir, write_atomically
from pipeline.errors import RejectedInput


class BlobError(RejectedInput):
    """A blob that cannot be returned as stored; ``reason`` is the dead-letter reason code."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    sha256: str  # 64 lower-case hex digits
    size: int

    def to_record(self) -> dict:
        return {"sha256": self.sha256, "size": self.size}

    @classmethod
    def from_record(cls, record: dict) -> "BlobRef":
        return cls(record["sha256"], record["size"])


def _make_dirs(directory: Path) -> None:
    """``mkdir -p`` whose new folders survive a crash: each one's entry in its parent is
    fsynced too (else a blob fsynced in a new ``sha256/ab`` folder could still vanish)."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # another writer made it meanwhile
            pass
        fsync_dir(folder.parent)


def _is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


class FolderBlobStore:
    """Blobs as files ``ROOT/sha256/ab/abcdef…``; the folder is made on first write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, sha256: str) -> Path:
        if not _is_digest(sha256):  # a record's digest names a file: never let it walk the tree
            raise BlobError("blob_ref_invalid", f"not a SHA-256 digest: {sha256[:80]!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, data: bytes) -> BlobRef:
        ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
        path = self.path_of(ref.sha256)
        if path.is_file() and path.stat().st_size == ref.size:
            fsync_dir(path.parent)  # its writer may have died before it made the rename durable
            return ref
        _make_dirs(path.parent)
        write_atomically(path, data)  # durable, rename included, before any record names it
        return ref

    def get(self, ref: BlobRef) -> bytes:
        """The blob's bytes; :class:`BlobError` when it is missing or not what the digest says.
        Other I/O errors (a network file system away) propagate: they are not the mail's fault."""
        path = self.path_of(ref.sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise BlobError("blob_missing", f"no blob {ref.sha256} in {self.root}") from exc
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BlobError("blob_corrupt", f"blob {ref.sha256} has {len(data)} bytes that do not match its digest")
        return data

    def delete(self, sha256: str) -> bool:
        """Remove a blob (erasure); True when there was one."""
        try:
            self.path_of(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def check_writable(self) -> str | None:
        """None when blobs can be written here, else why not (for ``threadline doctor``)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".doctor-"):
                pass
        except OSError as exc:
            return f"{self.root}: {exc.strerror or exc}"
        return None
