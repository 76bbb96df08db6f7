"""The one Kafka client factory: every producer, consumer and admin client of the package is made here.

The configs carry the cluster's security settings (TLS, SASL), the producer defaults every
output needs (idempotent, ``acks=all``, murmur2 partitioning like Faust) and the operator's
``kafka.producer_options`` (size limits such as ``message.max.bytes``).  A caller adds only what
is its own (a group id, a delivery timeout), never the cluster's settings.  The Faust app gets the
same security settings from :func:`faust_credentials`.
"""

from __future__ import annotations

import ssl
import uuid

from pipeline.settings import KafkaSettings


def topic_name(kafka: KafkaSettings, topic: str) -> str:
    """The cluster's name of a registry topic (``kafka.topic_prefix``: several installations, one cluster)."""
    return kafka.topic_prefix + topic


def client_config(kafka: KafkaSettings, bootstrap: str | None = None) -> dict:
    """librdkafka settings shared by every producer, consumer and admin client."""
    config = {"bootstrap.servers": bootstrap or kafka.bootstrap}
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
