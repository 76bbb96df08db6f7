"""The topic registry agrees with the schemas and the ClickHouse tables."""

from pipeline.contracts.avro import topics_with_schemas
from pipeline.contracts.topics import ADDRESS_COLUMNS, SINK_TOPICS, TOPIC_NAMES, TOPICS
from pipeline.sinks.tables import expected_columns, table_name


def test_every_topic_has_a_schema_and_every_schema_a_topic():
    assert sorted(TOPIC_NAMES) == topics_with_schemas()
    assert len(set(TOPIC_NAMES)) == len(TOPIC_NAMES)


def test_address_columns_are_columns_of_the_topics_own_tables():
    for topic in TOPICS:
        columns = expected_columns(topic.name)
        for table, address_columns in topic.address_columns:
            assert topic.sink and table in (table_name(topic.name), table_name(topic.name) + "_current")
            assert set(address_columns) <= set(columns), (table, address_columns)


def test_the_raw_inputs_stay_out_of_clickhouse():
    assert set(TOPIC_NAMES) - set(SINK_TOPICS) == {"mail.raw", "tracking.raw"}
    assert "mail_correlated_current" in ADDRESS_COLUMNS
