"""`threadline sql` on the embedded store: ClickHouse's own bytes in the query's FORMAT or --format,
values bound (--param, --tenant), never pasted into the text."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.cli.main import main


@pytest.fixture
def sql(clickhouse_factory, chdb_path, tmp_path, monkeypatch, capsysbinary):
    """sql(*argv) -> (exit code, stdout bytes, stderr text) of `threadline sql ...` on a fresh database
    holding two tenants' rows."""
    store = clickhouse_factory()
    store.client.command(f"CREATE TABLE {store.database}.t (tenant String, n UInt32) ENGINE = Memory")
    store.insert("t", [["acme", 1], ["acme", 2], ["globex", 40]], ["tenant", "n"])
    for name in [n for n in os.environ if n.startswith("THREADLINE_")]:
        monkeypatch.delenv(name)
    settings = tmp_path / "threadline.toml"
    settings.write_text(f'[worker]\ndata_dir = "{chdb_path.parent}"\n[clickhouse]\ndatabase = "{store.database}"\n')
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, bytes, str]:
        capsysbinary.readouterr()
        code = main(["--settings", str(settings), "sql", *argv])
        captured = capsysbinary.readouterr()
        return code, captured.out, captured.err.decode()
    return run


def test_the_format_the_query_names_is_clickhouses_own_output(sql):
    code, out, err = sql("SELECT tenant, sum(n) AS total FROM {db}.t GROUP BY tenant ORDER BY tenant FORMAT PrettyCompact")
    assert (code, err) == (0, "")
    lines = out.decode().splitlines()
    assert lines[0].startswith("   ┌─tenant─┬─total─┐") and "│ acme   │     3 │" in lines[1]
    code, out, _ = sql("select n from {db}.t order by n format JSONEachRow;")  # any case, a trailing semicolon
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == [{"n": 1}, {"n": 2}, {"n": 40}]


def test_format_option_and_the_default_tab_separated_with_names(sql):
    code, out, _ = sql("SELECT tenant, n FROM {db}.t ORDER BY n", "--format", "CSVWithNames")
    assert code == 0 and out == b'"tenant","n"\n"acme",1\n"acme",2\n"globex",40\n'
    code, out, _ = sql("SELECT tenant, n FROM {db}.t ORDER BY n LIMIT 1")
    assert code == 0 and out == b"tenant\tn\nacme\t1\n"


def test_two_formats_or_an_unknown_one_are_a_one_line_error(sql):
    code, out, err = sql("SELECT 1 FORMAT CSV", "--format", "JSON")
    assert (code, out) == (2, b"") and err == ("threadline: the query ends in 'FORMAT CSV' and --format JSON names "
                                               "another: give one\n")
    code, out, err = sql("SELECT 1", "--format", "NoSuchFormat")
    assert code == 2 and out == b"" and "Unknown format NoSuchFormat" in err and len(err.splitlines()) == 1


def test_tenant_binds_the_tenant_parameter_and_a_payload_stays_a_value(sql):
    query = "SELECT count() AS rows, sum(n) AS total FROM {db}.t WHERE tenant = {tenant:String}"
    assert sql(query, "--tenant", "globex")[1] == b"rows\ttotal\n1\t40\n"
    assert sql(query, "--param", "tenant=acme")[1] == b"rows\ttotal\n2\t3\n"
    assert sql(query, "--tenant", "acme' OR '1'='1")[1] == b"rows\ttotal\n0\t0\n"
    code, _, err = sql("SELECT count() FROM {db}.t", "--tenant", "acme")
    assert code == 2 and err == "threadline: --tenant is not used as {tenant:Type} in the query\n"
    code, _, err = sql(query, "--tenant", "acme", "--param", "tenant=globex")
    assert code == 2 and "give one of them" in err
