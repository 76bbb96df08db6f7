"""Run the dashboards' panel SQL against a store, outside Grafana (report, tests, benchmark)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from numbers import Number

from pipeline.analytics.dashboards import Dashboard, Panel
from pipeline.analytics.macros import expand, expand_bound
from pipeline.sinks.clickhouse import ClickHouseStore

DASHBOARD_DATABASE = "threadline"


@dataclass(frozen=True)
class PanelResult:
    panel: Panel
    columns: tuple[str, ...]
    rows: list[tuple]

    def numeric_columns(self) -> list[int]:
        """Indexes of the columns after the first that hold numbers in every row (none without rows)."""
        return [i for i in range(1, len(self.columns)) if self.rows
                and all(isinstance(row[i], Number) and not isinstance(row[i], bool) for row in self.rows)]


def _in_database(sql: str, database: str) -> str:
    # Before expansion, so that a variable value that happens to hold "threadline." is left alone.
    return sql.replace(f"{DASHBOARD_DATABASE}.", f"{database}.")


def panel_sql(panel: Panel, *, database: str, time_from: datetime, time_to: datetime,
              variables: dict[str, str]) -> str:
    """The SQL Grafana sends for this panel (values percent-encoded into the text)."""
    return expand(_in_database(panel.sql, database), time_from=time_from, time_to=time_to, variables=variables)


def panel_query(sql: str, *, database: str, time_from: datetime, time_to: datetime,
                variables: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Panel or variable SQL with the variables as server-side parameters: (sql, parameters)."""
    return expand_bound(_in_database(sql, database), time_from=time_from, time_to=time_to, variables=variables)


def data_time_range(store: ClickHouseStore) -> tuple[datetime, datetime]:
    """The span of the stored mail and tracking events (a whole-history time range)."""
    row = store.query(
        "SELECT min(t), max(t) FROM (SELECT event_time AS t FROM {db}.mail_correlated "
        "UNION ALL SELECT event_time AS t FROM {db}.tracking_events)").result_rows[0]
    if row[0] is None or row[0].year < 1971:
        now = datetime.now(timezone.utc)
        return now.replace(year=now.year - 1), now
    return row[0], row[1]


def default_variables(store: ClickHouseStore, dashboard: Dashboard, tenant: str | None = None) -> dict[str, str]:
    values: dict[str, str] = {}
    for variable in dashboard.variables:
        if variable.name == "tenant":
            if tenant is None:
                tenants = store.query("SELECT DISTINCT tenant FROM {db}.mail_correlated ORDER BY tenant").result_rows
                tenant = tenants[0][0] if tenants else "default"
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
