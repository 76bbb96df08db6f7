"""The topic registry agrees with the schemas, the ClickHouse migrations and topic creation."""

import json
import re

from pipeline.broker import new_topic
from pipeline.contracts.avro import schema_text, topics_with_schemas
from pipeline.contracts.topics import ADDRESS_COLUMNS, SINK_TOPICS, TOPIC_NAMES, TOPICS
from pipeline.settings import KafkaSettings
from pipeline.sinks.clickhouse import migrations


def fields(topic: str) -> dict:
    return {field["name"]: field["type"] for field in json.loads(schema_text(topic))["fields"]}


def test_every_topic_has_a_schema_and_every_schema_a_topic():
    assert sorted(TOPIC_NAMES) == topics_with_schemas()
    assert len(set(TOPIC_NAMES)) == len(TOPIC_NAMES)


def test_keys_and_address_fields_are_fields_of_the_topics_schema():
    for topic in TOPICS:
        schema_fields = fields(topic.name)
        assert topic.key is None or schema_fields[topic.key] in ("string", ["null", "bytes"]), topic.name
        assert set(topic.address_fields) <= set(schema_fields), topic.name
        assert topic.table or not topic.address_fields, f"{topic.name}: erase looks for addresses in tables only"


def test_every_sink_table_is_created_by_a_migration():
    created = {match for _, _, sql in migrations() for match in re.findall(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)", sql)}
    tables = [topic.table for topic in TOPICS if topic.table]
    assert len(set(tables)) == len(tables)
    assert set(tables) | set(ADDRESS_COLUMNS) <= created, (set(tables) | set(ADDRESS_COLUMNS)) - created


def test_the_raw_inputs_stay_out_of_clickhouse():
    assert set(TOPIC_NAMES) - set(SINK_TOPICS) == {"mail.raw", "tracking.raw"}
    assert ADDRESS_COLUMNS["mail_correlated_current"] == ADDRESS_COLUMNS["mail_correlated"]


def test_topics_are_created_with_the_registry_retention():
    kafka = KafkaSettings(topic_prefix="staging.", partitions=3)
    inputs = {"mail.raw", "tracking.raw", "crm.entities", "campaigns", "conversions", "corrections"}
    for topic in TOPICS:
        created = new_topic(kafka, "staging." + topic.name, 3)
        assert created.num_partitions == 3
        assert created.config == ({"retention.ms": "-1"} if topic.name in inputs else {}), topic.name
    # A topic outside the registry (a Faust changelog that erase creates again) keeps the cluster's defaults.
    assert new_topic(kafka, "staging.threadline-index-changelog", 3).config == {}
