"""`threadline sla`: SLA and escalation figures of a mailbox offline, and the check that mixed-in
automatic mail changes none of them."""

from __future__ import annotations

import json

import pytest

from pipeline.cli.main import main
from pipeline.synth import MailGenerator, render_rfc5322

DESK_DOMAIN = "support.threadline.test"


@pytest.fixture
def support_mbox(tmp_path):
    path = tmp_path / "support.mbox"
    with open(path, "wb") as mbox:
        for mail in MailGenerator(5, customers=80, agents=3, seconds_between_mails=300).mails(300):
            mbox.write(b"From synth Thu Jan  1 00:00:00 2026\n" + render_rfc5322(mail).replace(b"\r\n", b"\n") + b"\n")
    settings = tmp_path / "threadline.toml"
    settings.write_text(f'[untracked]\nown_domains = ["{DESK_DOMAIN}"]\n')
    return path, settings


def test_figures_per_target_and_the_current_escalation_states(support_mbox, capsys):
    mbox, settings = support_mbox
    assert main(["--settings", str(settings), "sla", str(mbox), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "== mailbox: 300 mails" in out and "first_response" in out and "escalations now: " in out


def test_mixed_in_automatic_mail_changes_nothing_and_json_has_both_runs(support_mbox, capsys):
    mbox, settings = support_mbox
    assert main(["--settings", str(settings), "sla", str(mbox), "--mix-automatic", "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    runs = json.loads(captured.out)
    plain, mixed = runs["mailbox"], runs["with automatic mail"]
    assert mixed["mails"] > plain["mails"] == 300
    assert (mixed["sla"], mixed["escalations_now"], mixed["responses"]) == (
        plain["sla"], plain["escalations_now"], plain["responses"])
    assert plain["sla"]["first_response"]["instances"] > 0
    assert "automatic mail changed: nothing" in captured.err


def test_a_mailbox_with_no_mail_of_ours_is_a_user_error(support_mbox, capsys):
    mbox, _ = support_mbox
    assert main(["sla", str(mbox), "--no-progress"]) == 2
    assert "untracked.own_domains" in capsys.readouterr().err
    assert main(["sla", str(mbox), "--desk-share", "0.5", "--no-progress"]) == 0
