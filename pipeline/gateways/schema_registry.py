"""The embedded stack's Schema Registry endpoint: the Confluent REST API that clients use (aiohttp).

Records on our topics carry the Confluent wire format with the ids of the embedded registry
(``schemas/registry.json``, pipeline/contracts/avro.py).  This endpoint serves those ids, so
confluent-kafka's ``SchemaRegistryClient``, ``AvroDeserializer`` and ``AvroSerializer`` (and any
other Confluent-compatible client) work against a running ``threadline up`` unchanged.  In
production ``schema_registry.url`` names a real registry and nothing here runs.

What it serves (docs/pipeline.md, "Reading the topics from another program"):

* Threadline's own subjects, ``<topic>-value`` for every topic (also as ``<kafka.topic_prefix><topic>-value``
  when a prefix is set, the name a client's TopicNameStrategy derives from the topic on the
  cluster): exactly the released versions and ids of ``schemas/registry.json``, read-only.  A
  client may look up and "register" any released version (it gets the released id); a new version
  is refused, 409 when it is not backward compatible with every released one, else 42205, because
  the agents decode only released ids (a schema change is released with ``threadline schemas
  release``).  Their compatibility level is BACKWARD_TRANSITIVE, the rule of ``schemas check``.
* Subjects of clients' own topics: registered as a Confluent registry does (an identical schema
  gets its existing id, also across subjects; a new one a new id after the subject's
  compatibility check), soft and permanent deletes, per-subject compatibility levels.  Their ids
  start at :data:`CLIENT_IDS_FROM`, far above the project's, so that no later release of
  Threadline gives a released schema an id a client schema already has.  Registrations are kept
  in ``path`` (``worker.data_dir/schema-registry.json``) when one is given.
* Avro only, without schema references, metadata or rule sets (refused with 42201).

Compatibility is checked by doing it, with the project's rule (``backward_problems``: records
generated from one schema are written with it and read with the other), in a worker thread with a
time limit.  Every answer is ``application/vnd.schemaregistry.v1+json``; errors are
``{"error_code": ..., "message": ...}`` with Confluent's codes.  Bad input gets a 4xx answer,
never a crash: bodies are limited to :data:`MAX_BODY_BYTES` and must arrive within
:data:`REQUEST_TIMEOUT_S`, as must a complete request head (also the idle keep-alive time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from fastavro import parse_schema

from pipeline.contracts.avro import EmbeddedRegistry, SchemaError, backward_problems, canonical
from pipeline.durable import write_atomically

log = logging.getLogger("threadline.schema_registry")

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_BODY_BYTES = 1 << 20  # the largest released schema is under 10 KiB
REQUEST_TIMEOUT_S = 10.0  # a complete request head, a body, the idle keep-alive time
COMPATIBILITY_TIMEOUT_S = 10.0
CLIENT_IDS_FROM = 100_001
REGISTRATIONS_FILE = "schema-registry.json"
LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE")
DEFAULT_LEVEL = "BACKWARD"
PROJECT_LEVEL = "BACKWARD_TRANSITIVE"  # `threadline schemas check`: the current schema reads every release
MAX_VERSION = 2**31 - 1
_GUIDS = uuid.uuid5(uuid.NAMESPACE_URL, "threadline:schema-registry")  # guids: uuid5 of a schema's canonical form

# Confluent's error codes (their REST API reference)
SUBJECT_NOT_FOUND, VERSION_NOT_FOUND, SCHEMA_NOT_FOUND = 40401, 40402, 40403
SUBJECT_SOFT_DELETED, SUBJECT_NOT_SOFT_DELETED = 40404, 40405
VERSION_SOFT_DELETED, VERSION_NOT_SOFT_DELETED = 40406, 40407
SUBJECT_LEVEL_NOT_CONFIGURED = 40408
INCOMPATIBLE = 409
INVALID_SCHEMA, INVALID_VERSION, INVALID_LEVEL, OPERATION_NOT_PERMITTED, INVALID_SUBJECT = 42201, 42202, 42203, 42205, 42208
BACKEND_ERROR = 50001


class RegistryError(Exception):
    """An answer other than success: the HTTP status, Confluent's error code and a message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _not_found(code: int, message: str) -> RegistryError:
    return RegistryError(404, code, message)


