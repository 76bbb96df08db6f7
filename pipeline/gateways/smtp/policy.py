"""Who may use ``threadline smtp`` and how much: the relay's access rules, per-client limits and
the judgement of its configuration, without I/O (the relay and ``threadline doctor`` share them).

* Outbound (submission): a client submits only when it logged in or its address is in
  ``relay.client_networks``, and the envelope sender must be in the organisation's own domains.
* Inbound (MX side): anyone may connect, but only recipients in the own domains are accepted.
* Both: ``relay.max_recipients_per_message``, per-client token buckets for messages and
  recipients, connection caps and session time limits (docs/smtp.md "Who may send").
* AUTH: an empty password never logs anyone in; failed logins are limited per connection and
  per client address over a window; off loopback the password must not be weak
  (docs/smtp.md "STARTTLS and AUTH").
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from pipeline.settings import RelaySettings, Settings
from pipeline.tracking.safety import (MIN_DISTINCT_CHARS, MIN_PASSWORD_CHARS, is_loopback_host, password_problem,
                                      reason_text)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

class RelayError(RuntimeError):
    """The relay cannot start as configured; the message says what to fix."""


# SMTP replies of the access rules and limits (RFC 5321 reply codes, RFC 3463 enhanced codes).
AUTH_REQUIRED = "530 5.7.0 Authentication required"
CLIENT_NOT_ALLOWED = "550 5.7.1 Relaying denied: this client may not send mail through this relay"
SENDER_NOT_OURS = "553 5.7.1 Sender address rejected: not in a domain of this organisation"
RECIPIENT_NOT_OURS = "550 5.7.1 Relaying denied: recipient not in a domain of this server"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
MESSAGE_RATE = "451 4.7.1 Too many messages from your address; try again later"
RECIPIENT_RATE = "451 4.7.1 Too many recipients from your address; try again later"
CONNECTIONS_PER_CLIENT = "421 4.7.0 Too many connections from your address; try again later"
CONNECTIONS_TOTAL = "421 4.7.0 Too many connections; try again later"
SESSION_TOO_LONG = "421 4.4.2 Session time limit reached; closing connection"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
# RFC 4954: 454 4.7.0 is a temporary authentication failure; the client may try again later.
AUTH_CLIENT_LOCKED = "454 4.7.0 Too many failed logins from your address; try again later"
AUTH_CONNECTION_CLOSED = "421 4.7.0 Too many failed logins; closing connection"

# A limiter that remembers every address it ever saw is itself a memory leak an attacker can
# drive (IPv6 gives them plenty): past this many, clients whose buckets are full are forgotten.
_TRACKED_CLIENTS = 50_000


def normalise_domain(domain: str) -> str:
    """Lower case, no trailing dot, IDNA (``bücher.test`` and ``xn--bcher-kva.test`` are one)."""
    text = domain.strip().rstrip(".").lower()
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:  # not a valid IDN (e.g. an address literal): compare it as written
        return text


def address_domain(address: str) -> str | None:
    """The normalised domain of an envelope address (``None`` for ``<>`` or no ``@``)."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    return normalise_domain(domain)


def own_domains(settings: Settings) -> frozenset[str]:
    """``relay.own_domains``, else ``untracked.own_domains`` (the organisation's mail domains)."""
    listed = settings.relay.own_domains or settings.untracked.own_domains
    return frozenset(normalise_domain(d) for d in listed if d.strip())


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


