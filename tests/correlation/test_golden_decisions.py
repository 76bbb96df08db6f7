"""Golden decisions: the engine decides every mail exactly as main d79c930 did (issue 18).

The speed work on the correlation core must not change one decision.  This test feeds the engine
what ``threadline eval`` feeds it (every mail of every corpus in ../shared/corpus, parsed with
``parse_mail`` as ``pipeline.batch.parse_sources`` does, with and without threading headers, with
the evidence and the Dynamics strategy) and a synthetic stream of two tenants with automatic
mail, duplicates, collisions, loops, our own header, undated mail, forwards, untracked mail and
index rebuilds, and compares each decision with the one recorded in ``golden_decisions/``.

A decision is the whole ``Correlation.to_dict()`` (what ``threadline correlate`` writes and what
the ``mail.correlated`` / ``mail.untracked`` records are built from: method, parent,
conversation, confidence, evidence, flags, response, untracked reason, event id, ...) as compact
JSON in its own key order; the files keep 12 hex digits of its sha256 per mail and the counts per
method, never mail content or addresses (the corpora are real people's mail).

The expected values were written by the code of d79c930.  Regenerate them only for a change that
is meant to change decisions, and say so in its commit:
``PYTHONPATH=. python tests/correlation/test_golden_decisions.py --write``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Iterator

import pytest

from pipeline.batch import ParseFailure, parse_sources, strip_threading_headers
from pipeline.correlation.engine import Correlator
from pipeline.correlation.methods.xheader import format_xref
from pipeline.correlation.model import Correlation
from pipeline.mail.record import MailRecord
from pipeline.settings import CorrelationSettings, TrackingTokenSettings, UntrackedSettings
from pipeline.synth import START, AutomaticMail, MailGenerator, with_automatic_mail

GOLDEN = Path(__file__).resolve().parent / "golden_decisions"
CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpus"
NAMES = sorted(folder.name for folder in CORPORA.glob("*") if (folder / "messages.mbox").is_file()) if CORPORA.is_dir() else []
DIGEST_HEX = 12
# Floats are compared to this many significant digits: d79c930 sums a float over a set (the
# address weight of smart matching's evidence), so the last bits of a confidence vary with the
# process's string hash seed (PYTHONHASHSEED) from run to run.
FLOAT_DIGITS = 10
# A mail without a date and without an arrival time is correlated at the clock's time: fixed here.
CLOCK = START + timedelta(days=400)
MODES = ("headers", "stripped")
STRATEGIES = ("evidence", "dynamics")
DIFFERENCES_SHOWN = 5


def _rounded(value):
    if value.__class__ is float:
        return float(f"{value:.{FLOAT_DIGITS}g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    return value


def decision_digest(correlation: Correlation) -> str:
    canonical = json.dumps(_rounded(correlation.to_dict()), ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_HEX]


def _label(correlation: Correlation) -> str:
    return f"untracked:{correlation.untracked_reason}" if correlation.untracked_reason else correlation.method_name


def _summary(decisions: list[Correlation]) -> dict:
    return {"mails": len(decisions), "counts": dict(sorted(Counter(map(_label, decisions)).items())),
            "digests": "".join(map(decision_digest, decisions))}


# -- the corpora, as `threadline eval` feeds them ------------------------------------------------
def _with_strategy(settings: CorrelationSettings, strategy: str) -> CorrelationSettings:
    return settings.model_copy(update={"smart_matching": settings.smart_matching.model_copy(update={"strategy": strategy})})


def corpus_mails(name: str) -> list[MailRecord]:
    settings = CorrelationSettings()
    return [item for item in parse_sources([str(CORPORA / name / "messages.mbox")], settings)
            if not isinstance(item, ParseFailure)]


def corpus_decisions(mails: list[MailRecord], mode: str, strategy: str) -> list[Correlation]:
    """A fresh engine's decisions, as ``pipeline.batch._correlate`` makes them for ``threadline eval``."""
    correlator = Correlator(_with_strategy(CorrelationSettings(), strategy), clock=lambda: CLOCK)
    strip = mode == "stripped"
    return [correlator.correlate(strip_threading_headers(mail) if strip else mail) for mail in mails]


def corpus_summary(name: str, mode: str, mails: list[MailRecord]) -> dict:
    return {"corpus": name, "mode": mode,
            "runs": {strategy: _summary(corpus_decisions(mails, mode, strategy)) for strategy in STRATEGIES}}


# -- a synthetic stream of two tenants -------------------------------------------------------------
SYNTH_TENANTS = (("acme", 101), ("globex", 202))
SYNTH_MAILS_PER_TENANT = 1_200
OWN_DOMAIN = "support.threadline.test"


