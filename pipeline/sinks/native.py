"""ClickHouse's Native format as a client of a given protocol revision reads it over HTTP.

chDB writes Native as ClickHouse writes it for revision 0 (no client revision): per block the
column and row counts, then per column its name, its type and its data.  A client that sends
``client_protocol_version`` (clickhouse-go v2, which Grafana's ClickHouse data source uses, and
clickhouse-connect when the server honours it) reads what the server writes for that revision:
each block starts with the block info (``is_overflows`` = false, ``bucket_num`` = -1), and from
revision 54454 every column's type is followed by one byte saying whether it has a custom
(sparse) serialization, which is 0 here.  chDB has no way to be told the revision (the server
takes it from the URL, not from a setting), so :func:`for_revision` rewrites chDB's output: it
walks the column data by type to find where each column ends.

Types whose data this does not walk (Variant, Dynamic, JSON, Object, AggregateFunction states)
raise :class:`NativeError`, so a client gets a clear error instead of a stream it cannot read.
"""

from __future__ import annotations

import re

WITH_BLOCK_INFO = 1  # any revision > 0
WITH_CUSTOM_SERIALIZATION = 54454  # DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION
# field 1 (is_overflows) = false, field 2 (bucket_num) = -1 as Int32, field 0: end of the block info
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"

_FIXED = {
    "UInt8": 1, "Int8": 1, "Bool": 1, "Enum8": 1,
    "UInt16": 2, "Int16": 2, "Date": 2, "Enum16": 2, "BFloat16": 2,
    "UInt32": 4, "Int32": 4, "Float32": 4, "Date32": 4, "DateTime": 4, "IPv4": 4, "Decimal32": 4, "Time": 4,
    "UInt64": 8, "Int64": 8, "Float64": 8, "DateTime64": 8, "Decimal64": 8, "Time64": 8,
    "UInt128": 16, "Int128": 16, "UUID": 16, "IPv6": 16, "Decimal128": 16,
    "UInt256": 32, "Int256": 32, "Decimal256": 32,
}
_TYPE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)
_NAMED_ELEMENT = re.compile(r"\s*(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_.]*)\s+(\S.*)$", re.S)


class NativeError(ValueError):
    pass


def _arguments(text: str) -> list[str]:
    """Top-level comma-separated arguments of a type, quotes and parentheses respected."""
    parts, depth, quote, start, index = [], 0, "", 0, 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'`\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
        index += 1
    parts.append(text[start:].strip())
    return [part for part in parts if part]


def _element_type(element: str) -> str:
    """A Tuple element's type: ``name Type`` or ``Type``."""
    match = _NAMED_ELEMENT.match(element)
    if match and "(" not in element[: match.start(2)]:
        return match.group(2)
    return element


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def need(self, size: int) -> None:
        if size < 0 or self.pos + size > len(self.data):
            raise NativeError("Native data ends inside a column")

    def varint(self) -> int:
        value = shift = 0
        while True:
            self.need(1)
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise NativeError("Native varint too long")

    def string(self) -> str:
        size = self.varint()
        self.need(size)
        text = self.data[self.pos:self.pos + size].decode("utf-8", "replace")
        self.pos += size
        return text

    def skip(self, size: int) -> None:
        self.need(size)
        self.pos += size

    def uint64s(self, count: int) -> list[int]:
        self.need(8 * count)
        view = memoryview(self.data)[self.pos:self.pos + 8 * count].cast("Q")
        self.pos += 8 * count
        return list(view)

    def skip_column(self, type_name: str, rows: int) -> None:
        match = _TYPE.match(type_name)
        if match is None:
            raise NativeError(f"cannot read the Native type {type_name!r}")
        name, args = match.group(1), _arguments(match.group(2) or "")
        if name in _FIXED:
            self.skip(_FIXED[name] * rows)
        elif name == "Decimal":
            precision = int(args[0])
            self.skip((4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32) * rows)
        elif name.startswith("Interval"):
            self.skip(8 * rows)
        elif name == "FixedString":
            self.skip(int(args[0]) * rows)
        elif name == "String":
            for _ in range(rows):
                self.skip(self.varint())
        elif name == "Nothing":
            self.skip(rows)
        elif name == "Nullable":
            self.skip(rows)  # the null map
            self.skip_column(args[0], rows)
        elif name in ("Array", "Map"):
            offsets = self.uint64s(rows)
            total = offsets[-1] if offsets else 0
            elements = [args[0]] if name == "Array" else args
            for element in elements:
                self.skip_column(element, total)
        elif name in ("Tuple", "Nested"):
            for element in args:
                self.skip_column(_element_type(element), rows)
        elif name == "LowCardinality":
            self.skip_low_cardinality(args[0], rows)
        elif name == "SimpleAggregateFunction":
            self.skip_column(args[-1], rows)
        else:
            raise NativeError(f"the type {type_name} cannot be sent in Native format for a client protocol revision "
                              "by this server: cast the column (e.g. toString(...)) or ask for another FORMAT")


    def skip_low_cardinality(self, inner: str, rows: int) -> None:
        """LowCardinality's bulk serialization: the keys version (UInt64), then per part of the
        column the index type (UInt64: index width in its low byte), the dictionary (a UInt64
        count of keys of the inner type, without Nullable), and the indexes (a UInt64 count of
        indexes of that width)."""
        match = _TYPE.match(inner)
        keys_type = _arguments(match.group(2) or "")[0] if match and match.group(1) == "Nullable" else inner
        if rows == 0:
            return
        self.skip(8)
        read = 0
        while read < rows:
            (index_type,) = self.uint64s(1)
            if index_type & 0xFF > 3:
                raise NativeError("LowCardinality index type not understood")
            (keys,) = self.uint64s(1)
            self.skip_column(keys_type, keys)
            (indexes,) = self.uint64s(1)
            if indexes == 0:
                raise NativeError("LowCardinality part without rows")
            self.skip((1 << (index_type & 0xFF)) * indexes)
            read += indexes


def for_revision(native: bytes, revision: int) -> bytes:
    """chDB's Native output (revision 0) as the server writes it for a client of ``revision``."""
    if revision < WITH_BLOCK_INFO or not native:
        return native
    reader, out = _Reader(native), bytearray()
    while reader.pos < len(native):
        out += BLOCK_INFO
        start = reader.pos
        columns, rows = reader.varint(), reader.varint()
        out += native[start:reader.pos]
        for _ in range(columns):
            start = reader.pos
            reader.string()
            type_name = reader.string()
            out += native[start:reader.pos]
            if revision >= WITH_CUSTOM_SERIALIZATION:
                out.append(0)  # no custom serialization
            start = reader.pos
            reader.skip_column(type_name, rows)
            out += native[start:reader.pos]
    return bytes(out)
