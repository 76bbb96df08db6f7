"""The requests Grafana's ClickHouse data source sends over HTTP, against the embedded store's
HTTP interface, decoded the way its driver decodes them (issue 17).

grafana-clickhouse-datasource (pkg/plugin/driver.go) opens clickhouse-go v2 with the HTTP
protocol and gzip compression; clickhouse-go's HTTP transport (conn_http.go, conn_http_query.go)
POSTs every query as the body to ``/?client_protocol_version=C&database=D&default_format=Native``
(url.Values.Encode: keys sorted), with the user and password as basic auth, ``Accept-Encoding:
gzip`` and its User-Agent, and no Content-Type.  On connect it asks ``SELECT displayName(),
version(), revision(), timezone()`` and decodes the answer at revision C; after that it decodes
at the server's ``revision()``.  Its ping (also the health check) is ``SELECT 1``, whose one
column must be named ``1``.  A Native block (lib/proto/block.go) is the block info when the
revision is above 0, the column and row counts, and per column its name, type, one byte for a
custom serialization from revision 54454, then the data.  Without ``enable_http_compression``
the answer is plain, and clickhouse-go decompresses only what says ``Content-Encoding: gzip``.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import zoneinfo
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver import ctypes as response_buffers
from clickhouse_connect.driver.exceptions import StreamCompleteException

from pipeline.analytics.dashboards import CAMPAIGN_ROI, RESPONSE_TIMES
from pipeline.analytics.macros import expand
from pipeline.analytics.panels import data_time_range, default_variables, panel_sql
from pipeline.sinks.http_interface import HttpInterface

pytestmark = pytest.mark.integration

CLIENT_REVISION = 54460  # sent as client_protocol_version; custom-serialization byte from 54454
HELLO = "SELECT displayName(), version(), revision(), timezone()"
USER_AGENT = "clickhouse-go/2.40.3 (lv:go/1.24.4; os:linux) grafana/11.6.0 clickhouse-datasource/4.10.1"


@pytest.fixture(scope="module")
def server(chdb_path):
    served = HttpInterface(chdb_path).start()
    yield served
    served.stop()


def grafana_post(server, sql: str, database: str) -> tuple[int, dict, bytes]:
    query = urlencode(sorted({"client_protocol_version": str(CLIENT_REVISION), "database": database,
                              "default_format": "Native"}.items()))
    credentials = base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", f"/?{query}", body=sql.encode(), headers={
            "Authorization": f"Basic {credentials}", "User-Agent": USER_AGENT, "Accept-Encoding": "gzip"})
        response = connection.getresponse()
        body = response.read()
        headers = dict(response.getheaders())
    finally:
        connection.close()
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return response.status, headers, body


class _Body:
    """The response body as the byte source clickhouse-connect's response buffer reads."""

    last_message, exception_tag = None, None

    def __init__(self, data: bytes) -> None:
        self.gen = iter([data] if data else [])

    def close(self) -> None:
        pass


def go_decode(body: bytes, revision: int, context) -> tuple[list[str], list[str], list[tuple]]:
    """(names, types, rows) of Native blocks read as clickhouse-go's Block.Decode reads them; the
    column data by clickhouse-connect's readers of each type."""
    source, names, types, columns = response_buffers.RespBuffCls(_Body(body)), [], [], []
    while True:
        try:
            first = source.read_bytes(8) if revision > 0 else None
        except StreamCompleteException:
            break
        if revision > 0:
            assert first == b"\x01\x00\x02\xff\xff\xff\xff\x00"  # is_overflows, bucket_num, end of block info
        try:
            column_count = source.read_leb128()
        except StreamCompleteException:
            assert revision == 0
            break
        row_count = source.read_leb128()
        block = []
        for index in range(column_count):
            name, type_name = source.read_leb128_str(), source.read_leb128_str()
            if revision >= 54454:
                assert source.read_byte() == 0, f"{name}: custom serialization"
            if not columns:
                names.append(name)
                types.append(type_name)
            context.start_column(name)
            block.append(get_from_name(type_name).read_column(source, row_count, context) if row_count else [])
        columns.append(block)
    rows = [row for block in columns for row in zip(*block)]
    return names, types, rows


def connect(server, seeded) -> int:
    """The driver's hello, decoded at the client's revision; returns the server's revision."""
    status, headers, body = grafana_post(server, HELLO, seeded.database)
    assert status == 200 and headers["X-ClickHouse-Format"] == "Native", body
    names, types, rows = go_decode(body, CLIENT_REVISION, seeded.client.create_query_context(query="SELECT 1"))
    assert types == ["String", "String", "UInt32", "String"]
    ((display_name, version, revision, timezone),) = rows
    assert version == server.version and revision >= 54454 and zoneinfo.ZoneInfo(timezone)
    return revision


