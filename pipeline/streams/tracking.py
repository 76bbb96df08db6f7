"""The tracking agent's batch step (Faust-free, like :mod:`pipeline.streams.processor`).

``tracking.raw`` hits in; for each, the token is verified again (the endpoint is not trusted
with that), the hit is classified against the earlier hits of the same mail and recipient,
and a ``tracking.events`` record comes out.  Forged, edited or expired tokens go to
``deadletter`` with the token's rejection reason.  Table: the remembered hits per (tenant,
mail, recipient) and the per-partition offset marker.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Callable, MutableMapping

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.records import SourcePosition, hit_event_record, open_alert_record
from pipeline.contracts.topics import ALERTS, TRACKING_EVENTS, TRACKING_RAW
from pipeline.settings import TrackingSettings
from pipeline.runtime.batch import BatchResult, OffsetMarkers, Output, RawItem, add_dead_letter, decoded_records
from pipeline.runtime.state import decode_state, encode_state, tenant_key
from pipeline.tracking.classify import Hit, MailFacts, PreviousHit, classify_hit
from pipeline.tracking.tokens import TokenError, verify_with_settings

AGENT = "tracking"
# Hits remembered per mail and recipient: enough for forwarding and scanner bursts, bounded.
MAX_REMEMBERED_HITS = 50


class CachedReverseDns:
    """PTR lookups with a timeout and a bounded cache; a slow or failing lookup gives None."""

    def __init__(self, timeout_s: float, cache_size: int = 10_000) -> None:
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self._cache: dict[str, str | None] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rdns")

    def __call__(self, ip: str) -> str | None:
        if ip in self._cache:
            return self._cache[ip]
        future = self._pool.submit(socket.gethostbyaddr, ip)
        try:
            name = future.result(timeout=self.timeout_s)[0]
        except (OSError, FutureTimeout):
            name = None
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[ip] = name
        return name


class TrackingProcessor:
    def __init__(self, settings: TrackingSettings, codec: AvroCodec, table: MutableMapping[str, bytes], *,
                 owner_of: Callable[[str, str], str | None] | None = None,
                 reverse_dns: Callable[[str], str | None] | None = None) -> None:
        """``owner_of(tenant, message_id)``: who sent the tracked mail (told of its first human
        open); ``reverse_dns(ip)``: PTR lookups when ``tracking.reverse_dns`` is on."""
        self.settings = settings
        self.codec = codec
        self.table = table
        self.owner_of = owner_of
        if reverse_dns is None and settings.reverse_dns:
            reverse_dns = CachedReverseDns(settings.reverse_dns_timeout_s)
        self.reverse_dns = reverse_dns
        self.markers = OffsetMarkers(table)

    def reset(self) -> None:
        self.markers.clear()

    def process(self, items: list[RawItem], source_topic: str = TRACKING_RAW) -> BatchResult:
        result = BatchResult()
        remembered: dict[tuple[int, str], list[PreviousHit]] = {}
        for item, record in decoded_records(items, self.markers, self.codec, TRACKING_RAW, source_topic, AGENT,
                                            result):
            try:
                payload = verify_with_settings(record["token"], self.settings, expect_kind=record["kind"],
                                               now=record["received_at"].timestamp())
            except TokenError as exc:
                add_dead_letter(self.codec, item, SourcePosition(source_topic, item.partition, item.offset),
                                f"token_{exc.reason}", str(exc), AGENT, result)
                continue
            key = tenant_key(payload.tenant, payload.message_id, payload.recipient)
            slot = (item.partition, key)
            if slot not in remembered:
                stored = self.table.get(key)
                remembered[slot] = [] if stored is None else [
                    PreviousHit(**{**hit, "time": datetime.fromisoformat(hit["time"])})
                    for hit in decode_state(key, stored)]
            previous = remembered[slot]
            ptr = self.reverse_dns(record["ip"]) if self.reverse_dns is not None and record["ip"] else None
            hit = Hit(kind=payload.kind, time=record["received_at"], method=record["method"], ip=record["ip"],
                      user_agent=record["user_agent"], headers=record["headers"], link_url=payload.link_url,
                      reverse_dns=ptr)
            facts = MailFacts(sent_at=datetime.fromtimestamp(payload.issued_at, timezone.utc))
            verdict = classify_hit(hit, facts, previous, self.settings)
            remembered[slot] = [*previous, verdict.remember(hit)][-MAX_REMEMBERED_HITS:]
            event = hit_event_record(record["event_id"], payload, verdict, record["received_at"], ptr)
            result.outputs.append(Output(TRACKING_EVENTS, payload.tenant.encode(),
                                         self.codec.encode(TRACKING_EVENTS, event)))
            result.count(f"{payload.kind}:{'machine' if verdict.is_machine else 'human'}")
            if payload.kind == "open" and not verdict.is_machine and verdict.nth_open == 1:
                self._open_alert(event, result)
        for (partition, key), hits in remembered.items():
            result.writes.setdefault(partition, {})[key] = encode_state([asdict(hit) for hit in hits])
        self.markers.add_writes(items, result)
        return result

    def _open_alert(self, event: dict, result: BatchResult) -> None:
        """The sender of a mail hears of its first human open (not of proxy or scanner fetches)."""
        owner = self.owner_of(event["tenant"], event["message_id"]) if self.owner_of is not None else None
        if not owner or not self.settings.open_alerts:
            return
        alert = open_alert_record(event, owner)
        result.outputs.append(Output(ALERTS, event["tenant"].encode(), self.codec.encode(ALERTS, alert)))
        result.count("alert:mail_opened")

