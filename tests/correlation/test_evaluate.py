"""The accuracy report (pipeline.correlation.evaluate, pipeline.batch.evaluate_corpus): judged and
fallback links, false links grouped by evidence, the subject-grouping reference; on decisions
built in the test and on a hand-made mbox."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pipeline.batch import evaluate_corpus
from pipeline.correlation.evaluate import (TruthRow, evaluate, evidence_signature, format_summary, score_links,
                                           subject_grouping)
from pipeline.correlation.methods.base import Method
from pipeline.correlation.model import Correlation
from pipeline.settings import CorrelationSettings

T0 = datetime(2026, 5, 4, 8, 0, tzinfo=timezone.utc)


def decision(message_id: str, parent: str | None = None, method: int = Method.NONE, *, subject: str = "",
             days: float = 0, evidence: dict | None = None, confidence: float = 1.0) -> Correlation:
    return Correlation(tenant="default", message_id=message_id, conversation_id=f"c-{parent or message_id}",
                       method=method, mail_type="reply" if parent else "new", direction="in", confidence=confidence,
                       event_time=T0 + timedelta(days=days), parent_message_id=parent, subject=subject,
                       evidence=evidence or {})


# a <- b (header), c: a reply sent without headers (a thread of its own in the truth), d: names a
# parent the corpus does not hold (its own thread), e <- f.
TRUTH = [TruthRow("a", None, "a"), TruthRow("b", "a", "a"), TruthRow("c", None, "c"), TruthRow("d", None, "d"),
         TruthRow("e", None, "e"), TruthRow("f", "e", "e")]
NAMED = {"a": (), "b": ("a",), "c": (), "d": ("gone",), "e": (), "f": ("e",)}


def decisions_with_headers() -> list[Correlation]:
    return [decision("a"), decision("b", "a", Method.IN_REPLY_TO),
            decision("c", "b", Method.SMART_MATCHING, evidence={"same_subject": True, "reply_prefix": True}),
            decision("d", "b", Method.SMART_MATCHING, evidence={"quoted_lines": 1, "same_subject": False}),
            decision("e"), decision("f", "e", Method.IN_REPLY_TO)]


def test_judged_precision_leaves_out_links_from_mails_without_headers():
    result = evaluate(TRUTH, decisions_with_headers(), NAMED)
    assert (result.overall.links, result.overall.correct_links) == (4, 2)
    # c carried no In-Reply-To / References: the truth makes it a thread start, so it is not judged.
    assert (result.overall.judged_links, result.overall.judged_correct_links) == (3, 2)
    assert result.judged_mails == 3 and result.judged_recall == result.recall == 1.0
    assert result.methods["InReplyTo"].judged_precision == 1.0
    assert result.methods["SmartMatching"].as_dict(2)["judged_links"] == 1


def test_fallback_links_are_content_links_from_mails_naming_no_indexed_mail():
    result = evaluate(TRUTH, decisions_with_headers(), NAMED)
    # c named nothing, d named an id no mail before it had: both fell back on content.
    assert (result.fallback.links, result.fallback.correct_links) == (2, 0)
    # The same content link from a mail whose header named an indexed mail is no fallback.
    stripped = [decision("a"), decision("b", "a", Method.SMART_MATCHING), decision("c"), decision("d"),
                decision("e"), decision("f", "e", Method.SMART_MATCHING)]
    assert evaluate(TRUTH, stripped, NAMED).fallback.links == 0
    # A header naming a mail that comes later does not count as naming an indexed one.
    late = [decision("b", "x", Method.SMART_MATCHING), decision("a")]
    assert evaluate(TRUTH, late, NAMED).fallback.links == 1


def test_without_the_headers_there_are_no_judged_or_fallback_figures():
    data = evaluate(TRUTH, decisions_with_headers()).as_dict()
    assert "fallback" not in data and "judged_mails" not in data
    assert data["overall"]["link_precision"] == 0.5


def test_false_links_are_grouped_by_method_and_the_shape_of_their_evidence():
    more = [*decisions_with_headers(), decision("g", "a", Method.SMART_MATCHING,
                                                evidence={"same_subject": True, "reply_prefix": True})]
    truth = [*TRUTH, TruthRow("g", None, "g")]
    result = evaluate(truth, more, {**NAMED, "g": ()})
    assert result.top_confusion() == [("SmartMatching: reply_prefix same_subject", 2),
                                      ("SmartMatching: quoted_lines=1", 1)]
    assert result.as_dict()["false_links_by_evidence"][0] == {"group": "SmartMatching: reply_prefix same_subject",
                                                              "false_links": 2}


def test_calibration_counts_links_and_precision_per_confidence_band():
    decisions = [decision("a"), decision("b", "a", Method.IN_REPLY_TO, confidence=0.9),
                 decision("c", "b", Method.SMART_MATCHING, confidence=0.7),
                 decision("d", "b", Method.SMART_MATCHING, confidence=0.69), decision("e", confidence=0.2),
                 decision("f", "e", Method.SMART_MATCHING, confidence=0.1)]
    result = evaluate(TRUTH, decisions, NAMED)
    assert [(label, band.links, band.precision, band.judged_links) for label, band in result.calibration.items()] == [
        (">=0.9", 1, 1.0, 1), ("0.7-0.9", 1, 0.0, 0), ("0.5-0.7", 1, 0.0, 1), ("<0.5", 1, 1.0, 1)]
    assert result.as_dict()["calibration"][1] == {"confidence": "0.7-0.9", "links": 1, "correct_links": 0,
                                                  "link_precision": 0.0, "judged_links": 0,
                                                  "judged_correct_links": 0, "judged_link_precision": None}


def test_evidence_signature_names_truthy_keys_and_buckets_numbers():
    evidence = {"strategy": "evidence", "subject_hashes": ["arm"], "matched_addresses": [], "quoted_lines": 5,
                "score": 13.5, "weight": 0.42, "attribution": None, "same_subject": False, "series": "2/5"}
    assert evidence_signature(evidence) == "quoted_lines=4-7 score=8-15 series strategy subject_hashes weight=0.4-0.5"
    assert evidence_signature({"quoted_lines": 1, "shared": 2}) == "quoted_lines=1 shared=2-3"
    assert evidence_signature({}) == "(no evidence)"


def test_subject_grouping_links_the_latest_earlier_mail_with_the_normalised_subject_inside_the_window():
    mails = [decision("a", subject="[dev] Build fails"), decision("b", subject="Re: build FAILS", days=1),
             decision("c", subject="AW: Re: [dev] Build fails", days=2), decision("d", subject="Build fails", days=200),
             decision("e", subject=""), decision("f", subject="", days=1)]
    assert list(subject_grouping(mails, window_days=90)) == [("a", None), ("b", "a"), ("c", "b"), ("d", None),
                                                             ("e", None), ("f", None)]


def test_score_links_measures_a_reference_rule_on_the_truth():
    score = score_links(TRUTH, [("b", "a"), ("c", "b"), ("f", "e"), ("a", None)], NAMED)
    assert (score["links"], score["link_precision"], score["link_recall"]) == (3, 2 / 3, 1.0)
    assert score["judged_link_precision"] == 1.0


# -------------------------------------------------------------------- on a hand-made corpus
QUESTION = "The build stops at the linker step with an undefined symbol.\nIt worked last week on the same board."
ANSWER = ("> The build stops at the linker step with an undefined symbol.\n\nUpgrade binutils, the old one drops it.\n"
          "Then run the configure step again from a clean tree.")
TINY_CORPUS = [
    {"id": "q@one.example", "subject": "Build fails on the ARM board", "sender": "ann@one.example", "body": QUESTION},
    {"id": "r@two.example", "subject": "Re: Build fails on the ARM board", "sender": "Bob Baker <bob@two.example>",
     "in_reply_to": "q@one.example", "references": ["q@one.example"], "body": ANSWER, "parent": "q@one.example",
     "root": "q@one.example"},
    # A reply without threading headers (it quotes the answer and names its author): the truth
    # makes it a thread start.
    {"id": "s@three.example", "subject": "Re: Build fails on the ARM board", "sender": "cat@three.example",
     "body": "Bob Baker wrote:\n" + "\n".join(f"> {line}" for line in ANSWER.splitlines()) + "\n\nThat fixed it here too."},
    {"id": "v@one.example", "subject": "Release vote for the next version", "sender": "ann@one.example",
     "body": "Please vote on the release candidate by Friday."},
    {"id": "w@two.example", "subject": "Re: Release vote for the next version", "sender": "bob@two.example",
     "in_reply_to": "v@one.example", "body": "> Please vote on the release candidate by Friday.\n\n+1",
     "parent": "v@one.example", "root": "v@one.example"},
]


def test_evaluate_corpus_reports_both_modes_and_the_references(tmp_path, write_corpus):
    folder = write_corpus(tmp_path / "tiny", TINY_CORPUS)
    runs = evaluate_corpus("tiny", folder / "messages.mbox", folder / "truth.jsonl", CorrelationSettings())
    assert [(run.corpus, run.mode) for run in runs] == [("tiny", "headers"), ("tiny", "stripped")]
    headers, stripped = (run.evaluation for run in runs)
    # What the original headers said is kept for the stripped run too.
    assert headers.judged_mails == stripped.judged_mails == 2
    assert headers.methods["InReplyTo"].as_dict()["correct_links"] == 2
    for result in (headers, stripped):
        # The header-less reply's link is counted over all links but not judged, and it fell back on content.
        assert result.overall.links == result.overall.judged_links + 1
        assert result.fallback.links == 1 and result.fallback.judged_links == 0
    assert headers.overall.judged_precision == 1.0
    subject = runs[1].baselines["subject_grouping"]
    assert (subject["links"], subject["correct_links"], subject["link_recall"]) == (3, 2, 1.0)
    assert runs[1].baselines["dynamics"]["link_recall"] is not None
    table = format_summary(runs).splitlines()
    assert table[0].split()[:4] == ["corpus", "mode", "judged", "P"] and "conf>=0.9 judged P (n)" in table[0]
    assert len(table) == 4
    assert table[2].startswith("tiny") and "headers" in table[2] and "100.00" in table[2]
