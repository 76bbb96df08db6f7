"""The embedded store's ClickHouse HTTP interface, with clickhouse-connect's own HTTP client and
with urllib: queries, parameters, formats, auth, read-only, limits, errors (issue 17)."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import replace
from datetime import datetime, timezone

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from pipeline.running import RunningStack
from pipeline.settings import ClickHouseSettings
from pipeline.sinks.clickhouse import ClickHouseStore
from pipeline.sinks.http_interface import HttpInterface

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(chdb_path):
    served = HttpInterface(chdb_path, max_execution_s=2.0, max_body_bytes=64 * 1024).start()
    yield served
    served.stop()


@pytest.fixture
def client(server):
    http = clickhouse_connect.get_client(host="127.0.0.1", port=server.port, username=server.user,
                                         password=server.password, tz_mode="aware")
    yield http
    http.close()


@pytest.fixture
def store(clickhouse_factory):
    """A migrated store on the session's chDB with a few rows of mail_responses."""
    direct = clickhouse_factory()
    direct.client.command(direct.sql("CREATE TABLE {db}.notes (id UInt32, text String, at DateTime64(3, 'UTC')) "
                                     "ENGINE = MergeTree ORDER BY id"))
    direct.client.command(direct.sql("INSERT INTO {db}.notes VALUES (1, 'it''s', '2026-01-02 03:04:05.678'), "
                                     "(2, 'back\\\\slash', '2026-01-03 00:00:00'), (3, 'tab\there', '2026-01-04 00:00:00')"))
    return direct


def request(server, query: str | None = None, *, body: bytes | None = None, auth: bool = True,
            headers: dict | None = None, path: str = "/", **params):
    """(status, headers, body) of one request, HTTP errors included."""
    if query is not None:
        params["query"] = query
    url = f"{server.url}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    headers = dict(headers or {})
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_clickhouse_connect_queries_with_parameters_and_data_frames(client, store):
    rows = client.query(f"SELECT id, text, at FROM {store.database}.notes WHERE text = {{t:String}} OR id > {{n:UInt32}} "
                        "ORDER BY id", parameters={"t": "it's", "n": 2}).result_rows
    assert rows == [tuple(row) for row in store.query("SELECT id, text, at FROM {db}.notes WHERE id IN (1, 3) "
                                                      "ORDER BY id").result_rows]
    assert [row[1] for row in rows] == ["it's", "tab\there"]
    frame = client.query_df(f"SELECT id, text FROM {store.database}.notes ORDER BY id")
    assert frame["text"].tolist() == ["it's", "back\\slash", "tab\there"]
    table = client.query_arrow(f"SELECT id, text FROM {store.database}.notes ORDER BY id")
    assert table.column("id").to_pylist() == [1, 2, 3]
    with pytest.raises(DatabaseError, match="Code: 164"):
        client.insert(f"{store.database}.notes", [[7, "x", datetime.now(timezone.utc)]], column_names=["id", "text", "at"])
    assert client.server_version == store.client.server_version


def test_raw_query_keeps_the_format_of_the_query_or_the_one_asked(client, server, store):
    sql = "SELECT id, text FROM {db}.notes ORDER BY id"
    assert client.raw_query(store.sql(sql) + " FORMAT JSONEachRow").splitlines()[0] == b'{"id":1,"text":"it\'s"}'
    assert client.raw_query(store.sql(sql), fmt="CSVWithNames") == store.raw_query(sql, fmt="CSVWithNames")


def test_a_store_over_the_served_interface_answers_as_the_direct_one(server, store):
    served = ClickHouseStore(ClickHouseSettings(database=store.database), served=RunningStack(
        pid=1, bootstrap="", embedded_broker=True, clickhouse_url=server.url, clickhouse_user=server.user,
        clickhouse_password=server.password))
    assert served.served and served.migrate() == [] and server.url in served.location
    assert server.password not in served.location
    sql = "SELECT id, text, at FROM {db}.notes ORDER BY id"
    for fmt in (None, "TSVWithNames", "JSONCompactEachRow", "Native"):
        assert served.raw_query(sql, fmt=fmt) == store.raw_query(sql, fmt=fmt), fmt
    pretty = sql + " FORMAT PrettyCompactMonoBlock"
    assert served.raw_query(pretty) == store.raw_query(pretty)
    assert served.query(sql).result_rows == store.query(sql).result_rows
    assert served.query("SELECT text FROM {db}.notes WHERE id = {id:UInt32}", {"id": 2}).result_rows == [("back\\slash",)]


