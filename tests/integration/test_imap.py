"""The IMAP poller against a real Dovecot IMAP server that this module starts itself.

Dovecot runs in the foreground (``dovecot -F -c CONF``) with its own config, sockets, state and log
in temporary folders, listening on a free loopback port without TLS; a static passdb accepts any
user name with the test password and a static userdb maps every user to the ``mail`` uid (root
is refused by Dovecot) with a maildir under the test's folder.  Each test logs in as its own user,
so its mailboxes are its own.  The server is stopped by its process id.

When ``dovecot`` is missing, ``.ci/install-test-services`` (what ``make test`` runs) is tried once;
the tests skip, with the reason, only where it cannot be installed.
"""

from __future__ import annotations

import grp
import imaplib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipeline.broker import free_port
from pipeline.cli.main import main
from pipeline.gateways.imap import ImapError, ImapPoller, quoted_folder
from pipeline.streams.reader import read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "imap-test-secret"


def _dovecot_binary() -> str | None:
    return shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None)


@dataclass
class Dovecot:
    host: str
    port: int
    log: Path
    home_root: Path

    def client(self, user: str) -> imaplib.IMAP4:
        home = self.home_root / user  # the user's home, owned by the uid its mail processes run as
        home.mkdir(mode=0o700, exist_ok=True)
        os.chown(home, self.home_root.stat().st_uid, self.home_root.stat().st_gid)
        client = imaplib.IMAP4(self.host, self.port, timeout=10)
        client.login(user, PASSWORD)
        return client


def _config(*, base_dir: Path, state_dir: Path, log: Path, home_root: Path, port: int) -> str:
    if os.geteuid() == 0:
        # Mail processes run as "mail" and chroot into home_root ("/./" in home), so the 0700
        # folders of pytest's temporary tree above it need not be opened up.
        mail = pwd.getpwnam("mail")
        users = (f"first_valid_uid = 1\nvalid_chroot_dirs = {home_root}\n",
                 f"uid={mail.pw_uid} gid={mail.pw_gid} home={home_root}/./%u")
    else:  # a rootless Dovecot: every process runs as this user
        me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        users = (f"first_valid_uid = {os.getuid()}\ndefault_internal_user = {me}\ndefault_login_user = {me}\n"
                 f"default_internal_group = {group}\nservice anvil {{\n  chroot =\n}}\n"
                 "service imap-login {\n  chroot =\n}\n",
                 f"uid={os.getuid()} gid={os.getgid()} home={home_root}/%u")
    return f"""
base_dir = {base_dir}
state_dir = {state_dir}
log_path = {log}
info_log_path = {log}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir
{users[0]}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = {users[1]}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory):
    binary = _dovecot_binary()
    if binary is None:
        installer = subprocess.run(["bash", str(ROOT / ".ci" / "install-test-services")], capture_output=True,
                                   text=True, timeout=900)
        binary = _dovecot_binary()
        if binary is None:
            pytest.skip("dovecot is not installed and could not be installed here "
                        f"({installer.stderr.strip() or 'no reason given'}); install the Debian package dovecot-imapd")
    root = tmp_path_factory.mktemp("dovecot")
    # Sockets live in base_dir; a short path keeps them under the 108-byte limit of socket names.
    base_dir = Path(tempfile.mkdtemp(prefix="tl-dovecot-"))
    state_dir, home_root, log = root / "state", root / "home", root / "dovecot.log"
    state_dir.mkdir()
    home_root.mkdir(mode=0o700)
    if os.geteuid() == 0:
        mail = pwd.getpwnam("mail")
        os.chown(home_root, mail.pw_uid, mail.pw_gid)
    port = free_port()
    config = root / "dovecot.conf"
    config.write_text(_config(base_dir=base_dir, state_dir=state_dir, log=log, home_root=home_root, port=port))
    with open(root / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen([binary, "-F", "-c", str(config)], stdout=stderr, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"dovecot exited with {process.returncode}: {(root / 'stderr.txt').read_text()}"
                            f"{log.read_text() if log.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                    if probe.recv(100).startswith(b"* OK"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"dovecot did not answer on port {port}: {log.read_text() if log.exists() else ''}")
                time.sleep(0.1)
        yield Dovecot("127.0.0.1", port, log, home_root)
    finally:
        process.terminate()  # the master stops its children
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        shutil.rmtree(base_dir, ignore_errors=True)


def _mail(n: int, label: str, sender: str = "ann@customer.example", to: str = "support@shop.example") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {label} {n}\r\nMessage-ID: <{label}.{n}.{uuid.uuid4().hex[:8]}@test>"
            f"\r\nDate: Tue, 05 Mar 2024 10:{n:02d}:00 +0000\r\n\r\nBody of {label} {n}.\r\n").encode()


def _settings_file(sandbox, dovecot: Dovecot, user: str, folders: str, **imap: object):
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in imap.items())
    # The extra text continues the sandbox's [worker] table first.
    return sandbox.settings_file(extra=f"""data_dir = "{sandbox.root / 'data'}"

