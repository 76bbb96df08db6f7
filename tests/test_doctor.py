"""``threadline doctor``: each check finds what is wrong and says how to fix it."""

from __future__ import annotations

import os
import time

import pytest

import pipeline.broker
from pipeline.broker import free_port
from pipeline.doctor import check_broker, check_dashboards, check_schemas, check_settings, run_checks
from pipeline.running import RunningStack, publish, running_stack
from pipeline.settings import Settings, SettingsError, load_settings


def with_filter(pattern: str) -> Settings:
    """Default settings with another hash_filter_keywords, without validation (the way an
    invalid value would reach the doctor if it got past the settings model)."""
    settings = Settings()
    smart = settings.correlation.smart_matching.model_copy(update={"hash_filter_keywords": pattern})
    correlation = settings.correlation.model_copy(update={"smart_matching": smart})
    return settings.model_copy(update={"correlation": correlation})


def by_name(checks, name):
    [check] = [c for c in checks if c.name == name]
    return check


def test_default_settings_pass():
    checks = check_settings(Settings())
    assert checks and all(c.ok for c in checks)
    assert by_name(checks, "hash_filter_keywords").ok


@pytest.mark.parametrize("pattern", [".*", r"[\w\s:.]+"])
def test_filter_that_strips_whole_subjects_is_flagged(pattern):
    settings = Settings.model_validate({"correlation": {"smart_matching": {"hash_filter_keywords": pattern}}})
    check = by_name(check_settings(settings), "hash_filter_keywords")
    assert not check.ok
    assert "strips whole subjects" in check.detail and check.fix
    assert "fix:" in check.format()


def test_invalid_regex_is_flagged():
    with pytest.raises(SettingsError, match="hash_filter_keywords"):  # the settings model refuses it...
        load_settings(environ={"THREADLINE_SETTINGS": "/dev/null",
                               "THREADLINE_CORRELATION_SMART_MATCHING_HASH_FILTER_KEYWORDS": "(re:"})
    [check] = check_settings(with_filter("(re:"))  # ...and the doctor too
    assert (check.name, check.ok) == ("hash_filter_keywords", False)
    assert "not a regular expression" in check.detail and "valid regex" in check.fix


def test_other_settings_problems_are_flagged():
    settings = Settings.model_validate({
        "correlation": {"smart_matching": {"hash_min_address_count": 30, "hash_max_count": 5},
                        "custom_rule": "no_such_module_xyz:rule"},
        "untracked": {"own_domains": ["corp.example"], "excluded_domains": ["corp.example"]},
    })
    failing = {c.name for c in check_settings(settings) if not c.ok}
    assert failing == {"hash_min_address_count", "custom_rule", "excluded_domains"}


def test_schemas_of_the_repository_pass():
    [check] = check_schemas()
    assert check.ok, check.detail
    assert check.detail.startswith("14 topics")


@pytest.mark.integration  # opens sockets on loopback
def test_unreachable_broker_fails_with_a_fix(monkeypatch):
    real = pipeline.broker.topic_partitions
    # The doctor waits 10 s for metadata (measured: 10.0 s against a closed port); 1 s is enough here.
    monkeypatch.setattr(pipeline.broker, "topic_partitions",
                        lambda kafka, bootstrap, timeout_s=10: real(kafka, bootstrap, timeout_s=1.0))
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings.model_validate({"kafka": {"bootstrap": bootstrap}})
    started = time.monotonic()
    [check] = check_broker(settings)
    assert time.monotonic() - started < 5
    assert (check.name, check.ok) == ("broker", False)
    assert f"cannot reach {bootstrap}" in check.detail
    # Loopback and no `threadline up` here: most likely the export of an `up` that has stopped.
    assert "no threadline up runs on this data folder" in check.fix and "THREADLINE_KAFKA_BOOTSTRAP" in check.fix


