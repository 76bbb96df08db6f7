"""Accuracy of correlation against a ground truth (DESIGN.md §7).

Link precision: share of predicted links (mail -> parent) whose two mails are in the same true
thread.  Link recall: share of mails with a true parent in the corpus that got a link into their
true thread.  Thread pairwise precision / recall compare the predicted conversations with the
true threads over all pairs of mails.  All per method and overall.

Given what each mail's own In-Reply-To / References named (read before any header stripping),
the evaluation also reports:

- **judged** precision and recall: only links from mails that carried threading headers.  The
  corpus truth is derived from those headers, so a mail without them is a thread start by
  construction and a link from it is counted wrong whatever it says (every mail with a true
  parent carries headers, so judged recall equals recall on such a truth);
- **fallback** links: links by a content method (not XHeader / InReplyTo) from mails whose
  headers named no mail indexed before them, the case where headers cannot decide;
- a **confusion** summary: false links grouped by method and the shape of their evidence;
- **calibration**: links and their precision per band of ``Correlation.confidence``.

Two reference rules are scored on the same truth: plain subject grouping (``subject_grouping``)
and, by the caller, the Dynamics strategy.  Pure: no I/O here except reading the truth file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from pipeline.correlation.methods.base import Method
from pipeline.correlation.model import Correlation
from pipeline.correlation.subject import normalize_subject

# Methods that follow the mail's own threading headers; every other method is content-based.
HEADER_METHODS = frozenset({Method.XHEADER, Method.IN_REPLY_TO})

# Ids a mail's own In-Reply-To and References named, by the Message-ID it was correlated under.
NamedIds = Mapping[str, Sequence[str]]
# A predicted link: (mail, parent or None).
Link = tuple[str, str | None]
# Groups of false links a text table shows (the JSON has them all).
CONFUSION_SHOWN = 8
# Confidence bands of the calibration, highest first: (lowest confidence in the band, label).
CONFIDENCE_BANDS = ((0.9, ">=0.9"), (0.7, "0.7-0.9"), (0.5, "0.5-0.7"), (float("-inf"), "<0.5"))


@dataclass(frozen=True, slots=True)
class TruthRow:
    message_id: str
    parent_message_id: str | None
    thread_root_id: str


def read_truth(path: str | Path) -> Iterator[TruthRow]:
    """Rows of a truth JSONL file (format: shared corpus README)."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield TruthRow(row["message_id"], row.get("parent_message_id"), row["thread_root_id"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a truth row ({exc})") from exc


class _Truth:
    """The true thread of every mail and which mails have a true parent."""

    def __init__(self, rows: Iterable[TruthRow]) -> None:
        self.thread_of: dict[str, str] = {}
        self.has_parent: set[str] = set()
        for row in rows:
            self.thread_of[row.message_id] = row.thread_root_id
            if row.parent_message_id:
                self.has_parent.add(row.message_id)

    def correct(self, message_id: str, parent: str) -> bool:
        return self.thread_of.get(parent) == self.thread_of[message_id]


@dataclass
class LinkScore:
    """Counts of one group of links (a method, a baseline, a confidence bucket, ...)."""

    links: int = 0
    correct_links: int = 0
    recalled: int = 0  # mails with a true parent linked into their true thread
    judged_links: int = 0  # links from mails that carried threading headers
    judged_correct_links: int = 0

    def add(self, *, correct: bool, recalled: bool, judged: bool) -> None:
        self.links += 1
        self.correct_links += correct
        self.recalled += recalled
        self.judged_links += judged
        self.judged_correct_links += correct and judged

    @property
    def precision(self) -> float | None:
        return _ratio(self.correct_links, self.links)

    @property
    def judged_precision(self) -> float | None:
        return _ratio(self.judged_correct_links, self.judged_links)

    def as_dict(self, with_parent: int | None = None) -> dict:
        data = {
            "links": self.links,
            "correct_links": self.correct_links,
            "link_precision": self.precision,
            "judged_links": self.judged_links,
            "judged_correct_links": self.judged_correct_links,
            "judged_link_precision": self.judged_precision,
        }
        if with_parent is not None:
            data["link_recall"] = _ratio(self.recalled, with_parent)
        return data


