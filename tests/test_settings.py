"""Settings: defaults of Dynamics CRM 4.0, TOML file, environment, fingerprint, clear errors."""

from __future__ import annotations

import re

import pytest

from pipeline.settings import SettingsError, load_settings


def test_defaults_are_the_dynamics_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no threadline.toml here
    smart = load_settings(environ={}).correlation.smart_matching
    assert smart.hash_filter_keywords == r"^[\s]*([\w]+\s?:[\s]*)+"
    assert (smart.hash_max_count, smart.hash_delta_subject_count, smart.hash_min_address_count) == (20, 0, 2)
    assert load_settings(environ={}).correlation.window_days == 90


def test_toml_then_environment(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[correlation]\nwindow_days = 30\n[correlation.smart_matching]\nhash_max_count = 5\n'
                    '[kafka]\nbootstrap = "from-file:9092"\n[untracked]\nown_domains = ["a.example"]\n')
    settings = load_settings(path, environ={"THREADLINE_KAFKA_BOOTSTRAP": "from-env:9092",
                                            "THREADLINE_CORRELATION_SMART_MATCHING_HASH_MIN_ADDRESS_COUNT": "1",
                                            "THREADLINE_UNTRACKED_EXCLUDED_DOMAINS": '["b.example"]'})
    assert settings.kafka.bootstrap == "from-env:9092"
    assert settings.correlation.window_days == 30
    assert settings.correlation.smart_matching.hash_max_count == 5
    assert settings.correlation.smart_matching.hash_min_address_count == 1
    assert settings.untracked.own_domains == ("a.example",)
    assert settings.untracked.excluded_domains == ("b.example",)


def test_settings_file_from_environment(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("[clickhouse]\ndatabase = 'tl'\n")
    assert load_settings(environ={"THREADLINE_SETTINGS": str(path)}).clickhouse.database == "tl"


def test_fingerprint_changes_with_matching_settings_only(tmp_path):
    base = load_settings(environ={})
    same = load_settings(environ={"THREADLINE_KAFKA_PARTITIONS": "8"})
    changed = load_settings(environ={"THREADLINE_CORRELATION_SMART_MATCHING_HASH_FILTER_KEYWORDS": r"^\s*(re|fw):\s*"})
    assert base.correlation.fingerprint() == same.correlation.fingerprint()
    assert base.correlation.fingerprint() != changed.correlation.fingerprint()
    assert len(base.correlation.fingerprint()) == 12
    stricter = load_settings(environ={"THREADLINE_CORRELATION_MIN_CONFIDENCE": "0.8"})
    assert stricter.correlation.min_confidence == 0.8
    assert base.correlation.fingerprint() != stricter.correlation.fingerprint()


@pytest.mark.parametrize("content, message", [
    ("[correlation\n", "not valid TOML"),
    ("[correlation.smart_matching]\nhash_filter_keywords = '(['\n", "not a valid regular expression"),
    ("[correlation]\nwindow_days = -1\n", "window_days"),
    ("[correlation]\nmin_confidence = 1.5\n", "min_confidence"),
    ("[correlation]\nno_such_knob = 1\n", "no_such_knob"),
    ("[correlation.tracking_token]\nprefix = 'has space'\n", "prefix"),
    # A first threshold of 0 turns CPython's cyclic collector off: cycles would never be freed.
    ("[worker]\ngc_thresholds = [0, 10, 10]\n", "gc_thresholds"),
    ("[worker]\ngc_thresholds = [700, 10]\n", "gc_thresholds"),
])
def test_bad_settings_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load_settings(path, environ={})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_bad_json_list_in_environment():
    with pytest.raises(SettingsError, match="THREADLINE_UNTRACKED_OWN_DOMAINS"):
        load_settings(environ={"THREADLINE_UNTRACKED_OWN_DOMAINS": "[a.example"})


def test_settings_reference_in_docs_is_current():
    from pathlib import Path

    from pipeline.settings import settings_reference_markdown

    docs = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    assert docs.read_text(encoding="utf-8") == settings_reference_markdown(), \
        "docs/settings.md is stale: run `threadline settings --reference > docs/settings.md`"


def test_secrets_can_come_from_files(tmp_path):
    secret = tmp_path / "sasl_password"
    secret.write_text("s3cret\n")
    settings = load_settings(None, environ={"THREADLINE_KAFKA_SASL_PASSWORD_FILE": str(secret)})
    assert settings.kafka.sasl_password == "s3cret"
    assert "s3cret" not in repr(settings)
    # The variable itself wins over its file; a missing file is a clear error.
    assert load_settings(None, environ={"THREADLINE_KAFKA_SASL_PASSWORD": "direct",
                                        "THREADLINE_KAFKA_SASL_PASSWORD_FILE": str(secret)}).kafka.sasl_password == "direct"
    with pytest.raises(SettingsError, match="THREADLINE_KAFKA_SASL_PASSWORD_FILE"):
        load_settings(None, environ={"THREADLINE_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")})


def test_producer_options_reach_the_producers_but_not_what_the_pipeline_relies_on(tmp_path):
    from pipeline.runtime.kafka import producer_config

    path = tmp_path / "t.toml"
    path.write_text('[kafka.producer_options]\n"message.max.bytes" = 8000000\n"linger.ms" = 20\n')
    config = producer_config(load_settings(path, environ={}).kafka, "b:9092")
    assert (config["message.max.bytes"], config["linger.ms"]) == (8000000, 20)
    assert (config["acks"], config["enable.idempotence"], config["partitioner"]) == ("all", True, "murmur2_random")
    from_env = load_settings(environ={"THREADLINE_KAFKA_PRODUCER_OPTIONS": '{"message.timeout.ms": 5000}'})
    assert producer_config(from_env.kafka, "b:9092")["message.timeout.ms"] == 5000
    for value, message in (('{"partitioner": "random"}', "cannot set partitioner"),
                           ('{"sasl.password": "x", "acks": 1}', "cannot set acks, sasl.password"),
                           ('{"message.max.bytes": ', "not a JSON object")):
        with pytest.raises(SettingsError, match=message):
            load_settings(environ={"THREADLINE_KAFKA_PRODUCER_OPTIONS": value})


def test_smtp_servers_share_one_shape_with_their_own_defaults_and_the_old_flat_keys_name_the_new(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[relay.upstream]\nhost = "smarthost.test"\nstarttls = true\n'
                    '[campaigns.smtp]\nport = 587\n')
    settings = load_settings(path, environ={"THREADLINE_NOTIFICATIONS_SMTP_HOST": "alerts.test"})
    upstream, campaigns, notifications = settings.relay.upstream, settings.campaigns.smtp, settings.notifications.smtp
    assert (upstream.host, upstream.starttls, upstream.timeout_s) == ("smarthost.test", True, 60.0)
    assert (campaigns.host, campaigns.port, campaigns.timeout_s) == (None, 587, 30.0)
    assert (notifications.host, notifications.port, notifications.timeout_s) == ("alerts.test", 25, 10.0)
    for section, old, new in (("relay", "upstream_host", "upstream.host"), ("campaigns", "smtp_timeout_s", "smtp.timeout_s"),
                              ("notifications", "smtp_password", "smtp.password")):
        path.write_text(f'[{section}]\n{old} = "OLD-KEY-MARKER-1234"\n')
        with pytest.raises(SettingsError, match=rf"{section}: .*{old} is now {re.escape(new)}") as caught:
            load_settings(path, environ={})
        assert "OLD-KEY-MARKER-1234" not in str(caught.value)
