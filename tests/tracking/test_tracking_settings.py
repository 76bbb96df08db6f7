"""The [tracking] settings section: defaults, TOML and environment, validation, secrets kept out of repr."""

from __future__ import annotations

import pytest

from pipeline.settings import (DEVELOPMENT_TRACKING_KEY, Settings, SettingsError, TrackingSettings, load_settings,
                               settings_reference_markdown)


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracking = load_settings(environ={}).tracking
    assert tracking.base_url == "http://127.0.0.1:8080"
    assert tracking.current_key_id in tracking.keys
    assert tracking.keys == {"dev": DEVELOPMENT_TRACKING_KEY}  # public: refused outside the loopback demo
    assert (tracking.anonymize_ip, tracking.reverse_dns) == (True, False)
    # Tokens expire by default, unsubscribe links last longest (they must work long after sending).
    assert (tracking.pixel_max_age_days, tracking.click_max_age_days, tracking.unsubscribe_max_age_days) == (
        180, 365, 730)
    assert tracking.scanner_window_s == 10
    assert tracking.apple_proxy_networks == ("17.0.0.0/8",)
    assert tracking.datacenter_networks == ()
    assert tracking.access_log_personal_data is False


def test_toml_and_environment(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[tracking]\nbase_url = "https://t.example/track/"\ncurrent_key_id = "2026a"\n'
                    'datacenter_networks = ["203.0.113.7/24"]\n'
                    '[tracking.keys]\n"2026a" = "a-long-enough-secret"\n')
    tracking = load_settings(path, environ={"THREADLINE_TRACKING_CLICK_MAX_AGE_DAYS": "0",
                                            "THREADLINE_TRACKING_APPLE_PROXY_NETWORKS": '["17.0.0.0/8", "2620:149::/32"]'
                                            }).tracking
    assert tracking.base_url == "https://t.example/track"  # trailing slash dropped
    assert tracking.keys == {"2026a": "a-long-enough-secret"}
    assert tracking.datacenter_networks == ("203.0.113.0/24",)  # normalised
    assert (tracking.pixel_max_age_days, tracking.click_max_age_days) == (180, 0)  # 0: clicks never expire
    assert tracking.apple_proxy_networks == ("17.0.0.0/8", "2620:149::/32")


def test_keys_from_a_json_variable():
    tracking = load_settings(environ={"THREADLINE_TRACKING_KEYS": '{"old": "old-secret-0123456789", '
                                                                  '"new": "new-secret-0123456789"}',
                                      "THREADLINE_TRACKING_CURRENT_KEY_ID": "new"}).tracking
    assert set(tracking.keys) == {"old", "new"} and tracking.current_key_id == "new"


@pytest.mark.parametrize("environ, message", [
    ({"THREADLINE_TRACKING_CURRENT_KEY_ID": "nope"}, "current_key_id 'nope' is not one of keys"),
    ({"THREADLINE_TRACKING_KEYS": '{"k": "tiny-key"}', "THREADLINE_TRACKING_CURRENT_KEY_ID": "k"}, "shorter than 16"),
    ({"THREADLINE_TRACKING_KEYS": '{"bad id": "0123456789abcdef"}'}, "key id 'bad id'"),
    ({"THREADLINE_TRACKING_KEYS": "{}"}, "at least one key"),
    ({"THREADLINE_TRACKING_KEYS": "{not json"}, "not a JSON object"),
    ({"THREADLINE_TRACKING_BASE_URL": "t.example/track"}, "base_url"),
    ({"THREADLINE_TRACKING_BASE_URL": "https://t.example/?q=1"}, "base_url"),
    ({"THREADLINE_TRACKING_DATACENTER_NETWORKS": '["10.0.0.0/33"]'}, "not a CIDR network"),
    ({"THREADLINE_TRACKING_PIXEL_MAX_AGE_DAYS": "-1"}, "pixel_max_age_days"),
    ({"THREADLINE_TRACKING_UNSUBSCRIBE_MAX_AGE_DAYS": "36501"}, "unsubscribe_max_age_days"),
    # The replaced setting is an error, not silently ignored: "0" (never) would become the defaults.
    ({"THREADLINE_TRACKING_TOKEN_MAX_AGE_DAYS": "0"}, "replaced by THREADLINE_TRACKING_PIXEL_MAX_AGE_DAYS"),
    ({"THREADLINE_TRACKING_SCANNER_WINDOW_S": "-1"}, "scanner_window_s"),
])
def test_bad_tracking_settings_say_what_is_wrong(environ, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=environ)


def test_token_max_age_days_in_a_file_names_its_replacements(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("[tracking]\ntoken_max_age_days = 0\n")
    with pytest.raises(SettingsError, match="token_max_age_days was replaced by pixel_max_age_days, click_max_age_days"):
        load_settings(path, environ={})


def test_secrets_stay_out_of_repr():
    tracking = TrackingSettings(keys={"k": "super-secret-value-123"}, current_key_id="k")
    assert "super-secret-value-123" not in repr(tracking)
    assert "super-secret-value-123" not in repr(Settings(tracking=tracking))


def test_reference_documents_every_tracking_setting():
    reference = settings_reference_markdown()
    for name in TrackingSettings.model_fields:
        assert f"| `tracking.{name}` | `THREADLINE_TRACKING_{name.upper()}` |" in reference
    assert "SECRET" in reference and "development key" in reference
