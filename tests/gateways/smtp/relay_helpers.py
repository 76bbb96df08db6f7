"""What the SMTP relay tests share: sample mail, settings and what the stamping functions take of
them, and the judgement of a relay configuration (imported by tests/gateways/smtp/test_*.py)."""

from __future__ import annotations

from pipeline.correlation.tokens import TokenCounter
from pipeline.gateways.smtp import policy
from pipeline.gateways.smtp.stamp import outbound_copies
from pipeline.settings import RelaySettings, Settings, TrackingSettings

TRACKING = TrackingSettings(base_url="https://t.example/track", keys={"k1": "a-test-secret-0123456789"},
                            current_key_id="k1")
STRONG_PASSWORD = "v7-Kq2pXw9Lm4Rt8"  # 16 characters, 15 different: what the off-loopback rule asks for


def settings(**relay) -> Settings:
    return Settings(tracking=TRACKING, relay=RelaySettings(**relay))


def prepare_outbound(raw: bytes, settings: Settings, counter: TokenCounter | None, *, recipient: str | None = None,
                     **options) -> bytes:
    """The final bytes of an outbound mail to one recipient (default: its single To/Cc/Bcc address)."""
    return outbound_copies(raw, *sections(settings), counter,
                           recipients=(recipient,) if recipient else (), **options)[0][1]


def sections(settings: Settings) -> tuple:
    """What the stamping functions take of the settings."""
    return settings.correlation, settings.relay, settings.tracking


def mail(*, subject: str = "Quote for 12 pumps", message_id: str | None = "<q1@acme.test>", extra: str = "",
         body: str = "Hello Bob,\nthe quote is attached.\n", content_type: str = "text/plain") -> bytes:
    lines = ["From: Ann <ann@acme.test>", "To: Bob <bob@customer.test>", f"Subject: {subject}"]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    lines += [line for line in extra.splitlines() if line]
    lines += ["MIME-Version: 1.0", f"Content-Type: {content_type}; charset=utf-8", "", body.replace("\n", "\r\n")]
    return "\r\n".join(lines).encode()


def judged(inbound: bool = False, host: str = "127.0.0.1", **relay) -> list[str]:
    settings = Settings(relay={"upstream": {"host": "smtp.acme.test"}, **relay})
    return [str(p) for p in policy.relay_config_problems(settings, inbound=inbound, host=host)]
