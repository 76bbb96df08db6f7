"""The relay's aiosmtpd server: connection caps, a session time limit and the AUTH limits.

aiosmtpd has hooks for every command but none for a new connection or for the length of a
whole session, so these live in a small ``SMTP`` subclass, created by the controller's
documented ``factory()`` extension point.  AUTH stays aiosmtpd's (mechanisms, challenges,
replies): the subclass is its ``authenticator`` callback, which checks the credentials and
counts failures, and wraps ``smtp_AUTH`` only to close a connection that failed too often.
Everything else (idle / DATA timeout, STARTTLS) is aiosmtpd's own.  Imported by
:meth:`pipeline.gateways.smtp.relay.SmtpRelay.start` only, so importing the relay module stays cheap.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax

from pipeline.gateways.smtp import relay_policy as policy

log = logging.getLogger("threadline.smtp")


class LimitedSMTP(SMTP):
    """One client connection: counted against ``relay.max_connections[_per_client]``, closed
    with 421 after ``relay.session_timeout_s``, and, with ``auth``, logins checked against
    ``relay.auth_username`` / ``relay.auth_password`` and limited per connection and client."""

    def __init__(self, limits: policy.ClientLimits, session_timeout_s: float, handler, *, auth: bool = False,
                 **kwargs) -> None:
        if auth:
            kwargs["authenticator"] = self.check_login
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._session_timeout_s = session_timeout_s
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
    def __init__(self, handler, limits: policy.ClientLimits, session_timeout_s: float, *, auth: bool = False,
                 **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.session_timeout_s = session_timeout_s
        self.auth = auth

    def factory(self) -> SMTP:
        return LimitedSMTP(self.limits, self.session_timeout_s, self.handler, auth=self.auth, **self.SMTP_kwargs)
