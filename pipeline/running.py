"""Where a running ``threadline up`` can be reached: one file, ``stack.json`` in ``worker.data_dir``.

``up`` owns the embedded broker and the embedded ClickHouse (chDB allows one process per data
folder), so a command in a second shell cannot open them itself: it asks the process that owns
them.  ``up`` publishes its addresses here once they answer and withdraws the file when it stops;
commands read it to find the broker, the store's HTTP interface and the Schema Registry endpoint
without any ``export``.  A file whose process is gone (``up`` was killed) counts as absent.

The file holds the store's password for the commands of the same user, so it is written with mode
0600 and its password is a secret (masked in every repr; never printed or logged).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STACK_FILE = "stack.json"


@dataclass(frozen=True)
class RunningStack:
    pid: int
    bootstrap: str
    embedded_broker: bool
    clickhouse_url: str | None = None  # http://127.0.0.1:PORT, without credentials
    clickhouse_user: str | None = None
    clickhouse_password: str | None = field(default=None, repr=False)
    schema_registry_url: str | None = None
    tracking_url: str | None = None


def publish(data_dir: Path, stack: RunningStack) -> Path:
    """Write ``stack.json`` (mode 0600) atomically: a reader sees the old file or the new one."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / STACK_FILE
    partial = path.with_suffix(".json.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump(asdict(stack), out, indent=2)
    os.replace(partial, path)
    return path


def withdraw(data_dir: Path, pid: int | None = None) -> None:
    """Remove ``stack.json`` if it is this process's (``pid``, default: the caller's)."""
    path = data_dir / STACK_FILE
    stack = _read(path)
    if stack is not None and stack.pid == (os.getpid() if pid is None else pid):
        path.unlink(missing_ok=True)


def running_stack(data_dir: Path) -> RunningStack | None:
    """The stack published in ``data_dir``, or None when there is none or its process has ended."""
    stack = _read(data_dir / STACK_FILE)
    return stack if stack is not None and _alive(stack.pid) else None


def _read(path: Path) -> RunningStack | None:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return RunningStack(**values)
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, though its file is not ours to use
        return True
    return True
