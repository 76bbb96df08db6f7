"""A downstream program, run in its own process by test_schema_registry_clients.py: only
confluent-kafka's clients against the Schema Registry endpoint and the broker, nothing of
Threadline.  Prints one JSON object with what it read, wrote and was told.

    python registry_client_script.py REGISTRY_URL BOOTSTRAP TOPIC_PREFIX
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

url, bootstrap, prefix = sys.argv[1:4]
registry = SchemaRegistryClient({"url": url})
report: dict = {"seconds": {}}
started = time.monotonic()


def read_all(topic: str, deserializer: AvroDeserializer) -> list[dict]:
    """Every record of ``topic`` from the beginning, decoded: key, schema id, value."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"downstream-{topic}-{id(deserializer)}",
                         "auto.offset.reset": "earliest", "enable.partition.eof": True, "enable.auto.commit": False,
                         # the embedded broker lets a group join after about half the session timeout
                         "session.timeout.ms": 6000})
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.subscribe([topic])
    pending, found = set(partitions), []
    while pending:
        message = consumer.poll(30)
        if message is None:
            raise TimeoutError(f"{topic}: no end of partitions {sorted(pending)} within 30 s")
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                pending.discard(message.partition())
                continue
            raise RuntimeError(message.error())
        value = deserializer(message.value(), SerializationContext(topic, MessageField.VALUE))
        found.append({"key": message.key().decode(), "schema_id": int.from_bytes(message.value()[1:5], "big"),
                      "value": {k: v.isoformat() if isinstance(v, datetime) else v for k, v in value.items()}})
    consumer.close()
    return found


def refusal(call) -> dict | None:
    try:
        call()
    except SchemaRegistryError as exc:
        return {"status": exc.http_status_code, "code": exc.error_code, "message": exc.error_message}
    return None


# (a) our records, as written: each with its writer schema; and resolved to the latest version
correlated = f"{prefix}mail.correlated"
report["as_written"] = read_all(correlated, AvroDeserializer(registry))
report["seconds"]["as_written"] = time.monotonic() - started
report["as_latest"] = read_all(correlated, AvroDeserializer(registry, conf={"use.latest.version": True}))
report["seconds"]["as_latest"] = time.monotonic() - started

# (b) a CRM writing crm.entities with the latest released schema, two tenants
entities = f"{prefix}crm.entities"
latest = registry.get_latest_version(f"{entities}-value")
serializers = {  # one auto-registers (an identical schema keeps its id), one writes with the latest version
    "acme": AvroSerializer(registry, latest.schema.schema_str),
    "globex": AvroSerializer(registry, latest.schema.schema_str,
                             conf={"auto.register.schemas": False, "use.latest.version": True}),
}
producer = Producer({"bootstrap.servers": bootstrap})
written = []
for tenant, name in (("acme", "Dana Scully"), ("globex", "Fox Mulder")):
    record = {"event_id": f"crm-{tenant}-1", "tenant": tenant, "entity_type": "contact", "entity_id": f"{tenant}-c1",
              "name": name, "email": f"{name.split()[0].lower()}@{tenant}.example", "company_id": None,
              "owner": None, "status": None, "assigned_on": None,
              "updated_at": datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc), "deleted": False}
    value = serializers[tenant](record, SerializationContext(entities, MessageField.VALUE))
    producer.produce(entities, value, tenant.encode())
    written.append({"tenant": tenant, "schema_id": int.from_bytes(value[1:5], "big")})
assert producer.flush(30) == 0, "crm.entities records undelivered"
report["crm_written"] = written
report["crm_latest_id"] = latest.schema_id
report["seconds"]["crm"] = time.monotonic() - started

# (c) a subject of our own: registered by the serializer, read back by the deserializer
orders = f"{prefix}downstream.orders"
order_schema = json.dumps({"type": "record", "name": "Order", "namespace": "downstream", "fields": [
    {"name": "order_id", "type": "string"}, {"name": "tenant", "type": "string"}, {"name": "total", "type": "double"}]})
order = {"order_id": "o-1", "tenant": "acme", "total": 12.5}
encoded = AvroSerializer(registry, order_schema)(order, SerializationContext(orders, MessageField.VALUE))
report["order_id"] = int.from_bytes(encoded[1:5], "big")
report["order_back"] = AvroDeserializer(registry)(encoded, SerializationContext(orders, MessageField.VALUE))
report["order_versions"] = registry.get_versions(f"{orders}-value")

# (d) what must be refused: an incompatible version of our subject, and any new version of Threadline's
incompatible = json.dumps({**json.loads(order_schema), "fields": json.loads(order_schema)["fields"] + [
    {"name": "currency", "type": "string"}]})
report["order_incompatible"] = refusal(lambda: AvroSerializer(registry, incompatible)(
    {**order, "currency": "EUR"}, SerializationContext(orders, MessageField.VALUE)))
current = json.loads(registry.get_latest_version(f"{correlated}-value").schema.schema_str)
report["correlated_incompatible"] = refusal(lambda: registry.register_schema(f"{correlated}-value", Schema(
    json.dumps({**current, "fields": current["fields"] + [{"name": "extra", "type": "string"}]}), "AVRO")))
report["correlated_new"] = refusal(lambda: registry.register_schema(f"{correlated}-value", Schema(
    json.dumps({**current, "fields": current["fields"] + [{"name": "extra", "type": "string", "default": ""}]}), "AVRO")))
report["seconds"]["all"] = time.monotonic() - started
print(json.dumps(report))
