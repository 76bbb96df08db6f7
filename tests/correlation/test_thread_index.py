"""Outlook Thread-Index: encode a conversation and its replies, decode them, reject garbage."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.correlation.thread_index import (
    CHILD_BYTES, HEADER_BYTES, ThreadIndex, ThreadIndexError, conversation_key, decode, encode_child, encode_new,
)

FAST = settings(max_examples=200, deadline=None)
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
GUID = uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff")

TICK = timedelta(microseconds=0.1)
HEADER_RESOLUTION = timedelta(microseconds=(1 << 24) / 10)   # ~1.68 s: the header drops the low 3 FILETIME bytes
FINE_RESOLUTION = timedelta(microseconds=(1 << 18) / 10)     # ~26 ms: child deltas below ~652 days
COARSE_RESOLUTION = timedelta(microseconds=(1 << 23) / 10)   # ~0.84 s: longer child deltas
FINE_LIMIT = timedelta(microseconds=(1 << 49) / 10)          # 2**31 units of 2**18 ticks
COARSE_LIMIT = timedelta(microseconds=((1 << 31) - 1) * (1 << 23) / 10)
SLACK = timedelta(microseconds=20)  # decode computes in float microseconds: up to ~16 µs off near year 9000

UUIDS = st.uuids()
MOMENTS = st.datetimes(min_value=datetime(1700, 1, 1), max_value=datetime(9000, 1, 1),
                       timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                                                  timezone(timedelta(hours=-8))]))
GAPS = st.lists(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3 * 365)), max_size=6)


def test_new_conversation_layout():
    data = encode_new(GUID, T0)
    assert len(data) == HEADER_BYTES
    assert data[0] == 1
    assert data[6:] == GUID.bytes
    parsed = decode(data)
    assert parsed == ThreadIndex(header_time=parsed.header_time, guid=GUID, child_deltas=())
    assert parsed.child_count == 0
    assert T0 - HEADER_RESOLUTION < parsed.header_time <= T0 + SLACK
    assert parsed.header_time.tzinfo is not None


def test_reply_adds_one_five_byte_block_and_keeps_the_key():
    root = encode_new(GUID, T0)
    child = encode_child(root, T0 + timedelta(minutes=5))
    grandchild = encode_child(child, T0 + timedelta(hours=2))
    assert (len(child), len(grandchild)) == (HEADER_BYTES + CHILD_BYTES, HEADER_BYTES + 2 * CHILD_BYTES)
    assert child[:HEADER_BYTES] == grandchild[:HEADER_BYTES] == root
    assert conversation_key(root) == conversation_key(child) == conversation_key(grandchild) == root.hex()
    parsed = decode(grandchild)
    assert parsed.child_count == 2 and parsed.guid == GUID
    reply_time = parsed.header_time + parsed.child_deltas[0]
    assert T0 + timedelta(minutes=5) - FINE_RESOLUTION - SLACK < reply_time <= T0 + timedelta(minutes=5) + SLACK
    last = reply_time + parsed.child_deltas[1]
    assert T0 + timedelta(hours=2) - FINE_RESOLUTION - SLACK < last <= T0 + timedelta(hours=2) + SLACK


def test_other_conversations_have_other_keys():
    assert conversation_key(encode_new(GUID, T0)) != conversation_key(encode_new(uuid.UUID(int=1), T0))
    assert conversation_key(encode_new(GUID, T0)) != conversation_key(encode_new(GUID, T0 + timedelta(days=1)))


def test_a_reply_older_than_its_parent_has_a_zero_delta():
    child = encode_child(encode_new(GUID, T0), T0 - timedelta(days=3))
    assert decode(child).child_deltas == (timedelta(0),)


def test_long_gaps_use_the_coarse_unit_and_are_capped():
    root = encode_new(GUID, T0)
    two_years = decode(encode_child(root, T0 + timedelta(days=730))).child_deltas[0]
    assert timedelta(days=730) - COARSE_RESOLUTION - HEADER_RESOLUTION - SLACK < two_years
    assert two_years <= timedelta(days=730) + HEADER_RESOLUTION + SLACK
    assert encode_child(root, T0 + timedelta(days=730))[HEADER_BYTES] & 0x80  # the coarse flag
    assert not encode_child(root, T0 + timedelta(days=30))[HEADER_BYTES] & 0x80
    capped = decode(encode_child(root, T0 + timedelta(days=365 * 100))).child_deltas[0]
    assert abs(capped - COARSE_LIMIT) <= SLACK  # ~57 years is the most one block can say


def test_decode_ignores_the_random_low_byte_of_a_child_block():
    child = bytearray(encode_child(encode_new(GUID, T0), T0 + timedelta(minutes=5)))
    before = decode(bytes(child))
    child[-1] = 0xA7
    assert decode(bytes(child)) == before


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="aware"):
        encode_new(GUID, datetime(2026, 3, 2))
    with pytest.raises(ValueError, match="aware"):
        encode_child(encode_new(GUID, T0), datetime(2026, 3, 2))


@pytest.mark.parametrize("length", [0, 1, 21, 23, 26, 28, 22 + 5 * 3 + 1])
def test_wrong_lengths_are_no_thread_index(length):
    data = bytes(range(length))
    with pytest.raises(ThreadIndexError):
        decode(data)
    with pytest.raises(ThreadIndexError):
        encode_child(data, T0)
    assert conversation_key(data) is None


def test_conversation_key_of_nothing_is_none():
    assert conversation_key(None) is None
    assert conversation_key(b"") is None


def test_garbage_header_time_is_a_thread_index_error():
    with pytest.raises(ThreadIndexError):
        decode(b"\xff" * HEADER_BYTES)
    with pytest.raises(ThreadIndexError):
        encode_child(b"\xff" * (HEADER_BYTES + CHILD_BYTES), T0)
    # well formed, but its conversation key is still just the header's hex
    assert conversation_key(b"\xff" * HEADER_BYTES) == "ff" * HEADER_BYTES


def test_children_that_run_past_year_9999_are_a_thread_index_error():
    late = encode_new(GUID, datetime(9990, 1, 1, tzinfo=timezone.utc))
    far = late + b"\xff\xff\xff\xff\x00"  # coarse, ~57 years
    with pytest.raises(ThreadIndexError):
        encode_child(far, datetime(9999, 1, 1, tzinfo=timezone.utc))


@FAST
@given(UUIDS, MOMENTS)
def test_encode_new_round_trips_guid_and_time(guid, moment):
    data = encode_new(guid, moment)
    parsed = decode(data)
    assert parsed.guid == guid
    assert parsed.child_count == 0
    assert moment - HEADER_RESOLUTION < parsed.header_time <= moment + SLACK
    assert conversation_key(data) == data.hex()


@FAST
@given(UUIDS, MOMENTS, GAPS)
def test_replies_round_trip_times_and_share_the_key(guid, start, gaps):
    root = encode_new(guid, start)
    data, moment, moments = root, start, []
    for gap in gaps:
        moment += gap
        moments.append(moment)
        data = encode_child(data, moment)
        assert conversation_key(data) == conversation_key(root)
    parsed = decode(data)
    assert parsed.guid == guid
    assert parsed.child_count == len(gaps)
    assert len(data) == HEADER_BYTES + CHILD_BYTES * len(gaps)
    assert parsed.header_time == decode(root).header_time
    reconstructed = parsed.header_time
    for delta, expected in zip(parsed.child_deltas, moments):
        reconstructed += delta
        resolution = FINE_RESOLUTION if delta < FINE_LIMIT else COARSE_RESOLUTION
        assert expected - resolution - SLACK < reconstructed <= expected + SLACK


@FAST
@given(st.binary(max_size=60))
def test_any_bytes_decode_or_raise_thread_index_error(data):
    well_formed = len(data) >= HEADER_BYTES and (len(data) - HEADER_BYTES) % CHILD_BYTES == 0
    assert conversation_key(data) == (data[:HEADER_BYTES].hex() if well_formed else None)
    try:
        parsed = decode(data)
    except ThreadIndexError:
        return
    assert well_formed
    assert parsed.guid.bytes == data[6:22]
    assert parsed.child_count == (len(data) - HEADER_BYTES) // CHILD_BYTES


@FAST
@given(UUIDS, MOMENTS, st.integers(1, 4))
def test_truncating_a_reply_breaks_it(guid, moment, cut):
    root = encode_new(guid, moment)
    data = encode_child(root, moment + timedelta(hours=1))
    with pytest.raises(ThreadIndexError):
        decode(data[:-cut])
    assert conversation_key(data[:-cut]) is None
    assert data[:-CHILD_BYTES] == root  # a whole block off is the parent again
