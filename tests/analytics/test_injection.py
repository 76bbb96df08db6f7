"""Injection payloads in every dashboard variable and every CLI filter never reach another
tenant's rows.

The seeded store holds tenant-1 and tenant-2.  Each payload goes into each variable of each
panel (and of the variable queries), through the expansion Grafana does and through the bound
form our commands use.  With the tenant set to one that has no data, every panel must look
exactly as it does for such a tenant (anything more is someone else's rows); with tenant-1
selected, a payload in another variable must give what a value matching nothing gives.  The
real CLI (``main()`` in this process, on the same chDB) gets the payloads in every filter it has:
``report --tenant``, ``campaign list --tenant``, ``escalations --tenant/--owner/--state`` and
``sql --param``."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from pipeline.analytics.dashboards import DASHBOARDS
from pipeline.analytics.panels import data_time_range, run_dashboard

PAYLOADS = [
    "' OR '1'='1",
    "nosuchtenant' OR '1'='1",
    "\\' OR 1=1 --",
    "\\\\' OR 1=1 --",
    "0 HOUR OR 1=1 OR m.event_time < now() - INTERVAL 0",  # what once returned another tenant's mail
    "0 HOUR OR 1=1",
    "1) OR (1=1",
    "x' /* a comment */ OR ''='",
    "x' -- a comment",
    "x'; SELECT * FROM system.tables; --",
    "\u2019 OR \u20181\u2019=\u20191",  # typographic quotes
    "tenant-1' OR tenant = 'tenant-2",
    "%27 OR 1=1 --",  # already percent-encoded
    "${tenant}",
    "\x00' OR 1=1",
    "All' OR '1'='1",
    "x" * 100_000 + "' OR '1'='1",  # very long
]
NOBODY = "nosuchtenant"
NEUTRAL = {"responder": "nobody", "campaign": "nothing", "target": "nothing", "unanswered_hours": "0",
           "due_within_hours": "0"}  # match nothing / parse to 0


def _run(store, dashboard, variables, as_grafana):
    start, end = data_time_range(store)
    return [r.rows for r in run_dashboard(store, dashboard, time_from=start, time_to=end + timedelta(days=2),
                                          variables=variables, as_grafana=as_grafana)]


def _run_or_refused(store, dashboard, variables, as_grafana):
    """Rows per panel, or "refused" when ClickHouse refuses the query as too long: a clean error
    (a 100,000-character value, percent-encoded three times its size, in several places of the
    text Grafana sends is over max_query_size).  Any other error, such as the syntax error of a
    literal broken open, fails the test."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    try:
        return _run(store, dashboard, variables, as_grafana)
    except DatabaseError as exc:
        assert "Max query size exceeded" in str(exc), str(exc)[:500]
        return "refused"


def _defaults(dashboard, tenant: str) -> dict[str, str]:
    values = {v.name: ("All" if v.include_all else v.default) for v in dashboard.variables}
    values["tenant"] = tenant
    return values


@pytest.fixture(scope="module")
def baselines(seeded):
    """Rows per panel for a tenant without data, and for tenant-1 with each variable neutral."""
    empty = {d.uid: _run(seeded, d, _defaults(d, NOBODY), True) for d in DASHBOARDS}
    neutral = {(d.uid, name): _run(seeded, d, {**_defaults(d, "tenant-1"), name: value}, True)
               for d in DASHBOARDS for name, value in NEUTRAL.items() if name in {v.name for v in d.variables}}
    assert any(rows for rows in empty["threadline-response-times"])  # counts of 0 are rows too
    return empty, neutral


# What Grafana sends gets every payload; the bound form (the values are not in the SQL text at
# all) a few, to keep the suite's time down.
CASES = [(p, True) for p in PAYLOADS] + [(p, False) for p in (PAYLOADS[0], PAYLOADS[2], PAYLOADS[4], PAYLOADS[-1])]


@pytest.mark.parametrize(("payload", "as_grafana"), CASES,
                         ids=[f"{'grafana' if g else 'bound'}-{PAYLOADS.index(p)}" for p, g in CASES])
def test_payloads_in_every_variable_return_nothing_of_another_tenant(seeded, baselines, payload, as_grafana):
    empty, neutral = baselines
    for dashboard in DASHBOARDS:
        for variable in dashboard.variables:
            # The tenant has no data: whatever comes back beyond that belongs to someone else.
            variables = {**_defaults(dashboard, NOBODY), variable.name: payload}
            got = _run_or_refused(seeded, dashboard, variables, as_grafana)
            assert got in (empty[dashboard.uid], "refused"), (dashboard.uid, variable.name)
            if variable.name in NEUTRAL:
                variables = {**_defaults(dashboard, "tenant-1"), variable.name: payload}
                got = _run_or_refused(seeded, dashboard, variables, as_grafana)
                assert got in (neutral[(dashboard.uid, variable.name)], "refused"), (dashboard.uid, variable.name)
            if not as_grafana:
                assert got != "refused"  # parameters are not part of the query text


