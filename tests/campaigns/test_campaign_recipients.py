"""Recipient lists: CSV parsing, address checks with stable reasons, DNS via an injected resolver."""

from __future__ import annotations

import io
import threading

import dns.exception
import dns.name
import dns.resolver
import pytest

from pipeline.campaigns.recipients import (
    REASONS, DnsResolver, DomainLookup, RecipientListError, SmtpProbe, parse_recipients, read_recipients,
    syntax_reason, validate_recipients,
)


def parse(text: str):
    return parse_recipients(io.StringIO(text), name="r.csv")


class FakeResolver:
    def __init__(self, answers: dict[str, DomainLookup]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def lookup(self, domain: str, timeout: float) -> DomainLookup:
        with self.lock:
            self.calls.append((domain, timeout))
        return self.answers.get(domain, DomainLookup("ok", (f"mx.{domain}",)))


# -- CSV --------------------------------------------------------------------------------------

def test_csv_header_email_column_and_merge_fields(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("\ufeffEMAIL, first name ,city\n ann@a.example ,Ann,\"Köln, DE\"\n\nbob@b.example,Bob,\"multi\nline\"\n"
                     "cid@c.example,Cid,X\n".encode("utf-8"))
    recipients = read_recipients(path)
    # Spreadsheet rows: the header is 1, a blank line is an (empty) row, a quoted line break is not.
    assert [(r.row, r.email) for r in recipients] == [(2, "ann@a.example"), (4, "bob@b.example"), (5, "cid@c.example")]
    assert recipients[0].fields == {"EMAIL": "ann@a.example", "first name": "Ann", "city": "Köln, DE",
                                    "email": "ann@a.example"}
    assert recipients[1].fields["city"] == "multi\nline"


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("name,city\nAnn,X\n", "no email column"),
    ("email,name,Name\n", "duplicate columns"),
    ("email,,x\n", "empty column name"),
    ("email,name\na@b.example,Ann,extra\n", "row 2: 3 cells, the header has 2"),
    ("email,name\na@b.example,Ann\nb@b.example\n", "row 3: 1 cells"),
])
def test_bad_csv_says_what_is_wrong(text, message):
    with pytest.raises(RecipientListError, match=message):
        parse(text)


def test_missing_file(tmp_path):
    with pytest.raises(RecipientListError, match="no such recipient list"):
        read_recipients(tmp_path / "nope.csv")


# -- syntax -----------------------------------------------------------------------------------

@pytest.mark.parametrize("address, reason", [
    ("ann@customer.example", None),
    ("first.o'neil+tag@sub.mail-host.example.co.uk", None),
    ("", "missing"),
    ("ann", "syntax"),
    ("ann@", "syntax"),
    ("@customer.example", "syntax"),
    ("ann@@customer.example", "syntax"),
    ("ann@localhost", "syntax"),               # no dot: not a public domain
    (".ann@customer.example", "syntax"),
    ("ann..b@customer.example", "syntax"),
    ("ann b@customer.example", "syntax"),
    ('"ann b"@customer.example', "syntax"),    # quoted local parts: refused in practice
    ("ann@[192.0.2.1]", "syntax"),
    ("ann@192.0.2.1", "syntax"),
    ("ann@-bad.example", "syntax"),
    ("ann@customer.example.", "syntax"),
    ("jörg@customer.example", "syntax"),       # SMTPUTF8 is not supported
    ("Ann <ann@customer.example>", "syntax"),
    ("a" * 65 + "@customer.example", "too_long"),
    ("a" * 64 + "@" + ".".join(["d" * 60] * 4) + ".example", "too_long"),
    ("ann@" + "d" * 64 + ".example", "syntax"),  # a label over 63
])
def test_syntax_reasons(address, reason):
    assert syntax_reason(address) == reason


# -- validation -------------------------------------------------------------------------------

CSV = """email,name
ann@good.example,Ann
not-an-address,X
ANN@Good.Example,Ann again
bob@gone.example,Bob
cid@nomail.example,Cid
dan@slow.example,Dan
eve@broken.example,Eve
fay@good.example,Fay
,Empty
gus@other.example,Gus
"""
ANSWERS = {"gone.example": DomainLookup("nxdomain"), "nomail.example": DomainLookup("no_mail"),
           "slow.example": DomainLookup("timeout"), "broken.example": DomainLookup("error")}


def reasons(validation):
    return [(c.recipient.row, c.reason, c.note) for c in validation.checked]


