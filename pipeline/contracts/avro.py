"""Avro values in the Confluent Schema Registry wire format (DESIGN.md §2).

A value is byte 0, the writer schema's id as 4 big-endian bytes, then the Avro body
(fastavro ``schemaless_writer``).  ``schemas/<topic>.avsc`` is the one source of truth for each
topic's schema.  Schema ids come from:

* a real registry when ``schema_registry.url`` is set (subjects ``<topic>-value``, registered on
  first use), or
* the embedded registry: ``schemas/registry.json`` lists every released version of every
  subject with a fixed id, and ``schemas/released/`` keeps their text, so every process (and
  every later release of Threadline) agrees on the ids without a server.

Decoding reads with the writer schema named by the id and resolves to the current schema, so
old records stay readable after a compatible change.  Anything that cannot be decoded raises
:class:`AvroDecodeError` with a stable reason code for the dead-letter topic.
"""

from __future__ import annotations

import io
import json
import struct
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

from pipeline.errors import RejectedInput

# The schemas are package data (an installed wheel carries them). A real directory is needed, not
# just a Traversable: ``release_schemas`` writes new versions into it and the tests copy it.
SCHEMA_DIR = Path(str(resources.files(__package__) / "schemas"))
REGISTRY_FILE = "registry.json"
MAGIC = 0
_HEADER = struct.Struct(">bI")


class AvroDecodeError(RejectedInput):
    """A value that is not a record of its topic."""


class SchemaError(RuntimeError):
    """The schema files or the registry are inconsistent (a deployment problem, not bad input)."""


def subject(topic: str) -> str:
    return f"{topic}-value"


def schema_text(topic: str, schema_dir: Path = SCHEMA_DIR) -> str:
    path = schema_dir / f"{topic}.avsc"
    if not path.is_file():
        raise SchemaError(f"no schema file for topic {topic!r}: {path}")
    return path.read_text(encoding="utf-8")


def topics_with_schemas(schema_dir: Path = SCHEMA_DIR) -> list[str]:
    return sorted(path.name[: -len(".avsc")] for path in schema_dir.glob("*.avsc"))


def canonical(text: str) -> str:
    """A comparable form of a schema: parsed and re-serialised with sorted keys."""
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


class Registry(Protocol):
    def id_for(self, topic: str) -> int:
        """The id of the current schema of ``topic`` (registering it if the registry allows)."""

    def schema_for_id(self, schema_id: int) -> str:
        """The schema text with this id; KeyError when unknown."""


class EmbeddedRegistry:
    """Schema ids from ``schemas/registry.json``; the current schema must be its latest version."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self.schema_dir = schema_dir
        path = schema_dir / REGISTRY_FILE
        try:
            self._subjects: dict[str, list[dict]] = json.loads(path.read_text(encoding="utf-8"))["subjects"]
        except (OSError, ValueError, KeyError) as exc:
            raise SchemaError(f"cannot read the embedded schema registry {path}: {exc}") from exc
        self._by_id: dict[int, str] = {}
        for versions in self._subjects.values():
            for version in versions:
                self._by_id[version["id"]] = (schema_dir / version["schema"]).read_text(encoding="utf-8")

    def versions(self, topic: str) -> list[dict]:
        return list(self._subjects.get(subject(topic), []))

    def subjects(self) -> dict[str, list[dict]]:
        """Every subject's released versions (``version``, ``id``, ``schema`` file), oldest first."""
        return {name: list(versions) for name, versions in self._subjects.items()}

    def id_for(self, topic: str) -> int:
        versions = self._subjects.get(subject(topic))
        if not versions:
            raise SchemaError(f"{subject(topic)} is not in {self.schema_dir / REGISTRY_FILE}: "
                              "run `threadline schemas release`")
        latest = versions[-1]
        if canonical(self._by_id[latest["id"]]) != canonical(schema_text(topic, self.schema_dir)):
            raise SchemaError(f"schemas/{topic}.avsc differs from its released version {latest['version']}: "
                              "run `threadline schemas check`, then `threadline schemas release`")
        return latest["id"]

    def schema_for_id(self, schema_id: int) -> str:
        return self._by_id[schema_id]


class ConfluentRegistry:
    """A real Schema Registry (``schema_registry.url``); current schemas are registered on first use."""

    def __init__(self, url: str, schema_dir: Path = SCHEMA_DIR, config: dict | None = None) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.schema_dir = schema_dir
        self.client = SchemaRegistryClient({"url": url, **(config or {})})
        self._ids: dict[str, int] = {}
        self._texts: dict[int, str] = {}

    def id_for(self, topic: str) -> int:
        if topic not in self._ids:
            from confluent_kafka.schema_registry import Schema

            self._ids[topic] = self.client.register_schema(subject(topic), Schema(schema_text(topic, self.schema_dir), "AVRO"))
        return self._ids[topic]

    def schema_for_id(self, schema_id: int) -> str:
        if schema_id not in self._texts:
            try:
                self._texts[schema_id] = self.client.get_schema(schema_id).schema_str
            except Exception as exc:  # the client raises its own error types for 404s
                raise KeyError(schema_id) from exc
        return self._texts[schema_id]


def registry_from_settings(url: str | None, schema_dir: Path = SCHEMA_DIR) -> Registry:
    return ConfluentRegistry(url, schema_dir) if url else EmbeddedRegistry(schema_dir)


