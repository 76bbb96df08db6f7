"""Where a mail's correlation is found, for ``threadline explain``: a JSONL file ``threadline
correlate`` wrote, the ClickHouse store (``mail_correlated``, ``mail_untracked``, ``mail_responses``),
or the output topics on the broker (``mail.correlated``, ``mail.untracked``, ``mail.responses``).

Every source gives its decisions in one shape, ``Correlation.to_dict``'s (records and rows go
through ``contracts.records.correlation_of``), of every tenant and generation it holds;
:func:`choose` picks the one to explain per tenant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pipeline.contracts.avro import AvroCodec, AvroDecodeError
from pipeline.contracts.records import correlation_of, response_of, untracked_correlation_of
from pipeline.contracts.topics import BY_NAME, MAIL_CORRELATED, MAIL_RESPONSES, MAIL_UNTRACKED
from pipeline.runtime.kafka import topic_name
from pipeline.settings import KafkaSettings
from pipeline.streams.reader import read_messages

# Where the decisions are: the tracked ones, the mail left untracked (with its reason), and the
# reply times of the mail that answered another (a tracked decision's ``response``).
_OUTPUTS = (MAIL_CORRELATED, MAIL_UNTRACKED, MAIL_RESPONSES)


def in_file(path: Path, message_id: str) -> list[dict]:
    """The decisions about ``message_id`` in a correlations JSONL file, in file order."""
    found = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if message_id in line:  # most lines are other mail: parse only the candidates
                record = json.loads(line)
                if record.get("message_id") == message_id:
                    found.append(record)
    return found


def in_store(store, message_id: str, tenant: str | None = None) -> list[dict]:
    """The decisions about ``message_id`` in ClickHouse (any store: chDB, served, a server)."""
    where = "message_id = {message_id:String}" + ("" if tenant is None else " AND tenant = {tenant:String}")
    rows = {}
    for topic in _OUTPUTS:
        # ReplacingMergeTree: FINAL collapses a redelivered row; the ordering is the topic's within a tenant.
        result = store.query(f"SELECT * FROM {{db}}.{BY_NAME[topic].table} FINAL WHERE {where} "
                             "ORDER BY _topic_partition, _topic_offset",
                             parameters={"message_id": message_id, "tenant": tenant})
        rows[topic] = [dict(zip(result.column_names, row)) for row in result.result_rows]
    return _decisions(rows)


@dataclass
class TopicSearch:
    """What a search of the output topics found, and how many records it could not decode."""

    decisions: list[dict]
    undecodable: int = 0


def on_topics(kafka: KafkaSettings, bootstrap: str, codec: AvroCodec, message_id: str, tenant: str | None = None,
              timeout_s: float = 10.0, stop: Callable[[], bool] | None = None) -> TopicSearch:
    """The decisions about ``message_id`` on the output topics, read to their current end (or
    until ``stop`` says so: then what was read so far, for the caller to drop).
    Only records holding the id's bytes are decoded (an Avro string is its UTF-8 bytes)."""
    needle, key = message_id.encode("utf-8"), None if tenant is None else tenant.encode("utf-8")
    records: dict[str, list[dict]] = {topic: [] for topic in _OUTPUTS}
    undecodable = 0
    for topic in _OUTPUTS:
        for message in read_messages(kafka, bootstrap, topic_name(kafka, topic), timeout_s, stop=stop):
            value = message.value()
            if value is None or needle not in value or (key is not None and message.key() != key):
                continue
            try:
                record = codec.decode(topic, value)
            except AvroDecodeError:
                undecodable += 1
                continue
            if record["message_id"] == message_id:
                records[topic].append(record)
    return TopicSearch(_decisions(records), undecodable)


def _decisions(records: dict[str, list[dict]]) -> list[dict]:
    """Records (or rows) of the output topics about one mail as ``Correlation.to_dict``'s
    decisions: a tracked one with the reply time of its tenant and generation, if it has one."""
    responses = {(r["tenant"], r["generation"]): response_of(r) for r in records[MAIL_RESPONSES]}
    tracked = [correlation_of(r) for r in records[MAIL_CORRELATED]]
    return ([{**d, "response": responses.get((d["tenant"], d["generation"]))} for d in tracked]
            + [untracked_correlation_of(r) for r in records[MAIL_UNTRACKED]])


@dataclass(frozen=True)
class Choice:
    """The decision to explain for one tenant, and the generations that decided about the mail."""

    tenant: str
    decision: dict
    generations: tuple[int, ...]


def choose(decisions: Iterable[dict], *, tenant: str | None = None, generation: int | None = None) -> list[Choice]:
    """Per tenant (by name), the decision of ``generation`` (default: the newest one that has
    any). Of one generation's decisions the tracked one wins over an untracked one, and one that
    says the mail repeats an earlier one (``duplicate``) loses to both: a delivery of the same mail
    again only repeats the first decision. The last one read wins among equals (a redelivery)."""
    by_tenant: dict[str, list[dict]] = {}
    for decision in decisions:
        name = decision.get("tenant", "default")
        if tenant is None or name == tenant:
            by_tenant.setdefault(name, []).append(decision)
    choices = []
    for name in sorted(by_tenant):
        found = by_tenant[name]
        generations = tuple(sorted({d.get("generation", 0) for d in found}))
        wanted = generations[-1] if generation is None else generation
        candidates = [d for d in found if d.get("generation", 0) == wanted]
        if candidates:
            best = max(enumerate(candidates), key=lambda item: (_rank(item[1]), item[0]))[1]
            choices.append(Choice(name, best, generations))
    return choices


def _rank(decision: dict) -> int:
    reason = decision.get("untracked_reason")
    return 2 if not reason else 0 if reason == "duplicate" else 1
