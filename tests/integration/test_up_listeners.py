"""Issue 13, "safe by default": a running `threadline up` and every process it starts listen on
loopback only, and no worker serves Faust's web pages (table contents without authentication).

One `up` run (module-scoped fixture) serves every test in this module, so further checks of the
same run (e.g. that no configured secret shows up in any output or log) are added as test
functions here instead of paying for another `up`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from secrets_check import leaks, secret_settings_toml  # tests/integration/secrets_check.py

pytestmark = pytest.mark.integration

READY_LINE = "running (new mail on mail.raw"  # printed by `up` once every mail is handled and sunk

# The settings file of the `up` run. Checks that need configured values (secrets to look for in
# the outputs, say) add them here; keep it something `up` accepts on the embedded broker.
SETTINGS_TOML = """
[worker]
batch_window_s = 0.1
"""
# Every secret setting with a fresh value, for test_no_secret_in_any_output_log_or_command_line
# (it adds [tracking], [kafka], [relay], [notifications], ... tables: give other values of those
# sections there too, a table may appear once).
SECRETS_TOML, SECRETS = secret_settings_toml()
SETTINGS_TOML += SECRETS_TOML


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str  # the command line, for messages
    proto: str    # tcp, tcp6, udp, udp6
    address: str
    port: int

    @property
    def loopback(self) -> bool:
        address = ipaddress.ip_address(self.address)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address.is_loopback


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, by parent pid; children started in their own
    session (the broker, the workers) are still children."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # comm may hold spaces and parentheses: the fields after its last ')' are fixed
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += [child for child, parent in parents.items() if parent == pid]
    return tree


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    except OSError:
        pass
    return inodes


def _address(hex_address: str) -> str:
    # /proc/net/tcp{,6} print addresses as 32-bit words in host byte order (little-endian here)
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def listeners(pids: list[int]) -> list[Listener]:
    """Every listening TCP socket and every unconnected bound UDP socket of these processes,
    read from /proc (each process's network namespace table, matched by socket inode)."""
    found = []
    for pid in pids:
        inodes = _socket_inodes(pid)
        if not inodes:
            continue
        try:
            process = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        for proto in ("tcp", "tcp6", "udp", "udp6"):
            try:
                lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if inode not in inodes:
                    continue
                remote_port = int(remote.rsplit(":", 1)[1], 16)
                # TCP: state 0A is LISTEN. UDP: a socket with no peer receives from anyone.
                if (proto.startswith("tcp") and state == "0A") or (proto.startswith("udp") and remote_port == 0):
                    address, port = local.rsplit(":", 1)
                    found.append(Listener(pid, process, proto, _address(address), int(port, 16)))
    return found


def test_worker_web_port_opens_faust_web_on_loopback_only(sandbox):
    """The opt-in: worker.web_port opens Faust's pages on 127.0.0.1:PORT and nowhere else.
    (First in the module: it does not need the `up` run below, which would run meanwhile.)"""
    from pipeline.broker import free_port

    port = free_port()
    worker = sandbox.start_worker(settings_file=sandbox.settings_file(extra=f"web_port = {port}"))
    deadline = time.monotonic() + 90
    while not (found := listeners(descendants(worker.process.pid))):
        assert worker.alive, worker.log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "the worker opened no web port within 90 s"
        time.sleep(0.5)
    assert [(l.proto, l.address, l.port) for l in found] == [("tcp", "127.0.0.1", port)]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/router/", timeout=10) as response:
        # Faust's router map (empty until partitions are assigned): the page is really served
        assert response.status == 200 and isinstance(json.loads(response.read()), dict)
    worker.stop()


@dataclass
class UpRun:
    """A `threadline up` running in ``root``; stdout/stderr and every log it names are files."""

    process: subprocess.Popen
    root: Path
    settings_file: Path
    stdout_path: Path
    stderr_path: Path
    seen_pids: set[int] = field(default_factory=set)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def log_paths(self) -> list[Path]:
        """The broker's, the tracking endpoint's and every worker's log."""
        return [self.data_dir / "broker.log", self.data_dir / "tracking.log",
                *sorted((self.data_dir / "workers").glob("*.log"))]

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stop(self) -> int:
        """Stop `up` (SIGTERM: it stops what it started); idempotent. Checks that need the
        complete outputs call this first, so tests of the running processes go first."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@pytest.fixture(scope="module")
def up_run(tmp_path_factory):
    """`threadline up` on the embedded defaults (its own broker) with a 20-mail mailbox, kept
    running (not --exit-when-done) until the module's tests are done. Shared on purpose: add
    further assertions on this run (its outputs, its logs, its processes) as separate tests
    here rather than starting another `up`."""
    from pipeline.up import write_sample_mbox

    root = tmp_path_factory.mktemp("up_listeners")
    settings_file = root / "threadline.toml"
    settings_file.write_text(SETTINGS_TOML)
    mailbox = write_sample_mbox(root / "small.mbox", count=20)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("THREADLINE_", "FAUST_", "F_"))}
    env["PYTHONUNBUFFERED"] = "1"  # stdout is a file: see the ready line as soon as it is printed
    stdout_path, stderr_path = root / "up.stdout", root / "up.stderr"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--settings", str(settings_file), "up", str(mailbox),
             "--direction", "in", "--no-progress"],
            cwd=root, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    run = UpRun(process, root, settings_file, stdout_path, stderr_path)
    try:
        deadline = time.monotonic() + 240
        while READY_LINE not in run.stdout():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"up is not running (exit code {process.poll()}):\n{run.stdout()[-3000:]}\n"
                            f"{stderr_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield run
    finally:
        run.seen_pids.update(descendants(process.pid) if process.poll() is None else ())
        run.stop()
        for pid in run.seen_pids - {process.pid}:  # a child `up` failed to stop; ours, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_everything_up_starts_listens_on_loopback_only(up_run):
    pids = descendants(up_run.process.pid)
    up_run.seen_pids.update(pids)
    found = listeners(pids)
    by_kind = {kind: [l for l in found if kind in l.process] for kind in ("tansu", "pipeline.streams.app", "tracking")}
    # The scan must see the children's sockets: the broker and the tracking endpoint listen.
    assert any(l.proto.startswith("tcp") for l in by_kind["tansu"]), found
    assert any(l.proto.startswith("tcp") for l in by_kind["tracking"]), found
    workers = [pid for pid in pids if "pipeline.streams.app" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()]
    assert len(workers) == 1, pids
    assert [l for l in found if not l.loopback] == [], found
    # Faust's web server is off: a worker needs no listening socket at all.
    assert by_kind["pipeline.streams.app"] == [], found


def test_no_process_of_up_serves_faust_web_pages(up_run):
    pids = descendants(up_run.process.pid)
    http_ports = {l.port for l in listeners(pids) if l.proto.startswith("tcp") and "tansu" not in l.process}
    assert http_ports  # the tracking endpoint, at least
    for port in http_ports:
        for path in ("/router/", "/table/correlation-index/default/"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:
                assert exc.code == 404, (port, path, exc.code)
            else:
                pytest.fail(f"port {port} answered {path}: {body[:200]!r}")


def test_doctor_in_another_shell_reports_the_running_stack_green(up_run):
    """Issue 17: doing what the demo says (activate the venv, its `export THREADLINE_KAFKA_BOOTSTRAP=...`
    line, then `threadline doctor` in another process) gives a green doctor on the embedded broker, and so
    does the doctor without the export (it reads the running stack from the data folder). The
    outputs are kept in the run's folder, where the secrets check below searches them too."""
    export = re.search(r"^  export THREADLINE_KAFKA_BOOTSTRAP=(\S+)$", up_run.stdout(), re.MULTILINE)
    assert export, up_run.stdout()[-3000:]
    if sys.prefix != sys.base_prefix:  # run from a venv, as `make demo` does: the hint says how to activate it
        activate = Path(sys.prefix) / "bin" / "activate"
        assert re.search(rf"^  \. {re.escape(str(activate))} +# puts threadline on PATH", up_run.stdout(), re.MULTILINE)
    bootstrap = export.group(1)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("THREADLINE_", "FAUST_", "F_"))}
    for name, extra in (("doctor-exported", {"THREADLINE_KAFKA_BOOTSTRAP": bootstrap}), ("doctor", {})):
        result = subprocess.run([sys.executable, "-m", "pipeline.cli", "--settings", str(up_run.settings_file),
                                 "doctor"], cwd=up_run.root, env={**env, **extra}, capture_output=True, text=True,
                                timeout=120)
        (up_run.root / f"{name}.out").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, (name, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        assert [line for line in lines if not line.startswith("[ok  ]")][-1].endswith(" ok, 0 to fix"), result.stdout
        assert any(line.startswith(f"[ok  ] threadline up: running on data (pid {up_run.process.pid}): "
                                   f"embedded broker {bootstrap}, tracking endpoint ") for line in lines), result.stdout
        assert f"[ok  ] broker: the embedded broker of threadline up at {bootstrap} answers" in result.stdout
        assert "[ok  ] tracking endpoint: http://127.0.0.1:" in result.stdout and "status ok" in result.stdout
        assert "[ok  ] topics: all " in result.stdout
        assert "[ok  ] schema registry: threadline up serves http://127.0.0.1:" in result.stdout


def test_the_published_schema_registry_is_up_on_loopback_with_the_ids_the_records_carry(up_run):
    """The Schema Registry endpoint `up` serves in its own process: named in stack.json, among
    up's loopback listeners, and every record on mail.correlated names an id it serves as that
    topic's released schema."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from pipeline.contracts.avro import EmbeddedRegistry, canonical
    from pipeline.running import running_stack
    from pipeline.settings import KafkaSettings
    from pipeline.streams.reader import read_topic

    stack = running_stack(up_run.data_dir)
    assert stack is not None and stack.schema_registry_url, "stack.json names no schema registry"
    port = int(stack.schema_registry_url.rsplit(":", 1)[1])
    assert [(l.address, l.port) for l in listeners([up_run.process.pid]) if l.port == port] == [("127.0.0.1", port)]
    assert stack.schema_registry_url in up_run.stdout()  # the hint names it
    client = SchemaRegistryClient({"url": stack.schema_registry_url})
    ids = {value[1:5] for _, _, _, value in read_topic(KafkaSettings(), stack.bootstrap, "mail.correlated")}
    assert ids, "no records to check"
    released = EmbeddedRegistry()
    for schema_id in {int.from_bytes(raw, "big") for raw in ids}:
        assert canonical(client.get_schema(schema_id).schema_str) == canonical(released.schema_for_id(schema_id))
        assert [(v.subject, v.version) for v in client.get_schema_versions(schema_id)][0][0] == "mail.correlated-value"


def cli(up_run, *args: str) -> subprocess.CompletedProcess:
    """A `threadline` command in another shell: same folder and settings, no THREADLINE_ exports."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("THREADLINE_", "FAUST_", "F_"))}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "--settings", str(up_run.settings_file), *args],
                          cwd=up_run.root, env=env, capture_output=True, text=True, timeout=120)


