"""Who may use the relay and how much (pipeline/gateways/smtp/policy.py): the settings' own checks,
the judgement of a configuration, per-client limits and the AUTH lock-out, without sockets."""

from __future__ import annotations

import pytest

from pipeline.gateways.smtp import policy
from pipeline.settings import RelaySettings, Settings, SettingsError, load_settings

from relay_helpers import STRONG_PASSWORD, judged  # tests/gateways/smtp/relay_helpers.py


def test_relay_settings_validate_and_read_json_from_the_environment():
    loaded = load_settings(environ={"THREADLINE_RELAY_SENDER_USER_NUMBERS": '{"Ann@Acme.Test": 7}',
                                    "THREADLINE_RELAY_UPSTREAM_HOST": "smtp.acme.test"})
    assert loaded.relay.sender_user_numbers == {"ann@acme.test": 7}
    assert "secret" not in repr(RelaySettings(auth_username="u", auth_password="secret", upstream={"password": "secret"}))
    for bad in ({"THREADLINE_RELAY_TLS_CERT_FILE": "/x.pem"}, {"THREADLINE_RELAY_AUTH_USERNAME": "u"},
                {"THREADLINE_RELAY_SENDER_USER_NUMBERS": "{nope"}):
        with pytest.raises(SettingsError):
            load_settings(environ=bad)


def test_an_empty_auth_password_or_username_is_a_settings_error(tmp_path):
    empty_file = tmp_path / "empty"
    empty_file.write_text("\n")  # what `echo > secret` leaves: the newline is dropped, nothing remains
    user = {"THREADLINE_RELAY_AUTH_USERNAME": "threadline"}
    for environ in ({**user, "THREADLINE_RELAY_AUTH_PASSWORD": ""}, {**user, "THREADLINE_RELAY_AUTH_PASSWORD": "  "},
                    {**user, "THREADLINE_RELAY_AUTH_PASSWORD_FILE": str(empty_file)}):
        with pytest.raises(SettingsError, match="auth_password is empty"):
            load_settings(environ=environ)
    with pytest.raises(SettingsError, match="auth_username is empty"):
        load_settings(environ={"THREADLINE_RELAY_AUTH_USERNAME": "", "THREADLINE_RELAY_AUTH_PASSWORD": STRONG_PASSWORD})
    with pytest.raises(ValueError, match="auth_password is empty"):
        RelaySettings(auth_username="threadline", auth_password="")
    # Even settings that skipped validation never let an empty password in.
    bypassed = RelaySettings().model_copy(update={"auth_username": "threadline", "auth_password": ""})
    assert not policy.credentials_match(bypassed, b"threadline", b"")
    good = RelaySettings(auth_username="threadline", auth_password=STRONG_PASSWORD)
    assert policy.credentials_match(good, b"threadline", STRONG_PASSWORD.encode())
    for login, password in ((b"threadline", b""), (b"threadline", STRONG_PASSWORD.encode()[:-1]),
                            (b"Threadline", STRONG_PASSWORD.encode()), (b"", b"")):
        assert not policy.credentials_match(good, login, password)


def test_failed_logins_lock_a_client_out_for_the_window():
    now = [1000.0]
    limits = policy.ClientLimits(RelaySettings(max_auth_failures_per_client=3, auth_failure_window_s=60),
                                 clock=lambda: now[0])
    assert [limits.login_failed("a") for _ in range(3)] == [False, False, True]  # the third locks
    assert limits.login_locked("a") and not limits.login_locked("b")
    now[0] += 59.9
    assert limits.login_locked("a")  # the whole window, not one try back after window / budget
    now[0] += 0.2
    assert not limits.login_locked("a")
    assert limits.login_failed("a") is False and not limits.login_locked("a")  # one failure in the window