def test_validation_reasons_with_a_fake_resolver():
    resolver = FakeResolver(ANSWERS)
    validation = validate_recipients(parse(CSV), resolver=resolver, mx_timeout_s=1.5)
    assert reasons(validation) == [
        (2, None, None), (3, "syntax", None), (4, "duplicate", None), (5, "nxdomain", None), (6, "no_mx", None),
        (7, None, "mx_timeout"), (8, None, "mx_error"), (9, None, None), (10, "missing", None), (11, None, None)]
    # One lookup per domain, with the timeout; none for invalid or duplicate addresses.
    assert sorted(resolver.calls) == sorted((d, 1.5) for d in ("good.example", "gone.example", "nomail.example",
                                                                "slow.example", "broken.example", "other.example"))
    assert all(c.reason in REASONS for c in validation.invalid)
    assert len(validation.valid) == 5


def test_temporary_dns_failures_skip_when_configured():
    validation = validate_recipients(parse(CSV), resolver=FakeResolver(ANSWERS), skip_on_mx_timeout=True)
    assert [(c.recipient.row, c.reason) for c in validation.invalid if c.reason.startswith("mx")] == [
        (7, "mx_timeout"), (8, "mx_error")]


def test_exclusion_comes_before_lookups_and_probe_after():
    resolver = FakeResolver(ANSWERS)
    probed = []

    def probe(address, hosts):
        probed.append((address, hosts))
        return "smtp_rejected" if address.startswith("fay") else None

    validation = validate_recipients(parse(CSV), resolver=resolver, probe=probe,
                                     exclude=lambda r: "unsubscribed" if r.email.startswith("gus") else None)
    assert (11, "unsubscribed", None) in reasons(validation)
    assert (9, "smtp_rejected", None) in reasons(validation)
    assert "other.example" not in [d for d, _ in resolver.calls]
    assert ("ann@good.example", ("mx.good.example",)) in probed
    assert not any(a.startswith(("bob", "cid", "gus")) for a, _ in probed)


def test_no_resolver_means_no_dns():
    validation = validate_recipients(parse(CSV), resolver=None)
    assert [c.recipient.row for c in validation.valid] == [2, 5, 6, 7, 8, 9, 11]


# -- the dnspython resolver, with its resolver object faked ------------------------------------

class _MX:
    def __init__(self, preference, exchange):
        self.preference, self.exchange = preference, dns.name.from_text(exchange)


class FakeDns:
    def __init__(self, table):
        self.table, self.calls = table, []

    def resolve(self, domain, rdtype, lifetime, search):
        self.calls.append((domain, rdtype, round(lifetime, 1), search))
        answer = self.table.get((domain, rdtype), dns.resolver.NoAnswer)
        if isinstance(answer, type) and issubclass(answer, Exception):
            raise answer()
        return answer


@pytest.mark.parametrize("table, expected", [
    ({("d.example", "MX"): [_MX(20, "b.mx.example."), _MX(10, "a.mx.example.")]},
     DomainLookup("ok", ("a.mx.example", "b.mx.example"))),
    ({("d.example", "MX"): [_MX(0, ".")]}, DomainLookup("no_mail")),                 # null MX
    ({("d.example", "A"): ["192.0.2.1"]}, DomainLookup("ok", ("d.example",))),      # A fallback
    ({("d.example", "AAAA"): ["2001:db8::1"]}, DomainLookup("ok", ("d.example",))),
    ({}, DomainLookup("no_mail")),                                                    # no MX, no A/AAAA
    ({("d.example", "MX"): dns.resolver.NXDOMAIN}, DomainLookup("nxdomain")),
    ({("d.example", "MX"): dns.resolver.LifetimeTimeout}, DomainLookup("timeout")),
    ({("d.example", "MX"): dns.resolver.NoNameservers}, DomainLookup("error")),
])
def test_dnspython_resolver_outcomes(table, expected):
    fake = FakeDns(table)
    assert DnsResolver(fake).lookup("d.example", 2.0) == expected
    assert fake.calls[0] == ("d.example", "MX", 2.0, False)  # the timeout is dnspython's lifetime


def test_smtp_probe_reads_only_a_5xx_rcpt_as_invalid():
    class FakeSmtp:
        def __init__(self, host, port, local_hostname, timeout):
            if host == "down.example":
                raise ConnectionRefusedError()
            self.host = host

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def ehlo_or_helo_if_needed(self):
            pass

        def mail(self, sender):
            return 250, b"ok"

        def rcpt(self, address):
            return {"gone@x.example": 550, "grey@x.example": 451}.get(address, 250), b""

        def rset(self):
            pass

    probe = SmtpProbe("news@ours.example", smtp_factory=FakeSmtp)
    assert probe("gone@x.example", ["down.example", "mx.x.example"]) == "smtp_rejected"
    assert probe("grey@x.example", ["mx.x.example"]) is None
    assert probe("ann@x.example", ["mx.x.example"]) is None
    assert probe("gone@x.example", ["down.example"]) is None  # no answer: says nothing