@pytest.mark.integration  # connects to closed loopback ports
def test_a_running_stack_whose_servers_do_not_answer_fails_with_a_fix(tmp_path, monkeypatch):
    """What `threadline up` published in the data folder (stack.json) is checked: it is reported,
    and a broker or tracking endpoint of it that does not answer fails with a fix for `up`."""
    real = pipeline.broker.topic_partitions
    monkeypatch.setattr(pipeline.broker, "topic_partitions",
                        lambda kafka, bootstrap, timeout_s=10: real(kafka, bootstrap, timeout_s=1.0))
    bootstrap, tracking = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    publish(tmp_path, RunningStack(pid=os.getpid(), bootstrap=bootstrap, embedded_broker=True, tracking_url=tracking))
    for environ in ({}, {"THREADLINE_KAFKA_BOOTSTRAP": bootstrap}):  # found there, or exported as up says
        checks = run_checks(load_settings(None, environ={"THREADLINE_WORKER_DATA_DIR": str(tmp_path), **environ}))
        up = by_name(checks, "threadline up")
        assert up.ok and f"(pid {os.getpid()}): embedded broker {bootstrap}, tracking endpoint {tracking}" in up.detail
        endpoint = by_name(checks, "tracking endpoint")
        assert not endpoint.ok and f"{tracking} does not answer" in endpoint.detail and "tracking.log" in endpoint.fix
        broker = by_name(checks, "broker")
        assert not broker.ok and f"cannot reach the embedded broker of threadline up at {bootstrap}" in broker.detail
        assert "broker.log" in broker.fix and "start it again" in broker.fix
    # An export left from an earlier run names another broker than the one running here.
    other = f"127.0.0.1:{free_port()}"
    settings = load_settings(None, environ={"THREADLINE_WORKER_DATA_DIR": str(tmp_path),
                                            "THREADLINE_KAFKA_BOOTSTRAP": other})
    [broker] = check_broker(settings, running_stack(tmp_path))
    assert not broker.ok and f"cannot reach {other}" in broker.detail
    assert f"not the broker of the threadline up running here ({bootstrap})" in broker.fix


def test_run_checks_on_defaults_all_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default blob store is data/blobs under the current folder
    checks = run_checks(Settings())
    assert {c.name for c in checks} == {"hash_filter_keywords", "tracking keys", "blob store", "schemas", "dashboards",
                                        "broker", "clickhouse", "schema registry", "smtp relay", "sla record states"}
    assert [c.format() for c in checks if not c.ok] == []
    # Nothing runs and nothing is configured: fine, and the doctor says what starts the broker.
    broker = by_name(checks, "broker")
    assert broker.detail.startswith("none running") and "`threadline up` starts the embedded broker" in broker.detail


def test_missing_or_changed_package_files_are_restored_not_rebuilt(tmp_path):
    """Outside the checkout (an installed package) a missing schema, registry or dashboard file is
    fixed by installing again: `schemas release` would hand out new schema ids there."""
    import shutil

    from pipeline.analytics.dashboards import DASHBOARD_DIR
    from pipeline.contracts.avro import SCHEMA_DIR

    schemas, dashboards = tmp_path / "schemas", tmp_path / "grafana"
    shutil.copytree(SCHEMA_DIR, schemas)
    shutil.copytree(DASHBOARD_DIR, dashboards)
    assert [c.ok for c in check_schemas(schemas) + check_dashboards(dashboards)] == [True, True]
    (schemas / "alerts.avsc").unlink()
    (schemas / "registry.json").unlink()
    [schema_check] = check_schemas(schemas)
    assert not schema_check.ok and schema_check.detail.endswith("has no alerts.avsc, registry.json")
    assert "install it again" in schema_check.fix and "release" not in schema_check.fix
    sla = dashboards / "threadline-sla.json"
    sla.write_text(sla.read_text().replace('"title"', '"Title"', 1))
    [stale] = check_dashboards(dashboards)
    assert not stale.ok and "threadline-sla.json" in stale.detail and "install it again" in stale.fix
    (dashboards / "provisioning" / "dashboards" / "threadline.yaml").unlink()
    [missing] = check_dashboards(dashboards)
    assert not missing.ok and "has no provisioning/dashboards/threadline.yaml" in missing.detail
    # In the checkout the repository's own files are restored from git.
    [in_checkout] = check_schemas(SCHEMA_DIR / "released")
    assert "git checkout -- pipeline/contracts/schemas/released" in in_checkout.fix


