"""The batch-step contract between the stream agents and their Faust-free steps.

A step takes consumed records (:class:`RawItem`) and returns a :class:`BatchResult`; the agent
produces its outputs, waits for every acknowledgement, then applies its table writes (and waits
for their changelog records) and only then commits, so a crash anywhere redelivers the batch.
:class:`OffsetMarkers` make a redelivered, already applied record a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, MutableMapping, Protocol

from pipeline.contracts.avro import AvroCodec, AvroDecodeError
from pipeline.contracts.records import SourcePosition, deadletter_record
from pipeline.contracts.topics import DEADLETTER
from pipeline.runtime.state import offset_key


@dataclass(frozen=True, slots=True)
class RawItem:
    """One consumed record of the step's source topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class Output:
    topic: str  # logical topic name, without the installation's prefix
    key: bytes
    value: bytes


@dataclass
class BatchResult:
    outputs: list[Output] = field(default_factory=list)
    # partition -> {table key: encoded entry, or None to delete}; applied after the outputs.
    writes: dict[int, dict[str, bytes | None]] = field(default_factory=dict)
    # Writes to another step's table, by that table's name, applied like ``writes`` (the
    # corrections step writes the correlator's index entries it corrected).
    other_writes: dict[str, dict[int, dict[str, bytes | None]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    skipped_redeliveries: int = 0

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def apply_to(self, table: MutableMapping[str, bytes], writes: dict[int, dict[str, bytes | None]] | None = None) -> None:
        """Write :attr:`writes` (or the ``writes`` given, one of :attr:`other_writes`) to a plain
        mapping (None deletes): what a step's table holds after the batch.  The worker's Faust
        tables apply them durably, partition by partition (``ChangelogAwaitedTable.write`` in
        :mod:`pipeline.streams.app`)."""
        for entries in (self.writes if writes is None else writes).values():
            for key, value in entries.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value


class OffsetMarkers:
    """The last applied source offset per partition: read from the table once, then kept here;
    written back with every batch so that redelivered records are recognised after a restart."""

    def __init__(self, table: MutableMapping[str, bytes]) -> None:
        self.table = table
        self._offsets: dict[int, int] = {}

    def last(self, partition: int) -> int:
        if partition not in self._offsets:
            marker = self.table.get(offset_key(partition))
            self._offsets[partition] = int(marker) if marker is not None else -1
        return self._offsets[partition]

    def is_redelivery(self, item: RawItem) -> bool:
        return item.offset <= self.last(item.partition)

    def advance(self, item: RawItem) -> None:
        self._offsets[item.partition] = item.offset

    def add_writes(self, items: list[RawItem], result: BatchResult) -> None:
        for partition in {item.partition for item in items}:
            result.writes.setdefault(partition, {})[offset_key(partition)] = str(self.last(partition)).encode()

    def clear(self) -> None:
        self._offsets.clear()


def decoded_records(items: list[RawItem], markers: OffsetMarkers, codec: AvroCodec, topic: str, source_topic: str,
                    agent: str, result: BatchResult) -> Iterator[tuple[RawItem, dict]]:
    """The new records of a batch, decoded: redeliveries are skipped (and counted), undecodable
    records go to ``deadletter`` with the reason; the markers advance past every record."""
    for item in items:
        if markers.is_redelivery(item):
            result.skipped_redeliveries += 1
            continue
        markers.advance(item)
        try:
            record = codec.decode(topic, item.value)
        except AvroDecodeError as exc:
            add_dead_letter(codec, item, SourcePosition(source_topic, item.partition, item.offset), exc.reason,
                            str(exc), agent, result)
            continue
        yield item, record


def add_dead_letter(codec: AvroCodec, item: RawItem, position: SourcePosition, reason: str, error: str, agent: str,
                    result: BatchResult) -> None:
    record = deadletter_record(position, item.key, item.value, reason=reason, error=error, agent=agent)
    result.outputs.append(Output(DEADLETTER, item.key or b"", codec.encode(DEADLETTER, record)))
    result.count(f"deadletter:{reason}")


class BatchStep(Protocol):
    """What the five steps share: ``process`` gives outputs and the table writes that snapshot what changed;
    ``reset`` (a rebalance) drops the state in memory, resumed from the table (:mod:`pipeline.runtime.state`)."""

    def process(self, items: list[RawItem], source_topic: str = ...) -> BatchResult: ...

    def reset(self) -> None: ...
