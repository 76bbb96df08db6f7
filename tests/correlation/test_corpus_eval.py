"""Accuracy on every real corpus in ../shared/corpus, with and without headers (issue 15 targets).

The truth files derive threads from In-Reply-To/References, so a mail without them is a thread
start by construction: precision is *judged* (links from mails whose original carried them).

Thresholds and why (figures of 2026-12-03 in docs/correlation.md):
- With headers, header links are exact by construction; the engine must keep judged precision
  >= 99.9 % and recall >= 99.5 % on every corpus (measured: 100 % and 99.53-100 %), and a content
  link from a mail whose named parents are unknown must be right >= 95 % of the time or not be
  made at all (measured: none is made).
- Without headers, judged precision >= 98.5 % and recall >= 95 % on every corpus (measured:
  98.93-99.66 % and 95.66-98.20 %), and never below plain subject grouping on either (measured:
  85.6-97.9 % and 88.8-94.9 %).  The remaining judged errors are mostly replies that quote their
  parent but whose truth thread was split by a header-less mail in the chain.
- Of the judged links with confidence >= 0.9, at least 98.5 % are right on every corpus
  (measured 98.9-99.7 %; the issue's goal of 99.5 % is not reached, see docs/correlation.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.batch import evaluate_corpus
from pipeline.correlation.evaluate import CONFIDENCE_BANDS
from pipeline.settings import CorrelationSettings, SmartMatchingSettings

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpus"
NAMES = sorted(folder.name for folder in CORPORA.glob("*") if (folder / "messages.mbox").is_file()) if CORPORA.is_dir() else []

pytestmark = pytest.mark.skipif(not NAMES, reason=f"the shared corpora are not at {CORPORA}")


@pytest.fixture(scope="module")
def runs():
    """{(corpus, mode): CorpusRun} of the default settings on every corpus, both modes."""
    results = {}
    for name in NAMES:
        for run in evaluate_corpus(name, CORPORA / name / "messages.mbox", CORPORA / name / "truth.jsonl",
                                   CorrelationSettings()):
            results[name, run.mode] = run
    return results


@pytest.mark.parametrize("name", NAMES)
def test_with_headers_links_are_judged_right_and_unknown_parents_are_not_guessed(runs, name):
    run = runs[name, "headers"]
    result = run.evaluation
    assert result.methods["InReplyTo"].precision == 1.0
    assert result.overall.judged_precision >= 0.999
    assert result.recall >= 0.995
    fallback = result.fallback
    assert fallback.judged_links == 0 or fallback.judged_precision >= 0.95


@pytest.mark.parametrize("name", NAMES)
def test_without_headers_judged_precision_and_recall_beat_subject_grouping(runs, name):
    run = runs[name, "stripped"]
    result = run.evaluation
    subject = run.baselines["subject_grouping"]
    assert result.overall.judged_precision >= 0.985
    assert result.recall >= 0.95
    assert result.overall.judged_precision >= subject["judged_link_precision"]
    assert result.recall >= subject["link_recall"]


@pytest.mark.parametrize("name", NAMES)
def test_confident_links_are_right(runs, name):
    sure = runs[name, "stripped"].evaluation.calibration[CONFIDENCE_BANDS[0][1]]
    assert sure.judged_links > 0.9 * runs[name, "stripped"].evaluation.overall.judged_links
    assert sure.judged_precision >= 0.985


def test_dynamics_strategy_reproduces_crm_smart_matching():
    name = "ponymail"
    if name not in NAMES:
        pytest.skip(f"{name} is not among the shared corpora")
    correlation = CorrelationSettings(smart_matching=SmartMatchingSettings(strategy="dynamics"))
    (run,) = evaluate_corpus(name, CORPORA / name / "messages.mbox", CORPORA / name / "truth.jsonl", correlation,
                             modes=("stripped",))
    # Replies on these lists go to the list only, so "two common addresses" rarely holds.
    assert 0.40 <= run.evaluation.recall <= 0.70
    assert run.evaluation.overall.precision >= 0.90