def _unprocessable(code: int, message: str) -> RegistryError:
    return RegistryError(422, code, message)


@dataclass(frozen=True)
class Version:
    version: int
    id: int
    deleted: bool = False


def compact(text: str) -> str:
    """The schema as the registry serves it: its JSON without whitespace, in its own key order."""
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)


def compatibility_problems(candidate: str, existing: list[tuple[int, str]], level: str) -> list[str]:
    """Why ``candidate`` may not follow these versions ((version, schema) pairs, the ones the level
    compares with) at this compatibility level; empty: compatible."""
    backward, forward = level.startswith(("BACKWARD", "FULL")), level.startswith(("FORWARD", "FULL"))
    problems = []
    for version, text in existing:
        if backward:
            problems += [f"version {version} cannot be read with the new schema: {_short(p)}"
                         for p in backward_problems(text, candidate)]
        if forward:
            problems += [f"data written with the new schema cannot be read with version {version}: {_short(p)}"
                         for p in backward_problems(candidate, text)]
    return problems


def _short(problem: str, limit: int = 300) -> str:
    """fastavro's resolution errors quote both parsed schemas whole: keep the start."""
    return problem if len(problem) <= limit else problem[:limit] + " ..."


def parse_version(text: str) -> int | None:
    """A version path segment: a number from 1, or ``latest`` / ``-1`` (None)."""
    if text in ("latest", "-1"):
        return None
    if text.isdigit() and 1 <= int(text) <= MAX_VERSION:
        return int(text)
    raise _unprocessable(INVALID_VERSION, f"The specified version '{text}' is not a valid version id. Allowed "
                         f"values are between [1, {MAX_VERSION}] and the string \"latest\"")


def parse_level(body: Any) -> str:
    level = body.get("compatibility", body.get("compatibilityLevel")) if isinstance(body, dict) else None
    if not isinstance(level, str) or level.upper() not in LEVELS:
        raise _unprocessable(INVALID_LEVEL, f"Invalid compatibility level {level!r}: one of {', '.join(LEVELS)}")
    extra = sorted(k for k, v in body.items() if k not in ("compatibility", "compatibilityLevel") and v is not None)
    if extra:
        raise _unprocessable(OPERATION_NOT_PERMITTED, f"Only the compatibility level can be configured here, "
                             f"not {', '.join(extra)}")
    return level.upper()


def parse_schema_request(body: Any) -> str:
    """The Avro schema text of a register, lookup or compatibility request; 42201 when it is not one."""
    if not isinstance(body, dict):
        raise _unprocessable(422, "The request body must be a JSON object with a \"schema\" field")
    text = body.get("schema")
    if not isinstance(text, str):
        raise _unprocessable(INVALID_SCHEMA, "Invalid schema: \"schema\" must be a string holding the schema's JSON")
    kind = body.get("schemaType") or "AVRO"
    if not isinstance(kind, str) or kind.upper() != "AVRO":
        raise _unprocessable(INVALID_SCHEMA, f"Invalid schema: schema type {kind!r} is not served here, only AVRO")
    for unsupported in ("references", "metadata", "ruleSet"):
        if body.get(unsupported):
            raise _unprocessable(INVALID_SCHEMA, f"Invalid schema: {unsupported} are not supported by this registry")
    try:
        parse_schema(json.loads(text))
    except Exception as exc:  # json, fastavro (several types) and RecursionError for absurd nesting
        raise _unprocessable(INVALID_SCHEMA, f"Invalid schema: {type(exc).__name__}: {exc}"[:1000]) from None
    return text