def test_wrong_or_missing_credentials_are_refused_like_clickhouse(server):
    with pytest.raises(DatabaseError) as refused:
        clickhouse_connect.get_client(host="127.0.0.1", port=server.port, username=server.user, password="wrong" * 8)
    assert "Code: 516" in str(refused.value) and "AUTHENTICATION_FAILED" in str(refused.value)
    for kwargs in ({"auth": False}, {"auth": False, "user": server.user, "password": server.password[:-1]},
                   {"auth": False, "headers": {"X-ClickHouse-User": "default", "X-ClickHouse-Key": server.password}}):
        status, headers, body = request(server, "SELECT 1", **kwargs)
        # ClickHouse answers 516 with 403 (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp)
        assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "516"), body
        assert body.startswith(b"Code: 516. DB::Exception: Authentication failed") and server.password.encode() not in body
    for kwargs in ({"auth": False, "user": server.user, "password": server.password},
                   {"auth": False, "headers": {"X-ClickHouse-User": server.user, "X-ClickHouse-Key": server.password}}):
        assert request(server, "SELECT 1", **kwargs)[::2] == (200, b"1\n")


def test_each_run_has_its_own_long_password_kept_out_of_repr(chdb_path):
    first, second = HttpInterface(chdb_path), HttpInterface(chdb_path)
    assert len(first.password) >= 32 and first.password != second.password
    assert first.password not in repr(first)
    with pytest.raises(ValueError):
        HttpInterface(chdb_path, password="short")


def test_unknown_table_and_syntax_errors_carry_clickhouse_text_code_and_status(client, server, store):
    with pytest.raises(DatabaseError) as unknown:
        client.query(f"SELECT * FROM {store.database}.no_such_table")
    assert "Code: 60" in str(unknown.value) and "UNKNOWN_TABLE" in str(unknown.value)
    assert f"{store.database}.no_such_table" in str(unknown.value)
    status, headers, body = request(server, f"SELECT * FROM {store.database}.no_such_table")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "60")
    assert body.startswith(b"Code: 60. DB::Exception: ") and body.rstrip().endswith(b")") and b"(version " in body
    status, headers, body = request(server, "SELEC 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62") and b"SYNTAX_ERROR" in body


@pytest.mark.parametrize("statement", [
    "INSERT INTO {db}.notes VALUES (9, 'x', now())", "ALTER TABLE {db}.notes DELETE WHERE 1",
    "DROP TABLE {db}.notes", "CREATE TABLE {db}.other (a UInt8) ENGINE = Memory", "TRUNCATE TABLE {db}.notes",
    "SET max_execution_time = 1000", "SELECT 1 SETTINGS max_execution_time = 1000", "SYSTEM DROP MARK CACHE"])
def test_clients_cannot_write_or_lift_limits(client, store, statement):
    with pytest.raises(DatabaseError) as refused:
        client.command(store.sql(statement))
    assert "Code: 164" in str(refused.value) and "READONLY" in str(refused.value)
    assert store.query("SELECT count() FROM {db}.notes").result_rows == [(3,)]


def test_no_file_written_and_no_object_of_the_process_read(server, tmp_path):
    """What readonly = 1 alone lets through in chDB: INTO OUTFILE (chDB writes it in-process, as
    clickhouse-local does) and the python() table function (objects of the serving process)."""
    target = tmp_path / "written.csv"
    for statement in (f"SELECT 1 INTO OUTFILE '{target}' FORMAT CSV", f"select 1 into /* */ outfile '{target}'",
                      "SELECT * FROM python(settings)", 'SELECT * FROM "Python"(parameters)'):
        status, headers, body = request(server, statement)
        assert headers["X-ClickHouse-Exception-Code"] == "164" and b"(READONLY)" in body, body
    assert not target.exists()
    assert request(server, "SELECT 'into outfile', 1 AS python -- INTO OUTFILE 'x'")[::2] == (200, b"into outfile\t1\n")


