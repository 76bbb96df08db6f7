"""Whether this run may sign and verify tracking tokens with its keys (issue 13): pure rules, no I/O.

Whoever knows a tracking key can forge opens, clicks that redirect anywhere through our domain,
and unsubscribes of any address.  So every command that signs or verifies tokens for real (the
endpoint ``threadline tracking``, ``campaign send``, ``worker``, ``up``, the outbound ``smtp``,
``mark``, ``generate``) refuses an unsafe key unless the run is the loopback demo, and
``threadline doctor`` reports it.

**Unsafe key** (:func:`key_problems`, every listed key counts, since every listed key verifies):

* ``development``: the built-in default (:data:`~pipeline.settings.DEVELOPMENT_TRACKING_KEY`),
  public because it is in the source;
* ``example``: contains a secret shipped as an example in docs/, deploy/ or README.md
  (:data:`EXAMPLE_SECRETS`, the one list; a test scans those folders so a new example cannot
  slip past), ignoring case and everything but letters and digits, since a copied example is as
  public with a suffix or other separators;
* ``short``: fewer than :data:`MIN_SECRET_CHARS` (32) characters;
* ``repetitive``: fewer than :data:`MIN_DISTINCT_CHARS` (8) different characters, or one shorter
  piece repeated (``abcd`` * 8).

These catch mistakes; they are not a strength meter.  A generated key passes them:
``secrets.token_urlsafe(32)`` has 43 characters (256 bits), ``secrets.token_hex(16)`` 32 (128 bits);
of 200,000 generated hex keys the fewest different characters seen was 9.

**Loopback demo** (:func:`is_loopback_demo`): the broker is the embedded one (``kafka.bootstrap``
unset) or every bootstrap host is loopback, *and* the host of ``tracking.base_url`` is loopback.
Both are needed: with a loopback broker only this machine can put hits and mail into the
pipeline, and with loopback links no outside recipient can use (or be tricked by) a token.
``threadline up`` exports its embedded broker as ``THREADLINE_KAFKA_BOOTSTRAP=127.0.0.1:PORT``,
and that still counts as the demo (issue 17: the doctor took any set bootstrap for a cluster).
Loopback hosts: ``localhost``, 127.0.0.0/8, ``::1`` (also IPv4-mapped); not ``0.0.0.0``, which
as a listen address means every interface.  Names are not resolved (pure), so only the literal
``localhost`` counts among names.

The endpoint has one more condition: its listen host must be loopback too when a key is unsafe,
since anyone who can reach it can forge hits whatever base_url says.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal, Mapping
from urllib.parse import urlsplit

from pipeline.settings import DEVELOPMENT_TRACKING_KEY, TrackingSettings

MIN_SECRET_CHARS = 32
MIN_DISTINCT_CHARS = 8
MIN_PASSWORD_CHARS = 16  # password_problem: typed by people, guesses limited by the relay

# Every secret shipped as an example (docs/, deploy/, README.md), here and nowhere else.
# tests/tracking/test_tracking_safety.py fails when a doc assigns a tracking key these rules accept.
EXAMPLE_SECRETS: tuple[str, ...] = (
    DEVELOPMENT_TRACKING_KEY,
    "replace-with-a-long-random-secret",  # deploy/compose/threadline.env.example
    "change-me",  # grafana-reader.sql's reader password until issue 13 (a password, but people copy placeholders)
)

GENERATE_KEY = "python -c \"import secrets; print(secrets.token_urlsafe(32))\""

Reason = Literal["development", "example", "short", "repetitive"]


@dataclass(frozen=True)
class KeyProblem:
    key_id: str
    reason: Reason

    def describe(self) -> str:
        return f"key {self.key_id!r} {reason_text(self.reason)}"


def reason_text(reason: Reason, min_chars: int = MIN_SECRET_CHARS) -> str:
    """What is wrong with a secret, after its name: ``is shorter than 32 characters``."""
    return {
        "development": "is the built-in development key, which is public",
        "example": "is (or contains) an example secret from the documentation, which is public",
        "short": f"is shorter than {min_chars} characters",
        "repetitive": f"has fewer than {MIN_DISTINCT_CHARS} different characters or repeats one piece",
    }[reason]


def _letters_and_digits(text: str) -> str:
    # A copied example stays public with other case or separators: replace_with_a_long_random_secret.
    return "".join(char for char in text.casefold() if char.isalnum())


def _problem(secret: str, min_chars: int = MIN_SECRET_CHARS) -> Reason | None:
    if secret.startswith("INSECURE-development-key"):
        return "development"
    if any(_letters_and_digits(example) in _letters_and_digits(secret) for example in EXAMPLE_SECRETS):
        return "example"
    if len(secret) < min_chars:
        return "short"
    # s is a repetition of a shorter piece exactly when it occurs inside (s + s) without its ends.
    if len(set(secret)) < MIN_DISTINCT_CHARS or secret in (secret + secret)[1:-1]:
        return "repetitive"
    return None


def password_problem(password: str) -> Reason | None:
    """The key rules for a password a person types (the SMTP relay's ``relay.auth_password``):
    the same development / example / repetitive checks, but :data:`MIN_PASSWORD_CHARS` (16)
    characters suffice, since a client's configuration holds it and the relay limits guesses."""
    return _problem(password, MIN_PASSWORD_CHARS)


def key_problems(keys: Mapping[str, str]) -> list[KeyProblem]:
    """The first problem of each unsafe key, in key id order; empty when every key is usable."""
    return [KeyProblem(key_id, reason) for key_id in sorted(keys) if (reason := _problem(keys[key_id])) is not None]


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (brackets, a trailing dot and an IPv6 zone allowed)."""
    host = host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def bootstrap_hosts(bootstrap: str) -> list[str]:
    """The hosts of a librdkafka bootstrap list: ``host:port``, ``[v6]:port``, ``PROTO://host:port``."""
    hosts = []
    for entry in bootstrap.split(","):
        entry = re.sub(r"^[A-Za-z][A-Za-z0-9_+.-]*://", "", entry.strip()).rstrip("/")
        if not entry:
            continue
        if entry.startswith("["):
            hosts.append(entry[1:entry.index("]")] if "]" in entry else entry[1:])
        elif entry.count(":") == 1:
            hosts.append(entry.split(":", 1)[0])
        else:  # a bare host, or an IPv6 address without brackets or port
            hosts.append(entry)
    return hosts


def is_loopback_demo(bootstrap: str | None, base_url: str) -> bool:
    """True when the broker is embedded or loopback and tracking links point at a loopback host."""
    broker_local = all(is_loopback_host(host) for host in bootstrap_hosts(bootstrap or ""))
    return broker_local and is_loopback_host(urlsplit(base_url).hostname or "")


def _not_demo_because(bootstrap: str | None, base_url: str) -> list[str]:
    reasons = []
    remote = [host for host in bootstrap_hosts(bootstrap or "") if not is_loopback_host(host)]
    if remote:
        reasons.append(f"kafka.bootstrap names {remote[0]}, which is not loopback")
    if not is_loopback_host(urlsplit(base_url).hostname or ""):
        reasons.append(f"tracking.base_url {base_url} sends recipients to a host that is not loopback")
    return reasons


def fix_text() -> str:
    return (f"generate a key with `{GENERATE_KEY}`, put it in tracking.keys (THREADLINE_TRACKING_KEYS, a JSON "
            "object such as '{\"k1\": \"<the key>\"}'), set tracking.current_key_id "
            "(THREADLINE_TRACKING_CURRENT_KEY_ID) to its id and remove the unsafe keys; tokens signed with "
            "them stop working (docs/tracking.md, \"Keys\")")


def key_refusal(tracking: TrackingSettings, bootstrap: str | None, command: str, *,
                listen_host: str | None = None) -> str | None:
    """Why ``command`` must not run with these settings, and the fix; None when it may: every key
    is usable, or this is the loopback demo (and ``listen_host``, for the endpoint, is loopback)."""
    reason = refusal_reason(tracking, bootstrap, listen_host=listen_host)
    return None if reason is None else f"{command} refuses to run: {reason}. Fix: {fix_text()}."


def refusal_reason(tracking: TrackingSettings, bootstrap: str | None, *, listen_host: str | None = None) -> str | None:
    """What is unsafe and why this is not the loopback demo; None when nothing is refused."""
    problems = key_problems(tracking.keys)
    if not problems:
        return None
    why = _not_demo_because(bootstrap, tracking.base_url)
    if listen_host is not None and not is_loopback_host(listen_host):
        why.append(f"it listens on {listen_host or 'every interface'}, which is not loopback")
    if not why:
        return None
    return (f"tracking {'; '.join(p.describe() for p in problems)}, so anyone can forge "
            f"opens, clicks and unsubscribes, and this is not the loopback demo ({'; '.join(why)})")


def demo_note(tracking: TrackingSettings) -> str:
    """For the doctor: what an unsafe key in the loopback demo means."""
    problems = key_problems(tracking.keys)
    return (f"tracking {'; '.join(p.describe() for p in problems)}: fine for the loopback demo (broker and links "
            "on this machine); every command that signs or verifies tokens refuses it anywhere else")