def check_subject_name(name: str) -> str:
    if not name or len(name) > 1000 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise _unprocessable(INVALID_SUBJECT, "Invalid subject: empty, over 1000 characters, or with control characters")
    return name


class SchemaStore:
    """The subjects and schemas the endpoint serves (see the module docstring).

    Changes come from one event loop, one at a time (the app holds a lock around each); a
    registration's compatibility check runs in a worker thread and only reads."""

    def __init__(self, registry: EmbeddedRegistry, *, topic_prefix: str = "", path: Path | None = None) -> None:
        self.path = path
        self._texts: dict[int, str] = {}  # id -> schema, as served
        self._canonical: dict[int, str] = {}  # id -> canonical form, to compare schemas
        self._ids: dict[str, int] = {}  # canonical form -> its (first) id
        self._subjects: dict[str, list[Version]] = {}
        self._levels: dict[str, str] = {}
        self.global_level = DEFAULT_LEVEL
        self.project: set[str] = set()
        for name, versions in registry.subjects().items():
            released = []
            for entry in versions:
                self._keep(entry["id"], registry.schema_for_id(entry["id"]))
                released.append(Version(entry["version"], entry["id"]))
            for alias in {name, topic_prefix + name}:
                self._subjects[alias] = released
                self.project.add(alias)
        self._project_ids = set(self._texts)
        self._next_id = max(CLIENT_IDS_FROM, max(self._texts, default=0) + 1)
        if path is not None and path.is_file():
            self._load(path)

    # -- registrations on disk ----------------------------------------------------------------
    def _load(self, path: Path) -> None:
        fix = f"(remove {path} to start without clients' registrations)"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ids = {int(key): text for key, text in data["ids"].items()}
            subjects = {name: [Version(int(v), int(i), bool(d)) for v, i, d in versions]
                        for name, versions in data["subjects"].items()}
            levels = {name: str(level) for name, level in data["levels"].items()}
            global_level = str(data["global_level"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SchemaError(f"cannot read the schema registrations {path}: {exc} {fix}") from exc
        clash = sorted(set(ids) & self._project_ids) or sorted(set(subjects) & self.project)
        if clash:
            raise SchemaError(f"{path} registers {clash[0]!r}, which is now Threadline's own {fix}")
        for schema_id, text in sorted(ids.items()):
            self._keep(schema_id, text)
        unknown = [v.id for versions in subjects.values() for v in versions if v.id not in self._texts]
        if unknown or global_level not in LEVELS or set(levels.values()) - set(LEVELS):
            raise SchemaError(f"{path} is inconsistent (unknown schema id or compatibility level) {fix}")
        self._subjects.update(subjects)
        self._levels, self.global_level = levels, global_level
        self._next_id = max(self._next_id, max(ids, default=0) + 1)

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"global_level": self.global_level, "levels": self._levels,
                "ids": {str(i): self._texts[i] for i in sorted(self._texts) if i not in self._project_ids},
                "subjects": {name: [[v.version, v.id, v.deleted] for v in versions]
                             for name, versions in sorted(self._subjects.items()) if name not in self.project}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(data, indent=1, ensure_ascii=False).encode())

    def _keep(self, schema_id: int, text: str) -> None:
        self._texts[schema_id] = compact(text)
        self._canonical[schema_id] = canonical(text)
        self._ids.setdefault(self._canonical[schema_id], schema_id)

    # -- reading --------------------------------------------------------------------------------
    @staticmethod
    def _visible(versions: list[Version], deleted: bool = False, deleted_only: bool = False) -> list[Version]:
        if deleted_only:
            return [v for v in versions if v.deleted]
        return [v for v in versions if deleted or not v.deleted]

    def subject_names(self, *, prefix: str = "", deleted: bool = False, deleted_only: bool = False) -> list[str]:
        return sorted(name for name, versions in self._subjects.items()
                      if name.startswith(prefix) and self._visible(versions, deleted, deleted_only))

    def versions(self, name: str, *, deleted: bool = False, deleted_only: bool = False) -> list[Version]:
        found = self._visible(self._subjects.get(name, []), deleted, deleted_only)
        if not found and not (deleted_only and self._subjects.get(name)):
            raise _not_found(SUBJECT_NOT_FOUND, f"Subject '{name}' not found.")
        return found

    def version(self, name: str, number: int | None, *, deleted: bool = False) -> Version:
        """``number`` None: the latest."""
        found = self.versions(name, deleted=deleted)
        match = found[-1:] if number is None else [v for v in found if v.version == number]
        if not match:
            raise _not_found(VERSION_NOT_FOUND, f"Version {'latest' if number is None else number} not found.")
        return match[0]

    def schema(self, schema_id: int) -> str:
        if schema_id not in self._texts:
            raise _not_found(SCHEMA_NOT_FOUND, f"Schema {schema_id} not found")
        return self._texts[schema_id]

    def guid(self, schema_id: int) -> str:
        return str(uuid.uuid5(_GUIDS, self._canonical[schema_id]))

    def id_for_guid(self, guid: str) -> int:
        for schema_id in self._texts:
            if self.guid(schema_id) == guid:
                return schema_id
        raise _not_found(SCHEMA_NOT_FOUND, f"Schema {guid} not found")

    def uses(self, schema_id: int, *, deleted: bool = False) -> list[tuple[str, int]]:
        """(subject, version) of every version with this id."""
        self.schema(schema_id)
        return [(name, v.version) for name, versions in sorted(self._subjects.items())
                for v in self._visible(versions, deleted) if v.id == schema_id]

    def max_id(self) -> int:
        return max(self._texts)

    def lookup(self, name: str, text: str, *, deleted: bool = False) -> Version:
        wanted = canonical(text)
        for version in self.versions(name, deleted=deleted):
            if self._canonical[version.id] == wanted:
                return version
        raise _not_found(SCHEMA_NOT_FOUND, "Schema not found")

    # -- compatibility --------------------------------------------------------------------------
    def level(self, name: str | None, *, default_to_global: bool = True) -> str:
        if name is None:
            return self.global_level
        if name in self.project:
            return PROJECT_LEVEL
        if name in self._levels:
            return self._levels[name]
        if default_to_global:
            return self.global_level
        raise _not_found(SUBJECT_LEVEL_NOT_CONFIGURED, f"Subject '{name}' does not have subject-level "
                         "compatibility configured")

    def compared_with(self, name: str, number: int | None = None, *, all_versions: bool = False) -> tuple[str, list[tuple[int, str]]]:
        """The level and the (version, schema) pairs a new schema of ``name`` is checked against:
        one version (``number``, None: the latest) or, ``all_versions``, those the level names."""
        level = self.level(name)
        if all_versions:
            live = self._visible(self._subjects.get(name, []))
            chosen = [] if level == "NONE" else live if level.endswith("TRANSITIVE") else live[-1:]
        else:
            chosen = [] if level == "NONE" else [self.version(name, number)]
        return level, [(v.version, self._texts[v.id]) for v in chosen]

    # -- changes --------------------------------------------------------------------------------
    def _own(self, name: str) -> None:
        if name in self.project:
            raise _unprocessable(OPERATION_NOT_PERMITTED, f"Operation not permitted: {name} is Threadline's own "
                                 "subject; its released versions (schemas/registry.json) are read-only")

    def refuse_new_project_version(self, name: str, problems: list[str]) -> None:
        if name not in self.project:
            return
        if problems:
            raise RegistryError(409, INCOMPATIBLE, incompatible_message(name, problems))
        raise _unprocessable(OPERATION_NOT_PERMITTED, f"Operation not permitted: {name} is Threadline's own "
                             "subject and this schema is none of its released versions; the agents decode only "
                             "released schemas (release a new one with `threadline schemas release`)")

    def add(self, name: str, text: str) -> Version:
        """A new version of ``name`` (a client's subject) holding ``text``, with the id an identical
        schema already has, else a new one."""
        self._own(name)
        schema_id = self._ids.get(canonical(text))
        if schema_id is None:
            schema_id, self._next_id = self._next_id, self._next_id + 1
            self._keep(schema_id, text)
        versions = self._subjects.setdefault(name, [])
        version = Version(1 + max((v.version for v in versions), default=0), schema_id)
        versions.append(version)
        self._save()
        return version

    def delete_subject(self, name: str, *, permanent: bool) -> list[int]:
        self._own(name)
        versions = self._subjects.get(name)
        if not versions:
            raise _not_found(SUBJECT_NOT_FOUND, f"Subject '{name}' not found.")
        if permanent:
            if any(not v.deleted for v in versions):
                raise _not_found(SUBJECT_NOT_SOFT_DELETED, f"Subject '{name}' was not deleted first before being "
                                 "permanently deleted")
            del self._subjects[name]
            self._levels.pop(name, None)
            self._save()
            return [v.version for v in versions]
        live = [v.version for v in versions if not v.deleted]
        if not live:
            raise _not_found(SUBJECT_SOFT_DELETED, f"Subject '{name}' was soft deleted. Set permanent=true to "
                             "delete permanently")
        self._subjects[name] = [replace(v, deleted=True) for v in versions]
        self._save()
        return live

    def delete_version(self, name: str, number: int | None, *, permanent: bool) -> int:
        """Soft delete (the latest: the latest not deleted) or, ``permanent``, remove a soft-deleted version."""
        self._own(name)
        versions = self._subjects.get(name)
        if not versions:
            raise _not_found(SUBJECT_NOT_FOUND, f"Subject '{name}' not found.")
        if number is None:
            match = versions[-1:] if permanent else self._visible(versions)[-1:]
        else:
            match = [v for v in versions if v.version == number]
        if not match:
            raise _not_found(VERSION_NOT_FOUND, f"Version {'latest' if number is None else number} not found.")
        target = match[0]
        if permanent and not target.deleted:
            raise _not_found(VERSION_NOT_SOFT_DELETED, f"Subject '{name}' Version {target.version} was not deleted "
                             "first before being permanently deleted")
        if not permanent and target.deleted:
            raise _not_found(VERSION_SOFT_DELETED, f"Subject '{name}' Version {target.version} was soft deleted. "
                             "Set permanent=true to delete permanently")
        if permanent:
            versions.remove(target)
            if not versions:
                del self._subjects[name]
        else:
            versions[versions.index(target)] = replace(target, deleted=True)
        self._save()
        return target.version

    def set_level(self, name: str | None, level: str) -> None:
        if name is None:
            self.global_level = level
        else:
            self._own(name)
            self._levels[name] = level
        self._save()

    def delete_level(self, name: str | None) -> str:
        """Back to the default (global: BACKWARD; a subject: the global level); the level it had."""
        if name is None:
            old, self.global_level = self.global_level, DEFAULT_LEVEL
        else:
            self._own(name)
            old = self.level(name, default_to_global=False)
            del self._levels[name]
        self._save()
        return old


def incompatible_message(name: str, problems: list[str]) -> str:
    return (f"Schema being registered is incompatible with an earlier schema for subject \"{name}\", "
            f"details: {problems[:5]}")


# -- HTTP -------------------------------------------------------------------------------------
def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, ensure_ascii=False), content_type=CONTENT_TYPE)


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"error_code": code, "message": message}, status)


