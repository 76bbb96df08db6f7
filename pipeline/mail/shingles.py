"""The compiled hot path of content fingerprints: shingle hashes, winnowing and the bounded set,
in one pass over the normalised words of a body.

Hashing a shingle (two CRC-32s of five words) one Python call at a time cost about a
microsecond per word on a busy machine, most of the time to parse a mail; numba compiles this
loop to machine code instead (numba and llvmlite are binary wheels: nothing is built at install; the compiled
code is cached on disk, so only the first process pays the compile, about a second).

The hashes are the ones ``pipeline.mail.content`` always had: the zlib CRC-32 of the shingle's
UTF-8 bytes (words joined by one space) in the high 32 bits, the CRC-32 started from
``SECOND_SEED`` in the low ones, the unsigned 64 bits shifted to a signed Avro long.  A CRC is
linear, so the CRC of a shingle comes from the CRC register before and after it in one running
pass over the block (``R(S) = P_end ^ A^len(P_start)``, A = one zero byte through the register):
each byte goes through the register once instead of once per shingle holding it.
"""

from __future__ import annotations

import zlib

import numpy as np
from numba import njit

SECOND_SEED = 0x9E3779B9
_SPACE = 0x20
_BLOCK_END = 0x0A
_MASK = 0xFFFFFFFF
_MAX_TABLE_LENGTH = 511  # shingles up to this many bytes take the table; longer ones are rare


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """zlib's CRC table; A^L of each byte of a register for L up to _MAX_TABLE_LENGTH (A^L is
    linear: the XOR of its four byte lookups); and A^L of the difference of the two start values."""
    # The CRC of one byte b from a zero register is table[b]: read back through zlib itself.
    table = np.array([zlib.crc32(bytes([byte]), _MASK) ^ _MASK for byte in range(256)], dtype=np.uint32)
    identity = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None])
    advance = np.empty((_MAX_TABLE_LENGTH + 1, 4, 256), dtype=np.uint32)
    advance[0] = identity
    for length in range(1, _MAX_TABLE_LENGTH + 1):
        previous = advance[length - 1]
        advance[length] = table[previous & 0xFF] ^ (previous >> 8)
    start_difference = _MASK ^ (~SECOND_SEED & _MASK)
    parts = [(start_difference >> (8 * byte)) & 0xFF for byte in range(4)]
    second = advance[:, 0, parts[0]] ^ advance[:, 1, parts[1]] ^ advance[:, 2, parts[2]] ^ advance[:, 3, parts[3]]
    return table.astype(np.int64), advance, second.astype(np.int64)


_TABLE, _ADVANCE, _SECOND = _tables()


