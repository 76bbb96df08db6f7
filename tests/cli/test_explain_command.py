"""``threadline explain`` without a broker or a store: a file `threadline correlate` wrote, found by
default or named, and a clear line naming every place searched when the mail is in none
(tests/integration/test_tail_explain.py: the topics and ClickHouse)."""

from __future__ import annotations

from pipeline.cli.main import main

MBOX = (b"From a@b Mon Mar  2 09:00:00 2026\n"
        b"Message-ID: <q@customer.test>\nDate: Mon, 02 Mar 2026 09:00:00 +0000\nFrom: ann@customer.test\n"
        b"To: desk@support.test\nSubject: Invoice 7\n\nWrong.\n\n"
        b"From a@b Mon Mar  2 09:30:00 2026\n"
        b"Message-ID: <r@customer.test>\nDate: Mon, 02 Mar 2026 09:30:00 +0000\nFrom: ann@customer.test\n"
        b"To: desk@support.test\nSubject: Re: Invoice 7\nIn-Reply-To: <q@customer.test>\n\nStill.\n\n")


def test_explain_reads_what_correlate_wrote_by_default_or_from_the_file_named(environment, tmp_path, capsys):
    (tmp_path / "in.mbox").write_bytes(MBOX)
    assert main(["correlate", "in.mbox", "--no-progress", "--tenant", "acme"]) == 0
    capsys.readouterr()
    assert main(["explain", "r@customer.test"]) == 0
    out = capsys.readouterr().out
    assert "linked to:    <q@customer.test>  by InReplyTo (3)" in out and "  tenant:       acme" in out
    assert out.rstrip().endswith("found in:     data/correlations.jsonl")
    (tmp_path / "data" / "correlations.jsonl").rename(tmp_path / "elsewhere.jsonl")
    assert main(["explain", "<r@customer.test>", "--file", "elsewhere.jsonl"]) == 0
    assert "found in:     elsewhere.jsonl" in capsys.readouterr().out
    assert main(["explain", "<r@customer.test>", "--file", "elsewhere.jsonl", "--source", "topic"]) == 2
    assert "--file reads only that file" in capsys.readouterr().err


def test_a_mail_found_nowhere_names_each_place_and_why_it_was_not_searched(environment, tmp_path, capsys):
    assert main(["explain", "nope@x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err == ("threadline: <nope@x> was not found: no ClickHouse store here (no clickhouse.url, no `threadline "
                   f"up` running, no {tmp_path / 'data' / 'clickhouse'}); no broker for the topics (no kafka.bootstrap, "
                   "no `threadline up` running here); no data/correlations.jsonl (`threadline correlate MAILBOX` "
                   "writes it)\n")
    assert main(["explain", "nope@x", "--file", "missing.jsonl"]) == 2
    assert "missing.jsonl does not exist: run `threadline correlate MAILBOX -o missing.jsonl` first" in capsys.readouterr().err