@web.middleware
async def _answer_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        return await handler(request)
    except RegistryError as exc:
        return _error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:  # no route (404), wrong method (405), body too large (413)
        if exc.status < 400:
            raise
        return _error(exc.status, exc.status, f"HTTP {exc.status} {exc.reason}")
    except Exception:  # a bug: say so, and keep serving
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, BACKEND_ERROR, "Internal error of the schema registry (logged)")


def _flag(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _unprocessable(422, f"Query parameter {name!r} must be true or false, not {value[:50]!r}")


def _number(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    try:
        return default if value is None or value == "" else int(value)
    except ValueError:
        raise _unprocessable(422, f"Query parameter {name!r} must be a number, not {value[:50]!r}") from None


def _page(request: web.Request, items: list) -> list:
    offset, limit = _number(request, "offset", 0), _number(request, "limit", -1)
    if offset < 0:
        raise _unprocessable(422, "Query parameter 'offset' must not be negative")
    return items[offset:] if limit < 0 else items[offset:offset + limit]


def _schema_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not text.isdigit() or int(text) > MAX_VERSION:
        raise _not_found(SCHEMA_NOT_FOUND, f"Schema {text[:50]} not found")
    return int(text)


async def _body(request: web.Request) -> Any:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            raw = await request.read()
    except TimeoutError:
        raise RegistryError(408, 408, f"The request body did not arrive within {REQUEST_TIMEOUT_S:.0f} s") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RegistryError(400, 400, f"The request body is not JSON: {exc}"[:500]) from None


def build_app(store: SchemaStore) -> web.Application:
    lock = asyncio.Lock()  # one change at a time (a registration awaits its compatibility check)

    def subject(request: web.Request) -> str:
        return check_subject_name(request.match_info["subject"])

    def registered(name: str, version: Version) -> dict:
        return {"subject": name, "version": version.version, "id": version.id, "guid": store.guid(version.id),
                "schema": store.schema(version.id)}

    async def problems_of(text: str, existing: list[tuple[int, str]], level: str) -> list[str]:
        if not existing:
            return []
        try:
            return await asyncio.wait_for(asyncio.to_thread(compatibility_problems, text, existing, level),
                                          COMPATIBILITY_TIMEOUT_S)
        except TimeoutError:
            raise _unprocessable(INVALID_SCHEMA, f"Invalid schema: its compatibility check took over "
                                 f"{COMPATIBILITY_TIMEOUT_S:.0f} s") from None
        except Exception as exc:  # e.g. RecursionError generating records of a recursive schema
            return [f"{type(exc).__name__}: {exc}"[:500]]

    async def root(_request):
        return _json({})

    async def subjects(request):
        return _json(_page(request, store.subject_names(prefix=request.query.get("subjectPrefix", ""),
                                                        deleted=_flag(request, "deleted"),
                                                        deleted_only=_flag(request, "deleted_only"))))

    async def versions(request):
        found = store.versions(subject(request), deleted=_flag(request, "deleted"),
                               deleted_only=_flag(request, "deleted_only"))
        return _json(_page(request, [v.version for v in found]))

    def one_version(request) -> tuple[str, Version]:
        name = subject(request)
        return name, store.version(name, parse_version(request.match_info["version"]), deleted=_flag(request, "deleted"))

    async def version(request):
        return _json(registered(*one_version(request)))

    async def version_schema(request):
        _, found = one_version(request)
        return web.Response(text=store.schema(found.id), content_type=CONTENT_TYPE)

    async def referenced_by(request):
        one_version(request)
        return _json([])  # references are not supported: nothing refers to anything

    async def latest_with_metadata(request):
        name = subject(request)
        if request.query.getall("key", []):
            raise _not_found(SCHEMA_NOT_FOUND, "Schema not found: no schema here carries metadata")
        return _json(registered(name, store.version(name, None, deleted=_flag(request, "deleted"))))

    async def lookup(request):
        name = subject(request)
        text = parse_schema_request(await _body(request))
        return _json(registered(name, store.lookup(name, text, deleted=_flag(request, "deleted"))))

    async def register(request):
        name = subject(request)
        body = await _body(request)
        text = parse_schema_request(body)
        if body.get("id") is not None or body.get("version") is not None:
            raise _unprocessable(OPERATION_NOT_PERMITTED, "Operation not permitted: a schema id or version can be "
                                 "given only in IMPORT mode, which this registry does not have")
        async with lock:
            try:
                return _json(registered(name, store.lookup(name, text)))
            except RegistryError as exc:
                if exc.code not in (SUBJECT_NOT_FOUND, SCHEMA_NOT_FOUND):
                    raise
            level, existing = store.compared_with(name, all_versions=True)
            problems = await problems_of(text, existing, level)
            store.refuse_new_project_version(name, problems)
            if problems:
                raise RegistryError(409, INCOMPATIBLE, incompatible_message(name, problems))
            added = store.add(name, text)
        log.info("registered %s version %d id %d", name, added.version, added.id)
        return _json(registered(name, added))

    async def compatibility(request):
        name = subject(request)
        text = parse_schema_request(await _body(request))
        if "version" in request.match_info:
            level, existing = store.compared_with(name, parse_version(request.match_info["version"]))
        else:
            level, existing = store.compared_with(name, all_versions=True)
        problems = await problems_of(text, existing, level)
        answer: dict[str, Any] = {"is_compatible": not problems}
        if _flag(request, "verbose"):
            answer["messages"] = problems
        return _json(answer)

    async def delete_subject(request):
        async with lock:
            return _json(store.delete_subject(subject(request), permanent=_flag(request, "permanent")))

    async def delete_version(request):
        name = subject(request)
        number = parse_version(request.match_info["version"])
        async with lock:
            return _json(store.delete_version(name, number, permanent=_flag(request, "permanent")))

    async def schema_by_id(request):
        schema_id = _schema_id(request)
        answer = {"schema": store.schema(schema_id), "guid": store.guid(schema_id)}
        if _flag(request, "fetchMaxId"):
            answer["maxId"] = store.max_id()
        return _json(answer)

    async def schema_by_guid(request):
        schema_id = store.id_for_guid(request.match_info["guid"])
        return _json({"schema": store.schema(schema_id), "guid": store.guid(schema_id)})

    async def schema_text(request):
        return web.Response(text=store.schema(_schema_id(request)), content_type=CONTENT_TYPE)

    def uses(request) -> list[tuple[str, int]]:
        found = store.uses(_schema_id(request), deleted=_flag(request, "deleted"))
        only = request.query.get("subject")
        return [(name, number) for name, number in found if only is None or name == only]

    async def schema_subjects(request):
        return _json(_page(request, sorted({name for name, _ in uses(request)})))

    async def schema_versions(request):
        return _json(_page(request, [{"subject": name, "version": number} for name, number in uses(request)]))

    async def schemas(request):
        prefix, deleted = request.query.get("subjectPrefix", ""), _flag(request, "deleted")
        latest_only = _flag(request, "latestOnly")
        found = []
        for name in store.subject_names(prefix=prefix, deleted=deleted):
            chosen = store.versions(name, deleted=deleted)
            found += [registered(name, v) for v in (chosen[-1:] if latest_only else chosen)]
        return _json(_page(request, found))

    async def schema_types(_request):
        return _json(["AVRO"])

    def config_subject(request) -> str | None:
        return check_subject_name(request.match_info["subject"]) if "subject" in request.match_info else None

    async def get_config(request):
        name = config_subject(request)
        return _json({"compatibilityLevel": store.level(name, default_to_global=_flag(request, "defaultToGlobal"))})

    async def put_config(request):
        name = config_subject(request)
        level = parse_level(await _body(request))
        async with lock:
            store.set_level(name, level)
        return _json({"compatibility": level})

    async def delete_config(request):
        name = config_subject(request)
        async with lock:
            return _json({"compatibilityLevel": store.delete_level(name)})

    async def get_mode(_request):
        return _json({"mode": "READWRITE"})

    async def put_mode(_request):
        raise _unprocessable(OPERATION_NOT_PERMITTED, "Operation not permitted: the mode is always READWRITE")

    async def contexts(_request):
        return _json(["."])

    app = web.Application(middlewares=[_answer_errors], client_max_size=MAX_BODY_BYTES)
    routes = app.router
    routes.add_get("/", root)
    routes.add_get("/subjects", subjects)
    routes.add_post("/subjects/{subject}", lookup)
    routes.add_delete("/subjects/{subject}", delete_subject)
    routes.add_get("/subjects/{subject}/versions", versions)
    routes.add_post("/subjects/{subject}/versions", register)
    routes.add_get("/subjects/{subject}/versions/{version}", version)
    routes.add_delete("/subjects/{subject}/versions/{version}", delete_version)
    routes.add_get("/subjects/{subject}/versions/{version}/schema", version_schema)
    routes.add_get("/subjects/{subject}/versions/{version}/referencedby", referenced_by)
    routes.add_get("/subjects/{subject}/metadata", latest_with_metadata)
    routes.add_get("/schemas", schemas)
    routes.add_get("/schemas/types", schema_types)
    routes.add_get("/schemas/ids/{id}", schema_by_id)
    routes.add_get("/schemas/ids/{id}/schema", schema_text)
    routes.add_get("/schemas/ids/{id}/subjects", schema_subjects)
    routes.add_get("/schemas/ids/{id}/versions", schema_versions)
    routes.add_get("/schemas/guids/{guid}", schema_by_guid)
    routes.add_post("/compatibility/subjects/{subject}/versions", compatibility)
    routes.add_post("/compatibility/subjects/{subject}/versions/{version}", compatibility)
    for path in ("/config", "/config/{subject}"):
        routes.add_get(path, get_config)
        routes.add_put(path, put_config)
        routes.add_delete(path, delete_config)
    for path in ("/mode", "/mode/{subject}"):
        routes.add_get(path, get_mode)
        routes.add_put(path, put_mode)
        routes.add_delete(path, put_mode)
    routes.add_get("/contexts", contexts)
    return app


class RegistryServer:
    """The endpoint on its own thread and event loop, for ``threadline up`` and tests:
    ``server = RegistryServer(store).start()``, then ``server.url`` ... ``server.stop()``."""

    def __init__(self, store: SchemaStore, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store, self.host, self.port = store, host, port
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "RegistryServer":
        self._thread = threading.Thread(target=self._run, name="schema-registry", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"the schema registry endpoint did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        runner = web.AppRunner(build_app(self.store), access_log=None, handle_signals=False,
                               keepalive_timeout=REQUEST_TIMEOUT_S, lingering_time=REQUEST_TIMEOUT_S)
        try:
            try:
                self._stopping = asyncio.Event()
                loop.run_until_complete(runner.setup())
                loop.run_until_complete(web.TCPSite(runner, self.host, self.port).start())
                self.port = runner.addresses[0][1]
            except BaseException as exc:  # reported to start(), which raises it
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_until_complete(self._stopping.wait())
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> "RegistryServer":
        return self if self._thread is not None else self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def start_registry(data_dir: Path, *, topic_prefix: str = "", keep_registrations: bool = True) -> RegistryServer:
    """The endpoint of ``threadline up`` on a free loopback port, with clients' registrations kept in
    ``data_dir``; ``keep_registrations`` False starts without earlier ones (the embedded broker's
    topics, which their records were on, are new)."""
    path = data_dir / REGISTRATIONS_FILE
    if not keep_registrations:
        path.unlink(missing_ok=True)
    return RegistryServer(SchemaStore(EmbeddedRegistry(), topic_prefix=topic_prefix, path=path)).start()