def _tenant_stream(tenant: str, seed: int) -> Iterator[MailRecord]:
    """People's mail of a small customer base (addresses repeat across threads), automatic mail,
    and every few mails a case the generator does not make by itself."""
    generator = MailGenerator(seed, tenant=tenant, customers=60, agents=4)
    people = generator.mails(SYNTH_MAILS_PER_TENANT)
    seen: list[MailRecord] = []
    for n, item in enumerate(with_automatic_mail(people, seed=seed + 1)):
        mail = item.record if isinstance(item, AutomaticMail) else item
        if n % 41 == 7 and mail.in_reply_to:  # our own header names the parent, no other header
            mail = dataclasses.replace(mail, xref=format_xref("threadline", mail.in_reply_to[0], f"SUPP-{n}"),
                                       in_reply_to=(), references=())
        elif n % 43 == 11 and mail.in_reply_to:  # the headers name only mail never seen (a ghost parent)
            mail = dataclasses.replace(mail, in_reply_to=(f"<ghost-{n}@elsewhere.test>",),
                                       references=(f"<ghost-root-{n // 200}@elsewhere.test>",))
        elif n % 47 == 13:  # undated: its arrival is its time
            mail = dataclasses.replace(mail, date=None)
        elif n % 53 == 17:  # undated and no arrival time: the clock's time
            mail = dataclasses.replace(mail, date=None, received_at=None)
        elif n % 59 == 19:
            mail = dataclasses.replace(mail, subject=f"Fwd: {mail.subject}")
        elif n % 61 == 23:  # internal mail between two agents
            mail = dataclasses.replace(mail, from_addr=f"agent1@{OWN_DOMAIN}", to=(f"agent2@{OWN_DOMAIN}",))
        elif n % 67 == 29:
            mail = dataclasses.replace(mail, mailbox="archive")
        elif n % 71 == 31 and mail.direction == "out":  # stamped with its own id, as we send it
            mail = dataclasses.replace(mail, xref=format_xref("threadline", mail.message_id))
        elif n % 79 == 37 and mail.direction == "out":  # to a recipient whose tracking is off
            mail = dataclasses.replace(mail, to=(f"buyer{n}@excluded.example",))
        yield mail
        seen.append(mail)
        if n % 29 == 3:  # the same mail delivered again (another mailbox)
            yield dataclasses.replace(mail, mailbox="second")
        if n % 31 == 5 and len(seen) > 10:  # another mail reusing an earlier Message-ID: a collision
            earlier = seen[-10]
            yield dataclasses.replace(mail, message_id=earlier.message_id, body_text=mail.body_text + " (resent)")
        if n % 37 == 9 and mail.direction == "out":  # our mail comes back in: a loop
            yield dataclasses.replace(mail, direction="in", mailbox="bounced")
        if n % 73 == 2 and len(seen) > 20:  # the same Message-ID collides twice over
            earlier = seen[-20]
            for k in range(2):
                yield dataclasses.replace(earlier, body_text=f"{earlier.body_text} (variant {k})", date=mail.date,
                                          received_at=mail.received_at)


def synthetic_stream() -> list[MailRecord]:
    """Both tenants' mail merged by event time (ties by tenant), as one topic would carry it."""
    streams = [list(_tenant_stream(tenant, seed)) for tenant, seed in SYNTH_TENANTS]
    merged = [(n, tenant_no, mail) for tenant_no, stream in enumerate(streams) for n, mail in enumerate(stream)]
    merged.sort(key=lambda item: (item[0], item[1]))
    return [mail for _, _, mail in merged]


SYNTH_SETTINGS = {
    "defaults": (CorrelationSettings(), UntrackedSettings()),
    "untracked-confirms-no-forwards": (
        CorrelationSettings(forwards_as_replies=False, tracking_token=TrackingTokenSettings(mode="confirms")),
        UntrackedSettings(own_domains=(OWN_DOMAIN,), excluded_domains=("excluded.example",),
                          excluded_mailboxes=("archive",))),
    "dynamics-delta": (
        CorrelationSettings(smart_matching={"strategy": "dynamics", "hash_delta_subject_count": 1,
                                            "hash_min_address_count": 1}),
        UntrackedSettings()),
}
# Settings whose run rebuilds every tenant's index from its store now and then (recovery).
REBUILD_EVERY = {"untracked-confirms-no-forwards": 500}


def synthetic_decisions(stream: Iterable[MailRecord], name: str) -> list[Correlation]:
    correlation, untracked = SYNTH_SETTINGS[name]
    correlators: dict[str, Correlator] = {}
    rebuild_every = REBUILD_EVERY.get(name)
    decisions = []
    for n, mail in enumerate(stream, 1):
        correlator = correlators.get(mail.tenant)
        if correlator is None:
            correlator = correlators[mail.tenant] = Correlator(correlation, tenant=mail.tenant, untracked=untracked,
                                                               clock=lambda: CLOCK)
        decisions.append(correlator.correlate(mail))
        if rebuild_every and n % rebuild_every == 0:
            for each in correlators.values():
                each.index.rebuild()
    return decisions


