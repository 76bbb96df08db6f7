"""deploy/clickhouse/grafana-reader.sql: the read-only Grafana users see their own tenant only.

On chDB (what runs here): every statement parses; every table and view of a migrated database
has a row policy (the list comes from system.tables, so a new table without one fails); and
ClickHouse's row-policy code, given those USING expressions, lets a reader see only its
tenant's rows in every table and view and in every dashboard panel (tests/deploy/
chdb_reader_probe.py says why that takes a users file).  On a real server
(THREADLINE_CLICKHOUSE_URL) the file is applied as is, a reader is created the way
deploy/clickhouse/reader-users.sh creates compose's, and logs in."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from pipeline.analytics.dashboards import DASHBOARDS
from pipeline.analytics.panels import run_dashboard
from pipeline.analytics.seed import load_records, seed_records

ROOT = Path(__file__).resolve().parents[2]
READER_SQL = ROOT / "deploy" / "clickhouse" / "grafana-reader.sql"
PROBE = Path(__file__).with_name("chdb_reader_probe.py")
ROLE = "threadline_tenant_reader"
TENANT_RULE = "startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8)"
KEY_RULE = "startsWith(currentUser(), 'reader_') AND key = substring(currentUser(), 8)"
_POLICY = re.compile(r"CREATE ROW POLICY IF NOT EXISTS (\w+) ON threadline\.(\w+) FOR SELECT\s+USING (.+) TO (\w+)",
                     re.DOTALL)


def statements(sql: str | None = None) -> list[str]:
    sql = READER_SQL.read_text() if sql is None else sql
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [" ".join(part.split()) for part in text.split(";") if part.strip()]


def reader_policies() -> dict[str, str]:
    """table -> USING expression, for the reader role."""
    found: dict[str, str] = {}
    for statement in statements():
        if statement.startswith("CREATE ROW POLICY"):
            match = _POLICY.fullmatch(statement)
            assert match, f"not in the expected form: {statement}"
            _, table, using, role = match.groups()
            assert role == ROLE and table not in found, statement
            found[table] = using
    return found


def missing_policies(store) -> set[str]:
    tables = {row[0] for row in store.query("SELECT name FROM system.tables WHERE database = {db:String}",
                                            parameters={"db": store.database}).result_rows}
    return tables - set(reader_policies())


def test_reader_sql_parses_and_grants_nothing_but_select_through_the_role(clickhouse_factory):
    store = clickhouse_factory()
    kinds = set()
    for statement in statements():
        # formatQuery runs ClickHouse's parser; chDB may not execute access statements (see the probe).
        store.query("SELECT formatQuery({s:String})", parameters={"s": statement})
        kinds.add(" ".join(statement.split()[:2]))
        if statement.startswith("GRANT"):
            assert statement == f"GRANT SELECT ON threadline.* TO {ROLE}", statement
    # No user: any password shipped here would be public (issue 13). deploy/clickhouse/reader-users.sh
    # creates compose's reader from GRAFANA_READER_PASSWORD (tests/deploy/test_reader_users.py).
    assert kinds == {"CREATE ROLE", "GRANT SELECT", "CREATE ROW"}
    assert "IDENTIFIED" not in " ".join(statements())
    with pytest.raises(Exception, match="SYNTAX_ERROR|Syntax error"):  # the check above can fail
        store.query("SELECT formatQuery({s:String})", parameters={"s": "CREATE ROW POLICY p ON t USNG 1"})


def test_every_table_and_view_has_a_tenant_policy(clickhouse_factory):
    store = clickhouse_factory()
    assert missing_policies(store) == set(), "add a row policy to deploy/clickhouse/grafana-reader.sql"
    tables = {row[0] for row in store.query("SELECT name FROM system.tables WHERE database = {db:String}",
                                            parameters={"db": store.database}).result_rows}
    assert set(reader_policies()) == tables, "policies for tables that do not exist"
    columns: dict[str, set[str]] = {}
    for table, column in store.query("SELECT table, name FROM system.columns WHERE database = {db:String}",
                                     parameters={"db": store.database}).result_rows:
        columns.setdefault(table, set()).add(column)
    for table, using in reader_policies().items():
        if "tenant" in columns[table]:
            assert using == TENANT_RULE, table
        elif "key" in columns[table]:
            assert using == KEY_RULE, table
        else:
            assert using == "0", table
    assert {"mail_correlated", "conversions", "campaigns", "deadletter", "campaign_daily_mv"} <= tables
    # A table added by a future migration without a policy is reported.
    store.client.command(f"CREATE TABLE {store.database}.extra (tenant String) ENGINE = MergeTree ORDER BY tenant")
    assert missing_policies(store) == {"extra"}


def test_row_policies_hold_a_reader_to_its_tenant_on_chdb(tmp_path):
    reader = "reader_tenant-1"
    policies = reader_policies()
    assert all("currentUser()" in using for table, using in policies.items() if table != "schema_migrations")
    spec = {
        # chDB's one user is `default`: the reader's name stands where currentUser() would give it.
        "filters": {t: using.replace("currentUser()", f"'{reader}'") for t, using in policies.items()},
        "verbatim": policies,
        "reader_tenant": "tenant-1", "other_tenant": "tenant-2",
    }
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, str(PROBE), str(tmp_path), str(spec_file)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(result.stdout)

    for table, counts in data["seeded"].items():
        if table != "schema_migrations":  # both tenants in every table, or the check says nothing
            assert counts.get("tenant-1") and counts.get("tenant-2"), (table, counts)
    assert set(data["reader"]) == set(policies)
    for table, counts in data["reader"].items():
        if table == "schema_migrations":
            assert counts == {}, table
        else:
            assert set(counts) == {"tenant-1"} and counts["tenant-1"] > 0, (table, counts)
    assert data["unfiltered_tenants"] == ["tenant-1"]  # a query without any tenant filter
    # Verbatim, currentUser() is `default`, which is not a reader: nothing anywhere.
    assert {table: counts for table, counts in data["stranger"].items() if counts} == {}
    # Every panel: the other tenant looks like a tenant without data, the own tenant as without policies.
    assert data["panels"]["tenant-2"] == data["panels"]["nosuchtenant"]
    assert data["panels"]["tenant-1"] == data["panels_without_policies"]
    assert sum(bool(rows) for rows in data["panels"]["tenant-1"].values()) >= 12


def _renamed(records, names: dict[str, str]):
    for topic, record in records:
        record = dict(record)
        if "tenant" in record:
            record["tenant"] = names[record["tenant"]]
        if topic == "deadletter" and record.get("key") is not None:
            record["key"] = names[record["key"].decode()].encode()
        yield topic, record


@pytest.mark.skipif(not os.environ.get("THREADLINE_CLICKHOUSE_URL"),
                    reason="needs a real ClickHouse server: set THREADLINE_CLICKHOUSE_URL to an admin that may create "
                           "users, roles and row policies (chDB cannot log in as another user)")
def test_reader_logs_in_and_sees_only_its_tenant_on_a_real_server():
    import clickhouse_connect

    from pipeline.settings import Settings
    from pipeline.sinks.clickhouse import ClickHouseStore
    from test_reader_users import run_reader_users

    url = os.environ["THREADLINE_CLICKHOUSE_URL"]
    suffix = uuid.uuid4().hex[:8]
    database, role = f"threadline_rp_{suffix}", f"{ROLE}_{suffix}"
    own, other = f"rp{suffix}-a", f"rp{suffix}-b"
    user, password = f"reader_{own}", secrets.token_urlsafe(32)
    settings = Settings()
    admin = ClickHouseStore(settings.clickhouse.model_copy(update={"database": database}))
    sql = READER_SQL.read_text().replace("threadline.", f"{database}.").replace(ROLE, role)
    # The reader as compose creates it: reader-users.sh's statements (a sha256_hash of the password),
    # for this test's own user, role and random password.
    with tempfile.TemporaryDirectory() as scratch:
        created = run_reader_users(Path(scratch), password)
    assert created.returncode == 0, created.output
    user_sql = created.sql.replace("reader_default", f"`{user}`").replace(ROLE, role)
    try:
        admin.migrate()
        load_records(admin, _renamed(seed_records(settings, tenants=2, mails_per_tenant=200, campaigns=2,
                                                  recipients=60), {"tenant-1": own, "tenant-2": other}))
        for statement in statements(sql) + statements(user_sql):
            admin.client.command(statement)
        policies = admin.query("SELECT table FROM system.row_policies WHERE database = {db:String}",
                               parameters={"db": database}).result_rows
        assert sorted(row[0] for row in policies) == sorted(reader_policies())

        parts = urlsplit(url)
        reader = clickhouse_connect.get_client(host=parts.hostname, port=parts.port, username=user, password=password,
                                               secure=parts.scheme == "https", database=database)
        assert reader.query("SELECT currentUser()").result_rows[0][0] == user
        for table, using in reader_policies().items():
            column = "tenant" if using == TENANT_RULE else "ifNull(key, '')" if using == KEY_RULE else None
            if column is None:
                assert reader.query(f"SELECT count() FROM {database}.{table}").result_rows[0][0] == 0, table
                continue
            seen = dict(reader.query(f"SELECT {column}, count() FROM {database}.{table} GROUP BY 1").result_rows)
            assert set(seen) <= {own}, (table, seen)
        assert reader.query(f"SELECT DISTINCT tenant FROM {database}.mail_correlated").result_rows == [(own,)]

        store = SimpleNamespace(database=database, client=reader)
        start, end = datetime(2025, 12, 1, tzinfo=timezone.utc), datetime(2026, 3, 1, tzinfo=timezone.utc)

        def panels(tenant: str) -> dict:
            out = {}
            for dashboard in DASHBOARDS:
                variables = {v.name: ("All" if v.include_all else v.default) for v in dashboard.variables}
                variables["tenant"] = tenant
                for result in run_dashboard(store, dashboard, time_from=start, time_to=end + timedelta(days=2),
                                            variables=variables, as_grafana=True):
                    out[(dashboard.uid, result.panel.title)] = result.rows
            return out

        empty = panels("nosuchtenant")
        assert panels(other) == empty
        assert panels("' OR '1'='1") == empty and panels("\\' OR 1=1 --") == empty
        assert sum(bool(rows) for rows in panels(own).values()) >= 10
        with pytest.raises(Exception):  # readonly = 1: no writes, no changed settings
            reader.command(f"INSERT INTO {database}.campaigns (event_id, tenant) VALUES ('x', '{other}')")
    finally:
        for table in reader_policies():
            admin.client.command(f"DROP ROW POLICY IF EXISTS tenant_reader ON {database}.{table}")
        admin.client.command(f"DROP USER IF EXISTS `{user}`")
        admin.client.command(f"DROP ROLE IF EXISTS {role}")
        admin.client.command(f"DROP DATABASE IF EXISTS {database}")
        admin.close()
