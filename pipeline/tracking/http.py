"""``threadline tracking``: the open-pixel and click endpoint (aiohttp); the only I/O of tracking.

* ``GET|HEAD /o/<token>.gif`` answers at once with a 1x1 transparent GIF and no-cache headers,
  whatever the token and whether or not the broker is up.
* ``GET|HEAD /c/<token>`` redirects (302) only to the URL inside a genuine click token; anything
  else gets a 404 page, never a redirect (no open redirect).
* ``POST /u/<token>`` is the one-click unsubscribe of campaign mail (RFC 8058): a genuine
  unsubscribe token adds its recipient to the tenant's suppression store (``campaigns.suppression_file``
  in ``worker.data_dir``) and answers 200; anything else gets a 404.  ``GET|HEAD /u/<token>`` only
  shows a confirmation page with a POST button: link scanners and prefetchers GET every link, so a
  GET must never unsubscribe.  Unsubscribes are not tracking hits (nothing goes to ``tracking.raw``).
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
import html
import json
import logging
import uuid
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import web

from pipeline.avro import AvroCodec
from pipeline.broker import produce_when_room, producer_config, topic_name
from pipeline.settings import Settings
from pipeline.tracking.tokens import TokenError, token_from_path, verify_unsubscribe, verify_with_settings

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
        produce_when_room(self.producer, self.topic, value, key, on_delivery=self._on_delivery)

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


_UNSUBSCRIBE_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em">
<h1 style="font-size:1.3em">{title}</h1>
{body}
</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=_UNSUBSCRIBE_PAGE.format(title=html.escape(title), body=body),
                        content_type="text/html", headers=NO_CACHE)


def build_app(settings: Settings, spool: HitSpool, suppressions=None) -> web.Application:
    """``suppressions``: where unsubscribes go (default: the JSONL store in ``worker.data_dir``)."""
    from pipeline.campaigns.suppression import JsonlSuppressionStore

    tracking = settings.tracking
    suppressions = suppressions if suppressions is not None else JsonlSuppressionStore.from_settings(settings)
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

    def unsubscribe_payload(request: web.Request):
        parsed = token_from_path(request.path)
        if parsed is None or parsed[0] != "unsubscribe":
            return None
        try:
            return verify_unsubscribe(parsed[1], tracking)
        except TokenError:
            return None

    def not_valid() -> web.Response:
        return _page("This link is not valid", "<p>This unsubscribe link is not valid.</p>", status=404)

    async def unsubscribe_form(request: web.Request) -> web.Response:
        payload = unsubscribe_payload(request)
        access(request, "unsubscribe-form", payload is not None, 200 if payload else 404)
        if payload is None:
            return not_valid()
        return _page("Unsubscribe", f"<p>Stop sending campaign mail to <strong>{html.escape(payload.recipient)}"
                     "</strong>?</p>\n<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" "
                     "value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>")

    async def unsubscribe(request: web.Request) -> web.Response:
        payload = unsubscribe_payload(request)
        access(request, "unsubscribe", payload is not None, 200 if payload else 404)
        if payload is None:
            return not_valid()
        await request.read()  # RFC 8058 body "List-Unsubscribe=One-Click"; the signed token decides
        await asyncio.to_thread(suppressions.add, payload.tenant, payload.recipient,
                                campaign_id=payload.campaign_id, message_id=payload.message_id)
        return _page("Unsubscribed", f"<p>{html.escape(payload.recipient)} gets no more campaign mail from us.</p>")

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
    app.router.add_get("/u/{token}", unsubscribe_form)  # HEAD too: aiohttp adds it to GET routes
    app.router.add_post("/u/{token}", unsubscribe)
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
