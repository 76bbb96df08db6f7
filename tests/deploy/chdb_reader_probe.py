"""Run by tests/deploy/test_reader_policies.py in a process of its own: chDB takes one data
folder and one configuration per process, and the test process already holds its own.

chDB cannot run the reader SQL itself (its only user, `default`, may not CREATE USER, ROLE or
ROW POLICY, and with access management switched on in a users file it has no writable access
storage), nor log in as another user.  What it can do is apply row policies given in a users
file to `default`, with ClickHouse's own row-policy code.  So:

1. migrate and seed two tenants with the normal configuration, count rows per tenant;
2. reopen the same folder with a users file in which `default` carries, on every table and
   view, the USING expression of the reader SQL with ``currentUser()`` replaced by the reader's
   name (``filters``): count what is visible, and run every dashboard panel as Grafana sends it;
3. reopen once more with the expressions verbatim, where ``currentUser()`` is ``default``, a name
   without the reader_ prefix: count what is visible.

Usage: python chdb_reader_probe.py FOLDER INPUT.json   (prints one JSON object)
INPUT: {"filters": {table: expr}, "verbatim": {table: expr}, "reader_tenant": "...", "other_tenant": "..."}
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from xml.sax.saxutils import escape

import clickhouse_connect

from pipeline.analytics.dashboards import DASHBOARDS
from pipeline.analytics.panels import run_dashboard
from pipeline.analytics.seed import load_records, seed_records
from pipeline.settings import ClickHouseSettings, Settings
from pipeline.sinks.clickhouse import ClickHouseStore

DATABASE = "threadline"
SEED = {"tenants": 2, "mails_per_tenant": 150, "campaigns": 2, "recipients": 60}


def _extra_records(tenant: str) -> list[tuple[str, dict]]:
    # The seed writes no alerts, CRM entities or corrections, and escalations and SLA events only
    # after hours of traffic: one each, so every policy is tried on rows.
    now = datetime(2026, 1, 6, tzinfo=timezone.utc)
    return [
        ("alerts", {"event_id": f"a-{tenant}", "tenant": tenant, "event_type": "assigned", "user": "u@x.test",
                    "event_time": now, "source_record_id": "r1", "assigned_on": None, "record_owner": None,
                    "message": "m"}),
        ("crm.entities", {"event_id": f"c-{tenant}", "tenant": tenant, "entity_type": "contact", "entity_id": "c1",
                          "name": "n", "email": "c@x.test", "company_id": None, "owner": None, "status": None,
                          "assigned_on": None, "updated_at": now, "deleted": False}),
        ("corrections", {"event_id": f"k-{tenant}", "tenant": tenant, "action": "UNLINK", "message_id": "<m@x.test>",
                         "other_message_id": None, "author": "u@x.test", "reason": "", "created_at": now}),
        ("escalations", {"event_id": f"e-{tenant}", "tenant": tenant, "message_id": "<m@x.test>",
                         "conversation_id": "c", "state": "WARNED", "previous_state": "OPEN", "policy": "default",
                         "event_time": now, "owner": None, "mailbox": None, "regarding": None}),
        ("sla.events", {"event_id": f"s-{tenant}", "tenant": tenant, "conversation_id": "c", "message_id": "<m@x.test>",
                        "target": "first_response", "outcome": "started", "cycle": 1, "policy": "default",
                        "team": None, "owner": None, "mailbox": None, "regarding": None, "started_at": now,
                        "due_at": now, "event_time": now, "business_seconds": 0.0, "on_time": False}),
    ]


def _tables(client) -> dict[str, set[str]]:
    rows = client.query("SELECT table, name FROM system.columns WHERE database = {db:String}",
                        parameters={"db": DATABASE}).result_rows
    names = {row[0] for row in client.query("SELECT name FROM system.tables WHERE database = {db:String}",
                                            parameters={"db": DATABASE}).result_rows}
    columns: dict[str, set[str]] = {name: set() for name in names}
    for table, column in rows:
        columns.setdefault(table, set()).add(column)
    return columns


def _tenant_column(columns: set[str]) -> str | None:
    if "tenant" in columns:
        return "tenant"
    if "key" in columns:
        return "ifNull(key, '')"  # dead letters: the Kafka key is the tenant
    return None


def _counts(client) -> dict[str, dict[str, int]]:
    """table -> {tenant: rows} (tenant "*" for tables without one)."""
    counts = {}
    for table, columns in sorted(_tables(client).items()):
        column = _tenant_column(columns)
        if column is None:
            rows = [("*", client.query(f"SELECT count() FROM {DATABASE}.`{table}`").result_rows[0][0])]
        else:
            rows = client.query(f"SELECT {column}, count() FROM {DATABASE}.`{table}` GROUP BY 1").result_rows
        counts[table] = {str(tenant): int(n) for tenant, n in rows if n}
    return counts


def _open(folder: Path, filters: dict[str, str] | None, name: str = ""):
    if filters is None:
        return clickhouse_connect.get_client(interface="chdb", path=str(folder / "clickhouse"), tz_mode="aware")
    policies = "".join(f"<{table}><filter>{escape(expr)}</filter></{table}>" for table, expr in filters.items())
    users = folder / f"users-{name}.xml"
    users.write_text(f"""<clickhouse>
  <users><default>
    <password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota>
    <databases><{DATABASE}>{policies}</{DATABASE}></databases>
  </default></users>
  <profiles><default/></profiles>
  <quotas><default/></quotas>
