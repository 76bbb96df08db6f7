"""Worker processes and progress of the pipeline, for ``up``, ``replay``, tests and benchmarks.

A worker is ``python -m pipeline.streams.app worker`` in its own process group; it gets its
settings through the environment (``THREADLINE_SETTINGS`` plus ``THREADLINE_*`` overrides), so
it sees exactly what a user-started worker would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.avro import AvroCodec
from pipeline.settings import KafkaSettings, load_settings
from pipeline.streams.reader import read_topic

OUTPUT_TOPICS = ("mail.correlated", "mail.untracked", "deadletter")


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

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def count_outputs(kafka: KafkaSettings, bootstrap: str, codec: AvroCodec, generation: int) -> Counter:
    """Distinct mails handled by ``generation``: correlated, untracked and dead-lettered."""
    counts: Counter = Counter()
    for topic in OUTPUT_TOPICS:
        seen = set()
        for _, _, _, value in read_topic(kafka, bootstrap, topic, codec):
            if topic != "deadletter" and value["generation"] != generation:
                continue
            seen.add(value["event_id"])
        counts[topic] = len(seen)
    return counts


def wait_for_outputs(kafka: KafkaSettings, bootstrap: str, codec: AvroCodec, generation: int, expected: int, *,
                     workers: list[WorkerProcess], timeout_s: float = 300.0,
                     on_progress: Callable[[int], None] | None = None) -> Counter:
    """Poll the output topics until ``expected`` mails are handled; raises if a worker dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = count_outputs(kafka, bootstrap, codec, generation)
        done = sum(counts.values())
        if on_progress is not None:
            on_progress(done)
        if done >= expected:
            return counts
        dead = [w for w in workers if not w.alive]
        if dead:
            raise RuntimeError(f"a worker exited (code {dead[0].process.returncode}); its log ends:\n{dead[0].log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {expected} mails handled after {timeout_s:.0f} s")
        time.sleep(1.0)


def count_records(kafka: KafkaSettings, bootstrap: str, topic: str) -> int:
    return sum(1 for _ in read_topic(kafka, bootstrap, topic))
