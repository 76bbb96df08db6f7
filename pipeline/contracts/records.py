"""Domain objects <-> the Avro records of the topics (schemas/*.avsc): a builder per topic.

The only place that knows both the engine's types and the topics' field names, except
``escalations`` and their ``alerts``: ``escalation.model``'s Transition and Alert are those
records' fields and build them (``to_record``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.blobs import BlobRef, FolderBlobStore
from pipeline.contracts.topics import MAIL_RAW
from pipeline.correlation.corrections import Action, Correction
from pipeline.correlation.model import Correlation, stable_event_id
from pipeline.errors import RejectedInput
from pipeline.settings import MailSettings

if TYPE_CHECKING:
    from pipeline.mail.bounce import BouncedRecipient
    from pipeline.tracking.classify import Classification
    from pipeline.tracking.tokens import TokenPayload

# A dead letter keeps the start of what failed and a pointer to the whole record (its topic,
# partition and offset, and digest): a record that failed for being big must not fail again as
# its own dead letter.
DEADLETTER_EXCERPT_BYTES = 64 * 1024
_DEADLETTER_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class SourcePosition:
    topic: str
    partition: int
    offset: int


def raw_event_id(tenant: str, raw: bytes) -> str:
    """The same bytes ingested twice for one tenant are the same event."""
    return hashlib.sha256(tenant.encode() + b"\x1f" + raw).hexdigest()[:32]


def mail_raw_record(*, tenant: str, mailbox: str, direction: str, source: str, raw: bytes,
                    received_at: datetime | None = None) -> dict:
    return {
        "event_id": raw_event_id(tenant, raw),
        "tenant": tenant,
        "mailbox": mailbox,
        "direction": direction,
        "source": source,
        "received_at": received_at or datetime.now(timezone.utc),
        "raw": raw,
        "raw_blob": None,
    }


class MailTooLarge(RejectedInput):
    def __init__(self, message: str) -> None:
        super().__init__("too_large", message)


class MailRawCodec:
    """``mail.raw`` values with the claim check: mail over ``mail.inline_max_bytes`` is put in the
    blob store first and the record carries its digest; mail over ``mail.max_message_bytes`` is
    refused (:class:`MailTooLarge`), for the caller to dead-letter."""

    def __init__(self, limits: MailSettings, blob_dir: Path, codec) -> None:
        self.codec = codec
        self.limits = limits
        self.blobs = FolderBlobStore(blob_dir)

    def encode(self, record: dict) -> bytes:
        raw = record["raw"]
        if len(raw) > self.limits.max_message_bytes:
            raise MailTooLarge(f"{len(raw)} bytes is over mail.max_message_bytes ({self.limits.max_message_bytes})")
        if len(raw) > self.limits.inline_max_bytes:
            record = {**record, "raw": b"", "raw_blob": self.blobs.put(raw).to_record()}
        return self.codec.encode(MAIL_RAW, record)

    def raw_of(self, record: dict) -> bytes:
        """The message bytes of a decoded record, from the blob store when it names a blob
        (:class:`~pipeline.blobs.BlobError` when that blob is gone or damaged)."""
        blob = record.get("raw_blob")
        return self.blobs.get(BlobRef.from_record(blob)) if blob else record["raw"]


def correlated_record(correlation: Correlation, mailbox: str, position: SourcePosition) -> dict:
    return {
        "event_id": correlation.event_id,
        "tenant": correlation.tenant,
        "generation": correlation.generation,
        "settings_fingerprint": correlation.settings_fingerprint,
        "message_id": correlation.message_id,
        "conversation_id": correlation.conversation_id,
        "parent_message_id": correlation.parent_message_id,
        "regarding": correlation.regarding,
        "method": int(correlation.method),
        "method_name": correlation.method_name,
        "mail_type": correlation.mail_type,
        "direction": correlation.direction,
        "event_time": correlation.event_time,
        "tracking_token": correlation.tracking_token,
        "candidate_count": correlation.candidate_count,
        "confidence": correlation.confidence,
        "automatic": correlation.automatic,
        "evidence": json.dumps(correlation.evidence, sort_keys=True, ensure_ascii=False, default=str),
        "subject": correlation.subject,
        "from_addr": correlation.from_addr,
        "to": list(correlation.to),
        "cc": list(correlation.cc),
        "bcc": list(correlation.bcc),
        "mailbox": mailbox,
        "source_partition": position.partition,
        "source_offset": position.offset,
    }


def untracked_record(correlation: Correlation, mailbox: str) -> dict:
    return {
        "event_id": correlation.event_id,
        "tenant": correlation.tenant,
        "generation": correlation.generation,
        "message_id": correlation.message_id,
        "reason": correlation.untracked_reason or "unknown",
        "conversation_id": correlation.conversation_id,
        "direction": correlation.direction,
        "event_time": correlation.event_time,
        "subject": correlation.subject,
        "from_addr": correlation.from_addr,
        "to": list(correlation.to),
        "mailbox": mailbox,
        "evidence": json.dumps(correlation.evidence, sort_keys=True, ensure_ascii=False, default=str),
    }


def correlation_of(record: dict) -> dict:
    """A ``mail.correlated`` record, or its row in ClickHouse, in the shape ``Correlation.to_dict``
    gives a correlation (evidence an object, the time an ISO string): what ``threadline explain``
    describes, wherever the correlation was read."""
    return {**record, "evidence": json.loads(record["evidence"] or "{}"), "event_time": _iso(record["event_time"])}


def untracked_correlation_of(record: dict) -> dict:
    """A ``mail.untracked`` record, or its row, in the same shape: its reason is the correlation's
    ``untracked_reason``."""
    return {**correlation_of(record), "untracked_reason": record["reason"]}


def response_of(record: dict) -> dict:
    """A ``mail.responses`` record, or its row, as the ``response`` of ``Correlation.to_dict``."""
    return {"answers_message_id": record["answers_message_id"], "responder": record["responder"],
            "inbound_time": _iso(record["inbound_time"]), "seconds": record["seconds"]}


def _iso(value: datetime | str) -> str:
    return value.isoformat() if isinstance(value, datetime) else value


def response_record(correlation: Correlation, mailbox: str) -> dict:
    response = correlation.response
    assert response is not None
    return {
        "event_id": stable_event_id("response", correlation.tenant, correlation.message_id, str(correlation.generation)),
        "tenant": correlation.tenant,
        "generation": correlation.generation,
        "message_id": correlation.message_id,
        "answers_message_id": response.answers_message_id,
        "conversation_id": correlation.conversation_id,
        "regarding": correlation.regarding,
        "responder": response.responder,
        "mailbox": mailbox,
        "inbound_time": response.inbound_time,
        "response_time": correlation.event_time,
        "seconds": response.seconds,
        "business_seconds": None,
    }


def deadletter_record(position: SourcePosition, key: bytes | None, value: bytes, *, reason: str, error: str,
                      agent: str, failed_at: datetime | None = None, source_ref: str = "") -> dict:
    """``source_ref``: where a record that never reached ``position.topic`` came from (the
    position's partition and offset are -1 then)."""
    digest = hashlib.sha256(value).hexdigest()
    where = (source_ref, digest) if source_ref else (str(position.partition), str(position.offset))
    return {
        "event_id": stable_event_id("deadletter", position.topic, *where),
        "source_topic": position.topic,
        "source_partition": position.partition,
        "source_offset": position.offset,
        "key": key[:_DEADLETTER_KEY_BYTES] if key is not None else None,
        "value": value[:DEADLETTER_EXCERPT_BYTES],
        "value_size": len(value),
        "value_sha256": digest,
        "source_ref": source_ref[:2000],
        "reason": reason,
        "error": error[:2000],
        "agent": agent,
        "failed_at": failed_at or datetime.now(timezone.utc),
    }


# The fields a tracking.events record of one kind does not use.
_NO_TRACKING_DETAILS = {
    "campaign_id": None, "link_url": None, "ip": None, "reverse_dns": None, "user_agent_family": None,
    "is_machine": False, "machine_reason": None, "nth_open": 0, "first_open_time": None,
    "probably_forwarded": False, "bounce_kind": None, "bounce_reason": None,
}


def hit_event_record(raw_event_id: str, payload: TokenPayload, verdict: Classification, event_time: datetime,
                     reverse_dns: str | None) -> dict:
    """The ``tracking.events`` record of one verified and classified ``tracking.raw`` hit."""
    return {
        **_NO_TRACKING_DETAILS,
        "event_id": stable_event_id("tracking", raw_event_id), "tenant": payload.tenant,
        "kind": payload.kind, "message_id": payload.message_id, "recipient": payload.recipient,
        "campaign_id": payload.campaign_id, "link_url": payload.link_url, "event_time": event_time,
        "ip": verdict.ip, "reverse_dns": reverse_dns, "user_agent_family": verdict.user_agent_family,
        "is_machine": verdict.is_machine, "machine_reason": verdict.machine_reason,
        "nth_open": verdict.nth_open, "first_open_time": verdict.first_open_time,
        "probably_forwarded": verdict.probably_forwarded,
    }


def bounce_event_record(tenant: str, original_message_id: str, recipient: BouncedRecipient,
                        campaign_id: str | None, event_time: datetime) -> dict:
    """The ``tracking.events`` record (kind bounce) of one failed recipient of a sent mail."""
    return {
        **_NO_TRACKING_DETAILS,
        "event_id": stable_event_id("bounce", tenant, original_message_id, recipient.address),
        "tenant": tenant, "kind": "bounce", "message_id": original_message_id,
        "recipient": recipient.address, "campaign_id": campaign_id, "event_time": event_time,
        "bounce_kind": recipient.kind, "bounce_reason": recipient.reason,
    }


def open_alert_record(event: dict, owner: str) -> dict:
    """The ``alerts`` record telling the sender of a mail of its first human open (``event``)."""
    return {
        "event_id": stable_event_id("open-alert", event["event_id"]), "tenant": event["tenant"],
        "event_type": "mail_opened", "user": owner, "event_time": event["event_time"],
        "source_record_id": event["event_id"], "assigned_on": None, "record_owner": owner,
        "message": f"{event['recipient']} opened {event['message_id']}"
                   + (f" (campaign {event['campaign_id']})" if event["campaign_id"] else ""),
    }


def tracking_raw_record(event_id: str, kind: str, token: str, received_at: datetime, *, method: str,
                        ip: str | None, user_agent: str | None, headers: dict[str, str]) -> dict:
    """The ``tracking.raw`` record of one request for a tracking URL, as the endpoint received it."""
    return {"event_id": event_id, "kind": kind, "token": token, "received_at": received_at, "method": method,
            "ip": ip, "user_agent": user_agent, "headers": headers}


def campaign_record(event_id: str, tenant: str, campaign_id: str, *, name: str, cost: float, currency: str,
                    started_at: datetime | None, updated_at: datetime) -> dict:
    """A ``campaigns`` record: a campaign and its cost, as of ``updated_at`` (the newest wins)."""
    return {"event_id": event_id, "tenant": tenant, "campaign_id": campaign_id, "name": name, "cost": cost,
            "currency": currency, "started_at": started_at, "updated_at": updated_at}


def conversion_record(event_id: str, tenant: str, campaign_id: str, *, recipient: str | None, message_id: str | None,
                      revenue: float, currency: str, event_time: datetime) -> dict:
    """A ``conversions`` record: revenue a campaign mail's recipient brought."""
    return {"event_id": event_id, "tenant": tenant, "campaign_id": campaign_id, "recipient": recipient,
            "message_id": message_id, "revenue": revenue, "currency": currency, "event_time": event_time}


def correction_record(*, tenant: str, action: Action, message_id: str, other_message_id: str | None, author: str,
                      reason: str, created_at: datetime) -> dict:
    """A ``corrections`` record: a person's correction of the correlation, made at ``created_at``;
    :class:`~pipeline.correlation.corrections.CorrectionError` when it cannot mean anything."""
    record = {"event_id": stable_event_id("correction", tenant, action.value, message_id, other_message_id or "",
                                          author, created_at.isoformat()),
              "tenant": tenant, "action": action.value, "message_id": message_id,
              "other_message_id": other_message_id, "author": author, "reason": reason, "created_at": created_at}
    Correction.from_record(record)  # refuses a LINK without a parent, a mail named twice, ...
    return record