def test_development_tracking_key_fails_only_outside_the_loopback_demo():
    from pipeline.doctor import check_settings
    from pipeline.settings import load_settings

    def keys_check(**environ):
        return by_name(check_settings(load_settings(None, environ=environ)), "tracking keys")

    embedded = keys_check()
    assert embedded.ok and "development key" in embedded.detail and "loopback demo" in embedded.detail
    # Issue 17: the embedded broker's address exported as THREADLINE_KAFKA_BOOTSTRAP is still the demo.
    assert keys_check(THREADLINE_KAFKA_BOOTSTRAP="127.0.0.1:45123").ok
    real = keys_check(THREADLINE_KAFKA_BOOTSTRAP="kafka:9092")
    assert not real.ok and "kafka.bootstrap names kafka" in real.detail
    assert "THREADLINE_TRACKING_KEYS" in real.fix and "secrets.token_urlsafe(32)" in real.fix
    public_links = keys_check(THREADLINE_TRACKING_BASE_URL="https://track.example.com")
    assert not public_links.ok and "tracking.base_url https://track.example.com" in public_links.detail
    example = keys_check(THREADLINE_KAFKA_BOOTSTRAP="kafka:9092",
                         THREADLINE_TRACKING_KEYS='{"k1": "replace-with-a-long-random-secret"}',
                         THREADLINE_TRACKING_CURRENT_KEY_ID="k1")
    assert not example.ok and "example secret" in example.detail
    keyed = keys_check(THREADLINE_KAFKA_BOOTSTRAP="kafka:9092",
                       THREADLINE_TRACKING_KEYS='{"k1": "a-long-random-production-secret-0123456789"}',
                       THREADLINE_TRACKING_CURRENT_KEY_ID="k1")
    assert keyed.ok and "none public or weak" in keyed.detail and "a-long-random" not in keyed.format()


def test_blob_store_that_cannot_take_writes_fails_with_a_fix(tmp_path):
    from pipeline.doctor import check_blob_store

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings = load_settings(None, environ={"THREADLINE_MAIL_BLOB_DIR": str(blocker / "blobs")})
    [check] = check_blob_store(settings)
    assert not check.ok and "blobs" in check.detail and "THREADLINE_MAIL_BLOB_DIR" in check.fix
    [good] = check_blob_store(load_settings(None, environ={"THREADLINE_MAIL_BLOB_DIR": str(tmp_path / "blobs")}))
    assert good.ok and (tmp_path / "blobs").is_dir() and not any((tmp_path / "blobs").iterdir())


def test_relay_is_judged_as_the_relay_judges_itself_before_it_starts():
    from pipeline.doctor import check_relay

    def relay_checks(**variables):
        return check_relay(load_settings(None, environ={"THREADLINE_SETTINGS": "/dev/null", **variables}))

    [unused] = relay_checks()
    assert unused.ok and "not configured" in unused.detail
    upstream = {"THREADLINE_RELAY_UPSTREAM_HOST": "smtp.acme.test"}
    [no_domains] = relay_checks(**upstream)
    assert not no_domains.ok and "does not start" in no_domains.detail and "relay.own_domains" in no_domains.fix
    ours = {**upstream, "THREADLINE_RELAY_OWN_DOMAINS": '["acme.test"]'}
    [closed] = relay_checks(**ours)
    assert closed.ok and "acme.test" in closed.detail and "127.0.0.0/8" in closed.detail
    failing = relay_checks(**ours, THREADLINE_RELAY_HOST="0.0.0.0",
                           THREADLINE_RELAY_CLIENT_NETWORKS='["10.0.0.0/8"]')
    assert [c.ok for c in failing] == [False, False]
    assert "AUTH over TLS" in failing[0].detail and "relay.trust_client_networks" in failing[1].fix
    [mx] = relay_checks(**ours, THREADLINE_RELAY_HOST="0.0.0.0", THREADLINE_RELAY_MODE="inbound")
    assert mx.ok and "inbound on 0.0.0.0" in mx.name
    # Off loopback a guessable AUTH password is a refusal, as the relay itself refuses it.
    tls_auth = {**ours, "THREADLINE_RELAY_HOST": "0.0.0.0", "THREADLINE_RELAY_TLS_CERT_FILE": "/etc/r/cert.pem",
                "THREADLINE_RELAY_TLS_KEY_FILE": "/etc/r/key.pem", "THREADLINE_RELAY_AUTH_USERNAME": "threadline"}
    [weak] = relay_checks(**tls_auth, THREADLINE_RELAY_AUTH_PASSWORD="change-me")
    assert not weak.ok and "relay.auth_password" in weak.detail and "example secret" in weak.detail
    assert "change-me" not in weak.detail + weak.fix and "16 characters" in weak.fix
    [strong] = relay_checks(**tls_auth, THREADLINE_RELAY_AUTH_PASSWORD="v7-Kq2pXw9Lm4Rt8")
    assert strong.ok and "closed" in strong.detail