def test_a_long_query_is_stopped_at_the_servers_limit(client, server):
    began = time.monotonic()
    with pytest.raises(DatabaseError) as stopped:
        client.query("SELECT count() FROM numbers(100000000000) WHERE NOT ignore(sipHash64(number))")
    assert "Code: 159" in str(stopped.value) and "TIMEOUT_EXCEEDED" in str(stopped.value)
    assert time.monotonic() - began < server.max_execution_s + 3
    # a longer limit asked in the URL is capped; a shorter one holds
    status, headers, body = request(server, "SELECT getSetting('max_execution_time')", max_execution_time="3600")
    assert body.strip() == b"2"
    assert request(server, "SELECT getSetting('max_execution_time')", max_execution_time="1")[2].strip() == b"1"
    status, headers, body = request(server, "SELECT sleepEachRow(0.1) FROM numbers(100)", max_execution_time="0.5",
                                    max_block_size="1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (408, "159")


def test_ping_root_headers_formats_and_settings(server, store):
    assert request(server, path="/ping", auth=False)[::2] == (200, b"Ok.\n")
    assert request(server, auth=False)[::2] == (200, b"Ok.\n")
    status, headers, body = request(server, "SELECT id FROM notes ORDER BY id", database=store.database,
                                    default_format="JSONEachRow", query_id="q-1")
    assert (status, body) == (200, b'{"id":1}\n{"id":2}\n{"id":3}\n')
    assert headers["X-ClickHouse-Query-Id"] == "q-1" and headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert headers["X-ClickHouse-Timezone"] == server.timezone
    summary = json.loads(headers["X-ClickHouse-Summary"])
    assert summary["read_rows"] == "3" and int(summary["elapsed_ns"]) > 0
    # the query in the URL and its rest in the body, as ClickHouse joins them; its FORMAT wins
    status, headers, body = request(server, "SELECT count()", body=b"FROM numbers(10) FORMAT CSV",
                                    default_format="JSON")
    assert (status, body, headers["X-ClickHouse-Format"]) == (200, b"10\n", "CSV")
    assert headers["Content-Type"].startswith("text/csv")
    # parameter values are in ClickHouse's escaped form, as clickhouse-connect and clickhouse-go send them
    assert request(server, "SELECT {x:String} FORMAT RawBLOB", param_x="a'b\\\\c\\tz")[2] == b"a'b\\c\tz"
    assert request(server, "SELECT toString({x:Array(UInt8)})", param_x="[1,2]")[2] == b"[1,2]\n"
    status, headers, body = request(server, "SELECT 1", output_format_json_quote_64bit_integers="1",
                                    readonly="1", send_progress_in_http_headers="1", wait_end_of_query="1")
    assert status == 200, body
    status, headers, body = request(server, "SELECT timezone(), toDateTime(0)", session_timezone="Europe/Berlin")
    assert (body, headers["X-ClickHouse-Timezone"]) == (b"Europe/Berlin\t1970-01-01 01:00:00\n", "Europe/Berlin")
    for name, value in (("allow_ddl", "1"), ("format_display_secrets_in_show_and_select", "1"),
                        ("format_template_row", "/etc/passwd"), ("format_schema", "x:y"),
                        ("output_format_schema", "/tmp/written.proto")):
        status, headers, body = request(server, "SELECT 1", **{name: value})
        assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "115") and name.encode() in body
    assert request(server, "SELECT 'a', 'b' FORMAT CSV", format_csv_delimiter=";")[2] == b'"a";"b"\n'
    assert request(server, "SELECT 1", readonly="0")[1]["X-ClickHouse-Exception-Code"] == "164"


