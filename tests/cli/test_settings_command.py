"""`threadline settings`: the effective settings as a TOML file load_settings reads back, secrets
masked unless --show-secrets, settings without a value left out and named; --json as before."""

from __future__ import annotations

import json
import os
import tomllib

import pytest

from pipeline.cli.main import main
from pipeline.settings import load_settings

SECRET = "s3cret-sasl-password"
FILE = f"""
[kafka]
bootstrap = "broker.example:9093"
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "svc"
sasl_password = "{SECRET}"

[correlation]
window_days = 30

[[escalation.policies]]
name = "vip"
warn_after = 1
escalate_after = 2
match = {{ mailbox = "vip@desk.example" }}
"""


@pytest.fixture
def settings_file(monkeypatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("THREADLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "given.toml"
    path.write_text(FILE)
    return path


def printed(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("correlation settings fingerprint: ")
    return captured.out


def test_the_toml_printed_loads_back_to_the_same_settings(settings_file, tmp_path, capsys):
    text = printed(capsys, "--settings", str(settings_file), "settings", "--show-secrets")
    saved = tmp_path / "threadline.toml"
    saved.write_text(text)
    assert load_settings(saved, environ={}) == load_settings(settings_file, environ={})
    assert tomllib.loads(text)["escalation"]["policies"][0]["match"] == {"mailbox": "vip@desk.example"}
    assert SECRET in text


def test_secrets_are_left_out_and_named_and_the_environment_gives_them_back(settings_file, tmp_path, capsys):
    text = printed(capsys, "--settings", str(settings_file), "settings")
    assert SECRET not in text and "********" not in text
    comments = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert "Secrets are left out (--show-secrets prints them; or give them as THREADLINE_<SECTION>_<FIELD>[_FILE]): " \
           "kafka.sasl_password, tracking.keys.dev." in comments
    saved = tmp_path / "masked.toml"
    saved.write_text(text)
    given = load_settings(settings_file, environ={})
    assert load_settings(saved, environ={"THREADLINE_KAFKA_SASL_PASSWORD": SECRET}) == given


def test_the_defaults_printed_load_back_as_the_defaults(settings_file, tmp_path, capsys):
    saved = tmp_path / "defaults.toml"
    saved.write_text(printed(capsys, "settings"))  # no file: the defaults, the development key masked
    assert load_settings(saved, environ={}) == load_settings(None, environ={})


def test_settings_without_a_value_are_left_out_and_named_in_a_comment(settings_file, capsys):
    text = printed(capsys, "settings")  # no file: the defaults
    comments = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert "Settings without a value are left out, TOML having no null: correlation.custom_rule, kafka.bootstrap," \
        in comments
    values = tomllib.loads(text)
    assert "bootstrap" not in values["kafka"] and values["kafka"]["partitions"] == 4


def test_json_keeps_the_dump_of_before_with_null(settings_file, capsys):
    values = json.loads(printed(capsys, "--settings", str(settings_file), "settings", "--json"))
    assert values["kafka"]["sasl_password"] == "********" and values["clickhouse"]["url"] is None
    assert values["correlation"]["window_days"] == 30.0