class AvroCodec:
    """Encode and decode the values of every topic with one registry."""

    def __init__(self, registry: Registry, schema_dir: Path = SCHEMA_DIR) -> None:
        self.registry = registry
        self.schema_dir = schema_dir
        self._writers: dict[str, tuple[bytes, Any]] = {}
        self._read_schemas: dict[tuple[str, int], tuple[Any, Any]] = {}  # (topic, writer id) -> _schemas_for

    def _writer(self, topic: str) -> tuple[bytes, Any]:
        if topic not in self._writers:
            schema = parse_schema(json.loads(schema_text(topic, self.schema_dir)))
            self._writers[topic] = (_HEADER.pack(MAGIC, self.registry.id_for(topic)), schema)
        return self._writers[topic]

    def encode(self, topic: str, record: dict) -> bytes:
        header, schema = self._writer(topic)
        out = io.BytesIO()
        out.write(header)
        schemaless_writer(out, schema, record)
        return out.getvalue()

    def decode(self, topic: str, data: bytes) -> dict:
        if len(data) < _HEADER.size or data[0] != MAGIC:
            raise AvroDecodeError("not_confluent_wire_format", f"value of {len(data)} bytes does not start with the magic byte")
        _, schema_id = _HEADER.unpack_from(data)
        schemas = self._read_schemas.get((topic, schema_id))
        if schemas is None:
            schemas = self._read_schemas[(topic, schema_id)] = self._schemas_for(topic, schema_id)
        try:
            return schemaless_reader(io.BytesIO(data[_HEADER.size:]), *schemas)
        except Exception as exc:  # fastavro raises EOFError, ValueError, SchemaResolutionError, ...
            raise AvroDecodeError("bad_avro", f"{type(exc).__name__}: {exc}") from None

    def _schemas_for(self, topic: str, schema_id: int) -> tuple[Any, Any]:
        """The writer schema of ``schema_id`` and the reader schema of ``topic``, or None when
        they are the same schema (the usual case: no resolution to do, a third faster)."""
        try:
            writer_text = self.registry.schema_for_id(schema_id)
        except KeyError:
            raise AvroDecodeError("unknown_schema_id", f"schema id {schema_id} is not registered") from None
        reader_text = schema_text(topic, self.schema_dir)
        if canonical(writer_text) == canonical(reader_text):
            return parse_schema(json.loads(reader_text)), None
        return parse_schema(json.loads(writer_text)), parse_schema(json.loads(reader_text))


def backward_problems(old_text: str, new_text: str, samples: int = 50) -> list[str]:
    """Why readers on ``new`` cannot read data written with ``old`` (empty: compatible).

    Checked by doing it: records generated from the old schema are written with it and read
    back with the new one as reader schema (Avro schema resolution)."""
    old = parse_schema(json.loads(old_text))
    new = parse_schema(json.loads(new_text))
    problems = []
    for record in generate_many(old, samples):
        buffer = io.BytesIO()
        schemaless_writer(buffer, old, record)
        buffer.seek(0)
        try:
            schemaless_reader(buffer, old, new)
        except Exception as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
            break
    return problems


def check_schemas(schema_dir: Path = SCHEMA_DIR) -> dict[str, list[str]]:
    """Per topic, what stops its current schema from being released (empty list: fine)."""
    registry_path = schema_dir / REGISTRY_FILE
    subjects = json.loads(registry_path.read_text(encoding="utf-8"))["subjects"] if registry_path.is_file() else {}
    report: dict[str, list[str]] = {}
    for topic in topics_with_schemas(schema_dir):
        current = schema_text(topic, schema_dir)
        problems = []
        try:
            parse_schema(json.loads(current))
        except Exception as exc:
            report[topic] = [f"invalid schema: {exc}"]
            continue
        for version in subjects.get(subject(topic), []):
            old = (schema_dir / version["schema"]).read_text(encoding="utf-8")
            problems += [f"cannot read version {version['version']}: {p}" for p in backward_problems(old, current)]
        report[topic] = problems
    return report


def release_schemas(schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Record every changed, backward-compatible current schema as a new version with a new id."""
    problems = {topic: p for topic, p in check_schemas(schema_dir).items() if p}
    if problems:
        raise SchemaError("not backward compatible: " + "; ".join(f"{t}: {p[0]}" for t, p in problems.items()))
    registry_path = schema_dir / REGISTRY_FILE
    data = json.loads(registry_path.read_text(encoding="utf-8")) if registry_path.is_file() else {"subjects": {}}
    subjects = data["subjects"]
    next_id = 1 + max((v["id"] for versions in subjects.values() for v in versions), default=0)
    released = []
    for topic in topics_with_schemas(schema_dir):
        versions = subjects.setdefault(subject(topic), [])
        current = schema_text(topic, schema_dir)
        if versions and canonical((schema_dir / versions[-1]["schema"]).read_text(encoding="utf-8")) == canonical(current):
            continue
        version = len(versions) + 1
        relative = f"released/{topic}.v{version}.avsc"
        (schema_dir / "released").mkdir(exist_ok=True)
        (schema_dir / relative).write_text(current, encoding="utf-8")
        versions.append({"version": version, "id": next_id, "schema": relative})
        released.append(f"{subject(topic)} v{version} id {next_id}")
        next_id += 1
    registry_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return released
