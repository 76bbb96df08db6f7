"""deploy/clickhouse/reader-users.sh: docker-compose's Grafana reader gets the operator's password.

The script runs in real bash the two ways the clickhouse/clickhouse-server entrypoint runs an
init script: sourced into a shell like the entrypoint's (``set -eo pipefail``, the
``clickhouseclient`` array defined), and executed (then it builds that command itself). A stand-in
for clickhouse-client records its arguments and stdin. A missing, short, placeholder or example
password stops the entrypoint with nothing sent; a good one yields statements that hold only its
SHA-256, parse on chDB, and leave nothing behind in the entrypoint's shell."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.tracking.safety import EXAMPLE_SECRETS
from test_reader_policies import ROLE, statements

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "clickhouse" / "reader-users.sh"
BASH = shutil.which("bash")
ADMIN = ["--multiquery", "--host", "127.0.0.1", "-u", "threadline", "--password", "admin-password-for-the-test"]
CONTINUED = "entrypoint continues after the init script"

# Writes its arguments (one a line) and its stdin where the test looks.
CAPTURE = """#!/bin/sh
printf '%s\\n' "$@" > "$CAPTURE_DIR/args"
cat > "$CAPTURE_DIR/stdin"
"""

# What the entrypoint does around a non-executable *.sh: its shell options, its client array,
# then `. file`; afterwards the test reads the shell's variables and functions.
SOURCING = """set -eo pipefail
clickhouseclient=( "$CAPTURE_BIN" {admin} )
. "$SCRIPT"
echo "{continued}"
declare -p > "$CAPTURE_DIR/variables"
declare -F > "$CAPTURE_DIR/functions"
""".format(admin=" ".join(ADMIN), continued=CONTINUED)


@dataclass
class Run:
    returncode: int
    output: str  # stdout and stderr
    args: list[str] | None  # None: clickhouse-client never ran
    sql: str | None
    variables: str | None


def run_reader_users(tmp_path: Path, password: str | None, *, sourced: bool = True) -> Run:
    """The script as the entrypoint runs it, GRAFANA_READER_PASSWORD = password (None: unset)."""
    assert BASH, "bash is needed to run deploy/clickhouse/reader-users.sh"
    capture_dir = tmp_path / "capture"
    bin_dir = tmp_path / "bin"
    capture_dir.mkdir(exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    for stale in capture_dir.iterdir():
        stale.unlink()
    capture = bin_dir / "clickhouse-client"  # the name the executed script calls
    capture.write_text(CAPTURE)
    capture.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CAPTURE_DIR": str(capture_dir), "CAPTURE_BIN": str(capture),
           "SCRIPT": str(SCRIPT), "CLICKHOUSE_USER": "threadline", "CLICKHOUSE_PASSWORD": ADMIN[-1]}
    if password is not None:
        env["GRAFANA_READER_PASSWORD"] = password
    command = [BASH, "-c", SOURCING] if sourced else [BASH, str(SCRIPT)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)

    def read(name: str) -> str | None:
        path = capture_dir / name
        return path.read_text() if path.exists() else None

    args = read("args")
    return Run(result.returncode, result.stdout + result.stderr, None if args is None else args.splitlines(),
               read("stdin"), read("variables"))


REFUSED = [
    pytest.param(None, id="unset"),
    pytest.param("", id="empty"),
    pytest.param("Xk3-vQ9_pL2mN7", id="14-characters"),
    pytest.param("a" * 16, id="one-character"),
    pytest.param("1234567123456712", id="7-different-characters"),
    pytest.param("change-me", id="change-me"),
    pytest.param("Change-Me-8fJ2kQ9xVb3mZt", id="change-me-with-a-suffix"),
    pytest.param("<your-generated-token-here>", id="placeholder"),
    *(pytest.param(f"{example}-7Qm2xZ9kVb", id=f"example-{example[:24]}") for example in EXAMPLE_SECRETS),
]


@pytest.mark.parametrize("sourced", [True, False], ids=["sourced", "executed"])
@pytest.mark.parametrize("password", REFUSED)
def test_a_missing_weak_or_example_password_stops_the_entrypoint_and_sends_nothing(tmp_path, password, sourced):
    run = run_reader_users(tmp_path, password, sourced=sourced)
    assert run.returncode != 0
    assert CONTINUED not in run.output  # sourced, `exit` ends the entrypoint: the container stops
    assert run.args is None and run.sql is None
    assert "refusing to create the Grafana reader reader_default" in run.output
    assert "GRAFANA_READER_PASSWORD" in run.output and "token_urlsafe" in run.output  # what, and the fix
    if password and len(password) >= 9:
        assert password not in run.output


def test_every_example_secret_of_the_repository_is_refused(tmp_path):
    # The script keeps its own list (it cannot import Python); this keeps it in step.
    for example in EXAMPLE_SECRETS:
        assert run_reader_users(tmp_path, f"{example.upper()}-suffix-0123456789").returncode != 0, example


PASSWORDS = [
    pytest.param(secrets.token_urlsafe(32), id="generated"),
    # Quotes, a backslash, $( ), a backtick, spaces and non-ASCII: none of it may reach SQL or a shell.
    pytest.param("it's a \\' long pass phrase $(id) `id` ü; DROP USER x --", id="hostile"),
]


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_good_password_becomes_a_sha256_hash_and_never_appears(tmp_path, clickhouse_factory, password):
    run = run_reader_users(tmp_path, password)
    assert run.returncode == 0, run.output
    assert CONTINUED in run.output
    digest = hashlib.sha256(password.encode()).hexdigest()
    assert run.args == ADMIN  # the entrypoint's own client, unchanged: nothing of ours on a command line
    assert password not in run.sql and password not in run.output and password not in " ".join(run.args)
    assert digest not in " ".join(run.args) and digest not in run.output
    assert statements(run.sql) == [
        f"CREATE USER OR REPLACE reader_default IDENTIFIED WITH sha256_hash BY '{digest}' SETTINGS readonly = 1",
        f"GRANT {ROLE} TO reader_default",
    ]
    store = clickhouse_factory()
    for statement in statements(run.sql):
        store.query("SELECT formatQuery({s:String})", parameters={"s": statement})  # ClickHouse's parser
    # Sourced into the entrypoint's shell, the script leaves neither the hash nor its function.
    assert digest not in run.variables
    assert "threadline_reader_users" not in (tmp_path / "capture" / "functions").read_text()


def test_executed_it_logs_in_like_the_entrypoint(tmp_path):
    password = secrets.token_urlsafe(32)
    run = run_reader_users(tmp_path, password, sourced=False)
    assert run.returncode == 0, run.output
    assert run.args == ADMIN  # built from CLICKHOUSE_USER and CLICKHOUSE_PASSWORD as the entrypoint does
    digest = hashlib.sha256(password.encode()).hexdigest()
    assert f"IDENTIFIED WITH sha256_hash BY '{digest}'" in run.sql and password not in run.sql + run.output


def test_a_failing_client_stops_the_entrypoint(tmp_path):
    # A server that rejects the statements (e.g. the role is missing) must not let the container start.
    failing = tmp_path / "clickhouse-client"
    failing.write_text("#!/bin/sh\ncat >/dev/null\nexit 3\n")
    failing.chmod(0o755)
    result = subprocess.run([BASH, "-c", 'set -eo pipefail; clickhouseclient=("$CLIENT"); . "$SCRIPT"; echo continued'],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "CLIENT": str(failing), "SCRIPT": str(SCRIPT),
                                 "GRAFANA_READER_PASSWORD": secrets.token_urlsafe(32)})
    assert result.returncode != 0 and "clickhouse-client failed" in result.stderr
    assert "continued" not in result.stdout and "reader_default (tenant default)" not in result.stdout


def test_anything_but_64_hex_digits_is_never_spliced(tmp_path):
    # The hash is the only text spliced into a quoted SQL literal: a broken sha256sum must not put
    # anything else there.
    fake = tmp_path / "sha256sum"
    fake.write_text("#!/bin/sh\ncat >/dev/null\necho \"x' OR 1=1 --  -\"\n")
    fake.chmod(0o755)
    client = tmp_path / "client"
    client.write_text(CAPTURE)
    client.chmod(0o755)
    (tmp_path / "capture").mkdir()
    result = subprocess.run([BASH, "-c", 'set -eo pipefail; clickhouseclient=("$CLIENT"); . "$SCRIPT"'],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": f"{tmp_path}:/usr/bin:/bin", "CLIENT": str(client), "SCRIPT": str(SCRIPT),
                                 "CAPTURE_DIR": str(tmp_path / "capture"),
                                 "GRAFANA_READER_PASSWORD": secrets.token_urlsafe(32)})
    assert result.returncode != 0 and "gave no SHA-256" in result.stderr
    assert list((tmp_path / "capture").iterdir()) == []