def test_sql_report_and_escalations_from_another_shell_query_the_store_up_serves(up_run):
    """Issue 17: while `up` holds chDB, commands in a second shell reach its store over the
    ClickHouse HTTP interface it publishes in data/stack.json (mode 0600), read-only."""
    import re

    import clickhouse_connect

    from pipeline.contracts.topics import BY_NAME, SINK_TOPICS

    stack_file = up_run.root / "data" / "stack.json"
    assert stack_file.stat().st_mode & 0o777 == 0o600
    stack = json.loads(stack_file.read_text())
    assert stack["clickhouse_url"].startswith("http://127.0.0.1:") and len(stack["clickhouse_password"]) >= 32
    printed = int(re.search(r"^(\d+) rows in ClickHouse", up_run.stdout(), re.M).group(1))
    mails = re.search(r"^(\d+) mails handled in", up_run.stdout(), re.M).group(1)
    counts = " UNION ALL ".join(f"SELECT count() AS c FROM {{db}}.{BY_NAME[topic].table}" for topic in SINK_TOPICS)
    total = cli(up_run, "sql", f"SELECT sum(c) AS rows FROM ({counts})")
    assert total.returncode == 0, total.stderr
    # the escalation agent's clock may add records after the summary: never fewer rows than printed
    assert total.stdout.splitlines()[0] == "rows" and int(total.stdout.splitlines()[1]) >= printed > 0
    correlated = cli(up_run, "sql", "SELECT uniqExact(message_id) FROM {db}.mail_correlated WHERE generation = {g:UInt32}",
                     "--param", "g=0")
    assert correlated.returncode == 0 and correlated.stdout.splitlines()[1] == mails, correlated.stdout + correlated.stderr

    report = cli(up_run, "report", "--out", str(up_run.root / "second-shell.html"))
    assert report.returncode == 0, report.stderr
    assert "Threadline: SLA targets" in (up_run.root / "second-shell.html").read_text()

    escalations = cli(up_run, "escalations")
    assert escalations.returncode == 0, escalations.stderr
    listed = escalations.stdout.splitlines()
    assert listed[0].split("\t")[:3] == ["tenant", "message_id", "state"]
    assert f"{len(listed) - 1} mails" in escalations.stderr
    open_ones = cli(up_run, "sql", "SELECT count() FROM (SELECT message_id, argMax(state, event_time) AS s "
                    "FROM {db}.escalations FINAL GROUP BY tenant, message_id HAVING s != 'RESOLVED')")
    assert int(open_ones.stdout.splitlines()[1]) == len(listed) - 1

    doctor = cli(up_run, "doctor")
    assert f"[ok  ] clickhouse: the store threadline up (pid {up_run.process.pid}) serves answers at " in doctor.stdout, \
        doctor.stdout + doctor.stderr

    refused = cli(up_run, "sql", "DROP TABLE {db}.mail_correlated")
    assert refused.returncode == 2 and "Code: 164" in refused.stderr and "READONLY" in refused.stderr
    for writer in (["sink"], ["erase", "--address", "someone@example.com", "--yes"]):
        refused = cli(up_run, *writer)
        assert refused.returncode == 2 and f"threadline up (pid {up_run.process.pid}) holds the embedded store" \
            in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    client = clickhouse_connect.get_client(host="127.0.0.1", port=int(stack["clickhouse_url"].rsplit(":", 1)[1]),
                                           username=stack["clickhouse_user"], password=stack["clickhouse_password"])
    assert client.query("SELECT count() FROM threadline.mail_correlated").result_rows[0][0] > 0
    # the generated password is in stack.json only: not in up's output, its logs, or a command line
    command_lines = {str(pid): Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                     for pid in descendants(up_run.process.pid) if Path(f"/proc/{pid}/cmdline").exists()}
    assert leaks({stack["clickhouse_password"]}, files_under=up_run.root, skip={stack_file},
                 texts=command_lines) == []


