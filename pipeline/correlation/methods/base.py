"""The correlation-method strategy and its registry (DESIGN.md §3).

A method is a ``MethodStrategy``: its code (as in Dataverse ``correlationmethod``), label, switch,
entry fields, index keys, match rule and explanation.  The engine tries the enabled strategies in
registration order, first hit wins; ``threadline explain`` and every ``method_name`` are rendered
from the registry.  A new method is one module in this package and one line in ``__init__.BUILT_IN``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Hashable, Iterable

from pipeline.mail.automatic import WRITTEN_BY_PEOPLE

if TYPE_CHECKING:
    from pipeline.correlation.engine import Correlator, SubjectFacts
    from pipeline.correlation.model import IndexedMail
    from pipeline.mail.record import MailRecord

# Candidates dated more than this after the mail are not its parent (clocks are skewed, but a
# parent written a day after its reply is another conversation).
FUTURE_SLACK_S = 86_400.0


class Method(IntEnum):
    """The codes of Dataverse ``correlationmethod``; NONE and SKIPPED are outcomes, not strategies,
    and so is CORRECTION (8, beyond Dataverse): a person decided (``correlation.corrections``)."""

    NONE = 0
    SKIPPED = 1
    XHEADER = 2
    IN_REPLY_TO = 3
    TRACKING_TOKEN = 4
    CONVERSATION_INDEX = 5
    SMART_MATCHING = 6
    CUSTOM = 7
    CORRECTION = 8


@dataclass(frozen=True, slots=True)
class Match:
    method: int
    parent: IndexedMail
    candidate_count: int
    evidence: dict
    # How sure the method is that ``parent`` is the parent (0-1); a header naming a known mail is certain.
    confidence: float = 1.0


@dataclass(slots=True)
class MailFacts:
    """What the engine derived from one mail before matching; every strategy reads from it."""

    mail: MailRecord
    ts: float
    subject: SubjectFacts
    addresses: tuple[str, ...]
    token: str | None


# (lookup name, keys): ``CorrelationIndex.ids(name, key)`` finds the entry under each key.
IndexKeys = Iterable[tuple[str, Iterable[Hashable]]]


class MethodStrategy:
    """One correlation method.  Subclasses set ``code`` and ``label`` and implement ``match`` and
    ``explain``, and the hooks they need."""

    code: int
    label: str
    switch: str | None = None  # the CorrelationSettings flag that turns it on ("smart_matching.enabled")
    # A method that guesses from the mail's content rather than from a header naming a known mail:
    # below ``min_confidence`` its match is no decision (the engine abstains).
    content_based: bool = False

    def enabled(self, correlator: Correlator) -> bool:
        """A method that is off is never tried (its entry fields and keys are still written)."""
        return self.switch is None or attrgetter(self.switch)(correlator.settings)

    def entry_fields(self, correlator: Correlator, facts: MailFacts) -> dict[str, Any]:
        """The ``IndexedMail`` fields this method fills for the mail being indexed."""
        return {}

    def index_keys(self, correlator: Correlator, entry: IndexedMail) -> IndexKeys:
        """Its lookups' keys of ``entry``: from the entry alone, so a rebuilt index answers alike."""
        return ()

    def match(self, correlator: Correlator, facts: MailFacts) -> Match | None:
        raise NotImplementedError

    def explain(self, evidence: dict[str, Any]) -> str:
        raise NotImplementedError


def has_hook(strategy: MethodStrategy, hook: str) -> bool:
    """Whether ``strategy`` has its own ``hook`` (not the base class's, which does nothing)."""
    return getattr(type(strategy), hook) is not getattr(MethodStrategy, hook)


def recency(entry: IndexedMail) -> tuple[bool, float, str]:
    """People's mail first, then the newest; equal times are broken by Message-ID so that the
    choice never depends on arrival or iteration order (a rebuilt index must decide exactly like
    the live one).  An out-of-office reply copies the subject, token and Thread-Index of the mail
    it answers: the newest mail with them, it would become the parent of the customer's next
    mail, which answers ours (and our reply to that would answer nobody)."""
    return entry.automatic in WRITTEN_BY_PEOPLE, entry.event_time, entry.message_id


# Code -> strategy, in match order.  Codes map back to the canonical code object, so a duplicate
# delivery reports ``Method.IN_REPLY_TO`` again, not the bare int read from the index.
STRATEGIES: dict[int, MethodStrategy] = {}
_OUTCOME_LABELS = {Method.NONE: "None", Method.SKIPPED: "Skipped", Method.CORRECTION: "Correction"}


def register(strategy: MethodStrategy) -> None:
    if strategy.code in STRATEGIES or strategy.code in _OUTCOME_LABELS or strategy_labelled(strategy.label):
        raise ValueError(f"correlation method {strategy.code} {strategy.label} is registered already")
    STRATEGIES[strategy.code] = strategy


def unregister(strategy: MethodStrategy) -> None:
    del STRATEGIES[strategy.code]


def method_label(code: int) -> str:
    strategy = STRATEGIES.get(code)
    return strategy.label if strategy is not None else _OUTCOME_LABELS[code]


def canonical_code(code: int) -> int:
    strategy = STRATEGIES.get(code)
    return strategy.code if strategy is not None else Method(code)


def strategy_labelled(label: str) -> MethodStrategy | None:
    return next((strategy for strategy in STRATEGIES.values() if strategy.label == label), None)