</clickhouse>
""")
    config = users.with_suffix(".config.xml")
    config.write_text(f"<clickhouse><user_directories><users_xml><path>{escape(str(users))}</path></users_xml>"
                      "</user_directories></clickhouse>\n")
    return clickhouse_connect.get_client(interface="chdb", path=str(folder / "clickhouse"), tz_mode="aware",
                                         chdb_options={"config-file": str(config)})


def _panels(client, tenant: str, time_from: datetime, time_to: datetime) -> dict[str, list]:
    store = SimpleNamespace(database=DATABASE, client=client)  # what run_dashboard uses of a store
    out = {}
    for dashboard in DASHBOARDS:
        variables = {v.name: ("All" if v.include_all else v.default) for v in dashboard.variables}
        variables["tenant"] = tenant
        for result in run_dashboard(store, dashboard, time_from=time_from, time_to=time_to, variables=variables,
                                    as_grafana=True):
            out[f"{dashboard.uid} / {result.panel.title}"] = [[str(v) for v in row] for row in result.rows]
    return out


def main(folder: Path, spec: dict) -> dict:
    settings = Settings()
    store = ClickHouseStore(ClickHouseSettings(database=DATABASE), folder / "clickhouse")
    store.migrate()
    load_records(store, seed_records(settings, **SEED))
    load_records(store, iter([r for t in ("tenant-1", "tenant-2") for r in _extra_records(t)]))
    seeded = _counts(store.client)
    time_from = datetime(2025, 12, 1, tzinfo=timezone.utc)
    time_to = datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(days=2)
    unfiltered_panels = _panels(store.client, spec["reader_tenant"], time_from, time_to)
    store.close()

    reader = _open(folder, spec["filters"], "reader")
    as_reader = _counts(reader)
    panels = {tenant: _panels(reader, tenant, time_from, time_to)
              for tenant in (spec["reader_tenant"], spec["other_tenant"], "nosuchtenant")}
    # A query with no tenant filter at all: the policies alone decide what comes back.
    unfiltered = sorted(row[0] for row in reader.query(
        f"SELECT DISTINCT tenant FROM {DATABASE}.mail_correlated_latest").result_rows)
    reader.close()

    stranger = _open(folder, spec["verbatim"], "stranger")
    as_stranger = _counts(stranger)
    stranger.close()
    return {"seeded": seeded, "reader": as_reader, "stranger": as_stranger, "panels": panels,
            "panels_without_policies": unfiltered_panels, "unfiltered_tenants": unfiltered}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()))))