@dataclass
class Evaluation:
    mails: int = 0
    mails_with_parent: int = 0
    unknown_mails: int = 0  # predictions for mails absent from the truth (not scored)
    headers_known: bool = False  # whether the mails' own threading headers were given
    judged_mails: int = 0  # mails that carried In-Reply-To or References
    judged_with_parent: int = 0
    judged_recalled: int = 0
    methods: dict[str, LinkScore] = field(default_factory=dict)
    overall: LinkScore = field(default_factory=LinkScore)
    fallback: LinkScore = field(default_factory=LinkScore)
    # "method: evidence signature" -> false links with that evidence
    confusion: dict[str, int] = field(default_factory=dict)
    # confidence band label -> its links, every band present (highest first)
    calibration: dict[str, LinkScore] = field(default_factory=lambda: {label: LinkScore() for _, label in CONFIDENCE_BANDS})
    pair_precision: float | None = None
    pair_recall: float | None = None

    @property
    def recall(self) -> float | None:
        return _ratio(self.overall.recalled, self.mails_with_parent)

    @property
    def judged_recall(self) -> float | None:
        return _ratio(self.judged_recalled, self.judged_with_parent)

    def top_confusion(self, count: int | None = None) -> list[tuple[str, int]]:
        """The largest groups of false links first (ties by name, so the order is stable)."""
        return sorted(self.confusion.items(), key=lambda item: (-item[1], item[0]))[:count]

    def as_dict(self) -> dict:
        data = {
            "mails": self.mails,
            "mails_with_parent": self.mails_with_parent,
            "unknown_mails": self.unknown_mails,
            "overall": {**self.overall.as_dict(self.mails_with_parent), "judged_link_recall": self.judged_recall},
            "methods": {name: score.as_dict(self.mails_with_parent) for name, score in sorted(self.methods.items())},
            "thread_pair_precision": self.pair_precision,
            "thread_pair_recall": self.pair_recall,
        }
        if self.headers_known:
            data.update(judged_mails=self.judged_mails, judged_mails_with_parent=self.judged_with_parent,
                        fallback=self.fallback.as_dict())
        data["false_links_by_evidence"] = [{"group": group, "false_links": n} for group, n in self.top_confusion()]
        data["calibration"] = [{"confidence": label, **score.as_dict()} for label, score in self.calibration.items()]
        return data


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _pairs(count: int) -> int:
    return count * (count - 1) // 2


def evaluate(truth: Iterable[TruthRow], predictions: Iterable[Correlation], named_ids: NamedIds | None = None) -> Evaluation:
    """Score ``predictions`` (one per mail, in the order they were correlated; later ones for the
    same mail win) against ``truth``.  ``named_ids`` (what each mail's own headers named, before
    any stripping) enables the judged, fallback and header-dependent figures."""
    known = _Truth(truth)
    latest: dict[str, Correlation] = {}
    # Whether a mail's headers named a mail indexed before it, decided when the mail came.
    named_known_mail: dict[str, bool] = {}
    indexed: set[str] = set()
    for prediction in predictions:
        if prediction.untracked_reason == "duplicate":  # a repeat reports the first decision again
            continue
        message_id = prediction.message_id
        latest[message_id] = prediction
        if named_ids is not None:
            named_known_mail.setdefault(message_id, any(ref in indexed for ref in named_ids.get(message_id, ())))
        if prediction.untracked_reason is None:
            indexed.add(message_id)

    result = Evaluation(mails=len(known.thread_of), mails_with_parent=len(known.has_parent),
                        headers_known=named_ids is not None)
    if named_ids is not None:
        judged = {message_id for message_id in known.thread_of if named_ids.get(message_id)}
        result.judged_mails = len(judged)
        result.judged_with_parent = len(judged & known.has_parent)
    else:
        judged = set()
    contingency: dict[tuple[str, str], int] = {}
    predicted_sizes: dict[str, int] = {}
    true_sizes: dict[str, int] = {}
    for message_id, prediction in latest.items():
        true_thread = known.thread_of.get(message_id)
        if true_thread is None:
            result.unknown_mails += 1
            continue
        conversation = prediction.conversation_id
        contingency[conversation, true_thread] = contingency.get((conversation, true_thread), 0) + 1
        predicted_sizes[conversation] = predicted_sizes.get(conversation, 0) + 1
        true_sizes[true_thread] = true_sizes.get(true_thread, 0) + 1
        parent = prediction.parent_message_id
        if parent is None or prediction.method in (Method.NONE, Method.SKIPPED):
            continue
        correct = known.correct(message_id, parent)
        recalled = correct and message_id in known.has_parent
        is_judged = message_id in judged
        result.judged_recalled += recalled and is_judged
        groups = [result.methods.setdefault(prediction.method_name, LinkScore()), result.overall,
                  result.calibration[confidence_band(prediction.confidence)]]
        if named_ids is not None and prediction.method not in HEADER_METHODS and not named_known_mail[message_id]:
            groups.append(result.fallback)
        for group in groups:
            group.add(correct=correct, recalled=recalled, judged=is_judged)
        if not correct:
            key = f"{prediction.method_name}: {evidence_signature(prediction.evidence)}"
            result.confusion[key] = result.confusion.get(key, 0) + 1

    same_both = sum(_pairs(n) for n in contingency.values())
    result.pair_precision = _ratio(same_both, sum(_pairs(n) for n in predicted_sizes.values()))
    result.pair_recall = _ratio(same_both, sum(_pairs(n) for n in true_sizes.values()))
    return result


