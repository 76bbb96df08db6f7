"""Expand the Grafana ClickHouse-plugin macros and template variables in panel SQL.

So that the dashboards' SQL runs outside Grafana too: in the tests (on chDB), in
``threadline report`` and in the ClickHouse benchmark.  Covers what the dashboards use:
``$__timeFilter(col)``, ``$__fromTime``, ``$__toTime``, ``$__timeInterval(col)``,
``$__interval_s`` and ``$var`` / ``${var}`` variables (values are inserted as given: the
dashboards quote them, as Grafana's default formatting does).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

_TIME_FILTER = re.compile(r"\$__timeFilter\(\s*([^)]+?)\s*\)")
_TIME_INTERVAL = re.compile(r"\$__timeInterval\(\s*([^)]+?)\s*\)")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


class MacroError(ValueError):
    pass


def _literal(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return f"toDateTime64('{moment.strftime('%Y-%m-%d %H:%M:%S')}', 3, 'UTC')"


def expand(sql: str, *, time_from: datetime, time_to: datetime, variables: dict[str, str],
           interval_s: int = 86_400) -> str:
    sql = _TIME_FILTER.sub(lambda m: f"({m.group(1)} >= {_literal(time_from)} AND {m.group(1)} <= {_literal(time_to)})", sql)
    sql = _TIME_INTERVAL.sub(lambda m: f"toStartOfInterval({m.group(1)}, INTERVAL {interval_s} second)", sql)
    sql = sql.replace("$__fromTime", _literal(time_from)).replace("$__toTime", _literal(time_to))
    sql = sql.replace("$__interval_s", str(interval_s))

    def variable(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise MacroError(f"no value for the template variable ${name}")
        return variables[name]

    return _VARIABLE.sub(variable, sql)
