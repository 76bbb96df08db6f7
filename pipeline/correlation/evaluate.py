"""Accuracy of correlation against a ground truth (DESIGN.md §7).

Link precision: share of predicted links (mail -> parent) whose two mails are in the same true
thread.  Link recall: share of mails with a true parent in the corpus that got a link into their
true thread.  Thread pairwise precision / recall compare the predicted conversations with the
true threads over all pairs of mails.  All per method and overall.  Pure: no I/O here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.correlation.methods.base import Method
from pipeline.correlation.model import Correlation


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


@dataclass
class MethodScore:
    links: int = 0
    correct_links: int = 0
    recalled: int = 0  # mails with a true parent linked into their true thread by this method

    def as_dict(self, with_parent: int) -> dict:
        return {
            "links": self.links,
            "correct_links": self.correct_links,
            "link_precision": _ratio(self.correct_links, self.links),
            "link_recall": _ratio(self.recalled, with_parent),
        }


@dataclass
class Evaluation:
    mails: int = 0
    mails_with_parent: int = 0
    unknown_mails: int = 0  # predictions for mails absent from the truth (not scored)
    methods: dict[str, MethodScore] = field(default_factory=dict)
    overall: MethodScore = field(default_factory=MethodScore)
    pair_precision: float | None = None
    pair_recall: float | None = None

    def as_dict(self) -> dict:
        return {
            "mails": self.mails,
            "mails_with_parent": self.mails_with_parent,
            "unknown_mails": self.unknown_mails,
            "overall": self.overall.as_dict(self.mails_with_parent),
            "methods": {name: score.as_dict(self.mails_with_parent) for name, score in sorted(self.methods.items())},
            "thread_pair_precision": self.pair_precision,
            "thread_pair_recall": self.pair_recall,
        }


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _pairs(count: int) -> int:
    return count * (count - 1) // 2


def evaluate(truth: Iterable[TruthRow], predictions: Iterable[Correlation]) -> Evaluation:
    """Score ``predictions`` (one per mail; later ones for the same mail win) against ``truth``."""
    thread_of: dict[str, str] = {}
    has_parent: set[str] = set()
    for row in truth:
        thread_of[row.message_id] = row.thread_root_id
        if row.parent_message_id:
            has_parent.add(row.message_id)

    latest: dict[str, Correlation] = {}
    for prediction in predictions:
        if prediction.untracked_reason != "duplicate":  # a repeat reports the first decision again
            latest[prediction.message_id] = prediction

    result = Evaluation(mails=len(thread_of), mails_with_parent=len(has_parent))
    contingency: dict[tuple[str, str], int] = {}
    predicted_sizes: dict[str, int] = {}
    true_sizes: dict[str, int] = {}
    for message_id, prediction in latest.items():
        true_thread = thread_of.get(message_id)
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
        score = result.methods.setdefault(prediction.method_name, MethodScore())
        correct = thread_of.get(parent) == true_thread
        for target in (score, result.overall):
            target.links += 1
            target.correct_links += correct
            target.recalled += correct and message_id in has_parent

    same_both = sum(_pairs(n) for n in contingency.values())
    result.pair_precision = _ratio(same_both, sum(_pairs(n) for n in predicted_sizes.values()))
    result.pair_recall = _ratio(same_both, sum(_pairs(n) for n in true_sizes.values()))
    return result


def format_table(evaluation: Evaluation, title: str = "") -> str:
    """The evaluation as a plain-text table, one row per method and one overall."""

    def percent(value: float | None) -> str:
        return "   n/a" if value is None else f"{100 * value:6.2f}"

    lines = [title] if title else []
    lines.append(f"mails {evaluation.mails}, with a parent in the corpus {evaluation.mails_with_parent}")
    lines.append(f"{'method':<18}{'links':>7}{'correct':>9}{'precision %':>13}{'recall %':>10}")
    rows = sorted(evaluation.methods.items()) + [("overall", evaluation.overall)]
    for name, score in rows:
        data = score.as_dict(evaluation.mails_with_parent)
        lines.append(f"{name:<18}{score.links:>7}{score.correct_links:>9}"
                     f"{percent(data['link_precision']):>13}{percent(data['link_recall']):>10}")
    lines.append(f"thread pairs: precision {percent(evaluation.pair_precision).strip()} %, "
                 f"recall {percent(evaluation.pair_recall).strip()} %")
    return "\n".join(lines)