def confidence_band(confidence: float) -> str:
    return next(label for lowest, label in CONFIDENCE_BANDS if confidence >= lowest)


def evidence_signature(evidence: Mapping[str, Any]) -> str:
    """The shape of a decision's evidence, whatever its keys: the names of its truthy entries,
    sorted, a number with its size class ("quoted_lines=1", "score=8-15", "weight=0.3-0.4").
    Values themselves (ids, words, addresses) are left out, so similar decisions group together."""
    parts = []
    for key in sorted(evidence):
        value = evidence[key]
        if not value:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{key}={_size_class(value)}")
        else:
            parts.append(key)
    return " ".join(parts) or "(no evidence)"


def _size_class(value: float) -> str:
    """Tenths below 1 (weights, shares), powers of two from 1 up (counts, scores)."""
    if value < 0:
        return "<0"
    if value < 1:
        tenth = math.floor(value * 10)
        return f"{tenth / 10:.1f}-{(tenth + 1) / 10:.1f}"
    low = 2 ** math.floor(math.log2(value))
    return str(low) if low == 1 else f"{low}-{2 * low - 1}"


def subject_grouping(predictions: Iterable[Correlation], window_days: float) -> Iterator[Link]:
    """The plain subject-grouping reference: a mail links to the most recent earlier mail with the
    same normalised subject (``subject.normalize_subject``: no reply / forward prefixes, no leading
    tags, case-folded) dated inside the window; an empty subject links nowhere.  Reads only the
    subject and time the predictions carry, in their order."""
    window = timedelta(days=window_days)
    latest_with: dict[str, Correlation] = {}
    for prediction in predictions:
        if prediction.untracked_reason is not None:
            continue
        key = normalize_subject(prediction.subject)
        earlier = latest_with.get(key)
        in_window = earlier is not None and prediction.event_time - earlier.event_time <= window
        yield prediction.message_id, earlier.message_id if key and in_window else None
        latest_with[key] = prediction


