"""Recipient lists: read a CSV, check every address before anything is sent.

The CSV has a header row with a column ``email`` (any letter case); every other column is a merge
field.  Rows are numbered as in a spreadsheet: the header is row 1.

Each address that is not sent gets one stable reason code (:data:`REASONS`):

==============  ================================================================================
``missing``     the email cell is empty
``syntax``      not a practical address ``local@domain.tld`` (dot-atom local part, LDH labels, a
                non-numeric top-level label); quoted local parts, IP literals and internationalised
                (SMTPUTF8) addresses are refused too
``too_long``    more than 254 characters, or a local part over 64 (RFC 5321)
``duplicate``   the same address (ignoring letter case) appeared in an earlier row
``nxdomain``    the domain does not exist
``no_mx``       the domain exists but takes no mail: a null MX (RFC 7505), or neither MX nor
                A/AAAA records (RFC 5321 §5.1 falls back to the address records)
``mx_timeout``  the DNS lookup took longer than ``campaigns.mx_timeout_s``
``mx_error``    the DNS lookup failed otherwise (SERVFAIL, no name server answered)
``smtp_rejected``  the optional SMTP probe: the domain's mail server refused ``RCPT TO`` (5xx)
==============  ================================================================================

``mx_timeout`` and ``mx_error`` may be temporary: they skip the recipient only with
``campaigns.skip_on_mx_timeout``; otherwise the recipient is sent and the reason is kept as a note.
A probe that cannot connect or gets a 4xx says nothing: the recipient stays valid.
"""

from __future__ import annotations

import csv
import re
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Protocol, Sequence

MISSING, SYNTAX, TOO_LONG, DUPLICATE = "missing", "syntax", "too_long", "duplicate"
NXDOMAIN, NO_MX, MX_TIMEOUT, MX_ERROR, SMTP_REJECTED = "nxdomain", "no_mx", "mx_timeout", "mx_error", "smtp_rejected"
REASONS = (MISSING, SYNTAX, TOO_LONG, DUPLICATE, NXDOMAIN, NO_MX, MX_TIMEOUT, MX_ERROR, SMTP_REJECTED)
TEMPORARY = (MX_TIMEOUT, MX_ERROR)

MAX_ADDRESS = 254
MAX_LOCAL = 64
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@({_LABEL}(?:\.{_LABEL})+)")
DNS_THREADS = 16


class RecipientListError(ValueError):
    """The CSV cannot be used: no header, no email column, a malformed row (the message says which)."""


@dataclass(frozen=True)
class Recipient:
    row: int            # spreadsheet row: the header is row 1
    email: str          # as written (stripped)
    fields: dict[str, str]

    @property
    def key(self) -> str:
        """Case-insensitive identity: duplicates, suppressions and the resume state use it."""
        return normalize_address(self.email)


def normalize_address(address: str) -> str:
    return address.strip().lower()


def read_recipients(path: str | Path) -> list[Recipient]:
    """Every data row of the CSV (UTF-8, a BOM is allowed), in file order.  Blank lines are skipped
    but counted as rows, as a spreadsheet shows them."""
    path = Path(path)
    if not path.is_file():
        raise RecipientListError(f"no such recipient list: {path}")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return parse_recipients(handle, name=str(path))