[imap]
host = "127.0.0.1"
port = {dovecot.port}
ssl = false
username = "{user}"
password = "{PASSWORD}"
tenant = "acme"
folders = {folders}
{extra}""")


def _flags(client: imaplib.IMAP4, folder: str) -> dict[int, set[str]]:
    client.select(quoted_folder(folder), readonly=True)
    typ, data = client.uid("FETCH", "1:*", "(UID FLAGS)")
    assert typ == "OK"
    flags = {}
    for item in data:
        text = item.decode() if isinstance(item, bytes) else item[0].decode()
        uid = int(text.split("UID ")[1].split()[0].rstrip(")"))
        flags[uid] = set(text.split("FLAGS (")[1].split(")")[0].split()) - {"\\Recent"}
    return flags


def _raw_records(sandbox, settings) -> list[dict]:
    return [value for _, _, _, value in read_topic(settings.kafka, sandbox.bootstrap, "mail.raw", sandbox.codec)]


INBOX_AND_SENT = '[{name = "INBOX", direction = "in"}, {name = "Sent", direction = "out"}]'


def test_poller_ingests_every_new_message_exactly_once(sandbox, dovecot, monkeypatch):
    user = f"u{uuid.uuid4().hex[:8]}"
    client = dovecot.client(user)
    assert client.create("Sent")[0] == "OK"
    inbox = [_mail(n, "inbox") for n in range(1, 4)]
    sent = [_mail(1, "sent", sender="support@shop.example", to="ann@customer.example")]
    arrived = datetime(2024, 3, 5, 10, 15, tzinfo=timezone.utc)
    for n, raw in enumerate(inbox):
        assert client.append("INBOX", "(\\Flagged)" if n == 0 else None, arrived, raw)[0] == "OK"
    assert client.append("Sent", "(\\Seen)", arrived, sent[0])[0] == "OK"
    flags_before = {"INBOX": _flags(client, "INBOX"), "Sent": _flags(client, "Sent")}
    path = _settings_file(sandbox, dovecot, user, INBOX_AND_SENT)
    settings = sandbox.settings(path)

    # The command line, in process: everything new, then exit.
    monkeypatch.setenv("THREADLINE_KAFKA_BOOTSTRAP", sandbox.bootstrap)
    assert main(["--settings", str(path), "imap", "--once"]) == 0
    records = _raw_records(sandbox, settings)
    assert sorted((r["mailbox"], r["direction"], r["source"]) for r in records) == [
        ("INBOX", "in", "imap:127.0.0.1/INBOX/1"), ("INBOX", "in", "imap:127.0.0.1/INBOX/2"),
        ("INBOX", "in", "imap:127.0.0.1/INBOX/3"), ("Sent", "out", "imap:127.0.0.1/Sent/1")]
    assert sorted(r["raw"] for r in records) == sorted(inbox + sent)  # the exact bytes
    assert {r["tenant"] for r in records} == {"acme"}
    assert {r["received_at"] for r in records} == {arrived}  # INTERNALDATE
    state = json.loads((sandbox.root / "data" / "imap-state.json").read_text())
    folders = state["accounts"][f"{user}@127.0.0.1:{dovecot.port}"]
    assert (folders["INBOX"]["last_uid"], folders["Sent"]["last_uid"]) == (3, 1)

    # A restart finds nothing new.
    poller = ImapPoller(settings, sandbox.bootstrap, sandbox.codec)
    try:
        assert poller.run(once=True).produced == 0
    finally:
        poller.close()
    assert len(_raw_records(sandbox, settings)) == 4

    # One more mail: exactly that one.
    late = _mail(4, "inbox")
    assert client.append("INBOX", None, None, late)[0] == "OK"
    poller = ImapPoller(settings, sandbox.bootstrap, sandbox.codec)
    try:
        report = poller.run(once=True)
    finally:
        poller.close()
    assert (report.produced, report.per_folder) == (1, {"INBOX": 1, "Sent": 0})
    records = _raw_records(sandbox, settings)
    assert len(records) == 5
    assert [r["raw"] for r in records if r["source"] == "imap:127.0.0.1/INBOX/4"] == [late]

    # BODY.PEEK[] and EXAMINE: no flag changed (nothing became \Seen).
    assert {"INBOX": _flags(client, "INBOX"), "Sent": _flags(client, "Sent")} == {
        "INBOX": {**flags_before["INBOX"], 4: set()}, "Sent": flags_before["Sent"]}
    assert flags_before["INBOX"] == {1: {"\\Flagged"}, 2: set(), 3: set()}
    client.logout()


def test_changed_uidvalidity_reads_the_folder_again(sandbox, dovecot):
    user = f"u{uuid.uuid4().hex[:8]}"
    client = dovecot.client(user)
    client.create("Support")
    first, second = _mail(1, "support"), _mail(2, "support")
    for raw in (first, second):
        client.append("Support", None, None, raw)
    settings = sandbox.settings(_settings_file(sandbox, dovecot, user, '[{name = "Support", direction = "in"}]',
                                               batch_size=1))
    poller = ImapPoller(settings, sandbox.bootstrap, sandbox.codec)
    try:
        assert poller.run(once=True).produced == 2  # in two batches of one
        old_validity = poller.state.get("Support").uidvalidity
    finally:
        poller.close()

    # The folder is deleted and created again: new UIDVALIDITY, UIDs start at 1 again.
    client.select("INBOX")
    assert client.delete("Support")[0] == "OK"
    assert client.create("Support")[0] == "OK"
    third = _mail(3, "support")
    for raw in (first, third):
        client.append("Support", None, None, raw)
    client.select("Support", readonly=True)
    new_validity = int(client.response("UIDVALIDITY")[1][-1])
    if new_validity == old_validity:
        pytest.skip("this Dovecot reused the UIDVALIDITY of a re-created folder; cannot simulate a change")

    poller = ImapPoller(settings, sandbox.bootstrap, sandbox.codec)
    try:
        report = poller.run(once=True)
    finally:
        poller.close()
    # UIDs 1 and 2 are below the old last UID (2) and still read: the folder was read again.
    assert (report.produced, report.uidvalidity_changes) == (2, ["Support"])
    records = _raw_records(sandbox, settings)
    assert len(records) == 4
    copies = [r for r in records if r["raw"] == first]
    assert len(copies) == 2 and copies[0]["event_id"] == copies[1]["event_id"]  # a duplicate, as documented
    state = json.loads((sandbox.root / "data" / "imap-state.json").read_text())
    assert state["accounts"][f"{user}@127.0.0.1:{dovecot.port}"]["Support"] == {"uidvalidity": new_validity,
                                                                               "last_uid": 2}
    client.logout()


def test_idle_wakes_up_on_new_mail_and_stops_on_request(sandbox, dovecot):
    user = f"u{uuid.uuid4().hex[:8]}"
    client = dovecot.client(user)
    settings = sandbox.settings(_settings_file(sandbox, dovecot, user, '[{name = "INBOX", direction = "in"}]',
                                               poll_interval_s=60))
    poller = ImapPoller(settings, sandbox.bootstrap, sandbox.codec)
    try:
        assert poller.poll_once() == 0
        assert poller.idle_supported and poller.report.idle
        timer = threading.Timer(0.5, lambda: client.append("INBOX", None, None, _mail(1, "idle")))
        timer.start()
        started = time.monotonic()
        assert poller.wait(threading.Event()) is True  # woken by the new mail, long before 60 s
        assert time.monotonic() - started < 10
        timer.join()
        assert poller.poll_once() == 1

        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        started = time.monotonic()
        assert poller.wait(stop) is False
        assert time.monotonic() - started < 5
        assert poller.poll_once() == 0  # the connection is still usable after DONE
    finally:
        poller.close()
    client.logout()


def test_running_poller_ingests_mail_as_it_arrives(sandbox, dovecot):
    user = f"u{uuid.uuid4().hex[:8]}"
    client = dovecot.client(user)
    client.create("Sent")
    settings = sandbox.settings(_settings_file(sandbox, dovecot, user, INBOX_AND_SENT, poll_interval_s=1))
    poller = ImapPoller(settings, sandbox.bootstrap, sandbox.codec)
    stop = threading.Event()
    runner = threading.Thread(target=poller.run, kwargs={"stop": stop})
    runner.start()
    try:
        client.append("INBOX", None, None, _mail(1, "live"))
        client.append("Sent", None, None, _mail(2, "live", sender="support@shop.example"))
        deadline = time.monotonic() + 20
        while poller.report.produced < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert poller.report.per_folder == {"INBOX": 1, "Sent": 1}
    finally:
        stop.set()
        runner.join(15)
        poller.close()
    assert not runner.is_alive()
    assert len(_raw_records(sandbox, settings)) == 2
    client.logout()


def test_wrong_password_and_missing_folder_say_what_is_wrong(sandbox, dovecot):
    user = f"u{uuid.uuid4().hex[:8]}"
    dovecot.client(user).logout()
    path = _settings_file(sandbox, dovecot, user, '[{name = "NoSuchFolder", direction = "in"}]')
    settings = sandbox.settings(path)
    poller = ImapPoller(settings, sandbox.bootstrap, sandbox.codec)
    try:
        with pytest.raises(ImapError, match="NoSuchFolder"):
            poller.run(once=True)
    finally:
        poller.close()
    wrong = settings.model_copy(update={"imap": settings.imap.model_copy(update={"password": "wrong"})})
    poller = ImapPoller(wrong, sandbox.bootstrap, sandbox.codec)
    try:
        with pytest.raises(ImapError, match="refused"):
            poller.run(once=True)
    finally:
        poller.close()


def test_big_mail_goes_by_digest_and_mail_over_the_limit_becomes_a_dead_letter(sandbox, dovecot):
    user = f"u{uuid.uuid4().hex[:8]}"
    client = dovecot.client(user)
    small, big = _mail(1, "big"), _mail(2, "big").replace(b"Body of", b"x" * 2_000_000)  # over librdkafka's 1 MB
    over, last = _mail(3, "big").replace(b"Body of", b"y" * 4_000_000), _mail(4, "big")
    for raw in (small, big, over, last):
        assert client.append("INBOX", None, None, raw)[0] == "OK"
    settings = sandbox.settings(_settings_file(sandbox, dovecot, user, '[{name = "INBOX", direction = "in"}]',
                                               batch_size=1))
    settings = settings.model_copy(update={"mail": settings.mail.model_copy(update={"max_message_bytes": 3 * 2**20})})
    poller = ImapPoller(settings, sandbox.bootstrap, sandbox.codec)
    try:
        poller.run(once=True)
        assert poller.state.get("INBOX").last_uid == 4
    finally:
        poller.close()
    records = _raw_records(sandbox, settings)
    assert [r["raw_blob"] is not None for r in records] == [False, True, False]
    assert [r["raw"] for r in records][::2] == [small, last]
    (letter,) = [v for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "deadletter", sandbox.codec)]
    assert (letter["reason"], letter["agent"], letter["value_size"]) == ("too_large", "imap", len(over))
    assert letter["source_ref"].endswith("/INBOX/3")
    client.logout()
