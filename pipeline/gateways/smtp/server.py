"""``threadline smtp``: an SMTP relay (aiosmtpd) that records every mail in ``mail.raw`` before it
leaves (docs/smtp.md)::

    client --SMTP--> relay: stamp (outbound) --> mail.raw (wait for the broker's ack)
                                             --> queue file (fsync) --> upstream --> 250

Outbound (default), :mod:`~pipeline.gateways.smtp.stamp` adds what is missing and the tracking
marks; inbound (``--inbound``, an MX-side filter) changes nothing.  Who may send how much is
:mod:`~pipeline.gateways.smtp.policy` (closed by default).  Every mail gets a ``Received`` header
and CRLF line ends: those final bytes are what ``mail.raw`` holds and the next hop receives.

Replies: not acknowledged by the broker -> ``451`` (the client retries; nothing relayed, nothing
lost).  Recorded -> queued (:mod:`~pipeline.gateways.smtp.spool`) and handed to the upstream
(:mod:`pipeline.smtp_client`): accepted, or down / 4xx (retried from the queue) -> ``250``;
refused for good during the session -> that 5xx.

aiosmtpd has no hook for a new connection or a whole session's length, so the connection caps,
the session time limit and the AUTH limits live in an ``SMTP`` subclass (:class:`LimitedSMTP`)
that the controller's documented ``factory()`` creates; AUTH itself (mechanisms, replies) stays
aiosmtpd's, with the subclass as its ``authenticator`` callback.

Credentials are never logged; the log names queue ids, Message-IDs, sizes and recipient counts,
not addresses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
from datetime import datetime, timezone
from email.utils import formatdate

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.records import MailRawCodec, mail_raw_record
from pipeline.correlation.tokens import TokenCounter
from pipeline.gateways.smtp import policy
from pipeline.gateways.smtp.policy import RelayError
from pipeline.gateways.smtp.spool import COUNTER_FILE, QueuedMail, RelayQueue, load_counter, save_counter
from pipeline.gateways.smtp.stamp import hop_count, message_id_of, outbound_copies, to_crlf
from pipeline.runtime.producer import RecordProducer, RecordWriteError
from pipeline.settings import RelaySettings, Settings
from pipeline.smtp_client import SmtpClient, SmtpError, SmtpOutcome, SmtpUnavailable

log = logging.getLogger("threadline.smtp")

OUTBOUND_MAILBOX = "smtp-relay"
INBOUND_MAILBOX = "smtp-inbound"
SOURCE = "smtp"
MAX_HOPS = 50                      # Received headers; more means a mail loop (RFC 5321 §6.3)
PASSED_MAIL_OPTIONS = ("SMTPUTF8", "BODY=8BITMIME")  # of the client's MAIL FROM, to the upstream
NOT_RECORDED = "451 4.3.0 Temporary failure: the mail could not be recorded; try again later"


# -- the aiosmtpd connection ------------------------------------------------------------------
class LimitedSMTP(SMTP):
    """One client connection: counted against ``relay.max_connections[_per_client]``, closed
    with 421 after ``relay.session_timeout_s``, and, with ``relay.auth_username`` set, logins
    checked against it and ``relay.auth_password`` and limited per connection and client."""

    def __init__(self, limits: policy.ClientLimits, handler, **kwargs) -> None:
        if limits.relay.auth_username:
            kwargs["authenticator"] = self.check_login
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._client: str | None = None          # the counted client key while connected
        self._refused = False
        self._session_timer: asyncio.TimerHandle | None = None
        # Per connection, not per aiosmtpd session: STARTTLS starts a new session but must not
        # give a guesser a fresh allowance.
        self._auth_failed = 0                    # wrong credentials
        self._auth_locked = 0                    # AUTH refused because the client is locked out

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # STARTTLS calls this again with the TLS transport: the connection is counted once.
        if self._client is None:
            key = policy.client_key(transport.get_extra_info("peername"))
            refusal = self._limits.connect(key)
            if refusal is not None:
                # Answered before aiosmtpd sees the connection: no greeting, no session.
                self._refused = True
                log.warning("connection from %s refused: %s", key, refusal[4:])
                transport.write(refusal.encode() + b"\r\n")
                transport.close()
                return
            self._client = key
            self._session_timer = self.loop.call_later(self._limits.relay.session_timeout_s, self._session_expired)
        super().connection_made(transport)

    def _session_expired(self) -> None:
        if self.transport is not None:
            log.warning("session of %s closed after relay.session_timeout_s", self._client)
            self.transport.write(policy.SESSION_TOO_LONG.encode() + b"\r\n")
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:  # aiosmtpd never set this connection up: nothing of its to tear down
            return
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
        if self._auth_failed or self._auth_locked:
            # One line per connection, not per try: thousands of tries are the attack, and a
            # line each would flood the log.  The credentials are never logged.
            log.warning("AUTH from %s: %d failed login(s), %d refused (locked out) on this connection",
                        self._client, self._auth_failed, self._auth_locked)
        if self._client is not None:
            self._limits.disconnect(self._client)
            self._client = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    # -- AUTH --
    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if self._auth_failed + self._auth_locked >= self._limits.relay.max_auth_failures_per_connection:
            # As aiosmtpd ends a session over its own limits: the reply, then the connection.
            await self.push(policy.AUTH_CONNECTION_CLOSED)
            self.transport.close()
            return
        await super().smtp_AUTH(arg)

    def check_login(self, server, session, envelope, mechanism: str, auth_data) -> AuthResult:
        """aiosmtpd's ``authenticator`` callback, called once the client sent its credentials."""
        key = self._client or policy.client_key(session.peer)
        if self._limits.login_locked(key):
            # Even the right password: otherwise the lock-out would only stop those who guess wrong.
            self._auth_locked += 1
            return AuthResult(success=False, handled=False, message=policy.AUTH_CLIENT_LOCKED)
        relay = self._limits.relay
        if isinstance(auth_data, LoginPassword) and policy.credentials_match(relay, auth_data.login,
                                                                             auth_data.password):
            return AuthResult(success=True, handled=False)
        self._auth_failed += 1
        if self._limits.login_failed(key):
            log.warning("AUTH from %s locked out for relay.auth_failure_window_s (%.0f s): %d failed logins",
                        key, relay.auth_failure_window_s, relay.max_auth_failures_per_client)
        return AuthResult(success=False, handled=False, message=policy.AUTH_FAILED)


