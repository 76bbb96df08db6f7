"""The ClickHouse HTTP interface of the embedded store, served by the process that owns chDB.

chDB allows one process per data folder, so while ``threadline up`` holds the store nobody else
can open it.  ``up`` serves it instead: this is the subset of ClickHouse's HTTP interface that
clickhouse-connect's HTTP client and Grafana's ClickHouse data source (clickhouse-go v2 over
HTTP) use, on loopback only, with one user and a password generated per run.

- ``GET /ping`` and ``GET /`` without a query answer ``Ok.``.
- A query comes in the ``query`` URL parameter, the body (POST), or both (joined by a newline,
  as ClickHouse does).  Its format is its own ``FORMAT`` clause, else ``default_format``, else
  TabSeparated; ``database`` selects the database; ``param_NAME`` binds ``{NAME:Type}`` (chDB
  binds them server-side like ClickHouse).  Native for a ``client_protocol_version`` is rewritten
  to that revision's layout (pipeline/sinks/native.py).
- Auth: HTTP basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key`` or ``user``/``password``
  parameters, compared in constant time; a wrong or missing one is ClickHouse's 516
  (AUTHENTICATION_FAILED), HTTP 403 as ClickHouse answers it.
- Read-only: every query runs on a chDB handle of its own with ``readonly = 1``, so INSERT,
  ALTER, DROP, CREATE, changing settings and the table functions that reach files or the network
  fail in chDB itself with ClickHouse's 164 (READONLY). Two things chDB lets through even so are
  refused here with the same code: ``INTO OUTFILE`` (chDB writes the file, as clickhouse-local
  does) and its ``python()`` table function (objects of this process).
  The URL settings a client may give are applied before that, from an allow-list, with the
  execution time and result size capped; a setting outside the list is refused (115,
  UNKNOWN_SETTING, 404) and transport parameters ClickHouse's own clients send are ignored.
- Limits: ``max_execution_time`` (at most :attr:`HttpInterface.max_execution_s`), the result size,
  the body size, the time to send the head and the body, and the number of queries at once.
- Errors: ClickHouse's text (``Code: N. DB::Exception: ... (NAME) (version V)``), the
  ``X-ClickHouse-Exception-Code`` header and the status ClickHouse gives that code.
- Responses carry ``X-ClickHouse-Query-Id``, ``-Format``, ``-Timezone``, ``-Summary`` and
  ``-Server-Display-Name``; gzip or deflate when the client sends ``enable_http_compression=1``
  with a matching ``Accept-Encoding`` (else uncompressed, which every client reads).

chDB handles on one engine work from several threads at once (measured: inserts from one thread
and three threads querying through their own handles for 15 s, no error; a short query answered
in 3 ms during a 0.6 s one), so queries run beside the sink's inserts without a lock.

Nothing here logs a query, a parameter value, a user or a password.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from pipeline.sinks.native import NativeError, for_revision

log = logging.getLogger("threadline.clickhouse_http")
# aiohttp logs a request it cannot parse with the offending line, which may be a credential
# header: its protocol errors (answered 400) go to a logger of their own that stays silent.
_protocol_log = logging.getLogger("threadline.clickhouse_http.protocol")
_protocol_log.setLevel(logging.CRITICAL)

USER = "threadline"
LOOPBACK = "127.0.0.1"
PASSWORD_BYTES = 32  # token_urlsafe: 43 characters

# ClickHouse's error codes of the refusals made here (errorCodeToName(code) in chDB agrees).
AUTHENTICATION_FAILED, READONLY, UNKNOWN_SETTING, BAD_ARGUMENTS, NOT_IMPLEMENTED = 516, 164, 115, 36, 48
QUERY_IS_TOO_LARGE, UNKNOWN_FORMAT, UNSUPPORTED_METHOD, SYNTAX_ERROR = 229, 73, 1, 62
# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp), by error
# name; the names become codes with chDB's errorCodeToName when the server starts. Others are 500.
_STATUS_BY_NAME = {
    401: ("REQUIRED_PASSWORD",),
    403: ("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"),
    400: ("BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
          "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
          "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
          "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
          "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
          "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
          "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"),
    404: ("UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
          "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
          "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"),
    413: ("QUERY_IS_TOO_LARGE",),
    501: ("NOT_IMPLEMENTED",),
    503: ("SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"),
    411: ("HTTP_LENGTH_REQUIRED",),
    408: ("TIMEOUT_EXCEEDED",),
    415: ("UNSUPPORTED_MEDIA_TYPE",),
}

# Parameters ClickHouse's clients send that are not settings of the query: read here or ignored.
_TRANSPORT = {"query", "database", "default_format", "user", "password", "query_id", "session_id", "session_timeout",
              "session_check", "client_protocol_version", "enable_http_compression", "http_zlib_compression_level",
              "wait_end_of_query", "buffer_size", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
              "cancel_http_readonly_queries_on_client_close", "quota_key", "role", "compress", "decompress",
              "add_http_cors_header", "http_native_compression_disable_checksumming_on_decompress"}
# Settings a client may give (as URL parameters): output shape and limits below the server's own.
_ALLOWED_SETTINGS = {"max_execution_time", "max_result_rows", "max_result_bytes", "result_overflow_mode",
                     "max_rows_to_read", "max_bytes_to_read", "read_overflow_mode", "max_block_size", "max_threads",
                     "limit", "offset", "extremes", "join_use_nulls", "date_time_output_format",
                     "date_time_input_format", "session_timezone", "use_client_time_zone", "log_comment",
                     "timeout_overflow_mode", "max_memory_usage", "prefer_column_name_to_alias",
                     "format_csv_delimiter", "format_tsv_null_representation", "format_csv_null_representation"}
# Output shape only: not format_schema, format_template_* or output_format_schema (they name files
# to read or write) nor format_display_secrets_in_show_and_select.
_ALLOWED_PREFIXES = ("output_format_",)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORMAT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9]*)\s*;?\s*$", re.I)
_CODE = re.compile(r"Code: (\d+)\.")
_CONTENT_TYPES = {"TabSeparated": "text/tab-separated-values", "TSV": "text/tab-separated-values",
                  "CSV": "text/csv", "CSVWithNames": "text/csv", "JSON": "application/json",
                  "JSONCompact": "application/json", "JSONEachRow": "application/x-ndjson",
                  "XML": "application/xml", "Markdown": "text/markdown"}
_BINARY_FORMATS = ("Native", "RowBinary", "Parquet", "Arrow", "ArrowStream", "ORC", "Avro", "Protobuf", "MsgPack",
                   "CapnProto", "BSONEachRow", "Npy")


class ClickHouseError(Exception):
    """A query refused or failed: answered as ClickHouse answers it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def from_chdb(cls, exc: Exception) -> "ClickHouseError":
        text = str(exc)
        start = text.find("Code: ")
        text = text[start:] if start >= 0 else text
        match = _CODE.match(text)
        return cls(int(match.group(1)) if match else 1000, text.strip())

    def body(self, version: str, names: dict[int, str]) -> bytes:
        text = str(self)
        if not text.startswith("Code: "):
            text = f"Code: {self.code}. DB::Exception: {text}. ({names.get(self.code, 'UNKNOWN_EXCEPTION')})"
        if "(version " not in text:
            text += f" (version {version})"
        return (text + "\n").encode()


