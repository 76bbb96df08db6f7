"""``threadline replay``: recompute every correlation with new settings as a new generation.

The new generation is a new Faust app id, hence a new consumer group (reads ``mail.raw`` from
the beginning) and new table names (an empty index that fills as it goes).  It emits every
correlation again with the new generation number; consumers and ClickHouse keep the newest
(highest) generation per mail.  Old and new can run side by side until the new one has caught up.

The settings name only the generation the live workers compute, so a replay finds the
generations that already exist on the cluster (:func:`known_generations`) and makes the next one
(:func:`plan_generations`); it never reuses one, whose consumer group has already read
``mail.raw`` and whose correlations are already there.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from pipeline.contracts.topics import MAIL_CORRELATED, MAIL_UNTRACKED
from pipeline.runtime.kafka import cluster_metadata, new_admin
from pipeline.contracts.avro import AvroCodec
from pipeline.settings import KafkaSettings
from pipeline.streams.reader import read_topic


class ReplayRefused(ValueError):
    """The requested generations would not make a new generation; nothing was started."""


@dataclass(frozen=True)
class KnownGenerations:
    with_outputs: frozenset[int]  # generations seen in mail.correlated or mail.untracked
    started: frozenset[int]  # generations with a consumer group or table topics ``<app_id>-g<N>``

    @property
    def all(self) -> frozenset[int]:
        return self.with_outputs | self.started


def generations_named(names: Iterable[str], app_ids: Iterable[str]) -> set[int]:
    """N of every consumer group ``<app_id>-g<N>`` and Faust topic ``<app_id>-g<N>-...`` among ``names``."""
    patterns = [re.compile(rf"^{re.escape(app)}-g(\d+)(?:-|$)") for app in app_ids]
    return {int(match[1]) for name in names for pattern in patterns if (match := pattern.match(name))}


def known_generations(kafka: KafkaSettings, bootstrap: str, codec: AvroCodec, app_ids: Iterable[str],
                      timeout_s: float = 30.0) -> KnownGenerations:
    """The generations that exist on the cluster: in the output topics, as consumer groups of
    ``app_ids``, or as their Faust table topics (a generation that started but emitted nothing)."""
    outputs = {record["generation"] for topic in (MAIL_CORRELATED, MAIL_UNTRACKED)
               for _, _, _, record in read_topic(kafka, bootstrap, topic, codec)}
    admin = new_admin(kafka, bootstrap)
    groups = admin.list_consumer_groups(request_timeout=timeout_s).result(timeout=timeout_s)
    names = [group.group_id for group in groups.valid] + list(cluster_metadata(admin, timeout_s).topics)
    return KnownGenerations(frozenset(outputs), frozenset(generations_named(names, app_ids)))


def plan_generations(known: KnownGenerations, current: int, new: int | None = None,
                     old: int | None = None) -> tuple[int, int]:
    """(generation to compare with, new generation).  The new one defaults to one above every
    known generation and the settings' ``current`` one; a requested one must be above them all
    (an existing generation has already read ``mail.raw``; a lower one would never be the
    newest, so nothing would use its results).  The default to compare with is the newest
    generation that has output, else ``current``."""
    existing = known.all | {current}
    newest = max(existing)
    if new is None:
        new = newest + 1
    elif new in existing:
        raise ReplayRefused(f"generation {new} already exists (generations on the cluster: "
                            f"{', '.join(map(str, sorted(existing)))}): a replay makes a new one; "
                            f"leave out --generation to get {newest + 1}")
    elif new < newest:
        raise ReplayRefused(f"generation {new} is below the newest generation {newest}: consumers and ClickHouse keep "
                            f"the highest generation per mail, so its results would never be used; "
                            f"leave out --generation to get {newest + 1}")
    if old is None:
        old = max(known.with_outputs) if known.with_outputs else current
    elif old == new:
        raise ReplayRefused(f"--from-generation {old} is the new generation itself")
    return old, new


@dataclass
class GenerationDiff:
    old_generation: int
    new_generation: int
    mails: int = 0
    changed: int = 0
    by_method: Counter = field(default_factory=Counter)  # "old -> new" method names of changed mails
    changed_ids: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"new generation {self.new_generation} compared with generation {self.old_generation}: "
                 f"{self.mails} mails, {self.changed} correlations changed"]
        lines += [f"  {transition:<40}{count:>8}" for transition, count in self.by_method.most_common()]
        return "\n".join(lines)


def _decisions(kafka: KafkaSettings, bootstrap: str, codec: AvroCodec,
               generations: Iterable[int]) -> dict[int, dict[tuple[str, str], tuple]]:
    """Each generation's decision per (tenant, Message-ID), the last record of a mail winning, in
    one read of ``mail.correlated`` (decoding is most of its cost)."""
    decisions: dict[int, dict[tuple[str, str], tuple]] = {generation: {} for generation in generations}
    for _, _, _, record in read_topic(kafka, bootstrap, MAIL_CORRELATED, codec):
        of_generation = decisions.get(record["generation"])
        if of_generation is not None:
            of_generation[(record["tenant"], record["message_id"])] = (
                record["method_name"], record["parent_message_id"], record["conversation_id"])
    return decisions


def diff_generations(kafka: KafkaSettings, bootstrap: str, codec: AvroCodec, old: int, new: int) -> GenerationDiff:
    """What changed between two generations: a mail changed when its method or parent differ."""
    decisions = _decisions(kafka, bootstrap, codec, (old, new))
    before, after = decisions[old], decisions[new]
    diff = GenerationDiff(old, new, mails=len(after))
    for key, (method, parent, _) in sorted(after.items()):
        previous = before.get(key)
        if previous is None or previous[:2] != (method, parent):
            diff.changed += 1
            diff.by_method[f"{previous[0] if previous else 'absent'} -> {method}"] += 1
            diff.changed_ids.append(key[1])
    return diff
