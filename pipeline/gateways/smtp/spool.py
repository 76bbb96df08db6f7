"""The relay's durable files: the spool (one file per queued message) and the token counters.

A message is queued (fsync'd) in ``worker.data_dir/relay-queue/<mode>/`` once ``mail.raw`` holds it
and stays there until the upstream accepted it; mail the upstream refused for good moves to
``failed/`` with the reasons, for an operator.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from pipeline.correlation.tokens import TokenCounter
from pipeline.durable import fsync_dir, write_atomically
from pipeline.gateways.smtp.policy import RelayError
from pipeline.settings import TrackingTokenSettings

COUNTER_FILE = "relay-token-counters.json"


# -- token counters ---------------------------------------------------------------------------
def load_counter(path: Path, settings: TrackingTokenSettings) -> TokenCounter:
    """The persisted per-user counters (a fresh counter when the file does not exist)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))["next"]
        return TokenCounter(settings, {int(user): int(value) for user, value in state.items()})
    except FileNotFoundError:
        return TokenCounter(settings)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RelayError(f"{path} is not a token counter file ({exc}); fix or remove it") from exc


def save_counter(path: Path, counter: TokenCounter) -> None:
    state = {str(user): value for user, value in sorted(counter.state().items())}
    write_atomically(path, json.dumps({"format": 1, "next": state}, indent=1).encode())


# -- the queue --------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueuedMail:
    name: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    data: bytes
    queued_at: float
    message_id: str | None = None


class RelayQueue:
    """Durable spool: one file per message (a JSON envelope line, then the final bytes)."""

    SUFFIX = ".msg"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.failed_dir = directory / "failed"
        self._claimed: set[str] = set()
        self._mutex = threading.Lock()
        self._lock_handle = None

    def open(self) -> None:
        """Create the folders, take the folder's lock (one relay per queue) and drop the
        half-written files of a crash (their clients never got a 250)."""
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.directory / ".lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RelayError(f"another relay uses the queue {self.directory}: give each relay its own "
                             "worker.data_dir (or mode)") from None
        self._lock_handle = handle
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink()

    def close(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    @staticmethod
    def new_name() -> str:
        return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}{RelayQueue.SUFFIX}"

    def pending(self) -> list[str]:
        return sorted(path.name for path in self.directory.glob("*" + self.SUFFIX))

    def claim(self, name: str) -> bool:
        with self._mutex:
            if name in self._claimed:
                return False
            self._claimed.add(name)
            return True

    def release(self, name: str) -> None:
        with self._mutex:
            self._claimed.discard(name)

    def put(self, item: QueuedMail) -> None:
        self._write(self.directory / item.name, item)

    @staticmethod
    def _write(path: Path, item: QueuedMail, **more) -> None:
        envelope = {"mail_from": item.mail_from, "rcpt_tos": list(item.rcpt_tos), "mail_options": list(item.mail_options),
                    "queued_at": item.queued_at, "message_id": item.message_id, **more}
        write_atomically(path, json.dumps(envelope).encode() + b"\n" + item.data)

    def load(self, name: str) -> QueuedMail:
        content = (self.directory / name).read_bytes()
        line, _, data = content.partition(b"\n")
        envelope = json.loads(line)
        return QueuedMail(name, envelope["mail_from"], tuple(envelope["rcpt_tos"]), tuple(envelope["mail_options"]),
                          data, float(envelope["queued_at"]), envelope.get("message_id"))

    def keep_for(self, item: QueuedMail, rcpt_tos: Sequence[str]) -> None:
        """Only ``rcpt_tos`` still wait (the others were delivered or refused for good)."""
        if tuple(rcpt_tos) != item.rcpt_tos:
            self.put(replace(item, rcpt_tos=tuple(rcpt_tos)))

    def remove(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def fail(self, item: QueuedMail, refused: dict[str, str]) -> None:
        """Keep a copy for the recipients the upstream refused for good, with the reasons."""
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        self._write(self.failed_dir / item.name, replace(item, rcpt_tos=tuple(sorted(refused))), refused=refused,
                    failed_at=time.time())


