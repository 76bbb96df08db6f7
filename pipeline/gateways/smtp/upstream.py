"""The relay's hand-over to the upstream smarthost (or next hop): one SMTP session per message,
the outcome per recipient (delivered, temporary, permanent)."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pipeline.settings import RelaySettings

PASSED_MAIL_OPTIONS = ("SMTPUTF8", "BODY=8BITMIME")


@dataclass
class DeliveryResult:
    delivered: tuple[str, ...] = ()
    temporary: dict[str, str] = field(default_factory=dict)   # recipient -> reason (4xx, connection)
    permanent: dict[str, str] = field(default_factory=dict)   # recipient -> reason (5xx)
    unreachable: bool = False                                 # no session with the upstream at all

    @property
    def first_permanent(self) -> str:
        return next(iter(self.permanent.values()), "")


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return f"{code} {' '.join(text.split())}"[:300]


def deliver_upstream(relay: RelaySettings, mail_from: str, rcpt_tos: Sequence[str], data: bytes,
                     mail_options: Sequence[str] = (), smtp_factory: Callable[..., smtplib.SMTP] = smtplib.SMTP
                     ) -> DeliveryResult:
    """Hand one message to ``relay.upstream_host``; say, per recipient, what became of it."""
    rcpts = tuple(rcpt_tos)
    options = [o for o in mail_options if o.upper() in PASSED_MAIL_OPTIONS]

    def everyone(reason: str, *, permanent: bool, unreachable: bool = False) -> DeliveryResult:
        reasons = {r: reason for r in rcpts}
        return DeliveryResult(permanent=reasons if permanent else {}, temporary={} if permanent else reasons,
                              unreachable=unreachable)

    try:
        smtp = smtp_factory(relay.upstream_host, relay.upstream_port, timeout=relay.upstream_timeout_s)
    except (OSError, smtplib.SMTPException) as exc:
        return everyone(f"upstream unreachable: {type(exc).__name__}: {exc}", permanent=False, unreachable=True)
    try:
        try:
            smtp.ehlo()
            if relay.upstream_starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if relay.upstream_username:
                smtp.login(relay.upstream_username, relay.upstream_password or "")
        except smtplib.SMTPAuthenticationError as exc:  # our configuration: keep the mail, say so
            return everyone(f"upstream refused relay.upstream_username's login: {_reply(exc.smtp_code, exc.smtp_error)}",
                            permanent=False, unreachable=True)
        except (OSError, smtplib.SMTPException) as exc:
            return everyone(f"upstream session failed: {type(exc).__name__}: {exc}", permanent=False, unreachable=True)
        try:
            refused = smtp.sendmail(mail_from, list(rcpts), data, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients
        except smtplib.SMTPResponseException as exc:  # MAIL FROM or DATA refused: the same for everyone
            return everyone(_reply(exc.smtp_code, exc.smtp_error), permanent=exc.smtp_code >= 500)
        except (OSError, smtplib.SMTPException) as exc:
            return everyone(f"upstream session failed: {type(exc).__name__}: {exc}", permanent=False)
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
    result = DeliveryResult(delivered=tuple(r for r in rcpts if r not in refused))
    for rcpt, (code, message) in refused.items():
        (result.permanent if code >= 500 else result.temporary)[rcpt] = _reply(code, message)
    return result
