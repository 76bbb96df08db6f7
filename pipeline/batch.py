"""Correlate mail files without a broker: sources -> parse -> engine, streamed one mail at a time.

Used by ``threadline correlate`` and ``threadline eval``; memory is bounded by the engine's
index (its time window), never by the size of the mailbox.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Iterator

from pipeline.correlation.engine import Correlator
from pipeline.correlation.model import Correlation
from pipeline.mail.parse import parse_mail
from pipeline.mail.record import MailParseError, MailRecord
from pipeline.mail.sources import iter_mail_sources
from pipeline.settings import CorrelationSettings, UntrackedSettings


@dataclass(frozen=True, slots=True)
class ParseFailure:
    source_ref: str
    reason: str
    message: str

    def to_dict(self) -> dict:
        return {"source_ref": self.source_ref, "error_reason": self.reason, "error": self.message}


def strip_threading_headers(mail: MailRecord) -> MailRecord:
    """The mail as if In-Reply-To, References, Thread-Index and our own header were never set."""
    return dataclasses.replace(mail, in_reply_to=(), references=(), thread_index=None, thread_topic="", xref=None)


def parse_sources(paths: Iterable[str], correlation: CorrelationSettings, *, tenant: str = "default",
                  direction: str = "in", strip_headers: bool = False) -> Iterator[MailRecord | ParseFailure]:
    """Mail records (or the reason a message could not be parsed) from mbox/maildir/.eml paths."""
    for source_ref, raw in iter_mail_sources(paths):
        try:
            mail = parse_mail(raw, direction=direction, tenant=tenant, mailbox=source_ref.partition("#")[0],
                              xheader_name=correlation.xheader_name)
        except MailParseError as exc:
            yield ParseFailure(source_ref, exc.reason, exc.message)
            continue
        yield strip_threading_headers(mail) if strip_headers else mail


def correlate_sources(paths: Iterable[str], correlation: CorrelationSettings, untracked: UntrackedSettings | None = None,
                      *, tenant: str = "default", direction: str = "in", strip_headers: bool = False,
                      correlator: Correlator | None = None) -> Iterator[Correlation | ParseFailure]:
    correlator = correlator or Correlator(correlation, tenant=tenant, untracked=untracked)
    for item in parse_sources(paths, correlation, tenant=tenant, direction=direction, strip_headers=strip_headers):
        yield item if isinstance(item, ParseFailure) else correlator.correlate(item)
