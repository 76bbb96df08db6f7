"""run_parse_corpus_bench on a small corpus it can read in a second: every mail counted once per
corpus, path and size bucket, the same-run baselines and their ratios reported (no speed is
asserted: speed lives in ``threadline bench parse --corpus``)."""

from __future__ import annotations

import json

import pytest

from pipeline.bench.parse import SIZE_BUCKETS_KB, run_parse_corpus_bench
from pipeline.mail.hostile import big_mail
from pipeline.synth import MailGenerator, render_rfc5322


def write_mbox(path, mails: list[bytes]) -> None:
    with open(path, "wb") as out:
        for raw in mails:
            out.write(b"From sender@example.org Tue Mar  5 10:15:00 2024\n" + raw.replace(b"\r\n", b"\n") + b"\n\n")


def test_corpus_bench_counts_every_mail_by_corpus_path_and_size(tmp_path):
    small = [render_rfc5322(mail) for mail in MailGenerator(3, customers=50).mails(12)]
    write_mbox((tmp_path / "one").mkdir() or tmp_path / "one" / "messages.mbox", small)
    nested = (b"Message-ID: <n@x>\nFrom: a@example.org\nContent-Type: multipart/mixed; boundary=o\n\n--o\n"
              b"Content-Type: multipart/alternative; boundary=i\n\n--i\n\nhello there\n--i--\n--o--\n")
    write_mbox((tmp_path / "two").mkdir() or tmp_path / "two" / "messages.mbox",
               [nested, big_mail(150 * 1024, 1, "html"), big_mail(40 * 1024, 1, "attachment")])
    result = run_parse_corpus_bench(tmp_path, repeat=1, progress=False)
    json.dumps(result)  # JSON as the other benches
    rows = {row["corpus"]: row for row in result["corpora"]}
    assert set(rows) == {"one", "two"} and result["overall"]["mails"] == 15
    assert rows["one"]["paths"] == {"fast": 12, "stdlib": 0, "rejected": 0}
    assert rows["two"]["paths"] == {"fast": 2, "stdlib": 1, "rejected": 0}
    for row in (*rows.values(), result["overall"]):
        assert sum(bucket["mails"] for bucket in row["by_size"]) == row["mails"]
        assert row["parse_mail"]["mails_per_s"] > 0 and row["stdlib_message_from_bytes"]["mails_per_s"] > 0
        assert row["ratio_to_message_from_bytes"] > 0 and row["ratio_to_stdlib_reference"] > 0
    assert [bucket["bucket"] for bucket in rows["two"]["by_size"]] == ["0-2 KB", "32-128 KB", f">{SIZE_BUCKETS_KB[-1]} KB"]
    summary = result["summary"]
    assert summary["fast_path_mails"] == 14 and summary["mails"] == 15
    assert summary["meets_target"] == (summary["slowest_corpus_mails_per_s"] >= summary["target_mails_per_s"])


def test_corpus_bench_refuses_a_folder_without_a_corpus(tmp_path):
    with pytest.raises(ValueError, match="no corpus"):
        run_parse_corpus_bench(tmp_path, repeat=1, progress=False)
