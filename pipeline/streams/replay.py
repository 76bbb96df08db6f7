"""``threadline replay``: recompute every correlation with new settings as a new generation.

The new generation is a new Faust app id, hence a new consumer group (reads ``mail.raw`` from
the beginning) and new table names (an empty index that fills as it goes).  It emits every
correlation again with the new generation number; consumers and ClickHouse keep the newest
generation per mail.  Old and new can run side by side until the new one has caught up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pipeline.avro import AvroCodec
from pipeline.settings import KafkaSettings
from pipeline.streams.reader import read_topic


@dataclass
class GenerationDiff:
    old_generation: int
    new_generation: int
    mails: int = 0
    changed: int = 0
    by_method: Counter = field(default_factory=Counter)  # "old -> new" method names of changed mails
    changed_ids: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"generation {self.old_generation} -> {self.new_generation}: {self.mails} mails, "
                 f"{self.changed} correlations changed"]
        lines += [f"  {transition:<40}{count:>8}" for transition, count in self.by_method.most_common()]
        return "\n".join(lines)


def _decisions(kafka: KafkaSettings, bootstrap: str, codec: AvroCodec, generation: int) -> dict[tuple[str, str], tuple]:
    decisions = {}
    for _, _, _, record in read_topic(kafka, bootstrap, "mail.correlated", codec):
        if record["generation"] == generation:
            decisions[(record["tenant"], record["message_id"])] = (
                record["method_name"], record["parent_message_id"], record["conversation_id"])
    return decisions


def diff_generations(kafka: KafkaSettings, bootstrap: str, codec: AvroCodec, old: int, new: int) -> GenerationDiff:
    """What changed between two generations: a mail changed when its method or parent differ."""
    before = _decisions(kafka, bootstrap, codec, old)
    after = _decisions(kafka, bootstrap, codec, new)
    diff = GenerationDiff(old, new, mails=len(after))
    for key, (method, parent, _) in sorted(after.items()):
        previous = before.get(key)
        if previous is None or previous[:2] != (method, parent):
            diff.changed += 1
            diff.by_method[f"{previous[0] if previous else 'absent'} -> {method}"] += 1
            diff.changed_ids.append(key[1])
    return diff
