"""The one Kafka client factory: every producer, consumer and admin client of the package is made here.

The configs carry the cluster's security settings (TLS, SASL), the producer defaults every
output needs (idempotent, ``acks=all``, murmur2 partitioning like Faust) and the operator's
``kafka.producer_options`` (size limits such as ``message.max.bytes``).  A caller adds only what
is its own (a group id, a delivery timeout), never the cluster's settings.  The Faust app gets the
same security settings from :func:`faust_credentials`.

Every client logs through the ``threadline.kafka`` logger, whose :class:`BrokerWatch` turns
librdkafka's connection failures (one line per attempt, about twenty a second against a closed
port) into one line when a broker becomes unreachable, a counter now and then while it stays so,
and one line when it answers again.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from pipeline.settings import KafkaSettings

KAFKA_LOGGER = "threadline.kafka"
# How often a client reports its brokers' states (the watch reads them only while one is down).
STATS_INTERVAL_MS = 5_000
# librdkafka's message of a failed connection: "HOST:PORT/NODE: Connect to ... failed: ... (after 0ms in state CONNECT)".
# A consumer group's coordinator, a connection of its own to one of those brokers, names the broker
# when it knows it, "GroupCoordinator: HOST:PORT: Connect to ...", else only the address it connects
# to: "GroupCoordinator: Connect to ipv4#ADDRESS:PORT failed: ...".
_FAILURE = re.compile(r"(?:(?P<broker>[^\s/\]]+:\d+)/(?:bootstrap|\d+)|GroupCoordinator(?:: (?P<node>[^\s/\]]+:\d+))?): "
                      r"(?P<reason>.*?)(?: \(after \d+ms in state \w+.*\))?$")
_CONNECT = re.compile(r"^Connect to ipv[46]#(?P<address>\S+:\d+) failed")


@dataclass
class _Outage:
    since: float  # wall clock of the first failure
    attempts: int
    said_at: float  # monotonic clock of the last line about it
    addresses: set[str]  # the addresses it failed to connect to
    named: bool  # known by its broker's name (else by an address only a coordinator gave)


class BrokerWatch(logging.Filter):
    """A filter for librdkafka's log records (confluent-kafka's ``logger``, facility first) that
    collapses the connection failures of every client of the process, broker by broker."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._down: dict[str, _Outage] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        failure = _failure(record)
        if failure is None:
            return True
        name, address, reason = failure
        now = time.monotonic()
        with self._lock:
            broker, outage = self._outage(name, address)
            if outage is None:
                self._down[broker] = _Outage(time.time(), 1, now, {address} - {None}, name is not None)
                message = (f"broker at {broker} unreachable ({reason}); retrying, a line every "
                           f"{self.every_s:.0f} s while it stays so")
            else:
                outage.attempts += 1
                if now - outage.said_at < self.every_s:
                    return False
                outage.said_at = now
                message = (f"broker at {broker} unreachable since {time.strftime('%H:%M:%S', time.localtime(outage.since))}"
                           f" ({outage.attempts} attempts)")
        record.msg, record.args = message, ()
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True

    def _outage(self, name: str | None, address: str | None) -> tuple[str, _Outage | None]:
        """The key and the outage (None: a new one) of a failure of the broker ``name`` or, a
        coordinator's not naming it, of its connect ``address``. A broker with a host name and its
        coordinator's address are one outage, kept under the name (the statistics say it is back)."""
        key = name or address
        outage = self._down.get(key)
        if outage is None and address is not None:
            key, outage = next(((other, o) for other, o in self._down.items()
                                if address in o.addresses and (name is None or not o.named)), (key, None))
            if outage is not None and name is not None:  # the coordinator's outage now has its broker's name
                del self._down[key]
                key, self._down[name], outage.named = name, outage, True
        if outage is not None and address is not None:
            outage.addresses.add(address)
        return key, outage

    def stats(self, report: str) -> None:
        """A client's statistics (``stats_cb``): a broker it is connected to again is back."""
        if not self._down:  # the usual case costs no parsing
            return
        up = {broker.get("nodename") for broker in json.loads(report).get("brokers", {}).values()
              if broker.get("state") == "UP"}
        with self._lock:
            back = [(name, self._down.pop(name)) for name in list(self._down) if name in up]
        for name, outage in back:
            logging.getLogger(KAFKA_LOGGER).warning(
                "broker at %s reachable again after %.0f s (%d failed attempts)", name, time.time() - outage.since,
                outage.attempts, extra={"broker_watch": True})