def test_tail_and_explain_from_another_shell_read_the_running_pipeline(up_run):
    """Issue 17: the hint's `threadline tail mail.correlated` decodes the output topic of the
    running `up` (its broker from stack.json), and `threadline explain` of a mail up explained
    answers from the store up serves, and from the topic when asked to."""
    tail = cli(up_run, "tail", "mail.correlated", "--limit", "3")
    assert tail.returncode == 0, tail.stderr
    records = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(records) == 3 and all(r["topic"] == "mail.correlated" and r["key"] == "default" for r in records)
    assert "threadline tail mail.correlated " in up_run.stdout() and "kcat" not in up_run.stdout()
    explained = re.search(r"^(<[^>\s]+>)  \((in|out), ", up_run.stdout(), re.MULTILINE)
    assert explained, up_run.stdout()[-3000:]
    message_id = explained.group(1)
    served = cli(up_run, "explain", message_id)
    assert served.returncode == 0, served.stderr
    assert served.stdout.startswith(message_id) and "linked to:" in served.stdout
    assert "found in:     ClickHouse http://127.0.0.1:" in served.stdout
    assert f"(served by threadline up, pid {up_run.process.pid})" in served.stdout
    topic = cli(up_run, "explain", message_id, "--source", "topic")
    assert topic.returncode == 0, topic.stderr
    assert "found in:     the topics mail.correlated, mail.untracked and mail.responses on 127.0.0.1:" in topic.stdout
    # the same decision, whichever source answered
    assert served.stdout.split("  tenant:")[0] == topic.stdout.split("  tenant:")[0]


def test_no_secret_in_any_output_log_or_command_line(up_run):
    """Issue 13: every secret setting is configured (SECRETS), and none of them appears in up's
    stdout or stderr, in any log or other file of the run, or in a command line (those are
    readable by every user of the machine). Stops `up` first: the outputs must be complete."""
    pids = descendants(up_run.process.pid)
    command_lines = {}
    for pid in pids:
        try:
            command_lines[f"command line of {pid}"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            pass
    assert len(command_lines) >= 4, command_lines  # up, broker, worker, tracking endpoint at least
    up_run.stop()
    assert up_run.stdout_path.stat().st_size and up_run.log_paths(), "nothing to search"
    assert leaks(SECRETS, files_under=up_run.root, skip={up_run.settings_file}, texts=command_lines) == []