@dataclass(frozen=True)
class Answer:
    body: bytes
    fmt: str
    summary: dict


@dataclass
class HttpInterface:
    """The HTTP interface on ``chdb_path`` (the folder the sink's store has open in this process)."""

    chdb_path: Path
    user: str = USER
    password: str = field(default_factory=lambda: secrets.token_urlsafe(PASSWORD_BYTES), repr=False)
    max_execution_s: float = 30.0
    max_result_bytes: int = 256 * 2**20
    max_body_bytes: int = 2**20
    head_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    concurrency: int = 4

    def __post_init__(self) -> None:
        if len(self.password) < 32:
            raise ValueError("the HTTP interface's password must be at least 32 characters")
        # The engine path as clickhouse-connect normalises it: chDB compares paths literally.
        self._path = os.path.realpath(self.chdb_path)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="clickhouse-http")
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.version, self.timezone, self.display_name = self._run_sync(
            "SELECT version(), timezone(), displayName()", "TabSeparated", {}, None).body.decode().strip().split("\t")
        codes = self._run_sync("SELECT number, errorCodeToName(number) FROM numbers(2000) "
                               "WHERE errorCodeToName(number) != ''", "TabSeparated", {}, None).body.decode()
        self._names = {int(code): name for code, name in (line.split("\t") for line in codes.splitlines())}
        by_name = {name: code for code, name in self._names.items()}
        self._statuses = {by_name[name]: status for status, names in _STATUS_BY_NAME.items()
                          for name in names if name in by_name}

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # ---- queries --------------------------------------------------------------------------------

    def _run_sync(self, query: str, fmt: str, settings: dict[str, str], database: str | None,
                  parameters: dict[str, str] | None = None, revision: int = 0) -> Answer:
        """One query on a handle of its own: settings, then readonly = 1, then the query."""
        import chdb

        began = time.perf_counter()
        connection = chdb.connect(self._path)
        try:
            try:
                for name, value in settings.items():
                    connection.query(f"SET {name} = {_literal(value)}")
                connection.query("SET readonly = 1")
                if database:
                    connection.query(f"USE {_identifier(database)}")
                result = connection.query(query, fmt, params=parameters or {})
            except Exception as exc:  # chDB raises its errors as RuntimeError subclasses with ClickHouse's text
                raise ClickHouseError.from_chdb(exc) from None
            body = result.bytes()
            fmt = _trailing_format(query) or fmt
            if revision and fmt == "Native":
                try:
                    body = for_revision(body, revision)
                except NativeError as exc:
                    raise ClickHouseError(NOT_IMPLEMENTED, str(exc)) from None
            summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                       "written_rows": "0", "written_bytes": "0", "total_rows_to_read": str(result.rows_read()),
                       "result_rows": "0", "result_bytes": str(len(body)),
                       "elapsed_ns": str(int((time.perf_counter() - began) * 1e9))}
            return Answer(body, fmt, summary)
        finally:
            connection.close()

    def _settings(self, params) -> dict[str, str]:
        settings: dict[str, str] = {}
        for name, value in params.items():
            if name in _TRANSPORT or name.startswith("param_"):
                continue
            if name == "readonly":
                if value not in ("1", "2"):
                    raise ClickHouseError(READONLY, "Cannot modify 'readonly' setting in readonly mode")
                continue
            allowed = name in _ALLOWED_SETTINGS or (name.startswith(_ALLOWED_PREFIXES) and "schema" not in name)
            if not _SETTING_NAME.match(name) or not allowed:
                raise ClickHouseError(UNKNOWN_SETTING, f"Setting {name} is not accepted by the embedded store's HTTP "
                                      "interface (read-only; output format and limit settings only)")
            settings[name] = value
        settings["max_execution_time"] = _capped(settings.get("max_execution_time"), self.max_execution_s,
                                                 "max_execution_time")
        settings["max_result_bytes"] = _capped(settings.get("max_result_bytes"), self.max_result_bytes,
                                               "max_result_bytes")
        settings.setdefault("result_overflow_mode", "throw")
        if settings["result_overflow_mode"] != "throw":
            raise ClickHouseError(BAD_ARGUMENTS, "result_overflow_mode must be 'throw' here")
        return settings

    # ---- HTTP -----------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        user, password = None, None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
        elif "X-ClickHouse-User" in request.headers:
            user, password = request.headers["X-ClickHouse-User"], request.headers.get("X-ClickHouse-Key", "")
        elif "user" in request.query:
            user, password = request.query["user"], request.query.get("password", "")
        if user is None:
            return False
        # both compared whole, in constant time (hmac.compare_digest on bytes)
        same_user = hmac.compare_digest(user.encode(), self.user.encode())
        same_password = hmac.compare_digest((password or "").encode(), self.password.encode())
        return same_user and same_password

    def _error(self, error: ClickHouseError, query_id: str) -> web.Response:
        headers = {"X-ClickHouse-Exception-Code": str(error.code), "X-ClickHouse-Query-Id": query_id,
                   "X-ClickHouse-Server-Display-Name": self.display_name, "X-ClickHouse-Timezone": self.timezone}
        status = self._statuses.get(error.code, 500)
        if status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="ClickHouse"'
        return web.Response(status=status, body=error.body(self.version, self._names), headers=headers,
                            content_type="text/plain", charset="utf-8")

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise ClickHouseError(QUERY_IS_TOO_LARGE, f"The request body is larger than {self.max_body_bytes} bytes")
        body = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout_s):  # a client dribbling a body is dropped
                while chunk := await request.content.read(self.max_body_bytes + 1 - len(body)):
                    body += chunk
                    if len(body) > self.max_body_bytes:
                        raise ClickHouseError(QUERY_IS_TOO_LARGE,
                                              f"The request body is larger than {self.max_body_bytes} bytes")
        except TimeoutError:
            raise web.HTTPRequestTimeout(headers={"Connection": "close"}) from None
        return bytes(body)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        params = request.query
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            if request.method not in ("GET", "POST", "HEAD"):
                raise ClickHouseError(UNSUPPORTED_METHOD, f"HTTP method {request.method} is not supported")
            body = await self._read_body(request) if request.method == "POST" else b""
            if "query" not in params and not body:
                return web.Response(text="Ok.\n")  # what ClickHouse answers to GET /
            if not self._authorised(request):
                raise ClickHouseError(AUTHENTICATION_FAILED, "Authentication failed: password is "
                                      "incorrect, or there is no user with such name")
            if request.headers.get("Content-Encoding", "identity") not in ("identity", ""):
                # Clients compress the data of an INSERT, never a query: refused as any write is.
                raise ClickHouseError(READONLY, "Cannot execute query in readonly mode: the embedded store's HTTP "
                                      "interface is read-only and takes no data (a compressed request body)")
            if request.content_type.startswith("multipart/"):
                raise ClickHouseError(NOT_IMPLEMENTED, "external data (multipart requests) is not supported here")
            if params.get("compress") == "1" or params.get("decompress") == "1":
                raise ClickHouseError(NOT_IMPLEMENTED, "ClickHouse block compression (compress=1) is not supported "
                                      "here: use HTTP compression (enable_http_compression=1, Accept-Encoding: gzip)")
            try:
                text = "\n".join(part for part in (params.get("query", ""), body.decode("utf-8")) if part)
            except UnicodeDecodeError:
                raise ClickHouseError(SYNTAX_ERROR, "the query is not UTF-8") from None
            if (reason := _forbidden(text)) is not None:
                raise ClickHouseError(READONLY, f"Cannot execute query in readonly mode: {reason}")
            fmt = params.get("default_format", "TabSeparated")
            if not _FORMAT_NAME.match(fmt):
                raise ClickHouseError(UNKNOWN_FORMAT, f"Unknown format {fmt}")
            revision = _revision(params.get("client_protocol_version", "0"))
            settings = self._settings(params)
            parameters = {name[6:]: value for name, value in params.items() if name.startswith("param_")}
            answer = await self._answer(text, fmt, settings, params.get("database"), parameters, revision)
        except ClickHouseError as error:
            log.info("query %s refused or failed: code %d", query_id, error.code)
            return self._error(error, query_id)
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug here: answered, never with the query or its values in the log
            log.error("query %s: internal error %s", query_id, type(exc).__name__)
            return self._error(ClickHouseError(1001, "internal error of the embedded store's HTTP interface"),
                               query_id)
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Format": answer.fmt,
                   "X-ClickHouse-Timezone": settings.get("session_timezone") or self.timezone,
                   "X-ClickHouse-Server-Display-Name": self.display_name,
                   "X-ClickHouse-Summary": json.dumps(answer.summary, separators=(",", ":"))}
        body = answer.body
        encoding = _encoding(request) if params.get("enable_http_compression") == "1" else None
        if encoding == "gzip":
            compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
            body = compressor.compress(body) + compressor.flush()
        elif encoding == "deflate":
            body = zlib.compress(body)
        if encoding:
            headers["Content-Encoding"] = encoding
        content_type = ("application/octet-stream" if answer.fmt.startswith(_BINARY_FORMATS)
                        else _CONTENT_TYPES.get(answer.fmt, "text/plain"))
        return web.Response(body=body, headers={**headers, "Content-Type": content_type
                                                + ("" if content_type == "application/octet-stream" else "; charset=UTF-8")})

    async def _answer(self, text: str, fmt: str, settings: dict[str, str], database: str | None,
                      parameters: dict[str, str], revision: int) -> Answer:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._run_sync, text, fmt, settings, database, parameters, revision)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("GET", "/ping", self._ping)
        app.router.add_route("*", "/", self._handle)
        return app

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "HttpInterface":
        """Bind a free loopback port and serve from a background thread; returns once it listens."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, 0))
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            self._slots = asyncio.Semaphore(self.concurrency)
            # keepalive_timeout bounds the wait for a complete request head (and idle keep-alive),
            # lingering_time the read of an unread body after a response (as tracking_http does).
            self._runner = web.AppRunner(self._app(), access_log=None, keepalive_timeout=self.head_timeout_s,
                                         lingering_time=self.head_timeout_s, handle_signals=False, logger=_protocol_log)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="clickhouse-http", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the ClickHouse HTTP interface did not start within 10 s")
        log.info("ClickHouse HTTP interface on %s", self.url)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        loop, self._loop = self._loop, None

        async def shutdown() -> None:
            await self._runner.cleanup()

        try:  # a query still running holds its handler until chDB's time limit ends it
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(self.max_execution_s + 5)
        except TimeoutError:
            log.warning("the ClickHouse HTTP interface did not stop within %.0f s", self.max_execution_s + 5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _capped(value: str | None, cap: float, name: str) -> str:
    if value is None or value == "":
        return _number(cap)
    try:
        number = float(value)
    except ValueError:
        raise ClickHouseError(BAD_ARGUMENTS, f"{name} must be a number") from None
    if number <= 0 or number > cap:  # 0 means no limit in ClickHouse
        return _number(cap)
    return _number(number)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _revision(value: str) -> int:
    try:
        revision = int(value)
    except ValueError:
        raise ClickHouseError(BAD_ARGUMENTS, "client_protocol_version must be a number") from None
    if revision < 0:
        raise ClickHouseError(BAD_ARGUMENTS, "client_protocol_version must not be negative")
    return revision


def _literal(value: str) -> str:
    """A setting's value as a ClickHouse string literal (ClickHouse converts it to the setting's type)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# What readonly = 1 lets through in chDB but a client of the served store must not do: write a