def synthetic_summary(stream: list[MailRecord]) -> dict:
    return {"corpus": "synthetic", "runs": {name: _summary(synthetic_decisions(stream, name)) for name in SYNTH_SETTINGS}}


# -- comparison ------------------------------------------------------------------------------------
def _expected(file_name: str) -> dict:
    path = GOLDEN / file_name
    if not path.is_file():
        pytest.fail(f"{path} is missing: it is written by the code the decisions must stay equal to")
    return json.loads(path.read_text())


def _differences(expected: dict, decisions: list[Correlation], mails: list[MailRecord]) -> list[str]:
    digests = expected["digests"]
    shown = []
    for n, decision in enumerate(decisions):
        want = digests[n * DIGEST_HEX:(n + 1) * DIGEST_HEX]
        if decision_digest(decision) != want:
            shown.append(f"mail #{n} {mails[n].message_id}: now {decision.method_name} parent "
                         f"{decision.parent_message_id} confidence {decision.confidence} "
                         f"untracked {decision.untracked_reason} (digest {decision_digest(decision)}, expected {want})")
            if len(shown) == DIFFERENCES_SHOWN:
                break
    return shown


def assert_same_decisions(expected: dict, decisions: list[Correlation], mails: list[MailRecord], what: str) -> None:
    actual = _summary(decisions)
    if actual == expected:
        return
    shown = _differences(expected, decisions, mails)
    counts = "" if actual["counts"] == expected["counts"] else f"\ncounts now {actual['counts']}\nexpected   {expected['counts']}"
    mails_line = "" if actual["mails"] == expected["mails"] else f"\n{actual['mails']} mails, expected {expected['mails']}"
    pytest.fail(f"{what}: decisions differ from the golden ones{mails_line}{counts}\n" + "\n".join(shown))


@pytest.fixture(scope="module")
def parsed_corpora() -> dict[str, list[MailRecord]]:
    return {name: corpus_mails(name) for name in NAMES}


@pytest.mark.skipif(not NAMES, reason=f"the shared corpora are not at {CORPORA}")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", MODES)
def test_corpus_decisions_are_the_golden_ones(parsed_corpora, name, mode):
    mails = parsed_corpora[name]
    expected = _expected(f"{name}-{mode}.json")
    assert (expected["corpus"], expected["mode"]) == (name, mode)
    for strategy in STRATEGIES:
        assert_same_decisions(expected["runs"][strategy], corpus_decisions(mails, mode, strategy), mails,
                              f"{name} {mode} {strategy}")


@pytest.fixture(scope="module")
def synthetic_runs() -> tuple[list[MailRecord], dict[str, list[Correlation]]]:
    stream = synthetic_stream()
    return stream, {name: synthetic_decisions(stream, name) for name in SYNTH_SETTINGS}


def test_synthetic_decisions_are_the_golden_ones(synthetic_runs):
    stream, runs = synthetic_runs
    expected = _expected("synthetic.json")
    assert set(expected["runs"]) == set(SYNTH_SETTINGS)
    for name, decisions in runs.items():
        assert_same_decisions(expected["runs"][name], decisions, stream, f"synthetic {name}")


def test_the_synthetic_stream_has_every_case(synthetic_runs):
    """The stream exercises what it is meant to: else a golden file could pass while covering little."""
    _, runs = synthetic_runs
    defaults, untracked = runs["defaults"], runs["untracked-confirms-no-forwards"]
    labels = Counter(map(_label, defaults)) + Counter(map(_label, untracked))
    for label in ("XHeader", "InReplyTo", "TrackingToken", "ConversationIndex", "SmartMatching", "None",
                  "untracked:duplicate", "untracked:loop", "untracked:internal", "untracked:excluded_mailbox",
                  "untracked:excluded_recipient"):
        assert labels[label] > 0, label
    assert {decision.tenant for decision in defaults} == {tenant for tenant, _ in SYNTH_TENANTS}
    assert any(decision.flags for decision in defaults)  # collisions
    assert any(decision.response is not None for decision in defaults)
    assert any("abstained" in decision.evidence for decision in defaults)
    assert any("forward_not_reply" in decision.evidence for decision in untracked)
    assert any(decision.evidence.get("shared_reference") for decision in defaults)


def write_golden() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for name in NAMES:
        mails = corpus_mails(name)
        for mode in MODES:
            (GOLDEN / f"{name}-{mode}.json").write_text(json.dumps(corpus_summary(name, mode, mails), indent=1) + "\n")
    (GOLDEN / "synthetic.json").write_text(json.dumps(synthetic_summary(synthetic_stream()), indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: PYTHONPATH=. python tests/correlation/test_golden_decisions.py --write")
    write_golden()
    print(f"written to {GOLDEN}", file=sys.stderr)