def _failure(record: logging.LogRecord) -> tuple[str | None, str | None, str] | None:
    """(broker, connect address, reason) of a librdkafka record saying a connection failed, one of
    broker and address at least; None for any other."""
    if getattr(record, "broker_watch", False) or not isinstance(record.args, tuple) or len(record.args) != 3:
        return None
    facility, _client, text = record.args
    if facility != "FAIL":
        return None
    match = _FAILURE.search(str(text))
    if match is None:
        return None
    broker = match["broker"] or match["node"]
    connect = _CONNECT.match(match["reason"])
    address = None if connect is None else connect["address"]
    if broker is None and address is None:
        return None  # a coordinator's line that says no broker: as it is
    return broker, address, match["reason"]


BROKER_WATCH = BrokerWatch()
logging.getLogger(KAFKA_LOGGER).addFilter(BROKER_WATCH)


def topic_name(kafka: KafkaSettings, topic: str) -> str:
    """The cluster's name of a registry topic (``kafka.topic_prefix``: several installations, one cluster)."""
    return kafka.topic_prefix + topic


def client_config(kafka: KafkaSettings, bootstrap: str | None = None) -> dict:
    """librdkafka settings shared by every producer, consumer and admin client."""
    config = {"bootstrap.servers": bootstrap or kafka.bootstrap,
              # Logs and statistics reach Python when the client is polled (an admin client's never do).
              "logger": logging.getLogger(KAFKA_LOGGER),
              "statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": BROKER_WATCH.stats}
    if kafka.security_protocol != "PLAINTEXT":
        config["security.protocol"] = kafka.security_protocol
    if kafka.ssl_ca_location:
        config["ssl.ca.location"] = kafka.ssl_ca_location
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        config["sasl.username"] = kafka.sasl_username or ""
        config["sasl.password"] = kafka.sasl_password or ""
    return config


def producer_config(kafka: KafkaSettings, bootstrap: str | None = None) -> dict:
    return {
        **client_config(kafka, bootstrap),
        "enable.idempotence": True,
        "acks": "all",
        # Faust (aiokafka) places keys with murmur2; our producers must agree so that a tenant's
        # records and its table entries share a partition.
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        # No compression: Faust's aiokafka reads lz4/snappy/zstd only with extra libraries, and
        # mail.raw is read by Faust. (gzip would work but costs more CPU than loopback saves.)
        **kafka.producer_options,  # e.g. message.max.bytes; the keys above are refused there
    }


def new_producer(kafka: KafkaSettings, bootstrap: str | None = None, options: dict | None = None):
    """A confluent-kafka producer; ``options`` are the caller's own librdkafka settings."""
    from confluent_kafka import Producer

    return Producer({**producer_config(kafka, bootstrap), **(options or {})})


def new_group_consumer(kafka: KafkaSettings, bootstrap: str | None, group_id: str):
    """A consumer in ``group_id`` that commits only when told to (after its output is durable)
    and starts a new group at the beginning of each partition."""
    from confluent_kafka import Consumer

    return Consumer({**client_config(kafka, bootstrap), "group.id": group_id, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "session.timeout.ms": 6000})


def new_reader(kafka: KafkaSettings, bootstrap: str | None, purpose: str, options: dict | None = None):
    """A consumer for reading assigned partitions: a group of its own (``purpose``-uuid), no commits."""
    from confluent_kafka import Consumer

    return Consumer({**client_config(kafka, bootstrap), "group.id": f"{purpose}-{uuid.uuid4()}",
                     "enable.auto.commit": False, **(options or {})})


def new_admin(kafka: KafkaSettings, bootstrap: str | None = None):
    from confluent_kafka.admin import AdminClient

    return AdminClient(client_config(kafka, bootstrap))


def cluster_metadata(client, timeout_s: float, topic: str | None = None, stop: Callable[[], bool] | None = None):
    """``client.list_topics`` (of every topic, or of ``topic``) asked again every second until
    ``timeout_s``, the client's log served in between: nothing polls an admin client (nor a
    consumer before its read), so a broker that does not answer would be said only when the
    timeout ends (BrokerWatch says it after a second).  ``stop`` is asked between the attempts:
    None when it says stop."""
    from confluent_kafka import KafkaError, KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            return client.list_topics(topic, timeout=max(min(1.0, left), 0.01))
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._TRANSPORT or left <= 1.0:
                raise
        client.poll(0)
        if stop is not None and stop():
            return None


def produce_when_room(producer, topic: str, value: bytes, key: bytes | None, **kwargs) -> None:
    """``producer.produce`` that waits while librdkafka's local queue is full (BufferError),
    serving delivery reports meanwhile, instead of failing the record."""
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(0.1)


def faust_credentials(kafka: KafkaSettings):
    """The Kafka security settings for Faust (aiokafka), matching :func:`client_config`."""
    import faust

    tls = ssl.create_default_context(cafile=kafka.ssl_ca_location) if kafka.security_protocol in ("SSL", "SASL_SSL") else None
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(username=kafka.sasl_username or "", password=kafka.sasl_password or "",
                                     mechanism=kafka.sasl_mechanism, ssl_context=tls)
    return faust.SSLCredentials(tls) if tls is not None else None