# file of this machine (INTO OUTFILE, which chDB runs in-process like clickhouse-local) or read
# objects of this process (chDB's python() table function). Found on the query's words outside
# string literals, quoted names and comments, as ClickHouse's lexer sees them.
_LEXEMES = re.compile(r"""
    '(?:[^'\\]|\\.|'')*'            # string literal
  | `(?:[^`\\]|\\.|``)*`            # quoted name
  | "(?:[^"\\]|\\.|"")*"            # quoted name
  | \$(?P<tag>\w*)\$.*?\$(?P=tag)\$    # heredoc string
  | --[^\n]*|\#[^\n]*                 # line comments
  | /\*.*?\*/                         # block comment
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | \S
""", re.S | re.X)


def _forbidden(query: str) -> str | None:
    """Why the query may not run here, or None."""
    tokens = []  # (kind, text): words and quoted names lower-cased, comments left out
    for match in _LEXEMES.finditer(query):
        text = match.group(0)
        if match.group("word"):
            tokens.append(("word", text.lower()))
        elif text[0] in "`\"":
            tokens.append(("name", text[1:-1].lower()))
        elif not text.startswith(("--", "#", "/*")):
            tokens.append(("other", text))
    for (kind, text), (_, following) in zip(tokens, tokens[1:]):
        if kind == "word" and (text, following) == ("into", "outfile"):
            return "INTO OUTFILE would write a file on the machine that serves the store"
        if kind in ("word", "name") and (text, following) == ("python", "("):
            return "the python() table function would read objects of the process that serves the store"
    return None


def _trailing_format(query: str) -> str | None:
    match = _TRAILING_FORMAT.search(query)
    return match.group(1) if match else None


def _encoding(request: web.Request) -> str | None:
    accepted = {part.split(";")[0].strip().lower() for part in request.headers.get("Accept-Encoding", "").split(",")}
    return next((name for name in ("gzip", "deflate") if name in accepted), None)


def serve(chdb_path: Path) -> HttpInterface:
    """Serve the embedded store in ``chdb_path`` on a free loopback port with a new password."""
    return HttpInterface(chdb_path).start()