def client_ip(peer) -> IPAddress | None:
    """The client's address from aiosmtpd's ``session.peer``; an IPv4-mapped IPv6 address (a
    dual-stack listener) as the IPv4 address it is, so IPv4 networks match it."""
    try:
        ip = ipaddress.ip_address(peer[0] if isinstance(peer, (tuple, list)) else peer)
    except (ValueError, TypeError, IndexError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_key(peer) -> str:
    """What the limits count per: the IPv4 address, or the IPv6 /64 (one host usually holds a
    whole /64, so counting single IPv6 addresses would not limit anyone)."""
    ip = client_ip(peer)
    if ip is None:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def in_networks(ip: IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    return ip is not None and any(ip.version == net.version and ip in net for net in networks)


# -- AUTH -------------------------------------------------------------------------------------
def credentials_match(relay: RelaySettings, login: bytes, password: bytes) -> bool:
    """Whether ``login`` / ``password`` are ``relay.auth_username`` / ``relay.auth_password``.
    An empty password never matches, whatever the settings say (they refuse one too)."""
    user, secret = relay.auth_username, relay.auth_password
    if not user or not secret or not secret.strip() or not password:
        return False
    # Compared as digests: compare_digest on the values themselves returns early on a length
    # mismatch, which would tell a guesser the password's length.
    def digest(value: bytes) -> bytes:
        return hashlib.sha256(value).digest()

    user_ok = hmac.compare_digest(digest(login), digest(user.encode()))
    password_ok = hmac.compare_digest(digest(password), digest(secret.encode()))
    return user_ok and password_ok


# -- the configuration ------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigProblem:
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.problem} (fix: {self.fix})"


def relay_config_problems(settings: Settings, *, inbound: bool, host: str) -> list[ConfigProblem]:
    """Why a relay in this mode on ``host`` must not start; empty when it may."""
    relay = settings.relay
    problems = []
    loopback = is_loopback_host(host)
    if not relay.upstream.host:
        problems.append(ConfigProblem("relay.upstream.host is not set: the relay has no smarthost / next hop "
                                      "to hand mail to", "set relay.upstream.host"))
    if not own_domains(settings):
        problems.append(ConfigProblem(
            "no own domains: " + ("an inbound relay would accept no recipient" if inbound else
                                  "an outbound relay cannot tell the organisation's senders from forged ones"),
            "set relay.own_domains (or untracked.own_domains) to the organisation's mail domains"))
    tls = relay.tls_cert_file is not None
    if relay.auth_username and relay.auth_allow_plaintext and not tls and not loopback:
        problems.append(ConfigProblem(f"relay.auth_allow_plaintext is for loopback testing only, not for {host}",
                                      "configure relay.tls_cert_file and relay.tls_key_file to offer AUTH"))
    if relay.auth_username and not tls and not relay.auth_allow_plaintext:
        problems.append(ConfigProblem("AUTH needs STARTTLS", "set relay.tls_cert_file and relay.tls_key_file "
                                      "(or relay.auth_allow_plaintext for a loopback test)"))
    if relay.auth_username and not loopback:
        # Anyone who can reach the port may guess it; the failure limits slow guessing, they do
        # not make "change-me" safe.  (An empty password is refused by the settings already.)
        reason = password_problem(relay.auth_password or "")
        if reason is not None:
            problems.append(ConfigProblem(
                f"relay.auth_password {reason_text(reason, MIN_PASSWORD_CHARS)}, and the relay listens on {host}",
                f"set a password of at least {MIN_PASSWORD_CHARS} characters, {MIN_DISTINCT_CHARS} of them different, "
                "e.g. python -c \"import secrets; print(secrets.token_urlsafe(18))\", in "
                "THREADLINE_RELAY_AUTH_PASSWORD(_FILE)"))
    if not inbound and not loopback:
        if not (relay.auth_username and tls):
            problems.append(ConfigProblem(
                f"an outbound relay on {host} needs AUTH over TLS: without it only relay.client_networks "
                "decides who may send",
                "set relay.tls_cert_file, relay.tls_key_file, relay.auth_username and relay.auth_password, "
                "or listen on 127.0.0.1"))
        wide = [str(n) for n in parse_networks(relay.client_networks) if not n.is_loopback]
        if wide and not relay.trust_client_networks:
            problems.append(ConfigProblem(
                f"relay.client_networks lets {', '.join(wide)} send without logging in",
                "set relay.trust_client_networks = true if every host there may send as the organisation, "
                "or narrow relay.client_networks"))
    digits = settings.correlation.tracking_token.user_digits
    too_big = sorted(a for a, n in relay.sender_user_numbers.items() if n >= 10 ** digits)
    if too_big:
        problems.append(ConfigProblem(f"relay.sender_user_numbers: the numbers of {', '.join(too_big)} do not fit "
                                      f"correlation.tracking_token.user_digits ({digits})",
                                      "use smaller numbers or raise user_digits"))
    return problems


# -- limits -----------------------------------------------------------------------------------
class _Bucket:
    """A token bucket: ``capacity`` tokens, refilled at ``capacity / window_s`` per second, so a
    client gets at most ``capacity`` in a burst and that many per window on average."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, capacity: float, now: float) -> None:
        self.tokens = capacity
        self.stamp = now

    def refill(self, capacity: float, rate: float, now: float) -> None:
        self.tokens = min(capacity, self.tokens + (now - self.stamp) * rate)
        self.stamp = now


class RateLimit:
    """One token bucket per client key."""

    def __init__(self, capacity: int, window_s: float, clock: Callable[[], float]) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / window_s
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> bool:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _TRACKED_CLIENTS:
                self._forget_idle(now)
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
        bucket.refill(self.capacity, self.rate, now)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _forget_idle(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            bucket.refill(self.capacity, self.rate, now)
            if bucket.tokens >= self.capacity:  # a full bucket is the same as a new one
                del self._buckets[key]


class FailureWindow:
    """Failures per client key within the last ``window_s``; a key with ``budget`` of them is
    locked until enough of them are older than the window.

    Not a token bucket: a bucket gives a token back every ``window_s / budget`` seconds, so a
    locked-out guesser would get its next guess after 90 s (the defaults) instead of after the window."""

    def __init__(self, budget: int, window_s: float, clock: Callable[[], float]) -> None:
        self.budget = budget
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}   # key -> times of its recent failures, oldest first

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def locked(self, key: str) -> bool:
        times = self._recent(key, self.clock())
        return times is not None and len(times) >= self.budget

    def fail(self, key: str) -> bool:
        """Count a failure; True when it is the one that locks the key."""
        now = self.clock()
        times = self._recent(key, now)
        if times is None:
            if len(self._failures) >= _TRACKED_CLIENTS:
                for other in list(self._failures):  # forget keys whose failures all expired
                    self._recent(other, now)
            times = self._failures[key] = deque(maxlen=self.budget)
        times.append(now)
        return len(times) == self.budget


class ClientLimits:
    """Per-client rates and connection counts of one relay (shared by all its sessions)."""

    def __init__(self, relay: RelaySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.relay = relay
        self.messages = RateLimit(relay.max_messages_per_client, relay.rate_window_s, clock)
        self.recipients = RateLimit(relay.max_recipients_per_client, relay.rate_window_s, clock)
        self.logins = FailureWindow(relay.max_auth_failures_per_client, relay.auth_failure_window_s, clock)
        self.connections: dict[str, int] = {}
        self.open_connections = 0
        self._lock = threading.Lock()

    def connect(self, key: str) -> str | None:
        """Count a new connection; the 421 reply when it is one too many (then not counted)."""
        with self._lock:
            if self.open_connections >= self.relay.max_connections:
                return CONNECTIONS_TOTAL
            if self.connections.get(key, 0) >= self.relay.max_connections_per_client:
                return CONNECTIONS_PER_CLIENT
            self.connections[key] = self.connections.get(key, 0) + 1
            self.open_connections += 1
            return None

    def disconnect(self, key: str) -> None:
        with self._lock:
            if key not in self.connections:
                return
            self.open_connections -= 1
            left = self.connections[key] - 1
            if left > 0:
                self.connections[key] = left
            else:
                self.connections.pop(key, None)

    def take_message(self, key: str) -> bool:
        with self._lock:
            return self.messages.take(key)

    def take_recipient(self, key: str) -> bool:
        with self._lock:
            return self.recipients.take(key)

    def login_locked(self, key: str) -> bool:
        """Whether this client used up ``relay.max_auth_failures_per_client`` for now."""
        with self._lock:
            return self.logins.locked(key)

    def login_failed(self, key: str) -> bool:
        """Count a failed login; True when it locks the client out (log it once, then)."""
        with self._lock:
            return self.logins.fail(key)