@pytest.mark.parametrize("payload", PAYLOADS[:4] + PAYLOADS[-1:], ids=range(5))
def test_payloads_in_the_tenant_of_variable_queries_list_nothing(seeded, payload):
    from pipeline.analytics.macros import expand, expand_bound
    from pipeline.analytics.panels import in_database

    start, end = data_time_range(seeded)
    for dashboard in DASHBOARDS:
        for variable in dashboard.variables:
            if variable.query and "${tenant" in variable.query:
                sql = in_database(variable.query, seeded.database)
                grafana = expand(sql, time_from=start, time_to=end, variables={"tenant": payload})
                assert seeded.client.query(grafana).result_rows == [], variable.name
                bound, parameters = expand_bound(sql, time_from=start, time_to=end, variables={"tenant": payload})
                assert seeded.client.query(bound, parameters=parameters).result_rows == [], variable.name


def test_the_oracle_sees_a_leak_when_a_variable_is_pasted_in(seeded, baselines):
    # What the macro expansion did before: the value pasted between the quotes of the SQL.
    # Through it, the payloads above leak, and the comparison used above notices.
    from pipeline.analytics.macros import _macros
    from pipeline.analytics.panels import in_database

    empty, _ = baselines
    dashboard = next(d for d in DASHBOARDS if d.uid == "threadline-correlation-quality")
    start, end = data_time_range(seeded)
    leaked = []
    for panel in dashboard.panels:
        sql = panel.sql.replace("decodeURLComponent('${tenant:percentencode}')", "'" + PAYLOADS[1] + "'")
        for variable in dashboard.variables:  # the others as their defaults
            sql = sql.replace(f"${{{variable.name}:percentencode}}", variable.default)
        sql = _macros(in_database(sql, seeded.database), start, end + timedelta(days=2), 86_400)
        leaked.append(seeded.client.query(sql).result_rows)
    assert leaked != empty[dashboard.uid] and all(leaked)


# -- the CLI ---------------------------------------------------------------------------------
CLI_PAYLOADS = [PAYLOADS[0], PAYLOADS[2], PAYLOADS[4], PAYLOADS[9], PAYLOADS[10], PAYLOADS[11], PAYLOADS[-1]]


def _sections(page: str) -> list[str]:
    return re.findall(r"<section\b.*?</section>", page, re.DOTALL)


def test_cli_filters_work_on_the_seeded_store(cli, tmp_path):
    # The filters are real: the same commands with a real tenant do return its rows.
    code, out = cli("escalations")
    assert code == 0 and {line.split("\t")[0] for line in out.splitlines()[1:]} == {"tenant-1", "tenant-2"}
    code, out = cli("escalations", "--tenant", "tenant-1")
    assert code == 0 and {line.split("\t")[0] for line in out.splitlines()[1:]} == {"tenant-1"}
    code, out = cli("campaign", "list", "--tenant", "tenant-1")
    assert code == 0 and len(out.splitlines()) == 4  # header and three campaigns
    code, out = cli("sql", "SELECT count() FROM {db}.mail_correlated WHERE tenant = {t:String}", "--param", "t=tenant-1")
    assert code == 0 and int(out.splitlines()[1]) > 0
    assert cli("sql", "SELECT 1", "--param", "t=x")[0] == 2  # a --param the query does not bind: refused
    assert cli("sql", "SELECT {t:String}", "--param", "no-equals")[0] == 2
    code, _ = cli("report", "--tenant", "tenant-1", "--out", str(tmp_path / "t1.html"))
    assert code == 0 and "no data in this time range" not in "".join(_sections((tmp_path / "t1.html").read_text())[:3])


@pytest.mark.parametrize("payload", CLI_PAYLOADS, ids=range(len(CLI_PAYLOADS)))
def test_payloads_in_cli_filters_return_nothing_of_another_tenant(cli, tmp_path, payload):
    assert cli("report", "--tenant", NOBODY, "--out", str(tmp_path / "empty.html"))[0] == 0
    assert cli("report", "--tenant", payload, "--out", str(tmp_path / "payload.html"))[0] == 0
    sections = _sections((tmp_path / "payload.html").read_text())
    assert len(sections) == sum(len(d.panels) for d in DASHBOARDS)
    assert sections == _sections((tmp_path / "empty.html").read_text())

    code, out = cli("campaign", "list", "--tenant", payload)
    assert code == 0 and len(out.splitlines()) == 1, out[:500]  # the header only
    for filters in (["--tenant", payload], ["--owner", payload], ["--tenant", "tenant-1", "--owner", payload]):
        code, out = cli("escalations", *filters)
        assert code == 0 and len(out.splitlines()) == 1, (filters, out[:500])
    assert cli("escalations", "--state", payload)[0] == 2  # a fixed choice: refused before any query
    code, out = cli("sql", "SELECT count() FROM {db}.mail_correlated WHERE tenant = {t:String}", "--param", f"t={payload}")
    assert code == 0 and out.splitlines()[1] == "0"