class RelayController(Controller):
    def __init__(self, handler, limits: policy.ClientLimits, **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits

    def factory(self) -> SMTP:
        return LimitedSMTP(self.limits, self.handler, **self.SMTP_kwargs)


# -- the server -------------------------------------------------------------------------------
def _tls_context(relay: RelaySettings) -> ssl.SSLContext | None:
    if not relay.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(relay.tls_cert_file), str(relay.tls_key_file))
    except (OSError, ssl.SSLError) as exc:
        raise RelayError(f"relay.tls_cert_file / relay.tls_key_file cannot be loaded: {exc}") from exc
    return context


def _helo_text(value: str | None) -> str:
    return re.sub(r"[^\w.:\[\]-]", "", value or "")[:100] or "unknown"


class SmtpRelay:
    """The relay: an aiosmtpd server, the ``mail.raw`` producer, the queue and its retry thread."""

    def __init__(self, settings: Settings, bootstrap: str, codec: AvroCodec, *, inbound: bool | None = None,
                 host: str | None = None, port: int | None = None,
                 producer: RecordProducer | None = None) -> None:
        self.settings = settings
        self.relay = settings.relay
        self.bootstrap = bootstrap
        self.inbound = self.relay.mode == "inbound" if inbound is None else inbound
        self.host = host or self.relay.host
        self.port = self.relay.port if port is None else port
        self.mode = "inbound" if self.inbound else "outbound"
        data_dir = settings.worker.data_dir.resolve()
        self.queue = RelayQueue(data_dir / "relay-queue" / self.mode)
        self.counter_path = data_dir / COUNTER_FILE
        self.counter: TokenCounter | None = None
        self._counter_lock = threading.Lock()
        self._producer = producer
        # Big mail goes to the blob store, so every record stays under the clients' 1 MB default.
        self.mail_raw = MailRawCodec(settings.mail, settings.blob_dir, codec)
        self._controller = None
        self._stop = threading.Event()
        self._retrier: threading.Thread | None = None
        self._backoff: dict[str, tuple[int, float]] = {}   # queue name -> (failed attempts, next try)
        self._backoff_lock = threading.Lock()
        self.hostname = socket.gethostname()
        self.own_domains = policy.own_domains(settings)
        self.client_networks = policy.parse_networks(self.relay.client_networks)
        self.limits = policy.ClientLimits(self.relay)

    # -- lifecycle --
    def check(self) -> None:
        """Refuse to start when the configuration is unsafe or incomplete in this mode on this
        address (the same judgement as ``threadline doctor``'s)."""
        problems = policy.relay_config_problems(self.settings, inbound=self.inbound, host=self.host)
        if problems:
            raise RelayError(f"the {self.mode} relay on {self.host} does not start: "
                             + "; ".join(str(p) for p in problems))

    def start(self) -> "SmtpRelay":
        self.check()
        # aiosmtpd logs every command, sender and recipient at INFO (personal data): keep its own
        # log to warnings; ours names queue ids and Message-IDs, never addresses or credentials.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        tls = _tls_context(self.relay)
        self.queue.open()
        try:
            if not self.inbound and self.relay.subject_tokens:
                self.counter = load_counter(self.counter_path, self.settings.correlation.tracking_token)
            if self._producer is None:
                self._producer = RecordProducer(self.settings.kafka, self.bootstrap,
                                                answer_within_s=self.relay.kafka_timeout_s)
            auth = bool(self.relay.auth_username)
            self._controller = RelayController(
                _Handler(self), self.limits,
                hostname=self.host, port=self.port, server_hostname=self.hostname,
                ident="threadline relay", enable_SMTPUTF8=True,
                data_size_limit=self.relay.max_message_size or self.settings.mail.max_message_bytes,
                decode_data=False, tls_context=tls,
                # RFC 3207: an MX must not require TLS from the MTAs that deliver to it
                require_starttls=tls is not None and not self.inbound,
                # AUTH is checked and limited by the server class (LimitedSMTP).  Not
                # aiosmtpd's auth_required: a client of relay.client_networks may send without a
                # login, so handle_MAIL decides (see may_send).
                auth_required=False,
                auth_require_tls=not (auth and self.relay.auth_allow_plaintext and tls is None),
                # Reset by every command but not by DATA lines: it also bounds a whole DATA transfer,
                # so a client dribbling its data is cut off too.
                timeout=self.relay.command_timeout_s,
            )
            self._controller.start()
        except BaseException:
            if self._producer is not None:
                self._producer.finish(0)
            self.queue.close()
            raise
        self._retrier = threading.Thread(target=self._retry_loop, name="relay-queue-retry", daemon=True)
        self._retrier.start()
        log.info("smtp relay (%s) on %s:%d -> %s:%d, queue %s", self.mode, self.host, self.port,
                 self.relay.upstream.host, self.relay.upstream.port, self.queue.directory)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._retrier is not None:
            self._retrier.join(self.relay.upstream.timeout_s + 5)
        if self._producer is not None:
            self._producer.finish(5.0)
        self.queue.close()

    def __enter__(self) -> "SmtpRelay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the envelope: who may send, to whom, how much --
    def may_send(self, session, address: str) -> str | None:
        """MAIL FROM: the refusal reply, or ``None`` when the client may start this mail."""
        key = policy.client_key(session.peer)
        if not self.inbound:
            if not session.authenticated and not policy.in_networks(policy.client_ip(session.peer),
                                                                    self.client_networks):
                log.warning("MAIL refused: %s is neither logged in nor in relay.client_networks", key)
                return policy.AUTH_REQUIRED if self.relay.auth_username else policy.CLIENT_NOT_ALLOWED
            # The null sender (<>) is refused too: bounces come from MTAs, not from submitting clients.
            if policy.address_domain(address) not in self.own_domains:
                log.warning("MAIL refused from %s: the sender's domain is not in relay.own_domains", key)
                return policy.SENDER_NOT_OURS
        if not self.limits.take_message(key):
            log.warning("MAIL refused from %s: over relay.max_messages_per_client", key)
            return policy.MESSAGE_RATE
        return None

    def may_receive(self, session, envelope, address: str) -> str | None:
        """RCPT TO: the refusal reply, or ``None`` when this recipient is accepted."""
        key = policy.client_key(session.peer)
        if self.inbound and policy.address_domain(address) not in self.own_domains:
            return policy.RECIPIENT_NOT_OURS
        if len(envelope.rcpt_tos) >= self.relay.max_recipients_per_message:
            refusal, limit = policy.TOO_MANY_RECIPIENTS, "relay.max_recipients_per_message"
        elif not self.limits.take_recipient(key):
            refusal, limit = policy.RECIPIENT_RATE, "relay.max_recipients_per_client"
        else:
            return None
        # One log line per mail, not one per refused RCPT (thousands of them are the attack).
        if not getattr(envelope, "threadline_over_limit", False):
            envelope.threadline_over_limit = True
            log.warning("RCPT refused from %s: over %s (%d accepted in this mail)", key, limit, len(envelope.rcpt_tos))
        return refusal

    # -- one mail --
    def _received(self, session, queue_id: str) -> bytes:
        protocol = ("ESMTP" if session.extended_smtp else "SMTP") + ("S" if session.ssl else "") + \
            ("A" if session.authenticated else "")
        peer = session.peer[0] if session.peer else "unknown"
        return (f"Received: from {_helo_text(session.host_name)} ([{peer}])\r\n"
                f"\tby {self.hostname} (threadline relay) with {protocol} id {queue_id};\r\n"
                f"\t{formatdate(usegmt=True)}\r\n").encode()

    def _prepare(self, raw: bytes, envelope) -> list[tuple[tuple[str, ...], bytes]]:
        if self.inbound:
            return [(tuple(envelope.rcpt_tos), raw)]
        with self._counter_lock:
            before = self.counter.state() if self.counter else None
            copies = outbound_copies(raw, self.settings.correlation, self.relay, self.settings.tracking, self.counter,
                                     sender=envelope.mail_from, recipients=envelope.rcpt_tos, tenant=self.relay.tenant)
            if self.counter is not None and self.counter.state() != before:
                save_counter(self.counter_path, self.counter)
        return copies

    async def handle(self, session, envelope) -> str:
        loop = asyncio.get_running_loop()
        # Work in proportion to the mail's size runs off the event loop: a big mail must not
        # hold every other session of the relay.
        raw = await loop.run_in_executor(None, to_crlf, envelope.original_content or b"")
        if await loop.run_in_executor(None, hop_count, raw) >= MAX_HOPS:
            return "554 5.4.6 Too many hops: a mail loop?"
        try:
            copies = await loop.run_in_executor(None, self._prepare, raw, envelope)
        except Exception:
            log.exception("could not prepare a mail")
            return "451 4.3.0 Temporary failure while preparing the mail; try again later"
        names = [self.queue.new_name() for _ in copies]
        finals = [(rcpts, self._received(session, name.removesuffix(RelayQueue.SUFFIX)) + data)
                  for name, (rcpts, data) in zip(names, copies)]
        direction = "in" if self.inbound else "out"
        mailbox = INBOUND_MAILBOX if self.inbound else OUTBOUND_MAILBOX
        received_at = datetime.now(timezone.utc)
        try:
            # Off the event loop: a big mail is written (and fsynced) to the blob store first.
            futures = [await loop.run_in_executor(
                None, self._producer.produce_mail_acknowledged, self.mail_raw,
                mail_raw_record(tenant=self.relay.tenant, mailbox=mailbox, direction=direction, source=SOURCE,
                                raw=data, received_at=received_at)) for _, data in finals]
            await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                   self.relay.kafka_timeout_s + 10)
        except RecordWriteError as exc:
            log.error("mail not recorded (%s): answered %s", exc, "552" if exc.permanent else "451")
            return "552 5.3.4 Message too big to be recorded" if exc.permanent else NOT_RECORDED
        except asyncio.TimeoutError:
            log.error("mail not recorded: no delivery report from the broker: answered 451")
            return NOT_RECORDED
        except Exception:
            log.exception("mail not recorded: answered 451")
            return NOT_RECORDED

        items, results = [], []
        for name, (rcpts, data) in zip(names, finals):
            item = QueuedMail(name, envelope.mail_from, tuple(rcpts), tuple(envelope.mail_options), data, time.time(),
                              message_id_of(data))
            self.queue.claim(name)
            try:
                await loop.run_in_executor(None, self.queue.put, item)
            except OSError as exc:
                self.queue.release(name)
                log.error("queue write failed (%s): answered 451", exc)
                return "451 4.3.0 Temporary failure: the relay queue is not writable; try again later"
            try:
                items.append(item)
                results.append(await loop.run_in_executor(None, self._attempt, item, True))
            except Exception:  # the queue file is durable: the retries take it from here
                log.exception("%s: delivery attempt failed unexpectedly; left in the queue", name)
                results.append(SmtpOutcome(deferred={r: "unexpected error" for r in rcpts}))
            finally:
                self.queue.release(name)
        delivered = sum(len(r.sent) for r in results)
        waiting = sum(len(r.deferred) for r in results)
        refused = [r.first_refusal for r in results if r.refused]
        if refused and not delivered and not waiting:  # refused for good: the client hears it now
            reason = refused[0]
            code = reason[:3] if reason[:1] == "5" and reason[:3].isdigit() else "550"
            return f"{code} 5.0.0 The upstream refused the mail: {reason[4:] if reason[:3].isdigit() else reason}"[:500]
        for item, result in zip(items, results):  # the client hears 250: keep what was refused
            if result.refused:
                await loop.run_in_executor(None, self.queue.fail, item, result.refused)
        queue_ids = ", ".join(n.removesuffix(RelayQueue.SUFFIX) for n in names)
        if waiting:
            return f"250 2.0.0 Ok: queued as {queue_ids} (upstream not reachable now: delivery is retried)"
        return f"250 2.0.0 Ok: queued as {queue_ids}"

    def _attempt(self, item: QueuedMail, live: bool = False) -> SmtpOutcome:
        """One delivery try of a queued (and claimed) message; updates its file accordingly.
        ``live``: during the client's session (the caller decides what to do with refusals);
        else recipients refused for good are kept in ``failed/``."""
        try:
            result = self.deliver(item)
        except Exception as exc:  # e.g. an address smtplib cannot send: keep the mail, say why
            log.exception("%s: delivery failed unexpectedly", item.name)
            result = SmtpOutcome(deferred={r: f"{type(exc).__name__}: {exc}" for r in item.rcpt_tos})
        if result.refused and not live:
            self.queue.fail(item, result.refused)
        if result.refused:
            log.error("%s (%s): the upstream refused %d recipient(s) for good: %s", item.name, item.message_id,
                      len(result.refused), result.first_refusal)
        if result.deferred:
            self.queue.keep_for(item, tuple(result.deferred))
            with self._backoff_lock:
                attempts = self._backoff.get(item.name, (0, 0.0))[0] + 1
                delay = min(self.relay.retry_interval_s * 2 ** (attempts - 1), self.relay.retry_max_interval_s)
                self._backoff[item.name] = (attempts, time.monotonic() + delay)
            log.warning("%s (%s) queued for %d recipient(s), attempt %d, next in %.1f s: %s", item.name,
                        item.message_id, len(result.deferred), attempts, delay, next(iter(result.deferred.values())))
        else:
            with self._backoff_lock:
                self._backoff.pop(item.name, None)
            self.queue.remove(item.name)
            log.info("%s (%s) delivered to %d recipient(s), %d bytes", item.name, item.message_id,
                     len(result.sent), len(item.data))
        return result

    def deliver(self, item: QueuedMail) -> SmtpOutcome:
        """Hand one message to ``relay.upstream``, one session per message.  Without a session
        every recipient waits (``unreachable``: the queue's other mail would fail alike)."""
        options = [o for o in item.mail_options if o.upper() in PASSED_MAIL_OPTIONS]
        with SmtpClient(self.relay.upstream) as client:
            try:
                return client.send(item.mail_from, item.rcpt_tos, item.data, options)
            except SmtpError as exc:  # a refused login too: our configuration, so the mail is kept
                return SmtpOutcome.everyone(item.rcpt_tos, f"upstream {exc}",
                                            unreachable=isinstance(exc, SmtpUnavailable))

    # -- the queue's retries --
    def retry_queue(self) -> int:
        """One pass over the queue: try every file that is due; stop at an unreachable upstream.
        Returns the number of files delivered (and removed)."""
        done = 0
        now = time.monotonic()
        for name in self.queue.pending():
            if self._stop.is_set():
                break
            with self._backoff_lock:
                if self._backoff.get(name, (0, 0.0))[1] > now:
                    continue
            if not self.queue.claim(name):
                continue
            try:
                try:
                    item = self.queue.load(name)
                except FileNotFoundError:
                    continue
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("%s is not a relay queue file (%s): moved to %s", name, exc, self.queue.failed_dir)
                    os.replace(self.queue.directory / name, self.queue.failed_dir / name)
                    continue
                result = self._attempt(item)
                if not result.deferred:
                    done += 1
                if result.unreachable:
                    break  # every other file would fail the same way: wait for the back-off
            finally:
                self.queue.release(name)
        return done

    def _retry_loop(self) -> None:
        tick = min(1.0, self.relay.retry_interval_s)
        while True:
            try:
                self.retry_queue()
            except Exception:
                log.exception("retrying the relay queue failed")
            if self._stop.wait(tick):
                return


