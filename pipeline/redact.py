"""Secrets of the settings: which values they are, and how output, logs and errors leave them out.

The one definition: a settings field declared with ``Field(..., repr=False)`` holds a secret (pydantic
already keeps such a field out of ``repr``).  So does the password in the userinfo of any URL-valued
setting (``clickhouse.url = "https://user:pass@host/db"``, webhook and registry URLs) and the value of
a URL query parameter named like a credential (``?password=``, ``?token=``, ``?api_key=``), whatever
field holds the URL: a new field needs no extra marking.

Settings sections call :func:`mask_section` from their serializer, so ``model_dump`` masks unless
``context={SHOW_SECRETS: True}`` is given; :func:`validation_message` turns a pydantic
``ValidationError`` into text without the rejected input values (pydantic's own text echoes them).
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Iterable
from urllib.parse import unquote

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

MASK = "********"
# Serialization context key: model_dump(context={SHOW_SECRETS: True}) keeps the secrets.
SHOW_SECRETS = "show_secrets"
# Shorter secrets are not scrubbed out of free text: replacing every "ab" would mangle the message
# and a secret that short is guessed faster than it is read from a log anyway.
_MIN_SCRUBBED_LENGTH = 4

# scheme://user:password@ — the password runs to the last "@" of the URL, so an unencoded "@" or "/"
# inside it is still covered (a path holding "@" is then masked too: too much rather than too little).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*):(?P<password>\S*)@")
# "code": Azure Functions and similar webhooks carry their key as ?code=.
_QUERY_SECRET = re.compile(r"(?P<head>[?&][^=&#\s]*(?:pass|pwd|secret|token|key|auth|sig|code)[^=&#\s]*=)"
                           r"(?P<value>[^&#\s]*)", re.IGNORECASE)


def is_secret(field: FieldInfo) -> bool:
    """True for a settings field that holds a secret: the ``repr=False`` marker."""
    return field.repr is False


def redact_url(text: str) -> str:
    """``text`` with the passwords of URLs in it, and credential-like query values, masked."""
    text = _USERINFO.sub(rf"\g<head>:{MASK}@", text)
    return _QUERY_SECRET.sub(rf"\g<head>{MASK}", text)


def redact_strings(value: Any) -> Any:
    """``value`` with :func:`redact_url` applied to every string inside it (lists, tuples, dicts)."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {key: redact_strings(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_strings(item) for item in value)
    return value


def masked(value: Any) -> Any:
    """What is shown instead of a secret field's value: unset stays unset (``None``), a table keeps
    its keys (the key ids of ``tracking.keys`` are names, not secrets), anything else is the mask."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: MASK for key in value}
    return MASK


def mask_section(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """One section's serialized fields with secrets masked and URL passwords redacted. Nested sections
    were already masked by their own serializer; redacting their strings again changes nothing."""
    return {name: masked(value) if (field := model.model_fields.get(name)) is not None and is_secret(field)
            else redact_strings(value)
            for name, value in data.items()}


def _section_types(annotation: Any) -> list[type[BaseModel]]:
    """The settings models inside a field's annotation (``X``, ``X | None``, ``tuple[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, tuple, list):
        return [model for arg in typing.get_args(annotation) for model in _section_types(arg)]
    return []


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _url_secrets(text: str) -> Iterable[str]:
    for match in _USERINFO.finditer(text):
        yield match["password"]
    for match in _QUERY_SECRET.finditer(text):
        yield match["value"]


def secret_values(model: type[BaseModel], data: Any) -> set[str]:
    """Every secret in ``data`` (raw input or an unmasked dump of ``model``): values of secret
    fields, URL passwords and credential query values, each also URL-decoded."""
    found: set[str] = set()
    if not isinstance(data, dict):
        return found
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is not None and is_secret(field):
            found.update(_strings(value))
            continue
        sections = _section_types(field.annotation) if field is not None else []
        for item in value if isinstance(value, (list, tuple)) else [value]:
            for section in sections:
                found |= secret_values(section, item)
        for text in _strings(value):
            found.update(_url_secrets(text))
    found |= {unquote(secret) for secret in found}
    return {secret for secret in found if secret and secret != MASK}


def settings_secrets(settings: BaseModel) -> set[str]:
    """Every secret a loaded settings object holds (see :func:`secret_values`)."""
    return secret_values(type(settings), settings.model_dump(mode="json", context={SHOW_SECRETS: True}))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` (an error message, say) with each of ``secrets`` and every URL password masked."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SCRUBBED_LENGTH:
            text = text.replace(secret, MASK)
    return redact_url(text)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(settings)"


def validation_message(exc: ValidationError, secrets: Iterable[str] = ()) -> str:
    """Each error as ``location: message``, one per line, without the input values that pydantic's
    own text repeats (they may be secrets); messages of our validators are scrubbed of ``secrets``."""
    lines = [f"{_location(error['loc'])}: {error['msg']}"
             for error in exc.errors(include_url=False, include_input=False, include_context=False)]
    return scrub("\n".join(lines), secrets)