def parse_recipients(lines: Iterable[str], *, name: str = "recipients") -> list[Recipient]:
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
        if header is None:
            raise RecipientListError(f"{name} is empty: it needs a header row with an email column")
        columns = [cell.strip() for cell in header]
        if any(not column for column in columns):
            raise RecipientListError(f"{name}: the header has an empty column name")
        lowered = [column.lower() for column in columns]
        duplicates = sorted({c for c in lowered if lowered.count(c) > 1})
        if duplicates:
            raise RecipientListError(f"{name}: duplicate columns in the header: {', '.join(duplicates)}")
        if "email" not in lowered:
            raise RecipientListError(f"{name}: no email column in the header ({', '.join(columns)})")
        email_at = lowered.index("email")
        recipients: list[Recipient] = []
        for number, cells in enumerate(reader, start=2):
            if not cells or all(not cell.strip() for cell in cells):
                continue  # blank line
            if len(cells) != len(columns):
                raise RecipientListError(f"{name}, row {number}: {len(cells)} cells, the header has {len(columns)}")
            fields = dict(zip(columns, cells))
            email = cells[email_at].strip()
            fields[columns[email_at]] = email
            fields.setdefault("email", email)
            recipients.append(Recipient(row=number, email=email, fields=fields))
        return recipients
    except csv.Error as exc:
        raise RecipientListError(f"{name}, line {reader.line_num}: {exc}") from exc


def syntax_reason(address: str) -> str | None:
    """None for a practical address, else ``missing``, ``too_long`` or ``syntax``."""
    if not address:
        return MISSING
    if not address.isascii():
        return SYNTAX
    match = _ADDRESS.fullmatch(address)
    if match is None:
        return SYNTAX
    if len(address) > MAX_ADDRESS or len(match.group(1)) > MAX_LOCAL:
        return TOO_LONG
    if match.group(2).rsplit(".", 1)[-1].isdigit():
        return SYNTAX  # user@1.2.3.4 is not a domain
    return None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".").lower()


# -- DNS --------------------------------------------------------------------------------------

LookupStatus = Literal["ok", "nxdomain", "no_mail", "timeout", "error"]


@dataclass(frozen=True)
class DomainLookup:
    status: LookupStatus
    hosts: tuple[str, ...] = ()   # mail hosts, best first (the domain itself after the A/AAAA fallback)


class MailDomainResolver(Protocol):
    """Where mail for a domain goes.  Must be safe to call from several threads."""

    def lookup(self, domain: str, timeout: float) -> DomainLookup: ...


class DnsResolver:
    """The real resolver (dnspython): MX, else A/AAAA (RFC 5321 §5.1); ``timeout`` bounds the whole
    lookup (dnspython's ``lifetime``)."""

    def __init__(self, resolver=None) -> None:
        self._resolver = resolver

    def _get(self):
        if self._resolver is None:
            import dns.resolver

            self._resolver = dns.resolver.Resolver()
        return self._resolver

    def lookup(self, domain: str, timeout: float) -> DomainLookup:
        import dns.exception
        import dns.name
        import dns.resolver

        deadline = time.monotonic() + timeout

        def query(rdtype: str):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise dns.exception.Timeout()
            return self._get().resolve(domain, rdtype, lifetime=remaining, search=False)

        try:
            try:
                answer = query("MX")
            except dns.resolver.NoAnswer:
                for rdtype in ("A", "AAAA"):
                    try:
                        query(rdtype)
                        return DomainLookup("ok", (domain,))
                    except dns.resolver.NoAnswer:
                        continue
                return DomainLookup("no_mail")
            records = sorted(answer, key=lambda record: record.preference)
            if all(record.exchange == dns.name.root for record in records):
                return DomainLookup("no_mail")  # null MX, RFC 7505
            return DomainLookup("ok", tuple(record.exchange.to_text(omit_final_dot=True) for record in records
                                            if record.exchange != dns.name.root))
        except dns.resolver.NXDOMAIN:
            return DomainLookup("nxdomain")
        except dns.exception.Timeout:
            return DomainLookup("timeout")
        except dns.exception.DNSException:  # NoNameservers (SERVFAIL), YXDOMAIN, no resolv.conf, ...
            return DomainLookup("error")


# -- SMTP probe -------------------------------------------------------------------------------

