"""Campaign templates: a subject and a text and/or HTML body with merge fields.

Rendered by jinja2's *immutable sandbox* (:class:`ImmutableSandboxedEnvironment`, a
:class:`SandboxedEnvironment` that also refuses to modify lists and dicts): a template cannot
reach Python internals (``{{ ''.__class__ }}`` raises :class:`jinja2.exceptions.SecurityError`),
call unsafe methods, or load other files (no loader, so no ``include``/``import``/``extends``).

* ``StrictUndefined``: a merge field the recipient row does not have is an error that names the
  row and the address (:class:`TemplateRenderError`), never an empty string.
* The HTML body is autoescaped: a ``<`` in a merge field arrives as ``&lt;``.  The subject and
  the text body are not escaped; line breaks in a rendered subject become single spaces (no
  header injection).

Variables: every CSV column (``{{ first_name }}``), the whole row as ``recipient``
(``{{ recipient["first name"] }}`` for columns that are not identifiers), ``email``, and
``unsubscribe_url`` (the one-click unsubscribe link of this mail).

Files: a TOML file with ``subject`` and ``text`` and/or ``html``, or a folder with ``subject.txt``
and ``body.txt`` and/or ``body.html``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

TOML_KEYS = ("subject", "text", "html")
FOLDER_FILES = {"subject": "subject.txt", "text": "body.txt", "html": "body.html"}


class TemplateLoadError(ValueError):
    """The template file or folder is missing, incomplete, or does not compile."""


class TemplateRenderError(ValueError):
    """Rendering failed for one recipient row: a missing merge field, a sandbox violation, ...
    The jinja2 error (e.g. ``UndefinedError``, ``SecurityError``) is the ``__cause__``."""

    def __init__(self, message: str, *, row: int | None = None, email: str | None = None, part: str = "") -> None:
        where = f"row {row}" if row is not None else "template"
        if email:
            where += f" ({email})"
        super().__init__(f"{where}, {part}: {message}" if part else f"{where}: {message}")
        self.row, self.email, self.part = row, email, part


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str | None
    html: str | None


def _environment(*, autoescape: bool) -> ImmutableSandboxedEnvironment:
    # keep_trailing_newline: a body file ending in a newline renders to text ending in one.
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape,
                                         keep_trailing_newline=True, loader=None)


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


class CampaignTemplate:
    """A compiled subject plus text and/or HTML body; :meth:`render` personalises it."""

    def __init__(self, subject: str, text: str | None = None, html: str | None = None, *, name: str = "template") -> None:
        if not subject or not subject.strip():
            raise TemplateLoadError(f"{name}: the subject is missing or empty")
        if text is None and html is None:
            raise TemplateLoadError(f"{name}: needs a text body, an HTML body, or both")
        self.name = name
        self.sources = {"subject": subject, "text": text, "html": html}
        self._compiled: dict[str, Template] = {}
        for part, source in self.sources.items():
            if source is None:
                continue
            try:
                self._compiled[part] = (_HTML if part == "html" else _PLAIN).from_string(source)
            except TemplateError as exc:
                line = getattr(exc, "lineno", None)
                raise TemplateLoadError(f"{name}, {part}{f' line {line}' if line else ''}: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> CampaignTemplate:
        """From a TOML file (``subject``, ``text``, ``html``) or a folder (``subject.txt``,
        ``body.txt``, ``body.html``)."""
        path = Path(path)
        if path.is_dir():
            found = {part: (path / file).read_text(encoding="utf-8") for part, file in FOLDER_FILES.items()
                     if (path / file).is_file()}
            if "subject" not in found:
                raise TemplateLoadError(f"{path}: the folder has no subject.txt")
            # A subject file usually ends with a newline: it is not part of the subject.
            return cls(found["subject"].strip("\r\n"), found.get("text"), found.get("html"), name=str(path))
        if not path.is_file():
            raise TemplateLoadError(f"no such template: {path}")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TemplateLoadError(f"{path} is not valid TOML: {exc}") from exc
        unknown = sorted(set(values) - set(TOML_KEYS))
        if unknown:
            raise TemplateLoadError(f"{path}: unknown keys {', '.join(unknown)} (allowed: {', '.join(TOML_KEYS)})")
        if any(not isinstance(value, str) for value in values.values()):
            raise TemplateLoadError(f"{path}: subject, text and html must be strings")
        return cls(values.get("subject", ""), values.get("text"), values.get("html"), name=str(path))

    def render(self, fields: Mapping[str, Any], *, row: int | None = None, email: str | None = None,
               unsubscribe_url: str = "") -> RenderedMail:
        """Render for one recipient; ``fields`` are the row's merge fields."""
        context = {**fields, "recipient": dict(fields), "unsubscribe_url": unsubscribe_url}
        if email is not None:
            context.setdefault("email", email)
        out: dict[str, str | None] = {"text": None, "html": None}
        for part, template in self._compiled.items():
            try:
                out[part] = template.render(context)
            except TemplateError as exc:
                raise TemplateRenderError(str(exc), row=row, email=email, part=part) from exc
            except (ArithmeticError, TypeError, ValueError) as exc:  # e.g. {{ amount / 0 }}, {{ "x" + 1 }}
                raise TemplateRenderError(f"{type(exc).__name__}: {exc}", row=row, email=email, part=part) from exc
        subject = " ".join(str(out.pop("subject")).split())
        if not subject:
            raise TemplateRenderError("the subject renders empty", row=row, email=email, part="subject")
        return RenderedMail(subject=subject, text=out["text"], html=out["html"])
