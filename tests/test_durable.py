import os

import pytest

from pipeline.durable import append_line, write_atomically


def test_write_atomically_replaces_the_whole_file(tmp_path):
    path = tmp_path / "f.json"
    write_atomically(path, b"old")
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_atomically(path, b"old")
    with pytest.raises(TypeError):
        write_atomically(path, "not bytes")  # fails after the temporary file exists
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_the_temporary_name_is_the_one_the_relay_queue_treats_as_a_leftover(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(os.path.basename(src)), real_replace(src, dst)))
    write_atomically(tmp_path / "q1.mail", b"x")
    assert len(seen) == 1 and seen[0].startswith(".q1.mail.") and seen[0].endswith(".tmp")


def test_append_line_creates_a_private_file_and_ends_a_torn_last_line_first(tmp_path):
    path = tmp_path / "new" / "log.jsonl"
    append_line(path, b'{"a": 1}\n')
    assert path.read_bytes() == b'{"a": 1}\n' and path.stat().st_mode & 0o777 == 0o600
    with open(path, "ab") as handle:
        handle.write(b'{"torn"')  # a crash while writing
    append_line(path, b'{"b": 2}\n')
    assert path.read_bytes().splitlines() == [b'{"a": 1}', b'{"torn"', b'{"b": 2}']
