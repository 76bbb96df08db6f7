"""The relay's aiosmtpd server with connection caps and a session time limit.

aiosmtpd has hooks for every command but none for a new connection or for the length of a
whole session, so these two live in a small ``SMTP`` subclass, created by the controller's
documented ``factory()`` extension point.  Everything else (idle / DATA timeout, STARTTLS, AUTH)
is aiosmtpd's own.  Imported by :meth:`pipeline.mail.relay.SmtpRelay.start` only, so importing
the relay module stays cheap.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from pipeline.mail import relay_policy as policy

log = logging.getLogger("threadline.smtp")


class LimitedSMTP(SMTP):
    """One client connection: counted against ``relay.max_connections[_per_client]`` and closed
    with 421 after ``relay.session_timeout_s``."""

    def __init__(self, limits: policy.ClientLimits, session_timeout_s: float, handler, **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._session_timeout_s = session_timeout_s
        self._client: str | None = None          # the counted client key while connected
        self._refused = False
        self._session_timer: asyncio.TimerHandle | None = None

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
            self._session_timer = self.loop.call_later(self._session_timeout_s, self._session_expired)
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
        if self._client is not None:
            self._limits.disconnect(self._client)
            self._client = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()


class RelayController(Controller):
    def __init__(self, handler, limits: policy.ClientLimits, session_timeout_s: float, **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.session_timeout_s = session_timeout_s

    def factory(self) -> SMTP:
        return LimitedSMTP(self.limits, self.session_timeout_s, self.handler, **self.SMTP_kwargs)
