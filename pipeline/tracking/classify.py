"""Classify an open or click hit: human or machine (with the reason), client family, open count,
probable forwarding.  Pure: every fact (the hit, the mail's delivery time and link count, the
earlier hits of the same mail and recipient, the settings) is passed in.

Machine hits are classified, never dropped.  Rules, first match wins (reason codes are stable):

``head_request``        HEAD instead of GET: link checkers and scanners, never a mail client
``no_user_agent``       no User-Agent header at all
``bot_user_agent``      a crawler / HTTP-library / headless-browser user agent
``prefetch``            a ``Purpose`` / ``Sec-Purpose`` / ``X-Purpose`` / ``X-Moz`` prefetch or preview header
``google_image_proxy``  Gmail's image proxy (``GoogleImageProxy`` / ``ggpht.com`` in the UA, or an
                        address in ``google_proxy_networks``)
``apple_mpp``           Apple Mail Privacy Protection: the bare ``Mozilla/5.0`` user agent, or (opens
                        only) an address in ``apple_proxy_networks``
``datacenter_ip``       an address in ``datacenter_networks``
``datacenter_rdns``     a PTR name of a cloud provider's compute hosts (only when a PTR is given)
``scanner_fast_click``  a click within ``scanner_window_s`` of delivery
``scanner_all_links``   clicks on every link of the mail (when it has at least 2; at least 3
                        distinct links when the link count is unknown) within ``scanner_window_s``
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Iterable, Literal, Mapping, Sequence

from pipeline.settings import TrackingSettings

HEAD_REQUEST = "head_request"
NO_USER_AGENT = "no_user_agent"
BOT_USER_AGENT = "bot_user_agent"
PREFETCH = "prefetch"
GOOGLE_IMAGE_PROXY = "google_image_proxy"
APPLE_MPP = "apple_mpp"
DATACENTER_IP = "datacenter_ip"
DATACENTER_RDNS = "datacenter_rdns"
SCANNER_FAST_CLICK = "scanner_fast_click"
SCANNER_ALL_LINKS = "scanner_all_links"
MACHINE_REASONS = (HEAD_REQUEST, NO_USER_AGENT, BOT_USER_AGENT, PREFETCH, GOOGLE_IMAGE_PROXY, APPLE_MPP,
                   DATACENTER_IP, DATACENTER_RDNS, SCANNER_FAST_CLICK, SCANNER_ALL_LINKS)

APPLE_MAIL, OUTLOOK, GMAIL, THUNDERBIRD, YAHOO = "Apple Mail", "Outlook", "Gmail", "Thunderbird", "Yahoo"
CHROME, FIREFOX, SAFARI, EDGE, OTHER = "Chrome", "Firefox", "Safari", "Edge", "other"

Kind = Literal["open", "click"]

# Apple's MPP proxy sends exactly this user agent, nothing after it.
_APPLE_PROXY_UA = "Mozilla/5.0"
_GOOGLE_PROXY = re.compile(r"GoogleImageProxy|ggpht\.com", re.IGNORECASE)
_BOT = re.compile(
    r"(?:bot|crawler|spider|scanner|preview)(?:[/;)\s]|$)"      # Googlebot/2.1, SomeCrawler;, LinkPreview)
    r"|\+https?://"                                             # "(+http://example.com/bot.html)"
    r"|^(?:curl|wget|python-requests|python-urllib|python-httpx|aiohttp|go-http-client|java|libwww-perl|"
    r"apache-httpclient|okhttp|axios|node-fetch|got|postmanruntime|httpie)/"
    r"|headlesschrome|phantomjs|slimerjs",
    re.IGNORECASE,
)
_PREFETCH_HEADERS = ("purpose", "sec-purpose", "x-purpose", "x-moz")
_PREFETCH_VALUES = re.compile(r"prefetch|preview|prerender", re.IGNORECASE)
# Reverse DNS of cloud compute hosts: EC2 (ec2-1-2-3-4.compute-1.amazonaws.com) and Google Compute
# Engine (4.3.2.1.bc.googleusercontent.com).
_CLOUD_PTR_SUFFIXES = (".amazonaws.com", ".googleusercontent.com")


# -- facts in, classification out -------------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    """One request to the pixel or a click URL (verified token, not yet classified)."""

    kind: Kind
    time: datetime
    method: str = "GET"
    ip: str | None = None
    user_agent: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    link_url: str | None = None      # clicks: the URL from the token
    reverse_dns: str | None = None   # PTR name, when settings.reverse_dns looked it up


@dataclass(frozen=True)
class MailFacts:
    """What is known about the tracked mail: when it was delivered, how many distinct links were rewritten."""

    sent_at: datetime | None = None
    link_count: int | None = None


@dataclass(frozen=True)
class PreviousHit:
    """What the classifier remembers of an earlier hit of the same (mail, recipient)."""

    kind: Kind
    time: datetime
    is_machine: bool
    user_agent_family: str
    network: str | None = None
    link_url: str | None = None


@dataclass(frozen=True)
class Classification:
    is_machine: bool
    machine_reason: str | None
    user_agent_family: str
    nth_open: int                    # human opens so far, this one included when it is one
    first_open_time: datetime | None  # the first human open (this hit when it is the first)
    probably_forwarded: bool
    ip: str | None                   # the address to store: anonymised when settings say so
    network: str | None              # /16 (IPv4) or /48 (IPv6) of the raw address, for forwarding

    def remember(self, hit: Hit) -> PreviousHit:
        """The record to keep for the next hits of the same mail and recipient."""
        return PreviousHit(kind=hit.kind, time=hit.time, is_machine=self.is_machine,
                           user_agent_family=self.user_agent_family, network=self.network, link_url=hit.link_url)


# -- helpers ----------------------------------------------------------------------------------

def user_agent_family(user_agent: str | None) -> str:
    """A coarse family: the mail clients and browsers that matter for tracking, else ``other``."""
    ua = (user_agent or "").strip()
    if not ua:
        return OTHER
    if _GOOGLE_PROXY.search(ua):
        return GMAIL
    if "YahooMailProxy" in ua or ("Yahoo" in ua and "Mail" in ua):
        return YAHOO
    if re.search(r"Microsoft Outlook|MSOffice|ms-office|Outlook-(?:iOS|Android)|Microsoft Office", ua, re.IGNORECASE):
        return OUTLOOK
    if "Thunderbird/" in ua:
        return THUNDERBIRD
    if ua == _APPLE_PROXY_UA:
        return APPLE_MAIL  # the MPP proxy fetches on behalf of Apple Mail
    if "Edg/" in ua or "EdgA/" in ua or "EdgiOS/" in ua or "Edge/" in ua:
        return EDGE
    if "OPR/" in ua or "SamsungBrowser/" in ua:
        return OTHER  # Chromium-based, but not Chrome
    if "Chrome/" in ua or "CriOS/" in ua or "Chromium/" in ua:
        return CHROME
    if "Firefox/" in ua or "FxiOS/" in ua:
        return FIREFOX
    if "AppleWebKit/" in ua and re.search(r"Macintosh|iPhone|iPad", ua):
        # Safari says "Version/x Safari/y"; Apple Mail's WebKit view says neither.
        return SAFARI if "Safari/" in ua and "Version/" in ua else APPLE_MAIL
    return OTHER


def _parse_ip(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def anonymize_ip(ip: str | None) -> str | None:
    """Zero the last octet of an IPv4 address and the last 80 bits of an IPv6 one.  Text that is
    no address comes back as None (it must not be stored as if it were one)."""
    address = _parse_ip(ip)
    if address is None:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def network_of(ip: str | None) -> str | None:
    """The /16 (IPv4) or /48 (IPv6) network: "the same place" for forwarding detection."""
    address = _parse_ip(ip)
    if address is None:
        return None
    prefix = 16 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@lru_cache(maxsize=64)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def in_networks(ip: str | None, cidrs: Iterable[str]) -> bool:
    address = _parse_ip(ip)
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in _networks(tuple(cidrs)))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


# -- the rules --------------------------------------------------------------------------------

def machine_reason(hit: Hit, mail: MailFacts, previous: Sequence[PreviousHit], settings: TrackingSettings) -> str | None:
    """The reason code of the first machine rule that matches, else None (a human hit)."""
    ua = (hit.user_agent or "").strip()
    if hit.method.upper() == "HEAD":
        return HEAD_REQUEST
    if not ua:
        return NO_USER_AGENT
    if _BOT.search(ua):
        return BOT_USER_AGENT
    for name in _PREFETCH_HEADERS:
        value = _header(hit.headers, name)
        if value is not None and _PREFETCH_VALUES.search(value):
            return PREFETCH
    if _GOOGLE_PROXY.search(ua) or in_networks(hit.ip, settings.google_proxy_networks):
        return GOOGLE_IMAGE_PROXY
    # MPP prefetches images, it does not click: a click from Apple's network with a real browser
    # user agent is a person (an Apple employee, say), so the address rule is for opens only.
    if ua == _APPLE_PROXY_UA or (hit.kind == "open" and in_networks(hit.ip, settings.apple_proxy_networks)):
        return APPLE_MPP
    if in_networks(hit.ip, settings.datacenter_networks):
        return DATACENTER_IP
    if hit.reverse_dns and hit.reverse_dns.lower().rstrip(".").endswith(_CLOUD_PTR_SUFFIXES):
        return DATACENTER_RDNS
    if hit.kind == "click":
        window = settings.scanner_window_s
        if mail.sent_at is not None and 0 <= _seconds(hit.time, mail.sent_at) <= window:
            return SCANNER_FAST_CLICK
        links = {p.link_url for p in previous
                 if p.kind == "click" and p.link_url and 0 <= _seconds(hit.time, p.time) <= window}
        if hit.link_url:
            links.add(hit.link_url)
        # One click on a one-link mail is not "every link": that rule needs at least two.
        needed = mail.link_count if mail.link_count is not None else 3
        if needed >= 2 and len(links) >= needed:
            return SCANNER_ALL_LINKS
    return None


def classify_hit(hit: Hit, mail: MailFacts, previous: Sequence[PreviousHit], settings: TrackingSettings) -> Classification:
    """Classify ``hit`` given the mail and the earlier hits (any order) of the same mail and recipient."""
    reason = machine_reason(hit, mail, previous, settings)
    is_machine = reason is not None
    family = user_agent_family(hit.user_agent)
    network = network_of(hit.ip)
    human = sorted((p for p in previous if not p.is_machine), key=lambda p: p.time)
    human_opens = [p for p in human if p.kind == "open"]
    this_is_human_open = not is_machine and hit.kind == "open"
    nth_open = len(human_opens) + (1 if this_is_human_open else 0)
    first_open_time = human_opens[0].time if human_opens else (hit.time if this_is_human_open else None)
    forwarded = False
    if not is_machine and human_opens:
        networks = {p.network for p in human if p.network}
        new_network = network is not None and bool(networks) and network not in networks
        # A click opens a browser, not the mail client: only opens compare client families.
        new_family = hit.kind == "open" and family not in {p.user_agent_family for p in human_opens}
        forwarded = new_network or new_family
    address = _parse_ip(hit.ip)
    ip = anonymize_ip(hit.ip) if settings.anonymize_ip else (str(address) if address is not None else None)
    return Classification(is_machine=is_machine, machine_reason=reason, user_agent_family=family, nth_open=nth_open,
                          first_open_time=first_open_time, probably_forwarded=forwarded, ip=ip, network=network)
