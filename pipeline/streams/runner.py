"""Worker processes and progress of the pipeline, for ``up``, ``replay``, tests and benchmarks.

A worker is ``python -m pipeline.streams.app worker`` in its own process group; it gets its
settings through the environment (``THREADLINE_SETTINGS`` plus ``THREADLINE_*`` overrides), so
it sees exactly what a user-started worker would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.topics import DEADLETTER, MAIL_CORRELATED, MAIL_UNTRACKED
from pipeline.runtime.kafka import cluster_metadata, new_group_consumer, new_reader, topic_name
from pipeline.settings import KafkaSettings, Settings, load_settings
from pipeline.streams.reader import read_topic

OUTPUT_TOPICS = (MAIL_CORRELATED, MAIL_UNTRACKED, DEADLETTER)
# progress(description, total) -> update(count so far): one progress display per phase (the CLI's bars).
ProgressFactory = Callable[[str, "int | None"], Callable[[int], None]]


def app_id(settings: Settings) -> str:
    """The Faust app id of the settings' generation: one consumer group and one set of table names
    per generation."""
    return f"{settings.worker.app_id}-g{settings.worker.generation}"


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, *, bootstrap: str, data_dir: Path, generation: int, log_path: Path,
              settings_file: Path | None = None, extra_env: dict[str, str] | None = None) -> "WorkerProcess":
        env = dict(os.environ)
        if "THREADLINE_MAIL_BLOB_DIR" not in env:
            # Each worker has its own data_dir, but big mail is in the blob store of the process
            # that ingested it: the starter's.
            env["THREADLINE_MAIL_BLOB_DIR"] = str(load_settings(settings_file).blob_dir)
        env.update({
            "THREADLINE_KAFKA_BOOTSTRAP": bootstrap,
            "THREADLINE_WORKER_DATA_DIR": str(data_dir),
            "THREADLINE_WORKER_GENERATION": str(generation),
            **(extra_env or {}),
        })
        if settings_file is not None:
            env["THREADLINE_SETTINGS"] = str(settings_file)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "pipeline.streams.app", "worker", "-l", "warn"],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        return cls(process, log_path)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """Clean stop (Faust commits and closes); SIGKILL if it does not end in time."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.alive:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    @property
    def peak_rss_bytes(self) -> int | None:
        """The most memory the running worker has held (Linux VmHWM); None when not known."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else None

    @property
    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the running worker and its processes (the parse pool) have
        used so far, with that of processes already ended and waited for; None when not known
        (not Linux)."""
        total, pending, seen = 0.0, [self.process.pid], False
        while pending:
            pid = pending.pop()
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                            for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue  # ended meanwhile
            seen = True
            total += sum(int(n) for n in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
            pending += children
        return total if seen else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def exit_report(self) -> str:
        """Why the worker ended: the first crash in its log (agent, exception, traceback), not the
        cancellations of the other agents that follow it; the log's tail when none is found."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        head = f"a worker exited (code {self.process.returncode})"
        cause = first_crash(text)
        if cause is None:
            return f"{head}; no crash found in its log ({self.log_path}), which ends:\n{self.log_tail()}"
        return f"{head}: {cause.summary()}\nfirst crash in {self.log_path}:\n{cause.details()}"


@dataclass(frozen=True)
class CrashCause:
    agent: str | None  # the Faust agent that crashed, when the log names one
    reason: str  # e.g. "KeyError(3)", or the exception line of the traceback
    header: str  # the log entry that reported it, e.g. "[ERROR] [^----Agent*: ...escalate]: Crashed reason=..."
    traceback: str  # "" when the crash was logged without one

    def summary(self) -> str:
        if self.agent:
            return f"agent {self.agent} crashed: {self.reason}"
        message = re.sub(r"^\[[A-Z]+\] ", "", self.header)
        return message if self.reason in message else f"{message} {self.reason}".strip()

    def details(self, max_lines: int = 60) -> str:
        lines = [self.header, *self.traceback.splitlines()]
        if len(lines) > max_lines:  # the innermost frames, at the end, say most
            lines = [*lines[:2], f"  ... {len(lines) - max_lines + 1} lines left out ...", *lines[-(max_lines - 3):]]
        return "\n".join(lines)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Faust/mode: "[2026-12-02 11:38:09,159] [6228] [ERROR] message"; logging.basicConfig of the app:
# "2026-12-02 11:38:09,159 ERROR logger: message".
_ENTRY = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+\]?\s+(?:\[\d+\]\s+)?\[?(?P<level>[A-Z]+)\]?\s(?P<message>.*)$")
_TRACEBACK = "Traceback (most recent call last):"
_AGENT = re.compile(r"Agent\*?:.*?(\w+)\]:")
_CRASHED = re.compile(r"Crashed reason=(.+?)\s*$")
_CONSEQUENCE = "CancelledError"
# What the warnings module prints ("path.py:254: UserWarning: ..." and the source line under it),
# e.g. multiprocessing's resource tracker about the parse pool's semaphores after a worker that
# exited at once: it lands after the crash's traceback and is not what stopped the worker.
_WARNING = re.compile(r"^\s*\S+\.py:\d+: \w*Warning: ")


def first_crash(log: str) -> CrashCause | None:
    """The first crash a worker log reports: a Faust agent's ``Crashed reason=...`` with its
    traceback, an ERROR/CRITICAL entry, or a bare traceback.  Cancellations (what the other
    agents log when a crash stops the worker) count only when nothing else is there."""
    entries: list[tuple[str, str, list[str]]] = []  # level, message, lines after it
    warning_source = False
    for line in _ANSI.sub("", log).splitlines():
        if _WARNING.match(line):
            warning_source = True
            continue
        if warning_source:
            warning_source = False
            if line.startswith((" ", "\t")):
                continue
        match = _ENTRY.match(line)
        if match:
            entries.append((match["level"], match["message"].rstrip(), []))
        elif line.startswith(_TRACEBACK) or entries:
            if not entries:
                entries.append(("", "", []))
            entries[-1][2].append(line)
    causes = []
    for level, message, body in entries:
        text = [message, *body]
        start = next((n for n, line in enumerate(text) if _TRACEBACK in line), None)
        if start is None and level not in ("ERROR", "CRITICAL") and not _CRASHED.search(message):
            continue
        if start is None:
            traceback, exception = "", ""
        else:
            tb_lines = [_TRACEBACK, *text[start + 1:]]
            traceback = "\n".join(tb_lines).rstrip()
            exception = next((line.strip() for line in reversed(tb_lines[1:])
                              if line.strip() and not line.startswith((" ", "\t"))), "")
        crashed = _CRASHED.search(message)
        reason = crashed[1] if crashed else exception or message
        agent = _AGENT.search(message)
        header = message.split(_TRACEBACK)[0].rstrip() if start == 0 else message
        causes.append(CrashCause(agent[1] if agent else None, reason,
                                 f"[{level}] {header}" if level else header, traceback))
    real = [cause for cause in causes if _CONSEQUENCE not in cause.reason]
    return (real or causes or [None])[0]


def count_outputs(kafka: KafkaSettings, bootstrap: str, codec: AvroCodec, generation: int) -> Counter:
    """Distinct mails handled by ``generation``: correlated, untracked and dead-lettered."""
    counts: Counter = Counter()
    for topic in OUTPUT_TOPICS:
        seen = set()
        for _, _, _, value in read_topic(kafka, bootstrap, topic, codec):
            if topic != DEADLETTER and value["generation"] != generation:
                continue
            seen.add(value["event_id"])
        counts[topic] = len(seen)
    return counts


def _poll(done: Callable[[], bool], *, workers: list[WorkerProcess], timeout_s: float,
          describe: Callable[[], str]) -> None:
    """Call ``done`` every second until it is true; raises if a worker dies, or with ``describe()``
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        dead = [w for w in workers if not w.alive]
        if dead:
            raise RuntimeError(dead[0].exit_report())
        if time.monotonic() > deadline:
            raise TimeoutError(f"{describe()} after {timeout_s:.0f} s")
        time.sleep(1.0)


def wait_for_outputs(kafka: KafkaSettings, bootstrap: str, codec: AvroCodec, generation: int, expected: int, *,
                     workers: list[WorkerProcess], timeout_s: float = 300.0,
                     on_progress: Callable[[int], None] | None = None) -> Counter:
    """Poll the output topics until ``expected`` mails are handled; raises if a worker dies."""
    counts: Counter = Counter()

    def handled() -> bool:
        nonlocal counts
        counts = count_outputs(kafka, bootstrap, codec, generation)
        if on_progress is not None:
            on_progress(sum(counts.values()))
        return sum(counts.values()) >= expected

    _poll(handled, workers=workers, timeout_s=timeout_s,
          describe=lambda: f"{sum(counts.values())} of {expected} mails handled")
    return counts


def topic_extent(kafka: KafkaSettings, bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[int, tuple[int, int]]:
    """``{partition: (first offset, end offset)}`` of every partition of ``topic`` that holds
    records now (nothing when the topic does not exist).  Reads only each partition's last batch:
    the end is the offset at the end of the partition (``enable.partition.eof``, exact on Tansu
    too), reached from the broker's high watermark less one, which on Tansu is the base offset of
    the last batch (INFRA.md §2) and on Kafka the last record."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    name = topic_name(kafka, topic)
    consumer = new_reader(kafka, bootstrap, "threadline-extent", {"enable.partition.eof": True,
                                                                   "fetch.wait.max.ms": 10})
    try:
        metadata = cluster_metadata(consumer, timeout_s, name)
        if name not in metadata.topics or metadata.topics[name].error is not None:
            return {}
        watermarks = {p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout_s)
                      for p in sorted(metadata.topics[name].partitions)}
        firsts = {p: first for p, (first, _) in watermarks.items()}
        consumer.assign([TopicPartition(name, p, max(first, high - 1)) for p, (first, high) in watermarks.items()])
        ends: dict[int, int] = {}
        deadline = time.monotonic() + timeout_s
        while len(ends) < len(firsts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading the end of {name}: partitions {sorted(set(firsts) - set(ends))} "
                                   f"gave no end within {timeout_s} s")
            message = consumer.poll(0.5)
            if message is None or not message.error():
                continue
            if message.error().code() != KafkaError._PARTITION_EOF:
                raise KafkaException(message.error())
            ends[message.partition()] = message.offset()
    finally:
        consumer.close()
    return {p: (firsts[p], end) for p, end in sorted(ends.items()) if end > firsts[p]}


def wait_for_consumed(kafka: KafkaSettings, bootstrap: str, group_id: str, topic: str, *,
                      workers: list[WorkerProcess], timeout_s: float = 300.0,
                      progress: ProgressFactory | None = None,
                      extent: dict[int, tuple[int, int]] | None = None) -> None:
    """Poll until the consumer group ``group_id`` has committed every record now in ``topic``
    (a worker's agent commits a record only once its outputs are out), or every record of
    ``extent`` (:func:`topic_extent`) when given; raises if a worker dies.  ``progress`` gets the
    records of ``topic`` committed so far."""
    from confluent_kafka import TopicPartition

    extent = topic_extent(kafka, bootstrap, topic) if extent is None else extent
    name = topic_name(kafka, topic)
    consumer = new_group_consumer(kafka, bootstrap, group_id)  # never subscribes: it joins and commits nothing
    behind = total = sum(end - first for first, end in extent.values())
    update = progress(f"agents reading {topic}", total) if progress is not None else None

    def consumed() -> bool:
        nonlocal behind
        committed = {tp.partition: tp.offset
                     for tp in consumer.committed([TopicPartition(name, p) for p in extent], timeout=10)}
        behind = sum(end - max(committed[p], first) for p, (first, end) in extent.items() if committed[p] < end)
        if update is not None:
            update(total - behind)
        return not behind

    try:
        _poll(consumed, workers=workers, timeout_s=timeout_s,
              describe=lambda: f"{group_id} is {behind} records of {topic} behind")
    finally:
        consumer.close()


def count_records(kafka: KafkaSettings, bootstrap: str, topic: str) -> int:
    return sum(1 for _ in read_topic(kafka, bootstrap, topic))
