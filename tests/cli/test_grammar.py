"""One grammar across pipeline/cli/*: enums in any case, --tenant of writing and of reading
commands, `-o -` for stdout, positional corpora and mailboxes (the options of before deprecated)."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from pipeline.cli.common import AnyCase
from pipeline.cli.main import build_parser, main

QUESTION = {"id": "q@one.example", "subject": "Printer queue stuck", "sender": "ann@one.example",
            "body": "Every job since Monday waits in the queue forever."}
ANSWER = {"id": "a@two.example", "subject": "Re: Printer queue stuck", "sender": "bob@two.example",
          "in_reply_to": "q@one.example", "parent": "q@one.example", "root": "q@one.example",
          "body": "> Every job since Monday waits in the queue forever.\n\nRestart the spooler."}


@pytest.fixture
def environment(monkeypatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("THREADLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every command and subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def string_choices():
    return [(path, action) for path, parser in parsers(build_parser()) for action in parser._actions
            if action.choices and not isinstance(action, argparse._SubParsersAction)
            and all(isinstance(value, str) for value in action.choices)]


def test_every_choice_option_takes_any_case_and_gives_the_canonical_value():
    found = string_choices()
    assert {(" ".join(path), action.dest) for path, action in found} >= {
        ("escalations", "state"), ("correlate", "direction"), ("up", "direction"), ("ingest", "direction"),
        ("eval", "mode"), ("eval", "strategy"), ("worker", "log_level"), ("dashboards", "action"),
        ("schemas", "action"), ("tail", "bytes"), ("explain", "source")}
    for path, action in found:
        assert isinstance(action.type, AnyCase), (path, action.dest)
        for value in action.choices:
            for typed in (value.lower(), value.upper(), value.title()):
                assert action.type(typed) == value


def test_state_open_is_accepted_and_help_shows_the_canonical_values(capsys):
    args = build_parser().parse_args(["escalations", "--state", "open"])
    assert args.state == "OPEN"
    assert build_parser().parse_args(["up", "--direction", "OUT"]).direction == "out"
    with pytest.raises(SystemExit):
        main(["escalations", "--help"])
    assert "--state {OPEN,WARNED,ESCALATED,RESOLVED}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["escalations", "--state", "opened"])
    assert stop.value.code == 2
    assert "invalid choice: 'opened' (choose from 'OPEN', 'WARNED', 'ESCALATED', 'RESOLVED')" in capsys.readouterr().err


READING = (["escalations"], ["sql", "SELECT 1"], ["campaign", "list"], ["report"], ["tail", "mail.correlated"],
           ["explain", "<a@x>"])
WRITING = (["correlate", "x.mbox"], ["sla", "x.mbox"], ["up"], ["ingest", "x.mbox"], ["mark", "in.eml"],
           ["convert", "--campaign", "c", "--revenue", "1"], ["generate"], ["campaign", "create", "--campaign", "c",
                                                                        "--name", "n"], ["correct", "unlink", "<a@x>"])


@pytest.mark.parametrize("argv", READING, ids=lambda argv: " ".join(argv[:2]))
def test_a_reading_command_sees_every_tenant_unless_given_one(argv):
    assert build_parser().parse_args(argv).tenant is None
    assert build_parser().parse_args([*argv, "--tenant", "acme"]).tenant == "acme"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--tenant", "a\x1fb"])  # the same tenant check as when writing


@pytest.mark.parametrize("argv", WRITING, ids=lambda argv: " ".join(argv[:2]))
def test_a_writing_command_writes_for_the_default_tenant_unless_given_one(argv):
    assert build_parser().parse_args(argv).tenant == "default"
    assert build_parser().parse_args([*argv, "--tenant", "acme"]).tenant == "acme"


def test_every_out_option_is_dash_o_and_says_that_dash_is_stdout():
    outs = [(path, action) for path, parser in parsers(build_parser()) for action in parser._actions
            if action.dest == "out"]
    assert {" ".join(path) for path, _ in outs} >= {"correlate", "report", "mark", "bench correlate", "bench all"}
    for path, action in outs:
        assert action.option_strings == ["-o", "--out"], path
        assert "- for stdout" in action.help, path


def test_correlate_dash_o_dash_is_json_lines_on_stdout_and_nothing_else(environment, tmp_path, write_corpus, capsys):
    folder = write_corpus(tmp_path / "alpha", [QUESTION, ANSWER])
    assert main(["correlate", str(folder / "messages.mbox"), "-o", "-", "--no-progress"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["message_id"], r["parent_message_id"]) for r in records] == [("<q@one.example>", None),
                                                                            ("<a@two.example>", "<q@one.example>")]
    assert captured.err.startswith("2 mails correlated -> stdout\n")
    assert not (tmp_path / "data").exists() and not (tmp_path / "-").exists()
    # Without -o: the file explain reads, and its .errors beside it.
    assert main(["correlate", str(folder / "messages.mbox"), "--no-progress"]) == 0
    assert len((tmp_path / "data" / "correlations.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "data" / "correlations.jsonl.errors").read_text() == ""


def test_mark_writes_the_marked_mail_to_stdout_by_default_and_with_dash(environment, tmp_path, capsys):
    message = tmp_path / "in.eml"
    message.write_bytes(b"From: a@acme.test\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhttps://shop.example.com/\r\n")
    outputs = []
    for extra in ([], ["-o", "-"]):
        assert main(["mark", str(message), "--campaign", "c1", *extra]) == 0
        outputs.append(capsys.readouterr().out)
    assert main(["mark", str(message), "--campaign", "c1", "-o", str(tmp_path / "out" / "marked.eml")]) == 0
    assert capsys.readouterr().out == ""
    marked = (tmp_path / "out" / "marked.eml").read_text()
    assert all("Subject: hi" in text and "/c/" in text for text in [*outputs, marked])


def test_demo_takes_the_corpus_folder_or_an_mbox_as_its_argument(environment, tmp_path, write_corpus, capsys):
    folder = write_corpus(tmp_path / "alpha", [QUESTION, ANSWER])
    assert main(["demo", str(folder), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "with a parent in the corpus" in captured.out and f"threadline eval {folder} --strip-headers" in captured.out
    assert captured.err == ""
    assert main(["demo", str(folder / "messages.mbox"), "--no-progress"]) == 0  # no truth: not scored
    captured = capsys.readouterr()
    assert "with a parent in the corpus" not in captured.out and "threadline eval" not in captured.out
    assert len((tmp_path / "data" / "demo" / "correlations.jsonl").read_text().splitlines()) == 2
    assert main(["demo", "--corpus", str(folder), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "with a parent in the corpus" in captured.out
    assert captured.err == (f"threadline: demo --corpus is deprecated and goes in the next release: write "
                            f"`threadline demo {folder}`\n")
    assert main(["demo", str(tmp_path / "absent")]) == 2
    assert "no such mailbox" in capsys.readouterr().err


def test_bench_correlate_takes_its_mbox_as_an_argument_and_corpus_with_a_note(environment, tmp_path, capsys):
    assert build_parser().parse_args(["bench", "correlate", "real.mbox"]).mbox == "real.mbox"
    assert main(["bench", "correlate", str(tmp_path / "absent.mbox")]) == 2
    assert capsys.readouterr().err == f"threadline: no such mbox: {tmp_path / 'absent.mbox'}\n"
    assert main(["bench", "correlate", "--corpus", str(tmp_path / "absent.mbox")]) == 2
    assert capsys.readouterr().err == (
        f"threadline: bench correlate --corpus is deprecated and goes in the next release: write `threadline bench "
        f"correlate {tmp_path / 'absent.mbox'}`\nthreadline: no such mbox: {tmp_path / 'absent.mbox'}\n")
