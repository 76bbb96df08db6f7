"""Secrets in settings (issue 13): `threadline settings`, dumps, repr and settings errors never show
them; `--show-secrets` does. Every secret field is found from the one marker (repr=False)."""

from __future__ import annotations

import json
import traceback

import pytest
from pipeline.cli.main import main
from pipeline.redact import MASK, is_secret, redact_url, scrub, settings_secrets
from pipeline.settings import Settings, SettingsError, leaf_fields, load_settings, settings_reference_markdown


def secret_fields() -> list[tuple[str, str, type]]:
    """(section, field, annotation) of every secret field."""
    return [(section, name, field.annotation) for section, name, field in leaf_fields() if is_secret(field)]


def marker(section: str, name: str) -> str:
    return f"MARKER-{section}-{name}-0123456789abcdef".replace("_", "-")


# Fields that must be secret by their names; the marker is what keeps them out of output, so a new
# password field without it would be printed.
def test_every_password_and_key_field_is_marked_secret():
    assert {(s, n) for s, n, _ in secret_fields()} >= {
        ("kafka", "sasl_password"), ("tracking", "keys"), ("notifications.smtp", "password"),
        ("campaigns.smtp", "password"), ("imap", "password"), ("relay.upstream", "password"),
        ("relay", "auth_password")}
    for section, name, field in leaf_fields():
        if "password" in name or "secret" in name or name == "keys":
            assert is_secret(field), f"{section}.{name} looks like a secret but has no repr=False"


URL_SECRETS = {"clickhouse": "ch-url-pass-9f8e7d", "schema_registry": "registry-pass-6c5b4a",
               "webhook": "webhook-pass-3a2b1c", "webhook_token": "webhook-token-0d9e8f"}


def settings_with_every_secret(tmp_path):
    lines: dict[str, list[str]] = {}
    for section, name, annotation in secret_fields():
        value = json.dumps(marker(section, name))
        lines.setdefault(section, []).append(f"{name} = {{ k1 = {value} }}" if "dict" in str(annotation)
                                             else f"{name} = {value}")
    lines["tracking"].append('current_key_id = "k1"')
    lines["relay"].append('auth_username = "relay-user"')
    lines["clickhouse"] = [f'url = "https://reader:{URL_SECRETS["clickhouse"]}@ch.example:8443/threadline"']
    lines["schema_registry"] = [f'url = "https://reg:{URL_SECRETS["schema_registry"]}@registry.example"']
    lines.setdefault("notifications", []).append(f'webhook_urls = ["https://hook:{URL_SECRETS["webhook"]}@hooks.example/a", '
                                  f'"https://hooks.example/b?token={URL_SECRETS["webhook_token"]}"]')
    path = tmp_path / "secrets.toml"
    path.write_text("".join(f"[{section}]\n" + "\n".join(body) + "\n" for section, body in lines.items()))
    everything = {marker(s, n) for s, n, _ in secret_fields()} | set(URL_SECRETS.values())
    return path, everything


def test_threadline_settings_masks_every_secret_unless_asked(tmp_path, monkeypatch, capsys):
    path, everything = settings_with_every_secret(tmp_path)
    monkeypatch.delenv("THREADLINE_SETTINGS", raising=False)
    assert settings_secrets(load_settings(path, environ={})) >= everything  # every marker was loaded

    assert main(["--settings", str(path), "settings"]) == 0  # TOML
    shown = capsys.readouterr()
    assert [secret for secret in everything if secret in shown.out + shown.err] == []
    assert main(["--settings", str(path), "settings", "--json"]) == 0
    shown = capsys.readouterr()
    assert [secret for secret in everything if secret in shown.out + shown.err] == []
    printed = json.loads(shown.out)
    assert printed["tracking"]["keys"] == {"k1": MASK}  # key ids stay visible
    assert printed["kafka"]["sasl_password"] == MASK and printed["imap"]["username"] is None
    assert printed["clickhouse"]["url"] == f"https://reader:{MASK}@ch.example:8443/threadline"
    assert printed["notifications"]["webhook_urls"][1] == f"https://hooks.example/b?token={MASK}"

    for toml_or_json in ([], ["--json"]):
        assert main(["--settings", str(path), "settings", "--show-secrets", *toml_or_json]) == 0
        shown = capsys.readouterr().out
        assert [secret for secret in everything if secret not in shown] == []


