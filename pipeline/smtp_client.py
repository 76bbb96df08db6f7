"""The one SMTP client: the relay's upstream, campaign mail and alert mail go to their server
(a :class:`~pipeline.settings.SmtpSettings` section) through :class:`SmtpClient`.

The session opens on first use (EHLO, STARTTLS with a verified certificate, AUTH when a user is
set, the section's timeout per command) and is kept; a kept session the server dropped meanwhile
is opened again once.  :meth:`SmtpClient.send` says per recipient what the server answered: sent,
refused (5xx) or deferred (4xx).  No session raises :class:`SmtpUnavailable`; a session that
breaks during a message raises :class:`SmtpConnectionLost`.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pipeline.settings import SmtpSettings


class SmtpError(RuntimeError):
    """The server could not be asked: nothing was sent."""


class SmtpUnavailable(SmtpError):
    """No session; ``login_refused``: the server refused the login or STARTTLS (our configuration)."""

    def __init__(self, message: str, *, login_refused: bool = False) -> None:
        super().__init__(message)
        self.login_refused = login_refused


class SmtpConnectionLost(SmtpError):
    """The session broke during a message."""


def reply_text(code: int, message: bytes | str) -> str:
    """An SMTP reply as one line: ``550 5.1.1 no such user``."""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return f"{code} {' '.join(text.split())}"[:300]


@dataclass
class SmtpOutcome:
    """What became of one message, per recipient (recipient -> the server's reply)."""

    sent: tuple[str, ...] = ()
    deferred: dict[str, str] = field(default_factory=dict)   # 4xx, or no session (``unreachable``)
    refused: dict[str, str] = field(default_factory=dict)    # 5xx
    sender_refused: bool = False   # MAIL FROM answered 5xx: every message of this sender would be refused
    unreachable: bool = False      # no session with the server at all

    @classmethod
    def everyone(cls, recipients: Sequence[str], reason: str, *, refused: bool = False,
                 sender_refused: bool = False, unreachable: bool = False) -> SmtpOutcome:
        reasons = {recipient: reason for recipient in recipients}
        return cls(refused=reasons if refused else {}, deferred={} if refused else reasons,
                   sender_refused=sender_refused, unreachable=unreachable)

    @property
    def first_refusal(self) -> str:
        return next(iter(self.refused.values()), "")


class SmtpClient:
    """One session with ``server``, opened on first use and kept until :meth:`close`."""

    def __init__(self, server: SmtpSettings, *, helo: str | None = None,
                 factory: Callable[..., smtplib.SMTP] = smtplib.SMTP) -> None:
        self.server, self.helo, self.factory = server, helo, factory
        self._smtp: smtplib.SMTP | None = None

    def _open(self) -> smtplib.SMTP:
        server = self.server
        try:
            smtp = self.factory(server.host, server.port, local_hostname=self.helo, timeout=server.timeout_s)
        except OSError as exc:
            raise SmtpUnavailable(f"unreachable: {type(exc).__name__}: {exc}") from exc
        try:
            smtp.ehlo_or_helo_if_needed()
            if server.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if server.username:
                smtp.login(server.username, server.password or "")
        except OSError as exc:  # smtplib's errors are OSErrors too
            smtp.close()
            # SMTPNotSupportedError: the server offers no STARTTLS or no AUTH
            login = isinstance(exc, (smtplib.SMTPAuthenticationError, smtplib.SMTPNotSupportedError))
            reason = (reply_text(exc.smtp_code, exc.smtp_error) if isinstance(exc, smtplib.SMTPResponseException)
                      else f"{type(exc).__name__}: {exc}")
            raise SmtpUnavailable(("refused the login or STARTTLS: " if login else "session failed: ") + reason,
                                  login_refused=login) from exc
        return smtp

    def send(self, sender: str, recipients: Sequence[str], data: bytes,
             mail_options: Sequence[str] = ()) -> SmtpOutcome:
        """Hand one message to the server; see the module doc for what raises."""
        recipients = tuple(recipients)
        kept = self._smtp is not None
        if self._smtp is None:
            self._smtp = self._open()
        try:
            refused = self._smtp.sendmail(sender, list(recipients), data, mail_options=list(mail_options))
        except smtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients
        except smtplib.SMTPResponseException as exc:  # MAIL FROM or DATA refused: the same for every recipient
            if exc.smtp_code == 421:  # the server closes the session: the next message opens a new one
                self.close()
            return SmtpOutcome.everyone(
                recipients, reply_text(exc.smtp_code, exc.smtp_error), refused=exc.smtp_code >= 500,
                sender_refused=isinstance(exc, smtplib.SMTPSenderRefused) and exc.smtp_code >= 500)
        except OSError as exc:  # SMTPServerDisconnected, a socket error
            self.close()
            if kept:  # the server dropped the session while it waited: once more on a new one
                return self.send(sender, recipients, data, mail_options)
            raise SmtpConnectionLost(f"session failed: {type(exc).__name__}: {exc}") from exc
        outcome = SmtpOutcome(sent=tuple(r for r in recipients if r not in refused))
        for recipient, (code, message) in refused.items():
            (outcome.refused if code >= 500 else outcome.deferred)[recipient] = reply_text(code, message)
        return outcome

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except OSError:
                self._smtp.close()
            self._smtp = None

    def __enter__(self) -> SmtpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
