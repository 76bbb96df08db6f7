"""IMAP poller pieces that need no server: folder names, UID sets, FETCH answers, the state file,
the settings section.  tests/integration/test_imap.py runs the poller against a real Dovecot."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from pipeline.gateways.imap import (FolderState, ImapError, ImapState, imap_utf7, parse_fetch, quoted_folder, uid_set)
from pipeline.settings import SettingsError, load_settings


@pytest.mark.parametrize("name, encoded", [
    ("INBOX", "INBOX"), ("Sent Items", "Sent Items"), ("A&B", "A&-B"), ("Entwürfe", "Entw&APw-rfe"),
    ("日本語", "&ZeVnLIqe-"), ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
])
def test_folder_names_in_modified_utf7(name, encoded):  # examples of RFC 3501 §5.1.3
    assert imap_utf7(name) == encoded


def test_quoted_folder_escapes_quotes_and_backslashes():
    assert quoted_folder('My "best" \\ mail') == '"My \\"best\\" \\\\ mail"'


def test_uid_set_is_compact():
    assert uid_set([9, 1, 2, 3, 7, 10, 3]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"


def test_parse_fetch_reads_uid_before_or_after_the_literal_and_ignores_flag_updates():
    data = [
        (b'1 (UID 11 INTERNALDATE "05-Mar-2024 10:15:00 +0000" BODY[] {5}', b"one\r\n"), b")",
        b"7 (FLAGS (\\Seen))",  # unsolicited: someone else read a mail
        (b'2 (INTERNALDATE "05-Mar-2024 11:15:00 +0100" BODY[] {5}', b"two\r\n"), b" UID 12)",
        (b"3 (UID 13 BODY[] {7}", b"three\r\n"), b")",
    ]
    messages = parse_fetch(data)
    assert [(m.uid, m.raw) for m in messages] == [(11, b"one\r\n"), (12, b"two\r\n"), (13, b"three\r\n")]
    assert messages[0].internal_date == datetime(2024, 3, 5, 10, 15, tzinfo=timezone.utc)
    assert messages[1].internal_date == datetime(2024, 3, 5, 10, 15, tzinfo=timezone.utc)
    assert messages[2].internal_date is None


def test_state_round_trip_per_account_and_folder(tmp_path):
    path = tmp_path / "imap-state.json"
    state = ImapState(path, "ann@imap.example:993")
    assert state.get("INBOX") is None
    state.set("INBOX", FolderState(uidvalidity=17, last_uid=42))
    state.close()
    assert json.loads(path.read_text()) == {"version": 1, "accounts": {
        "ann@imap.example:993": {"INBOX": {"uidvalidity": 17, "last_uid": 42}}}}
    again = ImapState(path, "ann@imap.example:993")
    other = None
    try:
        assert again.get("INBOX") == FolderState(17, 42)
        again.close()
        other = ImapState(path, "bob@imap.example:993")
        assert other.get("INBOX") is None  # another account's folders are its own
        other.set("INBOX", FolderState(1, 2))
    finally:
        again.close()
        if other is not None:
            other.close()
    assert set(json.loads(path.read_text())["accounts"]) == {"ann@imap.example:993", "bob@imap.example:993"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imap-state.json", "imap-state.json.lock"]  # no temp files


def test_a_second_poller_on_the_same_state_is_refused(tmp_path):
    first = ImapState(tmp_path / "s.json", "a@h:1")
    try:
        with pytest.raises(ImapError, match="lock"):
            ImapState(tmp_path / "s.json", "a@h:1")
    finally:
        first.close()
    ImapState(tmp_path / "s.json", "a@h:1").close()  # free again


@pytest.mark.parametrize("content", ["{not json", '{"version": 99, "accounts": {}}', "[]"])
def test_an_unreadable_state_file_stops_instead_of_reading_everything_again(tmp_path, content):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(ImapError, match=str(path)):
        ImapState(path, "a@h:1")


def test_imap_settings_defaults_and_environment():
    imap = load_settings(environ={}).imap
    assert (imap.host, imap.ssl, imap.effective_port(), imap.idle, imap.state_file) == (
        None, True, 993, True, "imap-state.json")
    assert imap.folders == ({"name": "INBOX", "direction": "in"}, {"name": "Sent", "direction": "out"})
    imap = load_settings(environ={"THREADLINE_IMAP_SSL": "false", "THREADLINE_IMAP_PASSWORD": "pw",
                                  "THREADLINE_IMAP_FOLDERS": '[{"name": " Support ", "direction": "AUTO"}]'}).imap
    assert (imap.effective_port(), imap.folders) == (143, ({"name": "Support", "direction": "auto"},))
    assert "pw" not in repr(imap)


@pytest.mark.parametrize("folders, message", [
    ('[{"name": "INBOX", "direction": "sideways"}]', "direction"),
    ('[{"name": ""}]', "needs a name"),
    ('[{"name": "INBOX", "colour": "red"}]', "colour"),
    ('[{"name": "INBOX"}, {"name": "INBOX"}]', "twice"),
    ("[]", "folders"),
])
def test_bad_imap_folders_say_what_is_wrong(folders, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ={"THREADLINE_IMAP_FOLDERS": folders})


def test_state_file_must_be_a_plain_name():
    with pytest.raises(SettingsError, match="state_file"):
        load_settings(environ={"THREADLINE_IMAP_STATE_FILE": "../elsewhere.json"})
