"""Issue 16's target: on the demo's generated support mail and on every real corpus, the response,
escalation and SLA records with out-of-office replies, acknowledgements and bounces mixed in equal
those of the same mail with the automatic mail removed by hand (the generator knows which it
made; the pipeline only sees bytes).

The corpora are mailing lists, with no outbound mail: the fewest senders who wrote half of the
replies play the desk (pipeline.batch.desk_by_replies), so each corpus has our replies to answer
out-of-office mail and to bounce.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.batch import ParseFailure, desk_by_replies, parse_sources, run_support, with_direction
from pipeline.escalation.figures import sla_figures
from pipeline.settings import Settings
from pipeline.synth import AutomaticMail, AutomaticMix, MailGenerator, with_automatic_mail

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpus"
NAMES = sorted(folder.name for folder in CORPORA.glob("*") if (folder / "messages.mbox").is_file()) if CORPORA.is_dir() else []
DESK_DOMAIN = "support.threadline.test"  # pipeline.synth's agents


def _compare(people, settings, mix=AutomaticMix()):
    mixed = list(with_automatic_mail(people, mix=mix))
    automatic = [item for item in mixed if isinstance(item, AutomaticMail)]
    kinds = {(item.made_as, item.record.automatic) for item in automatic}
    plain = run_support(people, settings)
    with_automatic = run_support([item.record if isinstance(item, AutomaticMail) else item for item in mixed],
                                 settings)
    return plain, with_automatic, automatic, kinds


def _assert_same(plain, with_automatic):
    assert with_automatic.responses == plain.responses
    assert with_automatic.transitions == plain.transitions
    assert with_automatic.sla_events == plain.sla_events


def test_generated_support_mail_same_records_with_and_without_its_automatic_mail():
    settings = Settings(untracked={"own_domains": [DESK_DOMAIN]})
    people = list(with_direction(MailGenerator(7, customers=300, agents=6, seconds_between_mails=120).mails(1500),
                                 frozenset([DESK_DOMAIN])))
    plain, with_automatic, automatic, kinds = _compare(people, settings)
    assert len(automatic) > 400
    assert kinds == {("acknowledgement", "auto_reply"), ("out_of_office", "auto_reply"), ("bounce", "bounce")}
    assert plain.responses and plain.sla_events and plain.transitions  # something to compare
    _assert_same(plain, with_automatic)
    # A flood: every reply of ours draws an out-of-office, every mail of ours bounces.
    _, flooded, *_ = _compare(people, settings, AutomaticMix(out_of_office=1.0, acknowledgement=1.0, bounce=1.0))
    _assert_same(plain, flooded)


@pytest.mark.slow
@pytest.mark.skipif(not NAMES, reason=f"the shared corpora are not at {CORPORA}")
@pytest.mark.parametrize("name", NAMES)
def test_real_corpus_same_records_with_and_without_automatic_mail(name):
    settings = Settings()
    mails = [item for item in parse_sources([str(CORPORA / name / "messages.mbox")], settings.correlation)
             if not isinstance(item, ParseFailure)]
    people = list(with_direction(mails, frozenset(), desk_by_replies(mails, 0.5)))
    plain, with_automatic, automatic, kinds = _compare(people, settings)
    assert {mail.automatic for mail in people} == {"list"}  # every corpus mail is list traffic
    assert len(automatic) > 100 and {made_as for made_as, _ in kinds} == {"acknowledgement", "out_of_office", "bounce"}
    assert all(made_as != "bounce" or kind == "bounce" for made_as, kind in kinds)
    assert all(kind in ("auto_reply", "bounce") for _, kind in kinds)
    figures = sla_figures(plain.sla_events)
    assert figures["first_response"].met_on_time > 0 and figures["first_response"].breached_open > 0
    _assert_same(plain, with_automatic)