def score_links(truth: Iterable[TruthRow], links: Iterable[Link], named_ids: NamedIds | None = None) -> dict:
    """Precision and recall of plain links (a reference rule's), judged as ``evaluate`` does."""
    known = _Truth(truth)
    score = LinkScore()
    for message_id, parent in links:
        if parent is None or message_id not in known.thread_of:
            continue
        correct = known.correct(message_id, parent)
        score.add(correct=correct, recalled=correct and message_id in known.has_parent,
                  judged=bool(named_ids and named_ids.get(message_id)))
    return score.as_dict(len(known.has_parent))


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def format_table(evaluation: Evaluation, title: str = "") -> str:
    """The evaluation as a plain-text table, one row per method and one overall, then the
    largest groups of false links."""
    judged = evaluation.headers_known
    lines = [title] if title else []
    lines.append(f"mails {evaluation.mails}, with a parent in the corpus {evaluation.mails_with_parent}"
                 + (f", with threading headers {evaluation.judged_mails}" if judged else ""))
    lines.append(f"{'method':<18}{'links':>7}{'correct':>9}{'precision %':>13}{'recall %':>10}"
                 + (f"{'judged P %':>12}" if judged else ""))
    rows = sorted(evaluation.methods.items()) + [("overall", evaluation.overall)]
    for name, score in rows:
        data = score.as_dict(evaluation.mails_with_parent)
        lines.append(f"{name:<18}{score.links:>7}{score.correct_links:>9}"
                     f"{_percent(data['link_precision']):>13}{_percent(data['link_recall']):>10}"
                     + (f"{_percent(score.judged_precision):>12}" if judged else ""))
    lines.append(f"thread pairs: precision {_percent(evaluation.pair_precision)} %, "
                 f"recall {_percent(evaluation.pair_recall)} %")
    if judged:
        lines.append(f"judged recall {_percent(evaluation.judged_recall)} %; fallback links {evaluation.fallback.links}, "
                     f"precision {_percent(evaluation.fallback.precision)} %")
    lines.append(f"{'confidence':<18}{'links':>7}{'correct':>9}{'precision %':>13}"
                 + (f"{'judged P %':>12}" if judged else ""))
    for label, score in evaluation.calibration.items():
        lines.append(f"{label:<18}{score.links:>7}{score.correct_links:>9}{_percent(score.precision):>13}"
                     + (f"{_percent(score.judged_precision):>12}" if judged else ""))
    top = evaluation.top_confusion(CONFUSION_SHOWN)
    if top:
        lines.append(f"false links by evidence (top {len(top)} of {len(evaluation.confusion)} groups):")
        lines.extend(f"{count:>7}  {group}" for group, count in top)
    return "\n".join(lines)



@dataclass
class CorpusRun:
    """One corpus in one mode ("headers" or "stripped"): the engine's evaluation and the scores of
    the reference rules (name -> ``score_links``-shaped dict) on the same mails."""

    corpus: str
    mode: str
    strategy: str
    settings_fingerprint: str
    evaluation: Evaluation
    baselines: dict[str, dict]

    def as_dict(self) -> dict:
        return {"corpus": self.corpus, "mode": self.mode, "strip_headers": self.mode == "stripped",
                "strategy": self.strategy, "settings_fingerprint": self.settings_fingerprint,
                **self.evaluation.as_dict(), "baselines": self.baselines}


def format_summary(runs: Sequence[CorpusRun]) -> str:
    """One line per corpus and mode: the engine's judged precision, recall, precision over all
    links, and the judged precision of its fallback links and of its links of confidence >= 0.9,
    beside the reference rules' precision / recall (all in %).  Fallback and confidence are judged:
    a link from a mail without threading headers is wrong by the truth's construction."""

    def pair(score: dict | None) -> str:
        if score is None:
            return "-"
        return f"{_percent(score['link_precision'])} / {_percent(score['link_recall'])}"

    header = ("corpus", "mode", "judged P", "recall", "P all links", "fallback judged P (n)", "conf>=0.9 judged P (n)",
              "subject P / R", "Dynamics P / R")
    rows = [header]
    for run in runs:
        result = run.evaluation
        fallback = (f"{_percent(result.fallback.judged_precision)} ({result.fallback.judged_links})"
                    if result.headers_known else "-")
        sure = result.calibration[CONFIDENCE_BANDS[0][1]]
        rows.append((run.corpus, run.mode, _percent(result.overall.judged_precision), _percent(result.recall),
                     _percent(result.overall.precision), fallback,
                     f"{_percent(sure.judged_precision)} ({sure.judged_links})" if result.headers_known else "-",
                     pair(run.baselines.get("subject_grouping")), pair(run.baselines.get("dynamics"))))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if column < 2 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
