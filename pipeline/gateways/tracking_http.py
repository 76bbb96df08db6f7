"""``threadline tracking``: the open-pixel and click endpoint (aiohttp); the only I/O of tracking.

* ``GET|HEAD /o/<token>.gif`` answers at once with a 1x1 transparent GIF and no-cache headers,
  whatever the token and whether or not the broker is up.
* ``GET|HEAD /c/<token>`` redirects (302) only to the URL inside a genuine click token; anything
  else gets a 404 page, never a redirect (no open redirect).  A genuine token older than
  ``tracking.click_max_age_days`` gets a 410 "link expired" page, without its URL.
* ``POST /u/<token>`` is the one-click unsubscribe of campaign mail (RFC 8058): a genuine
  unsubscribe token adds its recipient to the tenant's suppression store (``campaigns.suppression_file``
  in ``worker.data_dir``) and answers 200; anything else gets a 404, and one older than
  ``tracking.unsubscribe_max_age_days`` a 410 "link expired" page (both unsubscribe nobody).  ``GET|HEAD /u/<token>`` only
  shows a confirmation page with a POST button: link scanners and prefetchers GET every link, so a
  GET must never unsubscribe.  Unsubscribes are not tracking hits (nothing goes to ``tracking.raw``).
* ``GET /health`` says whether the broker takes hits (``status`` ``ok`` or ``degraded``) with the
  counts: queued, spooled, drained, delivered, dropped at the spool cap.

Every hit, genuine or not, becomes a ``tracking.raw`` record (the tracking agent verifies again,
classifies, and dead-letters forged tokens).  Hits are handed to a confluent-kafka producer with a
bounded queue; when it is full (the broker is down) they are appended to a spool file of at most
``tracking.spool_max_bytes``, which a background thread drains into the producer once the broker
takes hits again, without a restart.  Past the cap hits are dropped, counted and logged.  Nothing
on the request path waits for the broker (docs/tracking.md, "When the broker is down").
The access log holds no addresses or tokens unless ``tracking.access_log_personal_data`` is on.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import os
import shutil
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import web
from confluent_kafka import KafkaException

from pipeline.contracts.records import tracking_raw_record
from pipeline.contracts.topics import TRACKING_RAW
from pipeline.runtime.kafka import new_producer, topic_name
from pipeline.contracts.avro import AvroCodec
from pipeline.settings import Settings
from pipeline.tracking.safety import key_refusal
from pipeline.tracking.tokens import EXPIRED, TokenError, TokenPayload, token_from_path, verify_with_settings

log = logging.getLogger("threadline.tracking")
access_log = logging.getLogger("threadline.tracking.access")

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate, max-age=0", "Pragma": "no-cache", "Expires": "0"}
# Request headers kept for classification (scanner and prefetch detection); nothing else.
KEPT_HEADERS = ("accept", "accept-language", "purpose", "sec-purpose", "x-moz", "from", "via", "x-forwarded-for")


class HitSpool:
    """Producer of ``tracking.raw`` that never blocks its caller, with a bounded spool file.

    A hit goes to the producer's in-memory queue (``tracking.producer_queue_max_messages``); when
    that is full (the broker is down or slow) it is appended to the spool file instead, up to
    ``tracking.spool_max_bytes``; past the cap it is dropped and counted (``dropped_at_cap``).
    A background thread serves the producer (delivery reports, errors), checks whether a broker
    it has not heard from answers again, and drains the spool back into the queue while the
    broker takes hits; a record whose delivery fails goes to the spool.  So every hit is
    delivered, in the queue, in the spool, or counted as dropped.  The event loop only ever
    encodes a record, enqueues it or appends one line to a buffered file.

    Threads: the spool file, its offsets and the counters ``spooled``, ``drained``,
    ``dropped_at_cap``, ``unreadable``, ``rejected`` change only under ``_lock``.  librdkafka runs
    callbacks in the thread that polls, which is the producer thread (or ``close`` once that thread
    has ended), so ``delivered``, ``delivery_failures``, ``broker`` and ``last_error`` have one
    writer at a time.  The hits in the producer are counted the same way, by three counters with one
    writer each (``len(producer)`` also counts librdkafka's own requests and reports, so it is not a
    number of hits).  ``status()`` reads without the lock: each read is one int or str.

    What a crash (SIGKILL, power) loses: the hits in the producer's queue (at most
    ``producer_queue_max_messages``) and spooled lines not yet flushed (one step, <= 50 ms).
    Lines handed back to the producer stay in the file until their delivery is reported, so a
    crash while draining sends some hits twice (with the same ``event_id``), never none.
    """

    QUEUE_MAX_KBYTES = 64 * 1024  # librdkafka's default is 1 GiB
    DRAIN_CHUNK_BYTES = 128 * 1024  # read per step: 200 to 400 hits
    # The drain is pure Python under the GIL: in short steps, each followed by a pause at least as
    # long, so that the event loop waits at most one step (~2 ms) for the GIL.  One long loop over a
    # chunk made every request of the loop wait for the GIL several times: 300-450 ms p99 while
    # 37,000 spooled hits drained at 25,000/s.
    DRAIN_STEP_HITS = 200
    DRAIN_PAUSE_MIN_S = 0.002
    PROBE_INTERVAL_S = 1.0  # while the broker is not known to be up and nothing is queued
    PROBE_TIMEOUT_S = 1.0
    DROP_LOG_INTERVAL_S = 10.0
    # Errors that mean the broker does not take hits at all (a single broker's _TRANSPORT does not).
    DOWN_ERRORS = ("_ALL_BROKERS_DOWN", "_AUTHENTICATION", "_SSL")

    def __init__(self, settings: Settings, bootstrap: str, codec: AvroCodec, spool_path: Path) -> None:
        tracking = settings.tracking
        self.codec = codec
        self.topic = topic_name(settings.kafka, TRACKING_RAW)
        self.spool_path = spool_path
        self.spool_max_bytes = tracking.spool_max_bytes
        self.queue_max = tracking.producer_queue_max_messages
        self.producer = new_producer(settings.kafka, bootstrap, {
            # Not idempotent: a broker that lost its producer state (a restarted embedded broker)
            # answers UNKNOWN_PRODUCER_ID to every retry and nothing is delivered again (seen with
            # librdkafka 2.16 on Tansu).  A retried hit may then be written twice; both copies carry
            # the hit's own event_id, from which tracking.events derives its ids.
            "enable.idempotence": False,
            "message.timeout.ms": 600_000,  # then the record goes to the spool and is drained later
            "queue.buffering.max.messages": self.queue_max,
            "queue.buffering.max.kbytes": self.QUEUE_MAX_KBYTES,
            "error_cb": self._on_error,
        })
        self._lock = threading.Lock()  # the spool file, its offsets and the counters changed under it
        self._writer = None
        self._reader = None
        self._size = 0  # bytes in the spool file, written or buffered
        self._offset = 0  # bytes of it already handed back to the producer
        self._lines = 0  # hits in the spool not handed back yet
        self._in_flight = 0  # hits handed back whose delivery is not reported yet: the file stays until 0
        self._produced_by_endpoint = 0  # written by the event loop only
        self._produced_from_spool = 0  # written by the producer thread only
        self._reported = 0  # delivery reports, success or not (the thread that polls)
        self.broker = "unknown"  # "up" after a delivery or an answer, "down" after a failure or no answer
        self.last_error: str | None = None
        self.delivered = 0
        self.spooled = 0
        self.drained = 0
        self.dropped_at_cap = 0
        self.delivery_failures = 0
        self.unreadable = 0
        self.rejected = 0
        self.spool_peak_bytes = 0
        self._drops_unlogged = 0
        self._last_drop_log = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open_existing()

    # -- the spool file ------------------------------------------------------------------------
    def _open_existing(self) -> None:
        """Take over the spool of an earlier run; it drains like any other."""
        if not self.spool_path.is_file():
            return
        with open(self.spool_path, "rb") as existing:
            last = b"\n"
            while chunk := existing.read(1 << 20):
                self._lines += chunk.count(b"\n")
                last = chunk[-1:]
        self._size = self.spool_path.stat().st_size
        if last != b"\n":  # an earlier run died in the middle of a line: end it, it reads as unreadable
            self._write(b"\n")
            self._lines += 1
        self.spool_peak_bytes = self._size

    def _write(self, data: bytes) -> None:
        if self._writer is None:
            self._writer = open(self.spool_path, "ab", buffering=1 << 16)
        self._writer.write(data)
        self._size += len(data)

    @property
    def spool_hits(self) -> int:
        return self._lines

    def _spool(self, key: bytes | None, value: bytes) -> None:
        line = json.dumps({"key": base64.b64encode(key or b"").decode(),
                           "value": base64.b64encode(value).decode()}).encode() + b"\n"
        with self._lock:
            if self._size + len(line) > self.spool_max_bytes:
                self.dropped_at_cap += 1
                self._drops_unlogged += 1
                return
            self._write(line)
            self._lines += 1
            self.spooled += 1
            self.spool_peak_bytes = max(self.spool_peak_bytes, self._size)

    def _drain(self, budget: int) -> int:
        """Hand up to ``budget`` spooled hits back to the producer; the number handed over."""
        with self._lock:
            if self._lines == 0:
                return 0
            if self._writer is not None:
                self._writer.flush()
            if self._reader is None:
                self._reader = open(self.spool_path, "rb")
            self._reader.seek(self._offset)
            data = self._reader.read(self.DRAIN_CHUNK_BYTES)
        consumed = moved = bad = 0
        end = data.rfind(b"\n")
        if end < 0:
            # No line end within a whole chunk: not a line this code wrote.  Skip it; its rest, up
            # to the next line end, fails to parse below and is counted as one unreadable line.
            consumed = len(data)
        else:
            for line in data[:end].split(b"\n"):
                if moved + bad >= budget:
                    break
                try:
                    item = json.loads(line)
                    key, value = base64.b64decode(item["key"]) or None, base64.b64decode(item["value"])
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    consumed += len(line) + 1
                    continue
                try:
                    self.producer.produce(self.topic, value, key, on_delivery=self._on_spooled_delivery)
                except BufferError:
                    break
                except KafkaException as exc:  # refused locally (e.g. too large): it never will be taken
                    self._reject(exc)
                    bad += 1
                    consumed += len(line) + 1
                    continue
                self._produced_from_spool += 1
                consumed += len(line) + 1
                moved += 1
        with self._lock:
            self._offset += consumed
            self._lines = max(0, self._lines - moved - bad)
            self._in_flight += moved
            self.drained += moved
            self.unreadable += bad
        if bad:
            log.error("skipped %d unreadable lines of the spool %s", bad, self.spool_path)
        return moved

    def _empty_if_done(self) -> None:
        """Under the lock: once every line is handed back and reported delivered, empty the file
        (the writer appends, so it goes on at offset 0)."""
        if self._size and self._offset >= self._size and self._in_flight == 0:
            if self._writer is not None:
                self._writer.flush()
            os.truncate(self.spool_path, 0)
            self._size = self._offset = self._lines = 0

    def _compact(self) -> None:
        """At shutdown: keep only what was not handed back; no file when nothing is left."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if not self.spool_path.is_file():
            return
        if self._offset:
            rest = self.spool_path.with_name(self.spool_path.name + ".tmp")
            with open(self.spool_path, "rb") as source, open(rest, "wb") as target:
                source.seek(self._offset)
                shutil.copyfileobj(source, target, 1 << 20)
            os.replace(rest, self.spool_path)
            self._size -= self._offset
            self._offset = 0
        if self.spool_path.stat().st_size == 0:
            self.spool_path.unlink()

    def _reject(self, exc: Exception) -> None:
        with self._lock:
            self.rejected += 1
        log.error("a hit the producer refuses is dropped: %s", exc)

    # -- librdkafka callbacks (run in the thread that polls) -------------------------------------
    def _on_delivery(self, error, message) -> None:
        self._reported += 1
        if error is None:
            self.delivered += 1
            if self.broker != "up":
                log.warning("the broker takes hits (again); %d hits in the spool drain into it", self._lines)
                self.broker = "up"
            return
        self.delivery_failures += 1
        self.last_error = f"delivery: {error.name()}: {error.str()}"
        if self.broker != "down" and error.name() not in ("_PURGE_QUEUE", "_PURGE_INFLIGHT"):
            log.warning("hits are not delivered (%s); they go to the spool %s", self.last_error, self.spool_path)
            self.broker = "down"
        self._spool(message.key(), message.value())

    def _on_spooled_delivery(self, error, message) -> None:
        self._on_delivery(error, message)  # a failure appends it to the spool again first
        with self._lock:
            self._in_flight -= 1

    def _on_error(self, error) -> None:
        self.last_error = f"{error.name()}: {error.str()}"
        if error.fatal() or error.name() in self.DOWN_ERRORS:
            if self.broker != "down":
                log.warning("broker not reachable (%s); hits are queued and spooled", self.last_error)
            self.broker = "down"

    # -- the background thread -----------------------------------------------------------------
    def start(self) -> None:
        if self._lines:
            log.warning("%d hits in the spool %s (from an earlier run) drain once the broker takes hits",
                        self._lines, self.spool_path)
        self._thread = threading.Thread(target=self._run, name="tracking-producer", daemon=True)
        self._thread.start()

    def _probe(self) -> None:
        """Ask the broker for metadata: whether it answers, when no queued hit can tell."""
        try:
            self.producer.list_topics(self.topic, timeout=self.PROBE_TIMEOUT_S)
        except KafkaException as exc:
            self.last_error = f"metadata: {exc.args[0].name() if exc.args else exc}"
            if self.broker != "down":
                log.warning("broker not reachable (%s); hits are queued and spooled", self.last_error)
            self.broker = "down"
            return
        if self.broker != "up":
            log.warning("the broker answers (again); %d hits in the spool drain into it", self._lines)
        self.broker = "up"

    def _run(self) -> None:
        last_probe = float("-inf")
        while not self._stop.is_set():
            draining = self.broker == "up" and self._lines > 0
            self.producer.poll(0.005 if draining else 0.05)  # delivery reports and errors; frees the GIL
            with self._lock:
                if self._writer is not None:
                    self._writer.flush()  # spooled hits reach the file within one step
                self._empty_if_done()
            queued = self.pending
            if self.broker != "up":
                # Queued hits tell when the broker is back (they are delivered); with none, ask it.
                if queued == 0 and time.monotonic() - last_probe >= self.PROBE_INTERVAL_S:
                    last_probe = time.monotonic()
                    self._probe()
            elif self._lines:
                # Half the queue stays free for new hits.
                budget = min(self.DRAIN_STEP_HITS, max(1, self.queue_max // 2) - queued)
                if budget > 0:
                    step_started = time.perf_counter()
                    self._drain(budget)
                    self._stop.wait(max(self.DRAIN_PAUSE_MIN_S, time.perf_counter() - step_started))
            self._log_drops()

    def _log_drops(self, final: bool = False) -> None:
        now = time.monotonic()
        if self._drops_unlogged and (final or now - self._last_drop_log >= self.DROP_LOG_INTERVAL_S):
            with self._lock:
                dropped, self._drops_unlogged = self._drops_unlogged, 0
            log.warning("spool full (%d of %d bytes): dropped %d hits since the last report, %d since start",
                        self._size, self.spool_max_bytes, dropped, self.dropped_at_cap)
            self._last_drop_log = now

    # -- the endpoint's side ---------------------------------------------------------------------
    def add(self, record: dict, tenant: str | None) -> None:
        """Never blocks: into the producer's queue, else the spool, else counted as dropped."""
        key, value = tenant.encode() if tenant else None, self.codec.encode(TRACKING_RAW, record)
        try:
            self.producer.produce(self.topic, value, key, on_delivery=self._on_delivery)
        except BufferError:
            self._spool(key, value)
        except KafkaException as exc:  # refused locally (e.g. too large); the pixel is served anyway
            self._reject(exc)
        else:
            self._produced_by_endpoint += 1

    @property
    def pending(self) -> int:
        """Hits in the producer: queued or sent, their delivery not reported yet.  (Read from another
        thread, the counters may be a report apart: never below 0.)"""
        return max(0, self._produced_by_endpoint + self._produced_from_spool - self._reported)

    def status(self) -> dict:
        degraded = self.broker != "up" or self._lines > 0
        return {"status": "degraded" if degraded else "ok", "broker": self.broker, "last_error": self.last_error,
                "pending_hits": self.pending, "queue_max": self.queue_max, "delivered": self.delivered,
                "spooled": self.spooled, "drained": self.drained, "spool_hits": self._lines,
                "spool_bytes": self._size, "spool_peak_bytes": self.spool_peak_bytes,
                "spool_max_bytes": self.spool_max_bytes, "dropped_at_cap": self.dropped_at_cap,
                "rejected": self.rejected, "delivery_failures": self.delivery_failures,
                "unreadable_spool_lines": self.unreadable}

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what the broker takes within ``timeout_s``; spool the rest."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.producer.flush(timeout_s)
        if self.pending:
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.flush(1)  # runs the delivery callbacks of the purged records: they spool
        with self._lock:
            self._compact()
        self._log_drops(final=True)
        log.warning("tracking stopped: %d hits delivered, %d in the spool, %d dropped at the spool cap",
                    self.delivered, self._lines, self.dropped_at_cap)


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
        return tracking_raw_record(uuid.uuid4().hex, kind, token, datetime.now(timezone.utc), method=request.method,
                                   ip=request.remote, user_agent=request.headers.get("User-Agent"), headers=headers)

    def access(request: web.Request, kind: str, valid: bool, status: int) -> None:
        if personal_log:
            access_log.info("%s %s %s valid=%s %d ip=%s ua=%r", request.method, kind, request.path, valid, status,
                            request.remote, request.headers.get("User-Agent"))
        else:
            access_log.info("%s %s valid=%s %d", request.method, kind, valid, status)

    def verified(token: str, kind: str) -> tuple[TokenPayload | None, str | None]:
        """The payload of a genuine token within its kind's maximum age, else None and why not."""
        try:
            return verify_with_settings(token, tracking, expect_kind=kind), None
        except TokenError as exc:
            return None, exc.reason

    def expired_page(link: str, days: int) -> web.Response:
        # Genuine but too old: say so, so the reader knows a newer mail will work; never the URL.
        return _page("This link has expired", f"<p>This {link} is more than {days} days old and no longer "
                     "works. A more recent mail from us has one that does.</p>", status=410)

    async def pixel(request: web.Request) -> web.Response:
        parsed = token_from_path(request.path)
        token = parsed[1] if parsed else request.match_info.get("token", "")
        payload, _ = verified(token, "open") if parsed else (None, None)
        spool.add(record(request, "open", token), payload.tenant if payload else None)
        access(request, "open", payload is not None, 200)
        return web.Response(body=PIXEL, content_type="image/gif", headers=NO_CACHE)

    async def click(request: web.Request) -> web.Response:
        parsed = token_from_path(request.path)
        token = parsed[1] if parsed else request.match_info.get("token", "")
        payload, reason = verified(token, "click") if parsed else (None, None)
        spool.add(record(request, "click", token), payload.tenant if payload else None)
        valid = payload is not None and bool(payload.link_url) and payload.link_url.startswith(("http://", "https://"))
        access(request, "click", valid, 302 if valid else 410 if reason == EXPIRED else 404)
        if reason == EXPIRED:
            return expired_page("link", tracking.click_max_age_days)
        if not valid:
            return web.Response(status=404, text="This link is not valid.", headers=NO_CACHE)
        raise web.HTTPFound(payload.link_url, headers=NO_CACHE)

    def unsubscribe_payload(request: web.Request) -> tuple[TokenPayload | None, str | None]:
        parsed = token_from_path(request.path)
        if parsed is None or parsed[0] != "unsubscribe":
            return None, None
        return verified(parsed[1], "unsubscribe")

    def not_valid(reason: str | None) -> web.Response:
        if reason == EXPIRED:
            return expired_page("unsubscribe link", tracking.unsubscribe_max_age_days)
        return _page("This link is not valid", "<p>This unsubscribe link is not valid.</p>", status=404)

    def refused_status(reason: str | None) -> int:
        return 410 if reason == EXPIRED else 404

    async def unsubscribe_form(request: web.Request) -> web.Response:
        payload, reason = unsubscribe_payload(request)
        access(request, "unsubscribe-form", payload is not None, 200 if payload else refused_status(reason))
        if payload is None:
            return not_valid(reason)
        return _page("Unsubscribe", f"<p>Stop sending campaign mail to <strong>{html.escape(payload.recipient)}"
                     "</strong>?</p>\n<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" "
                     "value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>")

    async def unsubscribe(request: web.Request) -> web.Response:
        payload, reason = unsubscribe_payload(request)
        access(request, "unsubscribe", payload is not None, 200 if payload else refused_status(reason))
        if payload is None:
            return not_valid(reason)
        try:  # the keep-alive timer does not cover a body: a client dribbling one is dropped here
            async with asyncio.timeout(tracking.header_timeout_s):
                await request.read()  # RFC 8058 body "List-Unsubscribe=One-Click"; the signed token decides
        except TimeoutError:
            raise web.HTTPRequestTimeout(headers={"Connection": "close"}) from None
        await asyncio.to_thread(suppressions.add, payload.tenant, payload.recipient,
                                campaign_id=payload.campaign_id, message_id=payload.message_id)
        return _page("Unsubscribed", f"<p>{html.escape(payload.recipient)} gets no more campaign mail from us.</p>")

    async def health(_request: web.Request) -> web.Response:
        return web.json_response(spool.status(), headers=NO_CACHE)

    async def run_spool(app: web.Application):
        spool.start()  # the producer is served by its own thread, never per request
        yield
        await asyncio.to_thread(spool.close)

    app = web.Application()
    for method in ("GET", "HEAD"):
        app.router.add_route(method, "/o/{token}", pixel)
        app.router.add_route(method, "/c/{token}", click)
    app.router.add_get("/u/{token}", unsubscribe_form)  # HEAD too: aiohttp adds it to GET routes
    app.router.add_post("/u/{token}", unsubscribe)
    app.router.add_get("/health", health)
    app.cleanup_ctx.append(run_spool)
    return app


class UnsafeTrackingKeys(RuntimeError):
    """The endpoint will not serve with these keys here (the message says why and how to fix it)."""


def serve(settings: Settings, bootstrap: str, codec: AvroCodec, *, host: str, port: int, spool_path: Path) -> None:
    """Run the endpoint until a signal; :class:`UnsafeTrackingKeys` before binding anything when
    the keys are unsafe outside the loopback demo (pipeline/tracking/safety.py)."""
    refused = key_refusal(settings.tracking, settings.kafka.bootstrap, "threadline tracking", listen_host=host)
    if refused:
        raise UnsafeTrackingKeys(refused)
    spool = HitSpool(settings, bootstrap, codec, spool_path)
    web.run_app(build_app(settings, spool), host=host, port=port, access_log=None, print=None,
                handle_signals=True, **server_options(settings))


def server_options(settings: Settings) -> dict:
    """Keyword arguments of ``web.run_app`` / ``web.AppRunner`` that drop slow clients (slowloris).
    aiohttp's keep-alive timer starts when a connection opens and again after each response, and
    closes the connection if no complete request head has arrived by then: so it is the header
    timeout and the idle keep-alive timeout at once (its default, 75 s, let 800 sockets that sent
    one header line every 5 s hold the endpoint). After a response to a request whose body has not
    all arrived, aiohttp reads on for lingering_time (default 10 s): bounded by the same setting."""
    timeout = settings.tracking.header_timeout_s
    return {"keepalive_timeout": timeout, "lingering_time": timeout}
