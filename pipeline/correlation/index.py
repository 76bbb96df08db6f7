"""The correlation index: one entry per mail in a store, key -> mail lookups derived from it.

A store only persists :class:`IndexedMail` entries (``put``/``delete``/``entries``): the in-memory
store here, the Faust table store in ``pipeline.streams.processor``.  The lookups are named; the
``index_keys`` functions (the correlator's: each method's ``MethodStrategy.index_keys``) say which
keys an entry is found under, so a store costs one record per mail and the lookups are rebuilt
from ``entries()`` after recovery.

One index holds one tenant: mail of different tenants never correlates.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol

from pipeline.correlation.model import IndexedMail

if TYPE_CHECKING:
    from pipeline.correlation.methods.base import IndexKeys

# The index's clock shows the CLOCK_QUORUM-th newest clock time among its entries, not the newest:
# one mail's Date is chosen by its sender, and a few mails dated in the future (or wrongly dated)
# must not move the clock ahead and evict every entry that newer mail may still answer.
CLOCK_QUORUM = 32


class MailStore(Protocol):
    """Where index entries persist. Keys are message ids."""

    def put(self, entry: IndexedMail) -> None: ...

    def delete(self, message_id: str) -> None: ...

    def entries(self) -> Iterable[IndexedMail]: ...


class InMemoryStore:
    """A dict; the store for the CLI, tests and benchmarks."""

    def __init__(self) -> None:
        self._entries: dict[str, IndexedMail] = {}

    def put(self, entry: IndexedMail) -> None:
        self._entries[entry.message_id] = entry

    def delete(self, message_id: str) -> None:
        self._entries.pop(message_id, None)

    def entries(self) -> Iterator[IndexedMail]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)


# A bucket longer than this is not searched for removals: its dead ids are counted and the
# bucket is compacted once half of it is dead, so evicting from a boilerplate line that is in
# every mail stays O(1) amortised instead of O(bucket).
_LONG_BUCKET = 32


class Postings:
    """key -> ids of live mails in arrival order.

    A key with one id (most line hashes, most subjects) stores the bare id string instead of a
    list: at a million indexed mails that is most of the index's memory.  What a reader sees is
    a function of the live entries only, never of history, so an index rebuilt after recovery
    answers exactly like the one that was never stopped.
    """

    __slots__ = ("_buckets", "_dead")

    def __init__(self) -> None:
        self._buckets: dict = {}
        self._dead: dict = {}  # key -> count of dead ids still inside a long bucket

    def clear(self) -> None:
        self._buckets.clear()
        self._dead.clear()

    def add(self, key, message_id: str) -> None:
        self.add_all((key,), message_id)

    def remove(self, key, message_id: str, live: dict) -> None:
        """Forget ``message_id`` under ``key``; ``live`` must no longer contain it."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            return
        if bucket.__class__ is str:
            if bucket == message_id:
                del buckets[key]
            return
        if len(bucket) <= _LONG_BUCKET:
            try:
                bucket.remove(message_id)
            except ValueError:
                return
            if len(bucket) == 1:
                buckets[key] = bucket[0]
            return
        dead = self._dead.get(key, 0) + 1
        if dead * 2 < len(bucket):
            self._dead[key] = dead
            return
        # Compact: keep the last occurrence of each live id (an id re-added after removal
        # appears twice; its newest position is its arrival order now).
        kept = list(reversed(dict.fromkeys(m for m in reversed(bucket) if m in live)))
        self._dead.pop(key, None)
        if not kept:
            del buckets[key]
        elif len(kept) == 1:
            buckets[key] = kept[0]
        else:
            buckets[key] = kept

    def add_all(self, keys, message_id: str) -> None:
        """``add`` of each key (the index's hot path: one call per lookup and mail)."""
        buckets = self._buckets
        for key in keys:
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = message_id
            elif bucket.__class__ is str:
                buckets[key] = [bucket, message_id]
            else:
                bucket.append(message_id)

    def count(self, key) -> int:
        """Live ids under ``key``."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0
        if bucket.__class__ is str:
            return 1
        return len(bucket) - self._dead.get(key, 0)

    def counts(self, keys) -> list[int]:
        """``count`` of each key, in order."""
        get, dead = self._buckets.get, self._dead
        counts = []
        for key in keys:
            bucket = get(key)
            counts.append(0 if bucket is None else 1 if bucket.__class__ is str else len(bucket) - dead.get(key, 0))
        return counts

    def ids(self, key, live: dict) -> list[str]:
        """Live ids under ``key``, oldest arrival first."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return []
        if bucket.__class__ is str:
            return [bucket]
        if key not in self._dead:
            return list(bucket)
        return list(reversed(dict.fromkeys(m for m in reversed(bucket) if m in live)))


