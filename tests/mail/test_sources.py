"""Mail sources (mbox, maildir, .eml folders) and the shared ponymail corpus through parse_mail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.mail.parse import parse_mail
from pipeline.mail.record import MailParseError
from pipeline.mail.sources import iter_eml_dir, iter_mail_sources, iter_maildir, iter_mbox

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "ponymail"


def eml(message_id: str, body: str = "Body text.\n", subject: str = "hello") -> bytes:
    return (f"From: ann@example.org\nTo: bob@example.org\nSubject: {subject}\nMessage-ID: <{message_id}>\n"
            f"Date: Tue, 05 Mar 2024 10:15:00 +0000\n\n{body}").encode()


def ids(items) -> list[str]:
    return [parse_mail(raw).message_id for _, raw in items]


# --------------------------------------------------------------------------- mbox

MBOX = (
    b"From ann@example.org Tue Mar  5 10:15:00 2024\n"
    + eml("one@x", body="First message.\n>From the start, mboxrd escapes this line.\n>>From here, one '>' goes.\n")
    + b"\n"
    b"From bob@example.org Tue Mar  5 10:16:00 2024\n"
    + eml("two@x", body="Second message.\nFrom me, not a separator: no blank line before it.\n")
    + b"\n"
    b"From carol@example.org Tue Mar  5 10:17:00 2024\n"
    + eml("three@x", body="Third message.\n")
)


def test_iter_mbox_splits_and_unquotes(tmp_path):
    path = tmp_path / "box.mbox"
    path.write_bytes(MBOX)
    items = list(iter_mbox(path))
    assert [ref for ref, _ in items] == [f"{path}#0", f"{path}#1", f"{path}#2"]
    assert ids(items) == ["<one@x>", "<two@x>", "<three@x>"]
    first, second, third = (raw for _, raw in items)
    assert b"\nFrom the start, mboxrd escapes this line.\n" in first
    assert b">From the start" not in first
    assert b"\n>From here, one '>' goes.\n" in first
    assert first.endswith(b"goes.\n")  # the blank separator line before the next "From " is not part of the mail
    assert b"\nFrom me, not a separator: no blank line before it.\n" in second
    assert third == eml("three@x", body="Third message.\n")
    assert parse_mail(first).body_text.splitlines()[1] == "From the start, mboxrd escapes this line."


def test_iter_mbox_crlf_and_str_path(tmp_path):
    path = tmp_path / "crlf.mbox"
    path.write_bytes(MBOX.replace(b"\n", b"\r\n"))
    items = list(iter_mbox(str(path)))
    assert ids(items) == ["<one@x>", "<two@x>", "<three@x>"]
    assert items[0][1].endswith(b"goes.\r\n")


def test_iter_mbox_empty_and_missing(tmp_path):
    empty = tmp_path / "empty.mbox"
    empty.write_bytes(b"")
    assert list(iter_mbox(empty)) == []
    junk = tmp_path / "junk.mbox"
    junk.write_bytes(b"no separator line at all\n")
    assert list(iter_mbox(junk)) == []
    with pytest.raises(FileNotFoundError):
        list(iter_mbox(tmp_path / "nope.mbox"))


# --------------------------------------------------------------------------- maildir


def make_maildir(root: Path) -> Path:
    for folder in ("cur", "new", "tmp"):
        (root / folder).mkdir(parents=True)
    (root / "cur" / "1709633700.2.host:2,S").write_bytes(eml("cur-b@x"))
    (root / "cur" / "1709633600.1.host:2,S").write_bytes(eml("cur-a@x"))
    (root / "cur" / ".hidden").write_bytes(eml("hidden@x"))
    (root / "new" / "1709633800.3.host").write_bytes(eml("new-a@x"))
    (root / "tmp" / "1709633900.4.host").write_bytes(eml("tmp@x"))  # being delivered: not read
    return root


def test_iter_maildir(tmp_path):
    root = make_maildir(tmp_path / "Maildir")
    items = list(iter_maildir(root))
    assert ids(items) == ["<cur-a@x>", "<cur-b@x>", "<new-a@x>"]
    assert items[0][0] == str(root / "cur" / "1709633600.1.host:2,S")
    assert items[0][1] == eml("cur-a@x")


def test_iter_maildir_with_only_new(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "m1").write_bytes(eml("only-new@x"))
    assert ids(iter_maildir(tmp_path)) == ["<only-new@x>"]


# --------------------------------------------------------------------------- .eml folders


def test_iter_eml_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.eml").write_bytes(eml("b@x"))
    (tmp_path / "a.eml").write_bytes(eml("a@x"))
    (tmp_path / "sub" / "c.eml").write_bytes(eml("c@x"))
    (tmp_path / "notes.txt").write_bytes(eml("txt@x"))
    (tmp_path / "dir.eml").mkdir()  # a folder named like a mail is skipped
    items = list(iter_eml_dir(tmp_path))
    assert [Path(ref).relative_to(tmp_path).as_posix() for ref, _ in items] == ["a.eml", "b.eml", "sub/c.eml"]
    assert ids(items) == ["<a@x>", "<b@x>", "<c@x>"]


# --------------------------------------------------------------------------- iter_mail_sources


def test_iter_mail_sources_dispatches_by_kind(tmp_path):
    mbox = tmp_path / "archive.mbox"
    mbox.write_bytes(MBOX)
    single = tmp_path / "single.EML"
    single.write_bytes(eml("single@x"))
    maildir = make_maildir(tmp_path / "Maildir")
    folder = tmp_path / "emls"
    folder.mkdir()
    (folder / "x.eml").write_bytes(eml("folder@x"))
    items = list(iter_mail_sources([single, str(mbox), maildir, folder]))
    assert ids(items) == ["<single@x>", "<one@x>", "<two@x>", "<three@x>",
                          "<cur-a@x>", "<cur-b@x>", "<new-a@x>", "<folder@x>"]
    assert items[0][0] == str(single)


def test_iter_mail_sources_missing_path(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(ValueError, match="no such mailbox") as caught:
        list(iter_mail_sources([missing]))
    assert str(missing) in str(caught.value)
    # earlier sources are still yielded before the error
    good = tmp_path / "ok.eml"
    good.write_bytes(eml("ok@x"))
    stream = iter_mail_sources([good, missing])
    assert ids([next(stream)]) == ["<ok@x>"]
    with pytest.raises(ValueError, match="no such mailbox"):
        next(stream)


# --------------------------------------------------------------------------- shared corpus


@pytest.mark.skipif(not (CORPUS / "messages.mbox").is_file() or not (CORPUS / "truth.jsonl").is_file(),
                    reason=f"the shared corpus is not at {CORPUS.resolve()}")
def test_corpus_parses_completely_and_matches_truth_ids():
    truth = [json.loads(line) for line in (CORPUS / "truth.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    truth_ids = {row["message_id"] for row in truth}
    parsed, failures = [], []
    for ref, raw in iter_mbox(CORPUS / "messages.mbox"):
        try:
            parsed.append(parse_mail(raw))
        except MailParseError as exc:
            failures.append((ref, exc.reason))
    assert failures == []
    assert len(parsed) == len(truth)
    parsed_ids = [record.message_id for record in parsed]
    assert len(set(parsed_ids)) == len(parsed_ids)
    assert set(parsed_ids) == truth_ids
    assert not any("missing_message_id" in record.defects for record in parsed)