class SmtpProbe:
    """Asks the domain's mail server whether it takes the address: EHLO, MAIL FROM, RCPT TO, RSET;
    no mail is sent.  Only a 5xx answer to RCPT TO counts; anything else (no connection, 4xx,
    greylisting) is inconclusive and keeps the recipient."""

    def __init__(self, mail_from: str, *, timeout: float = 10.0, port: int = 25, helo: str | None = None,
                 smtp_factory: Callable[..., smtplib.SMTP] = smtplib.SMTP, max_hosts: int = 2) -> None:
        self.mail_from, self.timeout, self.port, self.max_hosts = mail_from, timeout, port, max_hosts
        self.helo = helo or domain_of(mail_from) or "localhost"
        self.smtp_factory = smtp_factory

    def __call__(self, address: str, hosts: Sequence[str]) -> str | None:
        for host in list(hosts)[:self.max_hosts]:
            try:
                with self.smtp_factory(host, self.port, local_hostname=self.helo, timeout=self.timeout) as smtp:
                    smtp.ehlo_or_helo_if_needed()
                    code, _ = smtp.mail(self.mail_from)
                    if code >= 400:
                        return None
                    code, _ = smtp.rcpt(address)
                    try:
                        smtp.rset()
                    except smtplib.SMTPException:
                        pass
                    return SMTP_REJECTED if 500 <= code < 600 else None
            except (OSError, smtplib.SMTPException):
                continue
        return None


# -- validation -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checked:
    recipient: Recipient
    reason: str | None = None   # set: skipped for this reason
    note: str | None = None     # sent anyway, but this was seen (mx_timeout / mx_error)

    @property
    def valid(self) -> bool:
        return self.reason is None


@dataclass
class Validation:
    checked: list[Checked] = field(default_factory=list)

    @property
    def valid(self) -> list[Checked]:
        return [c for c in self.checked if c.valid]

    @property
    def invalid(self) -> list[Checked]:
        return [c for c in self.checked if not c.valid]


def validate_recipients(recipients: Sequence[Recipient], *, resolver: MailDomainResolver | None,
                        mx_timeout_s: float = 5.0, skip_on_mx_timeout: bool = False,
                        probe: Callable[[str, Sequence[str]], str | None] | None = None,
                        exclude: Callable[[Recipient], str | None] | None = None) -> Validation:
    """Check every recipient: syntax and length, duplicates, then (once per domain, in parallel)
    the DNS lookup, then the optional ``probe``.  ``exclude(recipient)`` may name a reason to skip
    a recipient before any lookup (already sent, unsubscribed).  ``resolver=None`` skips DNS."""
    verdicts: dict[int, tuple[str | None, str | None]] = {}
    seen: set[str] = set()
    pending: list[tuple[int, Recipient]] = []
    for index, recipient in enumerate(recipients):
        reason = syntax_reason(recipient.email)
        if reason is None:
            if recipient.key in seen:
                reason = DUPLICATE
            seen.add(recipient.key)
        if reason is None and exclude is not None:
            reason = exclude(recipient)
        if reason is not None:
            verdicts[index] = (reason, None)
        else:
            pending.append((index, recipient))

    lookups: dict[str, DomainLookup] = {}
    if resolver is not None and pending:
        domains = sorted({domain_of(r.email) for _, r in pending})
        with ThreadPoolExecutor(max_workers=min(DNS_THREADS, len(domains))) as pool:
            lookups = dict(zip(domains, pool.map(lambda d: resolver.lookup(d, mx_timeout_s), domains)))

    status_reason = {"nxdomain": NXDOMAIN, "no_mail": NO_MX, "timeout": MX_TIMEOUT, "error": MX_ERROR}
    for index, recipient in pending:
        reason = note = None
        lookup = lookups.get(domain_of(recipient.email))
        if lookup is not None and lookup.status != "ok":
            found = status_reason[lookup.status]
            if found in TEMPORARY and not skip_on_mx_timeout:
                note = found
            else:
                reason = found
        if reason is None and probe is not None and lookup is not None and lookup.hosts:
            reason = probe(recipient.email, lookup.hosts)
        verdicts[index] = (reason, note)
    return Validation([Checked(recipient, *verdicts[i]) for i, recipient in enumerate(recipients)])