def test_the_configuration_is_judged_per_mode_and_listening_address():
    for inbound in (False, True):  # no own domains: neither mode starts, even on loopback
        [problem] = judged(inbound)
        assert "no own domains" in problem and "relay.own_domains" in problem
    ours = {"own_domains": ["acme.test"]}
    assert judged(**ours) == [] and judged(True, **ours) == []
    fallback = Settings(relay={"upstream": {"host": "x"}}, untracked={"own_domains": ["acme.test"]})
    assert policy.relay_config_problems(fallback, inbound=False, host="127.0.0.1") == []
    assert policy.own_domains(fallback) == {"acme.test"}
    # Off loopback an outbound relay needs AUTH over TLS ...
    for host in ("0.0.0.0", "::", "192.0.2.10", "mail.acme.test"):
        [problem] = judged(host=host, **ours)
        assert "needs AUTH over TLS" in problem and "relay.tls_cert_file" in problem and "127.0.0.1" in problem
    tls_auth = {**ours, "tls_cert_file": "/etc/relay/cert.pem", "tls_key_file": "/etc/relay/key.pem",
                "auth_username": "desk", "auth_password": STRONG_PASSWORD}
    assert judged(host="0.0.0.0", **tls_auth) == []
    # ... and a client network beyond loopback (sending without a login) is confirmed explicitly.
    lan = {**tls_auth, "client_networks": ["127.0.0.0/8", "10.1.0.0/16"]}
    [problem] = judged(host="0.0.0.0", **lan)
    assert "10.1.0.0/16" in problem and "relay.trust_client_networks" in problem
    assert judged(host="0.0.0.0", trust_client_networks=True, **lan) == []
    assert judged(**{**ours, "client_networks": ["10.1.0.0/16"]}) == []  # on loopback nobody else gets in
    # Inbound off loopback needs only the own domains: anyone may deliver to an MX.
    assert judged(True, host="0.0.0.0", **ours) == []
    # Plaintext AUTH stays a loopback test convenience.
    plain = {**ours, "auth_username": "desk", "auth_password": "pw", "auth_allow_plaintext": True}
    assert judged(**plain) == []
    assert any("loopback testing only" in p for p in judged(True, host="0.0.0.0", **plain))
    assert all(policy.is_loopback_host(h) for h in ("localhost", "::1", "127.0.0.2", "[::1]"))
    # Settings refuse what cannot be judged.
    for bad in ({"client_networks": ["10.1.0.0/33"]}, {"client_networks": ["lan"]}, {"own_domains": ["ann@acme.test"]}):
        with pytest.raises(ValueError):
            RelaySettings(**bad)
    assert RelaySettings(own_domains=["ACME.test."], client_networks=["10.1.2.3/16"]).model_dump(
        include={"own_domains", "client_networks"}) == {"own_domains": ("acme.test",), "client_networks": ("10.1.0.0/16",)}


def test_client_limits_are_token_buckets_per_client_and_connection_counts(monkeypatch):
    now = [1000.0]
    limits = policy.ClientLimits(RelaySettings(max_messages_per_client=3, max_recipients_per_client=5,
                                               rate_window_s=30, max_connections=3, max_connections_per_client=2),
                                 clock=lambda: now[0])
    assert [limits.take_message("a") for _ in range(4)] == [True, True, True, False]
    assert limits.take_message("b")  # another client has its own bucket
    now[0] += 10  # a third of the window gives one message back ...
    assert [limits.take_message("a") for _ in range(2)] == [True, False]
    now[0] += 3600  # ... and a long pause no more than the bucket holds
    assert [limits.take_message("a") for _ in range(4)] == [True, True, True, False]
    assert sum(limits.take_recipient("a") for _ in range(10)) == 5
    assert [limits.connect(k) for k in ("a", "a", "a", "b", "c")] == [
        None, None, policy.CONNECTIONS_PER_CLIENT, None, policy.CONNECTIONS_TOTAL]
    limits.disconnect("a")
    limits.disconnect("never-connected")
    assert limits.connect("c") is None and limits.open_connections == 3
    # Forgetting idle clients keeps the table bounded (an IPv6 attacker has many addresses).
    monkeypatch.setattr(policy, "_TRACKED_CLIENTS", 3)
    rate = policy.RateLimit(2, 10, lambda: now[0])
    for key in ("x", "y", "z"):
        rate.take(key)
    now[0] += 10
    rate.take("new")
    assert list(rate._buckets) == ["new"]
    # What is counted per client, and how addresses compare.
    assert policy.client_key(("127.0.0.1", 5000)) == "127.0.0.1"
    assert policy.client_key(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"
    assert policy.client_key(("2001:db8:1:2:aaaa::1", 1, 0, 0)) == policy.client_key(
        ("2001:db8:1:2:bbbb::9", 2, 0, 0)) == "2001:db8:1:2::/64"
    assert policy.in_networks(policy.client_ip(("::ffff:127.0.0.1", 1, 0, 0)), policy.parse_networks(["127.0.0.0/8"]))
    assert policy.address_domain("Ann@ACME.test.") == "acme.test" and policy.address_domain("<>") is None
    assert policy.address_domain('"a@evil.test"@acme.test') == "acme.test"
    assert policy.address_domain("ann@bücher.test") == "xn--bcher-kva.test"