def _compiled(function):
    """``function`` compiled by numba, its machine code cached on disk where numba finds a
    writable folder (beside this module, else the user's cache folder); with none (a read-only
    install and home), compiled once per process instead."""
    try:
        return njit(cache=True, nogil=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(nogil=True)(function)


@_compiled
def _kernel(data, table, advance, second, shingle_words, window, max_kept):  # pragma: no cover - compiled
    size = data.size
    capacity = size // 2 + 1
    starts = np.empty(capacity, np.int64)
    ends = np.empty(capacity, np.int64)
    before = np.empty(capacity, np.int64)  # the register before each word, from zero
    after = np.empty(capacity, np.int64)  # and after it
    offset = np.empty(capacity, np.int64)  # where each word starts in the words joined by one space
    hashes = np.empty(capacity, np.int64)
    winnowed = np.empty(capacity, np.int64)
    second_start = (~SECOND_SEED) & _MASK
    kept = 0
    position = 0
    while position <= size:
        # One block (up to a block end or the end of the data): its words, and the register
        # running over them joined by one space.
        words = 0
        register = 0
        joined = 0
        while position < size and data[position] != _BLOCK_END:
            if data[position] == _SPACE:
                position += 1
                continue
            if words:
                register = table[(register ^ _SPACE) & 0xFF] ^ (register >> 8)
                joined += 1
            starts[words] = position
            before[words] = register
            offset[words] = joined
            while position < size and data[position] != _SPACE and data[position] != _BLOCK_END:
                register = table[(register ^ data[position]) & 0xFF] ^ (register >> 8)
                position += 1
            ends[words] = position
            after[words] = register
            joined += position - starts[words]
            words += 1
        position += 1
        count = words - shingle_words + 1
        if count <= 0:
            continue
        for first in range(count):
            last = first + shingle_words - 1
            length = offset[last] + ends[last] - starts[last] - offset[first]
            if length <= _MAX_TABLE_LENGTH:
                start = _MASK ^ before[first]
                high = (advance[length, 0, start & 0xFF] ^ advance[length, 1, (start >> 8) & 0xFF]
                        ^ advance[length, 2, (start >> 16) & 0xFF] ^ advance[length, 3, start >> 24])
                high = np.int64(high) ^ after[last]
                low = high ^ second[length]
                high ^= _MASK
                low ^= _MASK
            else:  # byte by byte, as zlib does
                high = _MASK
                low = second_start
                for word in range(first, last + 1):
                    if word > first:
                        high = table[(high ^ _SPACE) & 0xFF] ^ (high >> 8)
                        low = table[(low ^ _SPACE) & 0xFF] ^ (low >> 8)
                    for index in range(starts[word], ends[word]):
                        high = table[(high ^ data[index]) & 0xFF] ^ (high >> 8)
                        low = table[(low ^ data[index]) & 0xFF] ^ (low >> 8)
                high ^= _MASK
                low ^= _MASK
            # (high << 32 | low) - 2**63 without leaving 64 signed bits
            hashes[first] = (high - 0x80000000) * 0x100000000 + low
        if count <= window:
            smallest = hashes[0]
            for index in range(1, count):
                smallest = min(smallest, hashes[index])
            winnowed[kept] = smallest
            kept += 1
            continue
        previous = 0
        for first in range(count - window + 1):
            smallest = hashes[first]
            for index in range(first + 1, first + window):
                smallest = min(smallest, hashes[index])
            if first == 0 or smallest != previous:  # overlapping windows often share their minimum
                winnowed[kept] = smallest
                kept += 1
                previous = smallest
    # Each once, first seen first (an open-addressing set: the low bits of a CRC are uniform).
    slots = 16
    while slots < 2 * kept:
        slots *= 2
    used = np.zeros(slots, np.bool_)
    values = np.empty(slots, np.int64)
    distinct = np.empty(kept, np.int64)
    found = 0
    for index in range(kept):
        value = winnowed[index]
        slot = value & (slots - 1)
        while used[slot] and values[slot] != value:
            slot = (slot + 1) & (slots - 1)
        if not used[slot]:
            used[slot] = True
            values[slot] = value
            distinct[found] = value
            found += 1
    if found <= max_kept:
        return distinct[:found]
    # Of more, the max_kept smallest, still in first-seen order.
    limit = np.sort(distinct[:found])[max_kept - 1]
    result = np.empty(max_kept, np.int64)
    count = 0
    for index in range(found):
        if distinct[index] <= limit:
            result[count] = distinct[index]
            count += 1
    return result


def winnowed_shingles(data: bytes, shingle_words: int, window: int, max_kept: int) -> tuple[int, ...]:
    """The winnowed shingle hashes of ``data``: each once, first seen first; of more than
    ``max_kept`` distinct ones the ``max_kept`` smallest (still in first-seen order).

    ``data`` holds normalised words separated by runs of spaces (0x20) and blocks separated by
    newlines (0x0A); a shingle is ``shingle_words`` consecutive words of a block joined by one
    space.  A block of ``shingle_words`` to ``shingle_words + window - 1`` words gives its
    smallest hash, a longer one the smallest of every ``window`` consecutive shingles.
    """
    if len(data) < 2 * shingle_words - 1:  # too short for one shingle: no compiled call
        return ()
    array = np.frombuffer(data, dtype=np.uint8)
    return tuple(_kernel(array, _TABLE, _ADVANCE, _SECOND, shingle_words, window, max_kept).tolist())
