"""pipeline/cli/campaigns.py: `threadline mark` and `threadline campaign send` as a user runs them."""

from __future__ import annotations

import email
import email.policy
import json
import re
from email.message import EmailMessage
from types import SimpleNamespace

import pytest

from pipeline.campaigns import send as send_module
from pipeline.campaigns.recipients import DomainLookup
from pipeline.cli.main import main
from pipeline.settings import TrackingSettings
from pipeline.tracking.tokens import Keyring, verify_token

KEYS = Keyring.from_settings(TrackingSettings(keys={"k1": "a-test-secret-0123456789-abcdefghij"}, current_key_id="k1"))
PIXEL = re.compile(r'<img src="https://t\.example/track/o/([A-Za-z0-9_-]+)\.gif"[^>]*>')


@pytest.fixture
def settings_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("THREADLINE_SETTINGS", "THREADLINE_TRACKING_BASE_URL", "THREADLINE_TRACKING_KEYS",
                 "THREADLINE_TRACKING_CURRENT_KEY_ID", "THREADLINE_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "t.toml"
    path.write_text(f'[worker]\ndata_dir = "{tmp_path / "data"}"\n'
                    '[tracking]\nbase_url = "https://t.example/track"\ncurrent_key_id = "k1"\n'
                    '[tracking.keys]\nk1 = "a-test-secret-0123456789-abcdefghij"\n')
    return path


def mail(to: str = "Ann <ann@customer.example>", subject: str = "Spring offers") -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "Desk <desk@ours.example>", to, subject
    message["Message-ID"] = "<m1@ours.example>"
    message.set_content("Hello, our offers: https://www.example.com/offers")
    message.add_alternative('<html><body><a href="https://www.example.com/offers">offers</a></body></html>',
                            subtype="html")
    return message.as_bytes(policy=email.policy.SMTP)


def test_mark_writes_a_file(settings_file, tmp_path, capsys):
    source, out = tmp_path / "in.eml", tmp_path / "out.eml"
    source.write_bytes(mail(to="ann@customer.example, bob@customer.example"))
    assert main(["--settings", str(settings_file), "mark", str(source), "-o", str(out), "--campaign", "c7",
                 "--tenant", "acme", "--recipient", "bob@customer.example"]) == 0
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("tracked (campaign) <m1@ours.example> for bob@customer.example")
    html = email.message_from_bytes(out.read_bytes(), policy=email.policy.default).get_body(("html",)).get_content()
    [pixel] = PIXEL.findall(html)
    payload = verify_token(pixel, KEYS)
    assert (payload.tenant, payload.campaign_id, payload.recipient) == ("acme", "c7", "bob@customer.example")


def test_mark_writes_stdout_and_reports_errors(settings_file, tmp_path, capsysbinary):
    source = tmp_path / "in.eml"
    source.write_bytes(mail())
    assert main(["--settings", str(settings_file), "mark", str(source)]) == 0
    captured = capsysbinary.readouterr()
    assert captured.out == source.read_bytes() and b"not tracked" in captured.err
    source.write_bytes(mail(to="a@x.example, b@x.example", subject="#track x"))
    assert main(["--settings", str(settings_file), "mark", str(source)]) == 2
    assert b"2 recipients" in capsysbinary.readouterr().err
    assert main(["--settings", str(settings_file), "mark", str(tmp_path / "missing.eml")]) == 2
    assert b"no such message" in capsysbinary.readouterr().err


def test_campaign_send_dry_run_and_user_errors(settings_file, tmp_path, monkeypatch, capsys):
    every_domain_has_mail = SimpleNamespace(lookup=lambda domain, timeout: DomainLookup("ok", (f"mx.{domain}",)))
    monkeypatch.setattr(send_module, "DnsResolver", lambda: every_domain_has_mail)
    template = tmp_path / "template.toml"
    template.write_text('subject = "Hi {{ first_name }}"\ntext = "Hello {{ first_name }} {{ unsubscribe_url }}"\n')
    recipients = tmp_path / "r.csv"
    recipients.write_text("email,first_name\n" + "".join(f"user{i}@customer.example,Name{i}\n" for i in range(3))
                          + "nope,X\n")
    send = ["--settings", str(settings_file), "campaign", "send", "--campaign", "c1", "--template", str(template),
            "--recipients", str(recipients)]
    assert main([*send, "--dry-run", "--report", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "campaign c1 (default) DRY RUN: 4 rows: 3 would_send, 1 syntax" in err and "row 5 nope: syntax" in err
    assert json.loads((tmp_path / "r.json").read_text())["skipped"] == [{"row": 5, "email": "nope", "reason": "syntax"}]
    assert "render: 100%|" in err and "3/3" in err  # the progress bar over the mails to send
    assert main([*send, "--dry-run", "--no-progress", "--report", "-"]) == 0  # the report on stdout
    captured = capsys.readouterr()
    assert json.loads(captured.out)["counts"] == {"would_send": 3, "syntax": 1} and "render:" not in captured.err
    # --to-mail-raw without a broker is refused before any mail is sent.
    assert main([*send, "--to-mail-raw"]) == 2
    assert capsys.readouterr().err.startswith("threadline: no broker configured and no `threadline up` running")
    assert not (tmp_path / "data" / "campaigns").exists()
    template.write_text('subject = "Hi {{ last_name }}"\ntext = "x"\n')
    assert main([*send, "--dry-run"]) == 2
    assert "row 2 (user0@customer.example), subject: 'last_name' is undefined" in capsys.readouterr().err
