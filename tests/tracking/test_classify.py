"""Hit classification: one machine rule at a time, client families, open counts, forwarding, IPs."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.settings import TrackingSettings
from pipeline.tracking.classify import (
    MACHINE_REASONS, Hit, MailFacts, PreviousHit, anonymize_ip, classify_hit, in_networks, network_of,
    user_agent_family,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
SETTINGS = TrackingSettings(datacenter_networks=("203.0.113.0/24", "2001:db8:dc::/48"))
MAIL = MailFacts(sent_at=T0, link_count=3)

CHROME_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/122.0.0.0 Safari/537.36")
OUTLOOK_UA = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)"
APPLE_MAIL_UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
THUNDERBIRD_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.8.0"
GOOGLE_PROXY_UA = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
HOME_IP = "198.51.100.23"      # a residential address in these tests
OFFICE_IP = "192.0.2.77"       # another /16


def hit(kind="open", *, after_s: float = 3600, ua: str | None = CHROME_UA, ip: str | None = HOME_IP,
        method="GET", headers=None, link=None, rdns=None) -> Hit:
    if kind == "click" and link is None:
        link = "https://www.example.com/a"
    return Hit(kind=kind, time=T0 + timedelta(seconds=after_s), method=method, ip=ip, user_agent=ua,
               headers=headers or {}, link_url=link, reverse_dns=rdns)


def classify(h: Hit, previous=(), mail=MAIL, settings_=SETTINGS):
    return classify_hit(h, mail, list(previous), settings_)


def reason(h: Hit, previous=(), mail=MAIL, settings_=SETTINGS):
    return classify(h, previous, mail, settings_).machine_reason


def prev(kind="open", *, after_s: float = 3600, machine=False, family="Outlook", ip=HOME_IP, link=None) -> PreviousHit:
    return PreviousHit(kind=kind, time=T0 + timedelta(seconds=after_s), is_machine=machine, user_agent_family=family,
                       network=network_of(ip), link_url=link)


# --- human baseline --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["open", "click"])
def test_a_person_an_hour_later_is_human(kind):
    result = classify(hit(kind, ua=OUTLOOK_UA if kind == "open" else CHROME_UA))
    assert (result.is_machine, result.machine_reason) == (False, None)


# --- machine rules, each with its reason -----------------------------------------------------

@pytest.mark.parametrize("kind", ["open", "click"])
def test_head_request(kind):
    assert reason(hit(kind, method="HEAD")) == "head_request"
    assert reason(hit(kind, method="head")) == "head_request"


@pytest.mark.parametrize("ua", [None, "", "   "])
def test_no_user_agent(ua):
    assert reason(hit(ua=ua)) == "no_user_agent"


@pytest.mark.parametrize("ua", [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0)",
    "curl/8.5.0", "Wget/1.21.4", "python-requests/2.31.0", "Python-urllib/3.11", "Go-http-client/1.1",
    "Java/17.0.2", "Apache-HttpClient/4.5.14 (Java/17)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Some Link Scanner",
])
def test_bot_user_agents(ua):
    assert reason(hit("click", ua=ua)) == "bot_user_agent"


@pytest.mark.parametrize("headers", [{"Purpose": "prefetch"}, {"sec-purpose": "prefetch;prerender"},
                                     {"X-Purpose": "preview"}, {"X-Moz": "prefetch"}])
def test_prefetch_headers(headers):
    assert reason(hit("click", headers=headers)) == "prefetch"


def test_unrelated_headers_do_not_make_a_machine():
    assert reason(hit("click", headers={"Accept": "text/html", "Purpose": "navigate"})) is None


def test_google_image_proxy_by_user_agent_and_by_address():
    assert reason(hit(ua=GOOGLE_PROXY_UA)) == "google_image_proxy"
    assert reason(hit(ua=CHROME_UA, ip="66.249.84.10")) == "google_image_proxy"
    assert reason(hit(ua=CHROME_UA, ip="66.249.96.10")) is None  # just outside 66.249.64.0/19


def test_apple_mail_privacy_protection():
    assert reason(hit(ua="Mozilla/5.0")) == "apple_mpp"
    assert reason(hit(ua=" Mozilla/5.0 ")) == "apple_mpp"
    assert reason(hit(ua="Mozilla/5.0", ip=None)) == "apple_mpp"
    assert reason(hit(ua=APPLE_MAIL_UA, ip="17.58.100.1")) == "apple_mpp"      # opens from Apple's network
    assert reason(hit(ua=APPLE_MAIL_UA, ip=HOME_IP)) is None                   # Apple Mail itself, MPP off
    assert reason(hit(ua="Mozilla/5.0 (Macintosh)", ip=HOME_IP)) is None       # further tokens: not the proxy


def test_apple_network_clicks_are_people_unless_the_proxy_user_agent():
    assert reason(hit("click", ua=CHROME_UA, ip="17.58.100.1")) is None
    assert reason(hit("click", ua="Mozilla/5.0", ip=HOME_IP)) == "apple_mpp"


def test_configured_networks_replace_the_defaults():
    custom = TrackingSettings(apple_proxy_networks=("192.0.2.0/24",), google_proxy_networks=())
    assert reason(hit(ua=APPLE_MAIL_UA, ip="192.0.2.5"), settings_=custom) == "apple_mpp"
    assert reason(hit(ua=APPLE_MAIL_UA, ip="17.58.100.1"), settings_=custom) is None
    assert reason(hit(ip="66.249.84.10"), settings_=custom) is None


@pytest.mark.parametrize("ip", ["203.0.113.9", "2001:db8:dc:1::5", "::ffff:203.0.113.9"])
def test_datacenter_addresses(ip):
    assert reason(hit("click", ip=ip)) == "datacenter_ip"
    assert reason(hit("click", ip=ip), settings_=TrackingSettings()) is None  # no default datacenter list


@pytest.mark.parametrize("rdns, expected", [
    ("ec2-3-4-5-6.compute-1.amazonaws.com", "datacenter_rdns"),
    ("6.5.4.3.bc.googleusercontent.com.", "datacenter_rdns"),
    ("dsl-1-2-3-4.provider.example", None),
    ("amazonaws.com.evil.example", None),
])
def test_reverse_dns_of_cloud_hosts(rdns, expected):
    assert reason(hit("click", rdns=rdns)) == expected


def test_click_within_the_scanner_window_of_delivery():
    assert reason(hit("click", after_s=0)) == "scanner_fast_click"
    assert reason(hit("click", after_s=10)) == "scanner_fast_click"
    assert reason(hit("click", after_s=10.5)) is None
    assert reason(hit("click", after_s=-5)) is None                               # clock skew: not "within"
    assert reason(hit("click", after_s=5), mail=MailFacts(sent_at=None)) is None  # delivery unknown
    assert reason(hit("click", after_s=25), settings_=TrackingSettings(scanner_window_s=30)) == "scanner_fast_click"


def test_a_quick_open_is_not_a_scanner():
    assert reason(hit("open", after_s=2, ua=OUTLOOK_UA)) is None


def test_clicking_every_link_within_seconds():
    links = ["https://a.example/", "https://b.example/", "https://c.example/"]
    earlier = [prev("click", after_s=600, link=links[0], family="Chrome"),
               prev("click", after_s=603, link=links[1], family="Chrome")]
    assert reason(hit("click", after_s=605, link=links[2]), earlier) == "scanner_all_links"
    # the same clicks spread over minutes are a reader
    spread = [prev("click", after_s=300, link=links[0]), prev("click", after_s=450, link=links[1])]
    assert reason(hit("click", after_s=605, link=links[2]), spread) is None
    # not every link yet
    assert reason(hit("click", after_s=605, link=links[1]), earlier[:1]) is None
    # the same link twice is not "every link"
    assert reason(hit("click", after_s=605, link=links[0]), earlier[:1] * 2) is None


def test_every_link_of_a_two_link_mail_and_unknown_link_counts():
    two = MailFacts(sent_at=T0, link_count=2)
    earlier = [prev("click", after_s=600, link="https://a.example/")]
    assert reason(hit("click", after_s=601, link="https://b.example/"), earlier, mail=two) == "scanner_all_links"
    unknown = MailFacts(sent_at=T0)
    assert reason(hit("click", after_s=601, link="https://b.example/"), earlier, mail=unknown) is None
    three = earlier + [prev("click", after_s=600.5, link="https://c.example/")]
    assert reason(hit("click", after_s=601, link="https://b.example/"), three, mail=unknown) == "scanner_all_links"
    one = MailFacts(sent_at=T0, link_count=1)
    assert reason(hit("click", after_s=601, link="https://b.example/"), earlier, mail=one) is None


def test_rule_order_head_beats_everything():
    assert reason(hit("click", method="HEAD", ua=GOOGLE_PROXY_UA, ip="203.0.113.9", after_s=1)) == "head_request"
    assert reason(hit("click", ua="curl/8", ip="203.0.113.9", after_s=1)) == "bot_user_agent"
    assert reason(hit("click", ip="203.0.113.9", after_s=1)) == "datacenter_ip"


def test_every_reason_is_reachable_and_listed():
    seen = {
        reason(hit(method="HEAD")), reason(hit(ua=None)), reason(hit(ua="curl/8")),
        reason(hit(headers={"Purpose": "prefetch"})), reason(hit(ua=GOOGLE_PROXY_UA)), reason(hit(ua="Mozilla/5.0")),
        reason(hit(ip="203.0.113.1")), reason(hit(rdns="x.amazonaws.com")), reason(hit("click", after_s=1)),
        reason(hit("click", link="https://c.example/"), [prev("click", link="https://a.example/"),
                                                       prev("click", link="https://b.example/")]),
    }
    assert seen == set(MACHINE_REASONS)


# --- user agent families ---------------------------------------------------------------------

@pytest.mark.parametrize("ua, family", [
    (APPLE_MAIL_UA, "Apple Mail"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
     "Apple Mail"),
    ("Mozilla/5.0", "Apple Mail"),
    (OUTLOOK_UA, "Outlook"),
    ("Microsoft Outlook 16.0.17328; Pro", "Outlook"),
    ("Outlook-iOS/723.4027091.prod.iphone (4.2410.0)", "Outlook"),
    (GOOGLE_PROXY_UA, "Gmail"),
    (THUNDERBIRD_UA, "Thunderbird"),
    ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", "Yahoo"),
    (CHROME_UA, "Chrome"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "CriOS/122.0.6261.89 Mobile/15E148 Safari/604.1", "Chrome"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:123.0) Gecko/20100101 Firefox/123.0", "Firefox"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 "
     "Safari/605.1.15", "Safari"),
    (CHROME_UA + " Edg/122.0.2365.66", "Edge"),
    (CHROME_UA + " OPR/107.0.0.0", "other"),
    ("curl/8.5.0", "other"),
    (None, "other"),
    ("", "other"),
])
def test_user_agent_family(ua, family):
    assert user_agent_family(ua) == family


# --- open counts -----------------------------------------------------------------------------

def test_open_counts_and_first_open_skip_machines():
    mpp = prev("open", after_s=5, machine=True, family="Apple Mail")
    first = classify(hit("open", ua=OUTLOOK_UA, after_s=3600), [mpp])
    assert (first.nth_open, first.first_open_time) == (1, T0 + timedelta(seconds=3600))
    history = [mpp, prev("open", after_s=3600)]
    second = classify(hit("open", ua=OUTLOOK_UA, after_s=7200), history)
    assert (second.nth_open, second.first_open_time) == (2, T0 + timedelta(seconds=3600))
    machine = classify(hit("open", ua="Mozilla/5.0", after_s=9000), history)
    assert (machine.is_machine, machine.nth_open, machine.first_open_time) == (True, 1, T0 + timedelta(seconds=3600))
    click = classify(hit("click", after_s=9000), history)
    assert (click.nth_open, click.first_open_time) == (1, T0 + timedelta(seconds=3600))


def test_no_human_open_yet():
    result = classify(hit("click"), [prev("open", after_s=5, machine=True)])
    assert (result.nth_open, result.first_open_time) == (0, None)
    assert classify(hit("open", ua="Mozilla/5.0")).first_open_time is None


def test_previous_hits_may_come_in_any_order():
    history = [prev("open", after_s=7200), prev("open", after_s=3600)]
    assert classify(hit("open", ua=OUTLOOK_UA, after_s=9000), history).first_open_time == T0 + timedelta(seconds=3600)


# --- forwarding ------------------------------------------------------------------------------

def test_same_client_again_is_not_forwarded():
    assert not classify(hit("open", ua=OUTLOOK_UA), [prev("open", family="Outlook")]).probably_forwarded


def test_new_client_family_after_the_first_human_open_is_forwarded():
    assert classify(hit("open", ua=THUNDERBIRD_UA), [prev("open", family="Outlook")]).probably_forwarded


def test_new_network_after_the_first_human_open_is_forwarded():
    assert classify(hit("open", ua=OUTLOOK_UA, ip=OFFICE_IP), [prev("open", family="Outlook")]).probably_forwarded
    # the same /16, another host: not forwarded
    assert not classify(hit("open", ua=OUTLOOK_UA, ip="198.51.7.7"), [prev("open")]).probably_forwarded


def test_a_click_opens_a_browser_so_only_its_network_counts():
    history = [prev("open", family="Outlook")]
    assert not classify(hit("click", ua=CHROME_UA), history).probably_forwarded
    assert classify(hit("click", ua=CHROME_UA, ip=OFFICE_IP), history).probably_forwarded


def test_no_forwarding_before_a_human_open_or_for_machines():
    assert not classify(hit("open", ua=THUNDERBIRD_UA), [prev("open", machine=True, family="Apple Mail")]).probably_forwarded
    assert not classify(hit("open", ua=THUNDERBIRD_UA)).probably_forwarded
    assert not classify(hit("open", ua="Mozilla/5.0", ip=OFFICE_IP), [prev("open")]).probably_forwarded


def test_unknown_addresses_do_not_count_as_a_new_network():
    assert not classify(hit("open", ua=OUTLOOK_UA, ip=None), [prev("open")]).probably_forwarded
    assert not classify(hit("open", ua=OUTLOOK_UA, ip=OFFICE_IP), [prev("open", ip=None)]).probably_forwarded


def test_remember_feeds_the_next_classification():
    first_hit = hit("open", ua=OUTLOOK_UA)
    first = classify(first_hit)
    remembered = first.remember(first_hit)
    assert (remembered.is_machine, remembered.user_agent_family, remembered.network) == (False, "Outlook", "198.51.0.0/16")
    assert classify(hit("open", ua=THUNDERBIRD_UA, after_s=7200), [remembered]).probably_forwarded


# --- addresses -------------------------------------------------------------------------------

@pytest.mark.parametrize("ip, anonymized", [
    ("198.51.100.23", "198.51.100.0"),
    ("2001:db8:1234:5678:9abc:def0:1234:5678", "2001:db8:1234::"),
    ("::ffff:198.51.100.23", "198.51.100.0"),
    (" 10.1.2.3 ", "10.1.2.0"),
    ("not an ip", None),
    ("", None),
    (None, None),
])
def test_anonymize_ip(ip, anonymized):
    assert anonymize_ip(ip) == anonymized


def test_stored_address_follows_the_setting():
    assert classify(hit(ip="198.51.100.23")).ip == "198.51.100.0"
    assert classify(hit(ip="198.51.100.23"), settings_=TrackingSettings(anonymize_ip=False)).ip == "198.51.100.23"
    assert classify(hit(ip="garbage"), settings_=TrackingSettings(anonymize_ip=False)).ip is None


IPS = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@settings(max_examples=150, deadline=None)
@given(IPS)
def test_anonymization_keeps_the_network_and_drops_the_host(ip):
    anonymized = anonymize_ip(ip)
    assert anonymize_ip(anonymized) == anonymized
    assert network_of(anonymized) == network_of(ip)  # forwarding detection survives anonymisation
    host_bits = 8 if ipaddress.ip_address(anonymized).version == 4 else 80
    assert int(ipaddress.ip_address(anonymized)) & ((1 << host_bits) - 1) == 0


@settings(max_examples=150, deadline=None)
@given(st.ip_addresses(v=4), st.integers(8, 32))
def test_in_networks_agrees_with_ipaddress(address, prefix):
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    assert in_networks(str(address), [str(network)])
    outside = int(network.broadcast_address) + 1
    if outside < 2**32:
        assert not in_networks(str(ipaddress.ip_address(outside)), [str(network)])
    assert not in_networks(str(address), ["2001:db8::/32"])
