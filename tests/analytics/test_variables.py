"""Dashboard variables cannot change a query's shape, and every panel filters by tenant.

Every variable reference must be ``decodeURLComponent('${name:percentencode}')`` (numbers parsed
from it), the expansion must percent-encode exactly as Grafana does, ClickHouse must decode
it back to the exact value, and every panel and variable query must filter by the tenant."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from numbers import Number

import pytest

from pipeline.analytics.dashboards import DASHBOARDS
from pipeline.analytics.macros import GUARDED, MacroError, expand, expand_bound, percentencode, unguarded_references
from pipeline.analytics.panels import data_time_range, default_variables, run_dashboard, store_tables

TENANT_FILTER = re.compile(r"\b(?:\w+\.)?(?:tenant|key) = decodeURLComponent\('\$\{tenant:percentencode\}'\)")
TABLE_READ = re.compile(r"\bFROM (?:" + "|".join(store_tables()) + r")\b")
START, END = datetime(2026, 1, 1), datetime(2026, 2, 1)
# Text-box variables that hold a number, and what parses it.
NUMBER_PARSERS = {"unanswered_hours": "toUInt16OrZero(", "due_within_hours": "toUInt16OrZero(",
                  "review_below": "toFloat64OrZero("}


def _queries():
    """(where, sql, dashboard) of every panel and every variable query."""
    for dashboard in DASHBOARDS:
        for panel in dashboard.panels:
            yield f"{dashboard.uid} / {panel.title}", panel.sql, dashboard
        for variable in dashboard.variables:
            if variable.query:
                yield f"{dashboard.uid} / variable {variable.name}", variable.query, dashboard


def test_every_variable_reference_is_percent_encoded_and_decoded():
    for where, sql, dashboard in _queries():
        assert unguarded_references(sql) == [], where
        names = {v.name for v in dashboard.variables}
        for match in GUARDED.finditer(sql):
            assert match.group(1) in names, (where, match.group(1))
            parser = NUMBER_PARSERS.get(match.group(1))
            if parser:  # a number typed into a text box
                assert sql[:match.start()].endswith(parser), where
    # The lint must be able to fail: each of these would let a value change the query.
    for unsafe in ("WHERE tenant = '${tenant}'", "WHERE tenant = $tenant", "WHERE tenant = [[tenant]]",
                   "WHERE tenant = ${tenant:sqlstring}", "WHERE tenant = '${tenant:raw}'",
                   "WHERE tenant = ${tenant:singlequote}", "INTERVAL ${unanswered_hours:percentencode} HOUR",
                   "WHERE tenant = decodeURLComponent(${tenant:percentencode})", "WHERE $__unknownMacro(t)"):
        assert unguarded_references(unsafe), unsafe
        with pytest.raises(MacroError):
            expand(unsafe, time_from=START, time_to=END, variables={"tenant": "x", "unanswered_hours": "1"})
        with pytest.raises(MacroError):
            expand_bound(unsafe, time_from=START, time_to=END, variables={"tenant": "x", "unanswered_hours": "1"})


def test_every_panel_and_variable_query_filters_by_tenant():
    for where, sql, _ in _queries():
        if where.endswith("variable tenant"):
            continue  # lists the tenants: the row policies decide which a reader sees
        reads, filters = len(TABLE_READ.findall(sql)), len(TENANT_FILTER.findall(sql))
        assert reads and filters >= reads, f"{where}: {reads} table reads, {filters} tenant filters"


def test_percentencode_is_grafanas():
    # Grafana's formatRegistry test: a multi-value {foo()bar BAZ,test2} percent-encodes to this.
    assert percentencode("{foo()bar BAZ,test2}") == "%7Bfoo%28%29bar%20BAZ%2Ctest2%7D"
    assert percentencode("!'()*") == "%21%27%28%29%2A"  # what encodeURIComponent leaves, Grafana encodes
    assert percentencode("AZaz09-_.~") == "AZaz09-_.~"
    assert percentencode("é€😀") == "%C3%A9%E2%82%AC%F0%9F%98%80"
    assert percentencode("\\' OR 1=1 --") == "%5C%27%20OR%201%3D1%20--"
    assert percentencode("") == ""
    with pytest.raises(MacroError):
        percentencode("\ud800")  # a lone surrogate: encodeURIComponent throws too


PAYLOADS = ["' OR '1'='1", "\\' OR 1=1 --", "0 HOUR OR 1=1", "x'/**/OR/**/'1'='1", "x'; DROP TABLE t; --",
            "\u2019 OR \u20181\u2019=\u20191", "a\x00b\nc\td", "100%", "%27", "${tenant}", "\U0001F600" * 50,
            "x" * 20_000]


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_clickhouse_decodes_the_encoded_value_to_the_exact_text(seeded, payload):
    assert re.fullmatch(r"[A-Za-z0-9\-_.~%]*", percentencode(payload))
    sql = expand("SELECT decodeURLComponent('${v:percentencode}')", time_from=START, time_to=END,
                 variables={"v": payload})
    assert seeded.client.query(sql).result_rows == [(payload,)]
    sql, parameters = expand_bound("SELECT decodeURLComponent('${v:percentencode}')", time_from=START, time_to=END,
                                   variables={"v": payload})
    assert payload not in sql and seeded.client.query(sql, parameters=parameters).result_rows == [(payload,)]


def _empty(rows: list) -> bool:
    return all(value in (0, None) or not isinstance(value, Number) for row in rows for value in row) if rows else True


def test_a_tenant_without_data_sees_nothing_in_any_panel(seeded):
    start, end = data_time_range(seeded)
    for dashboard in DASHBOARDS:
        variables = default_variables(seeded, dashboard, "nosuchtenant")
        for result in run_dashboard(seeded, dashboard, time_from=start, time_to=end + timedelta(days=2),
                                    variables=variables):
            assert _empty(result.rows), f"{dashboard.uid} / {result.panel.title}: {result.rows[:3]}"


def test_what_grafana_sends_and_what_the_cli_binds_give_the_same_rows(seeded):
    start, end = data_time_range(seeded)
    for dashboard in DASHBOARDS:
        variables = default_variables(seeded, dashboard, "tenant-2")
        kwargs = {"time_from": start, "time_to": end + timedelta(days=2), "variables": variables}
        grafana = run_dashboard(seeded, dashboard, as_grafana=True, **kwargs)
        bound = run_dashboard(seeded, dashboard, **kwargs)
        assert [r.rows for r in grafana] == [r.rows for r in bound], dashboard.uid
        assert any(r.rows for r in grafana), dashboard.uid
