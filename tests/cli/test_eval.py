"""`threadline eval [CORPUS...]` over corpus folders, a folder of them, or one mbox with --truth: one table,
JSON, progress, errors, and the options it had before (deprecated)."""

from __future__ import annotations

import json

from pipeline.cli.main import main

QUESTION = {"id": "q@one.example", "subject": "Printer queue stuck", "sender": "ann@one.example",
            "body": "Every job since Monday waits in the queue forever."}
ANSWER = {"id": "a@two.example", "subject": "Re: Printer queue stuck", "sender": "bob@two.example",
          "in_reply_to": "q@one.example", "parent": "q@one.example", "root": "q@one.example",
          "body": "> Every job since Monday waits in the queue forever.\n\nRestart the spooler."}
OTHER = {"id": "n@three.example", "subject": "Holiday rota", "sender": "cat@three.example",
         "body": "Who covers the desk in the last week of the year?"}


def two_corpora(tmp_path, write_corpus):
    write_corpus(tmp_path / "corpora" / "alpha", [QUESTION, ANSWER])
    write_corpus(tmp_path / "corpora" / "beta", [QUESTION, OTHER, ANSWER])
    (tmp_path / "corpora" / "notes").mkdir()  # no mbox: not a corpus
    return tmp_path / "corpora"


def test_one_table_for_every_corpus_in_both_modes(tmp_path, write_corpus, capsys):
    folder = two_corpora(tmp_path, write_corpus)
    assert main(["eval", str(folder), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert "judged P" in lines[0] and "fallback judged P (n)" in lines[0] and "subject P / R" in lines[0]
    assert [line.split()[:2] for line in lines[2:]] == [["alpha", "headers"], ["alpha", "stripped"],
                                                        ["beta", "headers"], ["beta", "stripped"]]


def test_json_has_every_run_with_methods_confusion_and_baselines(tmp_path, write_corpus, capsys):
    folder = two_corpora(tmp_path, write_corpus)
    assert main(["eval", str(folder), "--mode", "STRIPPED", "--json", "--no-progress"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [(run["corpus"], run["mode"], run["strip_headers"]) for run in runs] == [("alpha", "stripped", True),
                                                                                     ("beta", "stripped", True)]
    for run in runs:
        assert run["overall"]["judged_link_precision"] == 1.0 and run["judged_mails"] == 1
        assert set(run["baselines"]) == {"subject_grouping", "dynamics"}
        assert run["baselines"]["subject_grouping"]["link_recall"] == 1.0
        assert "false_links_by_evidence" in run and "fallback" in run and run["methods"]
        assert [band["confidence"] for band in run["calibration"]] == [">=0.9", "0.7-0.9", "0.5-0.7", "<0.5"]


def test_progress_goes_to_stderr(tmp_path, write_corpus, capsys):
    folder = two_corpora(tmp_path, write_corpus)
    assert main(["eval", str(folder), "--strip-headers"]) == 0
    captured = capsys.readouterr()
    assert "alpha: parse" in captured.err and "beta: stripped" in captured.err
    assert "alpha: parse" not in captured.out


def test_one_mbox_with_its_truth_and_details(tmp_path, write_corpus, capsys):
    folder = write_corpus(tmp_path / "alpha", [QUESTION, ANSWER])
    mbox, truth = str(folder / "messages.mbox"), str(folder / "truth.jsonl")
    assert main(["eval", mbox, "--truth", truth, "--mode", "headers", "--details", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].startswith(mbox)
    assert "InReplyTo" in out and "judged P %" in out and ">=0.9" in out


def test_corpus_folders_given_one_by_one_and_a_folder_of_them_alike(tmp_path, write_corpus, capsys):
    folder = two_corpora(tmp_path, write_corpus)
    assert main(["eval", str(folder / "beta"), str(folder / "alpha"), "--mode", "headers", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[2:]] == [["beta", "headers"], ["alpha", "headers"]]


def test_the_options_of_before_still_work_with_a_note_on_stderr(tmp_path, write_corpus, capsys):
    folder = two_corpora(tmp_path, write_corpus)
    assert main(["eval", "--corpus-dir", str(folder), "--mode", "headers", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"threadline: eval --corpus-dir is deprecated and goes in the next release: write "
                            f"`threadline eval {folder}`\n")
    assert [line.split()[:2] for line in captured.out.splitlines()[2:]] == [["alpha", "headers"], ["beta", "headers"]]
    mbox, truth = str(folder / "alpha" / "messages.mbox"), str(folder / "alpha" / "truth.jsonl")
    assert main(["eval", "--mbox", mbox, "--truth", truth, "--mode", "headers", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "eval --mbox is deprecated" in captured.err and f"`threadline eval {mbox} --truth T`" in captured.err
    assert captured.out.splitlines()[2].startswith(mbox)
    assert "--corpus-dir" not in _help(capsys) and "--mbox" not in _help(capsys)


def _help(capsys) -> str:
    try:
        main(["eval", "--help"])
    except SystemExit:
        pass
    return capsys.readouterr().out


def test_a_missing_corpus_a_folder_without_one_or_an_mbox_without_truth_is_a_user_error(tmp_path, write_corpus,
                                                                                          capsys):
    assert main(["eval", str(tmp_path / "absent"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"threadline: no such corpus, mbox or truth file: {tmp_path / 'absent'}\n"
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "is no corpus: neither it nor a subfolder holds both messages.mbox and truth.jsonl" in capsys.readouterr().err
    folder = write_corpus(tmp_path / "alpha", [QUESTION, ANSWER])
    for argv in ([str(folder / "messages.mbox")], [str(folder), "--truth", str(folder / "truth.jsonl")],
                 [str(folder / "messages.mbox"), str(folder / "messages.mbox"), "--truth", str(folder / "truth.jsonl")]):
        assert main(["eval", *argv, "--no-progress"]) == 2
        assert "an mbox is evaluated alone, with its --truth T" in capsys.readouterr().err
