"""Correlate mail files without a broker: sources -> parse -> engine, streamed one mail at a time.

Used by ``threadline correlate`` and ``threadline eval``; memory is bounded by the engine's
index (its time window), never by the size of the mailbox, except for ``evaluate_corpus``, which
keeps one corpus's parsed mail to correlate it several times (parsing is most of the cost).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from pipeline.correlation.engine import Correlator
from pipeline.correlation.evaluate import CorpusRun, evaluate, read_truth, score_links, subject_grouping
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


T = TypeVar("T")
# progress(items, desc) -> the same items, perhaps drawing a progress bar meanwhile.
Progress = Callable[[Iterable[T], str], Iterable[T]]
MODES = ("headers", "stripped")


def _no_progress(items: Iterable[T], desc: str) -> Iterable[T]:
    return items


def evaluate_corpus(name: str, mbox: str | Path, truth: str | Path, correlation: CorrelationSettings,
                    untracked: UntrackedSettings | None = None, *, modes: Iterable[str] = MODES,
                    progress: Progress = _no_progress) -> list[CorpusRun]:
    """Score the engine on one corpus in each mode ("headers", "stripped": --strip-headers), beside
    plain subject grouping and the Dynamics strategy on the same mails.  The mbox is parsed once;
    what each mail's own In-Reply-To / References named is kept before any stripping."""
    mails = [item for item in progress(parse_sources([str(mbox)], correlation), f"{name}: parse")
             if not isinstance(item, ParseFailure)]
    rows = list(read_truth(truth))
    dynamics = correlation.model_copy(update={
        "smart_matching": correlation.smart_matching.model_copy(update={"strategy": "dynamics"})})
    runs = []
    for mode in modes:
        strip = mode == "stripped"
        predictions, named_ids = _correlate(mails, correlation, untracked, strip, progress, f"{name}: {mode}")
        evaluation = evaluate(rows, predictions, named_ids)
        dynamics_predictions, _ = _correlate(mails, dynamics, untracked, strip, progress, f"{name}: {mode}, dynamics")
        dynamics_result = evaluate(rows, dynamics_predictions, named_ids)
        baselines = {
            "subject_grouping": score_links(rows, subject_grouping(predictions, correlation.window_days), named_ids),
            "dynamics": dynamics_result.overall.as_dict(dynamics_result.mails_with_parent),
        }
        runs.append(CorpusRun(name, mode, correlation.smart_matching.strategy, correlation.fingerprint(), evaluation,
                              baselines))
    return runs


def _correlate(mails: list[MailRecord], correlation: CorrelationSettings, untracked: UntrackedSettings | None,
               strip_headers: bool, progress: Progress, desc: str) -> tuple[list[Correlation], dict[str, tuple[str, ...]]]:
    """A fresh engine's decisions on ``mails``, and the ids each mail's own headers named."""
    correlator = Correlator(correlation, untracked=untracked)
    predictions = []
    named_ids: dict[str, tuple[str, ...]] = {}
    for mail in progress(mails, desc):
        prediction = correlator.correlate(strip_threading_headers(mail) if strip_headers else mail)
        predictions.append(prediction)
        named_ids.setdefault(prediction.message_id, (*mail.in_reply_to, *mail.references))
    return predictions, named_ids