def test_dumps_and_repr_mask_but_the_values_are_intact(tmp_path):
    path, everything = settings_with_every_secret(tmp_path)
    settings = load_settings(path, environ={})
    for text in (repr(settings), str(settings), json.dumps(settings.model_dump(mode="json")),
                 settings.model_dump_json(), str(settings.model_dump())):
        assert [secret for secret in everything if secret in text] == []
    assert settings.kafka.sasl_password == marker("kafka", "sasl_password")  # readers get the real value
    assert URL_SECRETS["clickhouse"] in settings.clickhouse.url


def test_reference_masks_secret_defaults():
    assert Settings().tracking.keys  # there is a default key...
    reference = settings_reference_markdown()
    for secret in Settings().tracking.keys.values():
        assert secret not in reference  # ...and the reference shows only its id


@pytest.mark.parametrize("environ, location", [
    # a secret that is too short: the validator names the key id, never the secret
    ({"THREADLINE_TRACKING_KEYS": '{"k": "SHORT-MARKER1"}', "THREADLINE_TRACKING_CURRENT_KEY_ID": "k"},
     "tracking.keys"),
    ({"THREADLINE_RELAY_AUTH_PASSWORD": "RELAY-MARKER-5521"}, "relay.auth_password"),  # no auth_username
    ({"THREADLINE_CLICKHOUSE_URL": "https://u:CH-MARKER-7731@host:notaport/db"}, "clickhouse.url"),
    ({"THREADLINE_CLICKHOUSE_URL": "ftp://u:CH-MARKER-7731@host/db"}, "clickhouse.url"),
    # pydantic's own text would print the rejected value of any field, secret or not
    ({"THREADLINE_TRACKING_KEYS": '{"k": ["LIST-MARKER-1"]}'}, "tracking.keys"),
    ({"THREADLINE_TRACKING_BASE_URL": "https://u:BASE-MARKER-9@t.example/?q=1"}, "tracking.base_url"),
])
def test_settings_errors_name_the_field_but_never_echo_the_value(environ, location, monkeypatch, capsys):
    secret = next(part for value in environ.values() for part in value.replace('"', " ").replace(":", " ")
                  .replace("@", " ").split() if "MARKER" in part)
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=environ)
    text = "".join(traceback.format_exception(caught.value))  # chained exceptions included
    assert location in text
    assert secret not in text

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("THREADLINE_SETTINGS", raising=False)
    assert main(["settings"]) == 2
    shown = capsys.readouterr()
    assert location in shown.err and secret not in shown.err + shown.out


def test_a_misspelled_secret_field_is_not_echoed(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[kafka]\nsasl_pasword = "TYPO-MARKER-0042"\n')
    with pytest.raises(SettingsError, match="sasl_pasword") as caught:
        load_settings(path, environ={})
    assert "TYPO-MARKER-0042" not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize("text, shown", [
    ("https://user:p%40ss@ch.example:8443/db", f"https://user:{MASK}@ch.example:8443/db"),
    ("http://user:p@ss@h/x", f"http://user:{MASK}@h/x"),  # an unencoded @ in the password
    ("https://user@h/x", "https://user@h/x"),  # no password: nothing to hide
    ("https://h/hook?a=1&api_key=abc&b=2", f"https://h/hook?a=1&api_key={MASK}&b=2"),
    ("cannot reach http://a:b1@h1, http://c:d2@h2", f"cannot reach http://a:{MASK}@h1, http://c:{MASK}@h2"),
    ("https://h:8443/db", "https://h:8443/db"),
    ("http://u:REG/SLASH-x@h:8081", f"http://u:{MASK}@h:8081"),  # an unencoded / in the password
    ("https://fn.example/api/hook?code=AZ-SECRET", f"https://fn.example/api/hook?code={MASK}"),  # Azure-style key
])
def test_redact_url(text, shown):
    assert redact_url(text) == shown


def test_scrub_removes_secrets_from_free_text():
    assert scrub("login as bob with hunter22 failed", {"hunter22", "ab"}) == f"login as bob with {MASK} failed"
