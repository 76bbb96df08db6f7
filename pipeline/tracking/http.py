"""``threadline tracking``: the open-pixel and click endpoint (aiohttp); the only I/O of tracking.

* ``GET|HEAD /o/<token>.gif`` answers at once with a 1x1 transparent GIF and no-cache headers,
  whatever the token and whether or not the broker is up.
* ``GET|HEAD /c/<token>`` redirects (302) only to the URL inside a genuine click token; anything
  else gets a 404 page, never a redirect (no open redirect).
* ``GET /health`` says whether the broker takes hits and how many wait in the spool.

Every hit, genuine or not, becomes a ``tracking.raw`` record (the tracking agent verifies again,
classifies, and dead-letters forged tokens).  Hits are handed to a confluent-kafka producer that
buffers and retries while the broker is down; what is still undelivered at shutdown, or fails
for good, is appended to a spool file and produced again on the next start: never lost.
The access log holds no addresses or tokens unless ``tracking.access_log_personal_data`` is on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import web

from pipeline.avro import AvroCodec
from pipeline.broker import producer_config, topic_name
from pipeline.settings import Settings
from pipeline.tracking.tokens import TokenError, token_from_path, verify_with_settings

log = logging.getLogger("threadline.tracking")
access_log = logging.getLogger("threadline.tracking.access")

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate, max-age=0", "Pragma": "no-cache", "Expires": "0"}
# Request headers kept for classification (scanner and prefetch detection); nothing else.
KEPT_HEADERS = ("accept", "accept-language", "purpose", "sec-purpose", "x-moz", "from", "via", "x-forwarded-for")


class HitSpool:
    """Producer of ``tracking.raw`` with a spool file for what the broker did not take."""

    def __init__(self, settings: Settings, bootstrap: str, codec: AvroCodec, spool_path: Path) -> None:
        from confluent_kafka import Producer

        self.codec = codec
        self.topic = topic_name(settings.kafka, "tracking.raw")
        self.spool_path = spool_path
        self.producer = Producer({**producer_config(settings.kafka, bootstrap),
                                  # Keep retrying a down broker for 10 minutes before spooling.
                                  "message.timeout.ms": 600_000, "queue.buffering.max.messages": 1_000_000})
        self.delivered = 0
        self.spooled = 0

    def _on_delivery(self, error, message) -> None:
        if error is None:
            self.delivered += 1
            return
        self.spooled += 1
        with open(self.spool_path, "a", encoding="ascii") as spool:
            spool.write(json.dumps({"key": base64.b64encode(message.key() or b"").decode(),
                                    "value": base64.b64encode(message.value()).decode()}) + "\n")

    def replay_spool(self) -> int:
        """Produce what an earlier run spooled; the file is emptied once everything is handed over."""
        if not self.spool_path.is_file():
            return 0
        lines = self.spool_path.read_text(encoding="ascii").splitlines()
        self.spool_path.unlink()
        for line in lines:
            item = json.loads(line)
            self._produce(base64.b64decode(item["key"]) or None, base64.b64decode(item["value"]))
        return len(lines)

    def _produce(self, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key, on_delivery=self._on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    def add(self, record: dict, tenant: str | None) -> None:
        self._produce(tenant.encode() if tenant else None, self.codec.encode("tracking.raw", record))
        self.producer.poll(0)

    @property
    def pending(self) -> int:
        return len(self.producer)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what the broker takes within ``timeout_s``; spool the rest."""
        self.producer.flush(timeout_s)
        if len(self.producer):
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.flush(1)  # runs the delivery callbacks of the purged records: they spool


def _client_ip(request: web.Request) -> str | None:
    return request.remote


def build_app(settings: Settings, spool: HitSpool) -> web.Application:
    tracking = settings.tracking
    personal_log = tracking.access_log_personal_data

    def record(request: web.Request, kind: str, token: str) -> dict:
        headers = {name: request.headers[name] for name in KEPT_HEADERS if name in request.headers}
        return {"event_id": uuid.uuid4().hex, "kind": kind, "token": token, "received_at": datetime.now(timezone.utc),
                "method": request.method, "ip": _client_ip(request), "user_agent": request.headers.get("User-Agent"),
                "headers": headers}

    def access(request: web.Request, kind: str, valid: bool, status: int) -> None:
        if personal_log:
            access_log.info("%s %s %s valid=%s %d ip=%s ua=%r", request.method, kind, request.path, valid, status,
                            request.remote, request.headers.get("User-Agent"))
        else:
            access_log.info("%s %s valid=%s %d", request.method, kind, valid, status)

    def tenant_of(token: str, kind: str):
        try:
            return verify_with_settings(token, tracking, expect_kind=kind)
        except TokenError:
            return None

    async def pixel(request: web.Request) -> web.Response:
        parsed = token_from_path(request.path)
        token = parsed[1] if parsed else request.match_info.get("token", "")
        payload = tenant_of(token, "open") if parsed else None
        spool.add(record(request, "open", token), payload.tenant if payload else None)
        access(request, "open", payload is not None, 200)
        return web.Response(body=PIXEL, content_type="image/gif", headers=NO_CACHE)

    async def click(request: web.Request) -> web.Response:
        parsed = token_from_path(request.path)
        token = parsed[1] if parsed else request.match_info.get("token", "")
        payload = tenant_of(token, "click") if parsed else None
        spool.add(record(request, "click", token), payload.tenant if payload else None)
        valid = payload is not None and bool(payload.link_url) and payload.link_url.startswith(("http://", "https://"))
        access(request, "click", valid, 302 if valid else 404)
        if payload is None or not payload.link_url or not payload.link_url.startswith(("http://", "https://")):
            return web.Response(status=404, text="This link is not valid.", headers=NO_CACHE)
        raise web.HTTPFound(payload.link_url, headers=NO_CACHE)

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pending_hits": spool.pending, "delivered": spool.delivered,
                                  "spooled": spool.spooled})

    async def poll_deliveries(app: web.Application):
        async def loop():
            while True:
                spool.producer.poll(0)
                await asyncio.sleep(0.05)
        task = asyncio.create_task(loop())
        yield
        task.cancel()
        spool.close()

    app = web.Application()
    app.router.add_route("GET", "/o/{token}", pixel)
    app.router.add_route("HEAD", "/o/{token}", pixel)
    app.router.add_route("GET", "/c/{token}", click)
    app.router.add_route("HEAD", "/c/{token}", click)
    app.router.add_get("/health", health)
    app.cleanup_ctx.append(poll_deliveries)
    return app


def serve(settings: Settings, bootstrap: str, codec: AvroCodec, *, host: str, port: int, spool_path: Path) -> None:
    spool = HitSpool(settings, bootstrap, codec, spool_path)
    replayed = spool.replay_spool()
    if replayed:
        log.warning("produced %d spooled hits of an earlier run", replayed)
    web.run_app(build_app(settings, spool), host=host, port=port, access_log=None, print=None,
                handle_signals=True)
