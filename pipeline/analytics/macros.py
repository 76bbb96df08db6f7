"""Expand the Grafana ClickHouse-plugin macros and template variables in panel SQL.

So that the dashboards' SQL runs outside Grafana too: in the tests (on chDB), in
``threadline report`` and in the ClickHouse benchmark.  Covers what the dashboards use:
``$__timeFilter(col)``, ``$__fromTime``, ``$__toTime``, ``$__timeInterval(col)`` and
``$__interval_s``; any other ``$__`` macro is refused rather than passed on.

Template variables are accepted in one form only, ``decodeURLComponent('${name:percentencode}')``.
Grafana's ``percentencode`` format leaves RFC 3986's unreserved characters (letters, digits,
``-._~``) as they are and turns every other byte of the value's UTF-8 into ``%XX``, so the
literal holds nothing that can end it, whatever was typed into a text box or put into a
``var-`` URL parameter; ClickHouse decodes it back to the exact text.  Grafana's other formats
are not safe inside a ClickHouse string: without a format the text goes in raw, and
``sqlstring`` only doubles single quotes while ClickHouse also honours backslash escapes, so
``\\'`` closes the literal.  Every other reference (``$name``, ``${name}``, ``[[name]]``, another
format, or ``percentencode`` outside ``decodeURLComponent('...')``) raises :class:`MacroError`, so
a panel cannot use an unguarded variable without failing the tests that run every panel.

:func:`expand` produces what Grafana sends.  :func:`expand_bound` is for our own commands: each
guarded reference becomes a server-side parameter ``{v_name:String}`` holding the value itself,
so a value given on the command line is never part of the SQL text at all.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from urllib.parse import quote

_TIME_FILTER = re.compile(r"\$__timeFilter\(\s*([^)]+?)\s*\)")
_TIME_INTERVAL = re.compile(r"\$__timeInterval\(\s*([^)]+?)\s*\)")
_SIMPLE_MACROS = ("$__fromTime", "$__toTime", "$__interval_s")
# The only form a template variable may take (the name is a Grafana variable name).
GUARDED = re.compile(r"decodeURLComponent\('\$\{(\w+):percentencode\}'\)")
# Everything Grafana's interpolation would treat as a reference: $name, [[name(:fmt)]],
# ${name(.path)(:fmt(:args))}.  Checked after the guarded form and the macros are taken out.
_REFERENCE = re.compile(r"\$\{[^}]*\}|\[\[\w+(?::\w+)?\]\]|\$\w+")


class MacroError(ValueError):
    pass


def percentencode(value: str) -> str:
    """Grafana's ``percentencode`` of a single value: JavaScript's encodeURIComponent plus
    ``!'()*``, i.e. everything but ``A-Za-z0-9-_.~`` as upper-case ``%XX`` of its UTF-8 bytes
    (Python's ``quote`` with nothing extra marked safe is exactly that)."""
    if not isinstance(value, str):
        raise MacroError(f"a variable value must be text, not {type(value).__name__}")
    try:
        return quote(value, safe="", encoding="utf-8", errors="strict")
    except UnicodeEncodeError as exc:  # a lone surrogate: encodeURIComponent throws URIError too
        raise MacroError(f"the value cannot be percent-encoded: {exc}") from exc


def unguarded_references(sql: str) -> list[str]:
    """Variable references and macros in ``sql`` that are neither the guarded form nor a
    supported macro (what the dashboard lint test reports)."""
    rest = GUARDED.sub("", sql)
    rest = _TIME_FILTER.sub("", rest)
    rest = _TIME_INTERVAL.sub("", rest)
    for macro in _SIMPLE_MACROS:
        # A longer name such as $__toTime_ms must not count as $__toTime.
        rest = re.sub(re.escape(macro) + r"(?!\w)", "", rest)
    return _REFERENCE.findall(rest)


def _check(sql: str, variables: dict[str, str]) -> None:
    bad = unguarded_references(sql)
    if bad:
        raise MacroError(f"unguarded template variable or unknown macro {bad[0]!r}: write "
                         "decodeURLComponent('${name:percentencode}') (and parse numbers from that)")
    for name in GUARDED.findall(sql):
        if name not in variables:
            raise MacroError(f"no value for the template variable ${name}")


def _literal(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return f"toDateTime64('{moment.strftime('%Y-%m-%d %H:%M:%S')}', 3, 'UTC')"


def _macros(sql: str, time_from: datetime, time_to: datetime, interval_s: int) -> str:
    sql = _TIME_FILTER.sub(lambda m: f"({m.group(1)} >= {_literal(time_from)} AND {m.group(1)} <= {_literal(time_to)})", sql)
    sql = _TIME_INTERVAL.sub(lambda m: f"toStartOfInterval({m.group(1)}, INTERVAL {int(interval_s)} second)", sql)
    sql = re.sub(r"\$__fromTime(?!\w)", _literal(time_from), sql)
    sql = re.sub(r"\$__toTime(?!\w)", _literal(time_to), sql)
    return re.sub(r"\$__interval_s(?!\w)", str(int(interval_s)), sql)


def expand(sql: str, *, time_from: datetime, time_to: datetime, variables: dict[str, str],
           interval_s: int = 86_400) -> str:
    """The SQL Grafana sends for these variable values (variables first, then the plugin's
    macros, in Grafana's order; encoded values hold no ``$``, so the order changes nothing)."""
    _check(sql, variables)
    sql = GUARDED.sub(lambda m: f"decodeURLComponent('{percentencode(variables[m.group(1)])}')", sql)
    return _macros(sql, time_from, time_to, interval_s)


def expand_bound(sql: str, *, time_from: datetime, time_to: datetime, variables: dict[str, str],
                 interval_s: int = 86_400) -> tuple[str, dict[str, str]]:
    """The same query with every variable as a server-side parameter: (sql, parameters)."""
    _check(sql, variables)
    parameters: dict[str, str] = {}

    def bind(match: re.Match) -> str:
        name = match.group(1)
        value = variables[name]
        percentencode(value)  # refuse what Grafana could not send either
        parameters[f"v_{name}"] = value
        return f"{{v_{name}:String}}"

    sql = GUARDED.sub(bind, sql)
    return _macros(sql, time_from, time_to, interval_s), parameters
