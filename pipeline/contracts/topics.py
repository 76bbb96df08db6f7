"""The one registry of topics: every topic is one :class:`Topic` entry in :data:`TOPICS`.

An entry names the topic, its ClickHouse table, the fields holding e-mail addresses, its key and
its retention; its Avro schema is ``schemas/<name>.avsc`` in this package.  Broker topic
creation, the doctor, the ClickHouse sink and ``threadline erase`` read this list; every topic is
created with ``kafka.partitions`` partitions.  How to add a topic: the "contracts" section of
docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass


# Code that reads or writes a topic imports its name: a misspelt name is an import error.
MAIL_RAW = "mail.raw"
MAIL_CORRELATED = "mail.correlated"
MAIL_UNTRACKED = "mail.untracked"
MAIL_RESPONSES = "mail.responses"
TRACKING_RAW = "tracking.raw"
TRACKING_EVENTS = "tracking.events"
ESCALATIONS = "escalations"
ALERTS = "alerts"
SLA_EVENTS = "sla.events"
CRM_ENTITIES = "crm.entities"
CAMPAIGNS = "campaigns"
CONVERSIONS = "conversions"
CORRECTIONS = "corrections"
DEADLETTER = "deadletter"


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    # The ClickHouse table the sink keeps it in (created by pipeline/sinks/migrations/); None: not kept.
    table: str | None = None
    # Fields holding e-mail addresses (arrays element-wise): ``threadline erase`` deletes the rows where
    # one is the address, in ``table`` and, when ``current``, in its latest-generation copy ``<table>_current``.
    address_fields: tuple[str, ...] = ()
    current: bool = False
    # The field whose value is the record's key, by tenant so that a tenant's records share a
    # partition (DESIGN.md §2); None: not in the record (tracking.raw: the tenant the token names).
    key: str | None = "tenant"
    # retention.ms it is created with; None: the cluster's default.  The inputs are kept forever:
    # every other topic and table is recomputed from them (docs/operations.md).
    retention_ms: int | None = None


FOREVER = -1  # retention.ms: never deleted

TOPICS = (
    # mail.raw stays out of ClickHouse: it is the source of truth and holds whole messages.
    Topic(MAIL_RAW, retention_ms=FOREVER),
    Topic(MAIL_CORRELATED, table="mail_correlated", address_fields=("from_addr", "to", "cc", "bcc"), current=True),
    Topic(MAIL_UNTRACKED, table="mail_untracked", address_fields=("from_addr", "to"), current=True),
    Topic(MAIL_RESPONSES, table="mail_responses", address_fields=("responder",), current=True),
    # Unverified input: only the tracking agent's classified events are kept.
    Topic(TRACKING_RAW, key=None, retention_ms=FOREVER),
    Topic(TRACKING_EVENTS, table="tracking_events", address_fields=("recipient",)),
    Topic(ESCALATIONS, table="escalations", address_fields=("owner",)),
    Topic(ALERTS, table="alerts", address_fields=("user", "record_owner")),
    Topic(SLA_EVENTS, table="sla_events", address_fields=("owner",)),
    Topic(CRM_ENTITIES, table="crm_entities", address_fields=("email",), retention_ms=FOREVER),
    Topic(CAMPAIGNS, table="campaigns", retention_ms=FOREVER),
    Topic(CONVERSIONS, table="conversions", address_fields=("recipient",), retention_ms=FOREVER),
    # People's corrections of the correlation: every replay applies them again.
    Topic(CORRECTIONS, table="corrections", retention_ms=FOREVER),
    Topic(DEADLETTER, table="deadletter", key="key"),
)

BY_NAME = {topic.name: topic for topic in TOPICS}
TOPIC_NAMES = tuple(BY_NAME)
SINK_TOPICS = tuple(topic.name for topic in TOPICS if topic.table)
# ClickHouse table -> its address columns, for ``threadline erase``.
ADDRESS_COLUMNS = {table: topic.address_fields for topic in TOPICS if topic.address_fields
                   for table in ((topic.table, f"{topic.table}_current") if topic.current else (topic.table,))}