class CorrelationIndex:
    """Entries of one tenant plus the lookups derived from them.

    Posting lists are in arrival order, so the last id of a list is the most recent candidate.
    Everything but the entries themselves is derived and rebuilt by :meth:`rebuild`.
    """

    def __init__(self, store: MailStore | None = None,
                 index_keys: Iterable[Callable[[IndexedMail], IndexKeys]] = ()) -> None:
        self.store: MailStore = store if store is not None else InMemoryStore()
        self._index_keys = tuple(index_keys)
        self._live: dict[str, IndexedMail] = {}
        self._postings: defaultdict[str, Postings] = defaultdict(Postings)  # lookup name -> its postings
        self._by_time: list[tuple[float, str]] = []  # min-heap for eviction
        # The CLOCK_QUORUM newest (clock_time, message_id) of live entries, a min-heap.
        self._clock_top: list[tuple[float, str]] = []
        self.rebuild()

    # -- maintenance ---------------------------------------------------------------------
    def rebuild(self) -> int:
        """Derive every lookup from the store's entries (after recovery). Returns the count."""
        self._live.clear()
        self._postings.clear()
        self._by_time.clear()
        self._clock_top.clear()
        for entry in sorted(self.store.entries(), key=lambda e: (e.event_time, e.message_id)):
            self._derive(entry)
        return len(self._live)

    def add(self, entry: IndexedMail) -> None:
        """Persist ``entry`` and derive its lookups; an entry with a known id replaces the old one."""
        old = self._live.get(entry.message_id)
        if old is not None:
            self._underive(old)
        self.store.put(entry)
        self._derive(entry)

    @property
    def clock_time(self) -> float:
        """The time the index's clock shows (epoch seconds; -inf until CLOCK_QUORUM dated entries).

        A function of the live entries only, so a rebuilt index shows the same time.  Eviction
        against it never drops an entry of the quorum: their event time is at least their clock
        time, which is at least the clock's."""
        top = self._clock_top
        return top[0][0] if len(top) >= CLOCK_QUORUM else float("-inf")

    def evict_older_than(self, cutoff: float) -> int:
        """Drop every entry whose event time is before ``cutoff`` (epoch seconds)."""
        evicted = 0
        heap = self._by_time
        while heap and heap[0][0] < cutoff:
            event_time, message_id = heapq.heappop(heap)
            entry = self._live.get(message_id)
            if entry is None or entry.event_time != event_time:
                continue  # replaced or already gone
            self._underive(entry)
            self.store.delete(message_id)
            evicted += 1
        return evicted

    def _derive(self, entry: IndexedMail) -> None:
        message_id = entry.message_id
        self._live[message_id] = entry
        heapq.heappush(self._by_time, (entry.event_time, message_id))
        if entry.clock_time is not None:
            top = self._clock_top
            item = (entry.clock_time, message_id)
            if len(top) < CLOCK_QUORUM:
                heapq.heappush(top, item)
            elif item > top[0]:
                heapq.heappushpop(top, item)
        postings = self._postings
        for index_keys in self._index_keys:
            for name, keys in index_keys(entry):
                if keys:
                    postings[name].add_all(keys, message_id)

    def _underive(self, entry: IndexedMail) -> None:
        message_id = entry.message_id
        live = self._live
        del live[message_id]
        top = self._clock_top
        if entry.clock_time is not None and top and entry.clock_time >= top[0][0] \
                and (entry.clock_time, message_id) in top:
            # Only a replaced entry gets here (eviction spares the quorum): find the new quorum.
            self._clock_top = sorted(heapq.nlargest(
                CLOCK_QUORUM, ((e.clock_time, e.message_id) for e in live.values() if e.clock_time is not None)))
        postings = self._postings
        for index_keys in self._index_keys:
            for name, keys in index_keys(entry):
                remove = postings[name].remove
                for key in keys:
                    remove(key, message_id, live)

    # -- lookups -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._live

    def get(self, message_id: str) -> IndexedMail | None:
        return self._live.get(message_id)

    def entries(self) -> list[IndexedMail]:
        """Every live entry (a snapshot: the caller may add entries while it goes through them)."""
        return list(self._live.values())

    def ids(self, name: str, key, at_most: int | None = None) -> list[str]:
        """Live mails found under ``key`` in the lookup ``name``, oldest arrival first; [] when more
        than ``at_most`` live mails have the key (it says nothing about any one of them)."""
        lookup = self._postings.get(name)
        if lookup is None or (at_most is not None and lookup.count(key) > at_most):
            return []
        return lookup.ids(key, self._live)

    def ids_each(self, name: str, keys, at_most: int | None = None) -> list[list[str]]:
        """``ids(name, key, at_most)`` of each key, in order."""
        lookup = self._postings.get(name)
        if lookup is None:
            return [[] for _ in keys]
        live, count, ids = self._live, lookup.count, lookup.ids
        return [[] if at_most is not None and count(key) > at_most else ids(key, live) for key in keys]

    def count(self, name: str, key) -> int:
        lookup = self._postings.get(name)
        return lookup.count(key) if lookup is not None else 0

    def counts(self, name: str, keys) -> list[int]:
        """``count(name, key)`` of each key, in order."""
        lookup = self._postings.get(name)
        return lookup.counts(keys) if lookup is not None else [0] * len(keys)
