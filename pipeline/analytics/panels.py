"""Run the dashboards' panel SQL against a store, outside Grafana (report, tests, benchmark)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from numbers import Number

from pipeline.analytics.dashboards import DEFAULT_TENANT, TENANTS_BY_MAIL, Dashboard, Panel
from pipeline.analytics.macros import expand, expand_bound
from pipeline.sinks.clickhouse import ClickHouseStore, migrations


@dataclass(frozen=True)
class PanelResult:
    panel: Panel
    columns: tuple[str, ...]
    rows: list[tuple]

    def numeric_columns(self) -> list[int]:
        """Indexes of the columns after the first that hold numbers in every row (none without rows)."""
        return [i for i in range(1, len(self.columns)) if self.rows
                and all(isinstance(row[i], Number) and not isinstance(row[i], bool) for row in self.rows)]


@cache
def store_tables() -> frozenset[str]:
    """The tables and views the migrations create (what panel SQL reads, unqualified)."""
    created = re.compile(r"CREATE (?:TABLE|VIEW|MATERIALIZED VIEW) IF NOT EXISTS \{db\}\.(\w+)")
    return frozenset(name for _, _, sql in migrations() for name in created.findall(sql))


@cache
def _table_reads() -> re.Pattern:
    names = "|".join(sorted(store_tables(), key=len, reverse=True))
    return re.compile(rf"\b(FROM|JOIN)(\s+)({names})\b(?![.(])")


def in_database(sql: str, database: str) -> str:
    """Panel SQL with the store's tables qualified by ``database``, as the data source's default
    database resolves them in Grafana.  Before expansion, so no variable value is touched."""
    return _table_reads().sub(lambda m: f"{m.group(1)}{m.group(2)}{database}.{m.group(3)}", sql)


def panel_sql(panel: Panel, *, database: str, time_from: datetime, time_to: datetime,
              variables: dict[str, str]) -> str:
    """The SQL Grafana sends for this panel (values percent-encoded into the text), run in ``database``."""
    return expand(in_database(panel.sql, database), time_from=time_from, time_to=time_to, variables=variables)


def panel_query(sql: str, *, database: str, time_from: datetime, time_to: datetime,
                variables: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Panel or variable SQL with the variables as server-side parameters: (sql, parameters)."""
    return expand_bound(in_database(sql, database), time_from=time_from, time_to=time_to, variables=variables)


def data_time_range(store: ClickHouseStore) -> tuple[datetime, datetime]:
    """The span of the stored mail and tracking events (a whole-history time range)."""
    row = store.query(
        "SELECT min(t), max(t) FROM (SELECT event_time AS t FROM {db}.mail_correlated "
        "UNION ALL SELECT event_time AS t FROM {db}.tracking_events)").result_rows[0]
    if row[0] is None or row[0].year < 1971:
        now = datetime.now(timezone.utc)
        return now.replace(year=now.year - 1), now
    return row[0], row[1]


def tenants_by_mail(store: ClickHouseStore, time_from: datetime, time_to: datetime) -> list[tuple[str, int]]:
    """(tenant, mails in the time range) of every tenant with mail, the most mail first (the
    order of the dashboards' tenant variable)."""
    sql, parameters = panel_query(TENANTS_BY_MAIL, database=store.database, time_from=time_from, time_to=time_to,
                                  variables={})
    return [(tenant, mails) for tenant, mails in store.client.query(sql, parameters=parameters).result_rows]


def default_variables(store: ClickHouseStore, dashboard: Dashboard, tenant: str | None = None, *,
                      time_from: datetime | None = None, time_to: datetime | None = None) -> dict[str, str]:
    """Every variable's default; without ``tenant``, the tenant with the most mail in the time
    range (the whole history without one), as Grafana selects it."""
    values: dict[str, str] = {}
    for variable in dashboard.variables:
        if variable.name == "tenant":
            if tenant is None:
                if time_from is None or time_to is None:
                    time_from, time_to = data_time_range(store)
                tenants = tenants_by_mail(store, time_from, time_to)
                tenant = tenants[0][0] if tenants else DEFAULT_TENANT
            values["tenant"] = tenant
        else:
            values[variable.name] = "All" if variable.include_all else variable.default
    return values


def run_dashboard(store: ClickHouseStore, dashboard: Dashboard, *, time_from: datetime, time_to: datetime,
                  variables: dict[str, str], as_grafana: bool = False) -> list[PanelResult]:
    """Every panel's rows.  Values go as server-side parameters; ``as_grafana`` runs the text
    Grafana would send instead (the tests compare both)."""
    results = []
    for panel in dashboard.panels:
        if as_grafana:
            sql = panel_sql(panel, database=store.database, time_from=time_from, time_to=time_to, variables=variables)
            parameters = None
        else:
            sql, parameters = panel_query(panel.sql, database=store.database, time_from=time_from, time_to=time_to,
                                          variables=variables)
        result = store.client.query(sql, parameters=parameters)
        results.append(PanelResult(panel, tuple(result.column_names), list(result.result_rows)))
    return results