def test_policies_that_depend_on_crm_record_states_are_flagged():
    # Defaults pass (the default resolved_states were not asked for); asking for record states fails.
    assert by_name(check_settings(Settings()), "sla record states").ok
    settings = Settings.model_validate({"escalation": {
        "default_policy": {"sla": {"resolved_states": ["Done"]}},
        "policies": [{"name": "cases", "match": {"regarding_prefix": "SUPP-"}, "sla": {"pause": "record_state"}},
                     {"name": "quiet", "match": {"tenant": "beta"}, "sla": {"pause": "none"}}]}})
    check = by_name(check_settings(settings), "sla record states")
    assert not check.ok and check.fix
    assert check.detail.startswith("default: resolved_states; cases: pause = record_state: no effect in the pipeline")
    assert "quiet" not in check.detail


@pytest.mark.integration  # a real endpoint on loopback
def test_schema_registry_of_a_running_up_is_checked_for_the_ids_the_records_carry(tmp_path):
    from pipeline.doctor import check_schema_registry
    from pipeline.gateways.schema_registry import start_registry

    settings = load_settings(None, environ={"THREADLINE_SETTINGS": "/dev/null",
                                            "THREADLINE_WORKER_DATA_DIR": str(tmp_path)})
    [none] = check_schema_registry(settings, None)
    assert none.ok and "no threadline up runs here" in none.detail
    with start_registry(tmp_path) as registry:
        publish(tmp_path, RunningStack(pid=os.getpid(), bootstrap="127.0.0.1:1", embedded_broker=True,
                                       schema_registry_url=registry.url))
        [check] = check_schema_registry(settings, running_stack(tmp_path))
        assert check.ok and registry.url in check.detail and "with the ids the records carry" in check.detail
    [gone] = check_schema_registry(settings, running_stack(tmp_path))  # stack.json names it; nothing answers
    assert not gone.ok and "does not answer" in gone.detail and "start it again" in gone.fix
    publish(tmp_path, RunningStack(pid=os.getpid(), bootstrap="127.0.0.1:1", embedded_broker=True))
    [without] = check_schema_registry(settings, running_stack(tmp_path))
    assert not without.ok and "serves no Schema Registry endpoint" in without.detail
    with start_registry(tmp_path) as registry:
        url = registry.url.replace("http://", "http://reader:s3cret-password@")
        configured = load_settings(None, environ={"THREADLINE_SETTINGS": "/dev/null",
                                                  "THREADLINE_SCHEMA_REGISTRY_URL": url})
        [check] = check_schema_registry(configured, None)
        assert check.ok and "the configured registry" in check.detail and "s3cret-password" not in check.detail
    [down] = check_schema_registry(configured, None)
    assert not down.ok and "s3cret-password" not in down.format() and "THREADLINE_SCHEMA_REGISTRY_URL" in down.fix