def test_compression_when_asked_and_plain_otherwise(server):
    sql = "SELECT number FROM numbers(1000) FORMAT TSV"
    status, headers, body = request(server, sql, enable_http_compression="1", headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == request(server, sql)[2]
    status, headers, body = request(server, sql, enable_http_compression="1", headers={"Accept-Encoding": "zstd"})
    assert "Content-Encoding" not in headers and body.startswith(b"0\n1\n")
    status, headers, body = request(server, sql, compress="1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (501, "48")


def test_bad_requests_get_clear_errors_and_the_server_stays_up(server):
    status, headers, body = request(server, body=b"SELECT '" + b"x" * (65 * 1024) + b"'")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (413, "229")
    status, headers, body = request(server, body=b"SELECT '\xff\xfe'")
    assert status == 400 and b"UTF-8" in body
    status, headers, body = request(server, "SELECT 1", default_format="No Such")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "73")
    status, headers, body = request(server, "SELECT 1", client_protocol_version="x")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "36")
    status, headers, body = request(server, "SELECT 1", headers={"Content-Encoding": "gzip"}, body=b"\x1f\x8b")
    assert headers["X-ClickHouse-Exception-Code"] == "164" and b"takes no data" in body
    status, headers, body = request(server, "SELECT 1", database="no`such")
    assert headers["X-ClickHouse-Exception-Code"] == "81"
    req = urllib.request.Request(f"{server.url}/?query=SELECT%201", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 500 and refused.value.headers["X-ClickHouse-Exception-Code"] == "1"
    assert request(server, "SELECT 42")[::2] == (200, b"42\n")


def test_queries_beside_inserts_and_nothing_secret_logged(server, store, caplog):
    secret_value = f"secret-{uuid.uuid4().hex}"
    errors, counts = [], []
    stop = time.monotonic() + 3

    def read() -> None:
        while time.monotonic() < stop:
            status, _, body = request(server, f"SELECT count() FROM {store.database}.notes WHERE text != {{v:String}}",
                                      param_v=secret_value)
            (errors if status != 200 else counts).append(body)

    readers = [threading.Thread(target=read) for _ in range(3)]
    with caplog.at_level(logging.DEBUG):
        for reader in readers:
            reader.start()
        inserted = 0
        while time.monotonic() < stop:
            store.insert("notes", [[100 + inserted, "more", datetime.now(timezone.utc)]], ["id", "text", "at"])
            inserted += 1
        for reader in readers:
            reader.join()
        request(server, "SELECT * FROM no_such_table WHERE x = {v:String}", param_v=secret_value)
    assert not errors and counts and inserted
    seen = [int(body) for body in counts]
    assert min(seen) >= 3 and max(seen) <= 3 + inserted
    assert secret_value not in caplog.text and server.password not in caplog.text and "no_such_table" not in caplog.text


def test_doctor_checks_the_store_a_running_up_serves(server):
    from pipeline.broker import free_port
    from pipeline.doctor import check_clickhouse
    from pipeline.settings import Settings

    settings = Settings()
    stack = RunningStack(pid=os.getpid(), bootstrap="127.0.0.1:9092", embedded_broker=True, clickhouse_url=server.url,
                         clickhouse_user=server.user, clickhouse_password=server.password)
    (served,) = check_clickhouse(settings, stack)
    assert served.ok and f"the store threadline up (pid {os.getpid()}) serves answers at {server.url}" in served.detail
    (refused,) = check_clickhouse(settings, replace(stack, clickhouse_password="not-the-password-" * 3))
    assert not refused.ok and "516" in refused.detail and "start it again" in refused.fix
    (gone,) = check_clickhouse(settings, replace(stack, clickhouse_url=f"http://127.0.0.1:{free_port()}"))
    assert not gone.ok and server.password not in gone.format() and "does not answer" in gone.detail


def test_slow_clients_are_dropped_and_long_bodies_read_whole(chdb_path):
    import socket

    impatient = HttpInterface(chdb_path, head_timeout_s=1.0, body_timeout_s=1.0).start()
    try:
        credentials = base64.b64encode(f"{impatient.user}:{impatient.password}".encode())
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as head_only:
            head_only.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            assert head_only.recv(100) == b""  # closed
        with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as dribbling:
            dribbling.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nAuthorization: Basic "
                              + credentials + b"\r\n\r\nSELECT")  # 6 of 100 bytes
            assert dribbling.recv(100).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - began < 6
        # a body of many network reads (200 KB, under the 256 KiB of ClickHouse's max_query_size)
        long_query = "SELECT length('" + "x" * 200_000 + "')"
        assert request(impatient, body=long_query.encode())[::2] == (200, b"200000\n")
    finally:
        impatient.stop()


def test_garbage_on_the_wire_is_answered_and_the_server_stays_up(server, caplog):
    import socket

    credential = base64.b64encode(f"{server.user}:{server.password}".encode())
    with caplog.at_level(logging.DEBUG):
        for garbage in (b"\x00\xff\x16\x03\x01 hello\r\n\r\n", b"GET /?query=%ZZ HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic !!!\r\n\r\n",
                        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + credential + b"\x01\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
                connection.sendall(garbage)
                answer = connection.recv(200)
                assert answer == b"" or answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 400 ")), answer
    assert credential.decode() not in caplog.text and server.password not in caplog.text
    status, headers, body = request(server, "SELECT 1", auth=False, headers={"Authorization": "Basic !!!"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "516")
    assert request(server, "SELECT 7")[::2] == (200, b"7\n")