def test_connect_ping_and_version_as_the_data_source_asks_them(server, seeded):
    revision = connect(server, seeded)
    context = seeded.client.create_query_context(query="SELECT 1")
    status, _, body = grafana_post(server, "SELECT 1", seeded.database)
    assert go_decode(body, revision, context)[0] == ["1"]  # the ping's check
    status, _, body = grafana_post(server, "SELECT version()", seeded.database)
    assert go_decode(body, revision, context)[2] == [(server.version,)]


@pytest.mark.parametrize(("dashboard", "title", "kind"), [
    (RESPONSE_TIMES, "Oldest unanswered mail", "table"),
    (RESPONSE_TIMES, "First response time per owner", "table"),
    (RESPONSE_TIMES, "First responses per day", "timeseries"),
    (CAMPAIGN_ROI, "Campaigns", "table"),
])
def test_a_panels_query_decodes_to_what_chdb_answers_directly(server, seeded, dashboard, title, kind):
    revision = connect(server, seeded)
    panel = next(p for p in dashboard.panels if p.title == title)
    assert panel.kind == kind
    start, end = data_time_range(seeded)
    window = {"time_from": start, "time_to": end + timedelta(days=2),
              "variables": default_variables(seeded, dashboard, "tenant-1")}
    # Grafana sends the panel's SQL (tables unqualified) in the data source's default database
    status, headers, body = grafana_post(server, expand(panel.sql, **window), seeded.database)
    assert status == 200, body
    assert "Content-Encoding" not in headers  # asked with gzip, but without enable_http_compression
    direct = seeded.client.query(panel_sql(panel, database=seeded.database, **window))
    names, types, rows = go_decode(body, revision, seeded.client.create_query_context(query="SELECT 1"))
    assert rows and names == list(direct.column_names)
    assert types == [t.name for t in direct.column_types]
    assert rows == [tuple(row) for row in direct.result_rows]
    if kind == "timeseries":
        assert types[0].startswith("DateTime") and all(row[0] is not None for row in rows)


def test_native_for_every_revision_a_client_may_send(server, seeded):
    sql = ("SELECT number AS n, toString(number) AS s, toLowCardinality(toString(number % 3)) AS lc, "
           "if(number % 2 = 0, NULL, number) AS maybe, [number, 1] AS list, map('k', number) AS dict, "
           "(number, 'x') AS pair, toDecimal64(number / 4, 2) AS money, toLowCardinality(toNullable(toString(number))) "
           "AS lcn, toDateTime64(number, 3, 'UTC') AS at, toFixedString('ab', 2) AS fixed, "
           "CAST((number, 'y'), 'Tuple(a UInt64, `b c` String)') AS named, "
           "map(toString(number % 5), [toNullable('v'), NULL]) AS nested, CAST('b', 'Enum8(\\'a\\' = 1, \\'b\\' = 2)') AS kind, "
           "toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0') AS id, toIPv4('10.0.0.1') AS ip, NULL AS nothing FROM numbers(3000)")
    direct = seeded.client.query(sql).result_rows
    for revision in (0, 54405, 54453, CLIENT_REVISION):
        # blocks of 1,000 rows: the framing is per block
        query = urlencode({"client_protocol_version": revision, "default_format": "Native", "max_block_size": 1000})
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        credentials = base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
        connection.request("POST", f"/?{query}", body=sql.encode(), headers={"Authorization": f"Basic {credentials}"})
        body = connection.getresponse().read()
        connection.close()
        names, _, rows = go_decode(body, revision, seeded.client.create_query_context(query="SELECT 1"))
        assert len(rows) == 3000 and rows == direct, revision
        assert body.count(b"\x01\x00\x02\xff\xff\xff\xff\x00\x11\xe8\x07") == (3 if revision else 0)
    status, headers, body = grafana_post(server, "SELECT CAST(1, 'Dynamic') AS d", seeded.database)
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (501, "48") and b"cast the column" in body


def test_the_embedded_datasource_provisioning_takes_port_and_password_from_the_environment():
    import yaml

    from pipeline.analytics.dashboards import DASHBOARD_DIR
    from pipeline.sinks.http_interface import LOOPBACK, USER

    (source,) = yaml.safe_load((DASHBOARD_DIR / "provisioning/datasources/threadline-embedded.yaml").read_text())[
        "datasources"]
    assert source["type"] == "grafana-clickhouse-datasource" and not source["isDefault"]
    settings = source["jsonData"]
    assert (settings["host"], settings["protocol"], settings["username"]) == (LOOPBACK, "http", USER)
    assert settings["defaultDatabase"] == "threadline" and settings["port"] == "${THREADLINE_EMBEDDED_PORT}"
    assert source["secureJsonData"] == {"password": "${THREADLINE_EMBEDDED_PASSWORD}"}
