"""The one registry of topics: every topic is one :class:`Topic` entry in :data:`TOPICS`.

Broker topic creation, the doctor, the ClickHouse sink and ``threadline erase`` read this list;
each topic's Avro schema is ``schemas/<name>.avsc`` in this package.  Every topic is keyed by
tenant and created with ``kafka.partitions`` partitions.  How to add a topic: the "contracts"
section of docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass


# The names, imported by every module that reads or writes a topic: a misspelt name is an import
# error, not a silently wrong topic.
MAIL_RAW = "mail.raw"
MAIL_CORRELATED = "mail.correlated"
MAIL_UNTRACKED = "mail.untracked"
MAIL_RESPONSES = "mail.responses"
TRACKING_RAW = "tracking.raw"
TRACKING_EVENTS = "tracking.events"
ESCALATIONS = "escalations"
ALERTS = "alerts"
CRM_ENTITIES = "crm.entities"
CAMPAIGNS = "campaigns"
CONVERSIONS = "conversions"
DEADLETTER = "deadletter"


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    # Kept in ClickHouse, in the table ``pipeline.sinks.tables.table_name(name)``.
    sink: bool
    # ClickHouse tables -> columns holding e-mail addresses, deleted by ``threadline erase``
    # (arrays are matched element-wise).
    address_columns: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _with_current(table: str, *columns: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return ((table, columns), (f"{table}_current", columns))


# mail.raw stays out of ClickHouse (it is the source of truth and holds whole messages);
# tracking.raw is unverified input.
TOPICS = (
    Topic(MAIL_RAW, sink=False),
    Topic(MAIL_CORRELATED, sink=True, address_columns=_with_current("mail_correlated", "from_addr", "to", "cc", "bcc")),
    Topic(MAIL_UNTRACKED, sink=True, address_columns=_with_current("mail_untracked", "from_addr", "to")),
    Topic(MAIL_RESPONSES, sink=True, address_columns=_with_current("mail_responses", "responder")),
    Topic(TRACKING_RAW, sink=False),
    Topic(TRACKING_EVENTS, sink=True, address_columns=(("tracking_events", ("recipient",)),)),
    Topic(ESCALATIONS, sink=True, address_columns=(("escalations", ("owner",)),)),
    Topic(ALERTS, sink=True, address_columns=(("alerts", ("user", "record_owner")),)),
    Topic(CRM_ENTITIES, sink=True, address_columns=(("crm_entities", ("email",)),)),
    Topic(CAMPAIGNS, sink=True),
    Topic(CONVERSIONS, sink=True, address_columns=(("conversions", ("recipient",)),)),
    Topic(DEADLETTER, sink=True),
)

TOPIC_NAMES = tuple(topic.name for topic in TOPICS)
SINK_TOPICS = tuple(topic.name for topic in TOPICS if topic.sink)
ADDRESS_COLUMNS = {table: columns for topic in TOPICS for table, columns in topic.address_columns}
