"""The index: entries in a store, lookups derived from them, identical after a rebuild."""

from __future__ import annotations

import random

from pipeline.correlation.index import CLOCK_QUORUM, CorrelationIndex, InMemoryStore, Postings
from pipeline.correlation.methods.smart_matching import COMMON_KEY_MAILS
from pipeline.correlation.model import IndexedMail


def entry(n: int, *, t: float | None = None, subject_key: str = "s", lines: tuple[int, ...] = (), token=None,
          clock: float | None = None) -> IndexedMail:
    return IndexedMail(message_id=f"<{n}@x>", conversation_id=f"c{n}", event_time=float(n if t is None else t),
                       subject_key=subject_key, own_shingles=lines, tracking_token=token, clock_time=clock)


def index_keys(entry: IndexedMail):
    return (("subject", (entry.subject_key,)), ("own_shingle", entry.own_shingles),
            ("token", (entry.tracking_token,) if entry.tracking_token else ()))


def lookups(index: CorrelationIndex, keys) -> dict:
    return {key: index.ids("subject", key) for key in keys}


def test_postings_keep_arrival_order_through_removals_of_long_buckets():
    postings = Postings()
    live = {}
    for n in range(100):
        live[str(n)] = True
        postings.add("k", str(n))
    for n in range(0, 100, 3):
        del live[str(n)]
        postings.remove("k", str(n), live)
    assert postings.ids("k", live) == [str(n) for n in range(100) if n % 3]
    assert postings.count("k") == len(live)
    for n in list(live):
        del live[n]
        postings.remove("k", n, live)
    assert postings.ids("k", live) == [] and postings.count("k") == 0


def test_a_single_id_is_stored_without_a_list():
    postings = Postings()
    postings.add("k", "a")
    assert postings.ids("k", {"a": 1}) == ["a"]
    postings.add("k", "b")
    postings.remove("k", "a", {"b": 1})
    assert postings.ids("k", {"b": 1}) == ["b"] and postings.count("k") == 1


def test_eviction_drops_old_entries_from_store_and_lookups():
    store = InMemoryStore()
    index = CorrelationIndex(store, [index_keys])
    for n in range(10):
        index.add(entry(n, token="CRM:0001001"))
    assert index.evict_older_than(5) == 5
    assert len(store) == len(index) == 5
    assert index.ids("token", "CRM:0001001") == [f"<{n}@x>" for n in range(5, 10)]
    assert "<4@x>" not in index and "<5@x>" in index


def test_common_lines_are_no_evidence_but_recover_when_mail_ages_out():
    index = CorrelationIndex(index_keys=[index_keys])
    for n in range(COMMON_KEY_MAILS + 1):
        index.add(entry(n, lines=(77,)))
    assert index.ids("own_shingle", 77, COMMON_KEY_MAILS) == []
    index.evict_older_than(1)
    assert index.ids("own_shingle", 77, COMMON_KEY_MAILS) == [f"<{n}@x>" for n in range(1, COMMON_KEY_MAILS + 1)]


def test_replacing_an_entry_moves_it_to_the_end():
    index = CorrelationIndex(index_keys=[index_keys])
    index.add(entry(1))
    index.add(entry(2))
    index.add(entry(1, t=3))
    assert index.ids("subject", "s") == ["<2@x>", "<1@x>"]


def test_rebuilt_index_answers_exactly_like_the_live_one():
    rng = random.Random(3)
    store = InMemoryStore()
    index = CorrelationIndex(store, [index_keys])
    keys = [f"k{i}" for i in range(5)]
    for n in range(3000):
        index.add(entry(n, subject_key=rng.choice(keys), lines=tuple(rng.randrange(40) for _ in range(3)),
                        clock=None if n % 7 == 0 else float(n - rng.randrange(30))))
        if n % 250 == 0:
            index.evict_older_than(index.clock_time - 400)
    rebuilt = CorrelationIndex(store, [index_keys])
    assert len(rebuilt) == len(index)
    assert lookups(rebuilt, keys) == lookups(index, keys)
    assert ({h: rebuilt.ids("own_shingle", h, COMMON_KEY_MAILS) for h in range(40)}
            == {h: index.ids("own_shingle", h, COMMON_KEY_MAILS) for h in range(40)})
    assert rebuilt.clock_time == index.clock_time > 2500
    assert len(index) < 1000  # eviction did run


def test_clock_shows_the_quorum_th_newest_clock_time():
    index = CorrelationIndex()
    for n in range(CLOCK_QUORUM - 1):
        index.add(entry(n, clock=float(n)))
    index.add(entry(999, clock=None))  # undated: no say
    assert index.clock_time == float("-inf")
    index.add(entry(100, clock=1e12))  # far future, one mail
    assert index.clock_time == 0.0
    index.add(entry(101, clock=50.0))
    assert index.clock_time == 1.0
    index.add(entry(100, clock=None))  # the future one replaced: the quorum is recomputed
    assert index.clock_time == 0.0