class _Handler:
    def __init__(self, relay: SmtpRelay) -> None:
        self.relay = relay

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:  # aiosmtpd hook
        refusal = self.relay.may_send(session, address)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # aiosmtpd hook
        refusal = self.relay.may_receive(session, envelope, address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd hook
        # Shielded: a client dropped by a timeout (or gone) while the mail is being recorded and
        # queued must not cut that work in half (recorded but never queued); the mail goes on,
        # and the client, who heard no 250, sends it again (at-least-once, docs/smtp.md).
        return await asyncio.shield(self.relay.handle(session, envelope))


def run_relay(settings: Settings, bootstrap: str, codec: AvroCodec, *, inbound: bool | None = None,
              host: str | None = None, port: int | None = None) -> int:
    """``threadline smtp``: serve until SIGINT / SIGTERM."""
    from pipeline.broker import create_topics

    relay = SmtpRelay(settings, bootstrap, codec, inbound=inbound, host=host, port=port)
    relay.check()  # an unsafe configuration is refused before anything else is tried
    try:
        create_topics(settings.kafka, bootstrap, timeout_s=5)
    except Exception as exc:  # the relay answers 451 until the broker is back
        print(f"threadline: broker not reachable yet ({exc}); mail is refused with 451 until it is", file=sys.stderr)
    stopped = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopped.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        relay.start()
        pending = len(relay.queue.pending())
        print(f"smtp relay ({relay.mode}) on {relay.host}:{relay.port} -> {settings.relay.upstream.host}:"
              f"{settings.relay.upstream.port}; queue {relay.queue.directory} ({pending} waiting); Ctrl-C stops",
              file=sys.stderr, flush=True)
        stopped.wait()
    finally:
        relay.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
