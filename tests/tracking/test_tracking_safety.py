"""pipeline/tracking/safety.py: which tracking keys are unsafe, what the loopback demo is, the
refusal message; the documentation ships no example key the rules would accept; the worker app
refuses on a real cluster (the commands' refusals: tests/cli/test_common.py)."""

from __future__ import annotations

import re
import secrets
import tomllib
from pathlib import Path

import pytest

from pipeline.settings import DEVELOPMENT_TRACKING_KEY, load_settings
from pipeline.tracking.safety import (
    EXAMPLE_SECRETS, bootstrap_hosts, is_loopback_demo, is_loopback_host, key_problems, key_refusal,
)

ROOT = Path(__file__).resolve().parents[2]
STRONG = "vD3kQ9-xLm2RtZ8wYp5Nc7Hs1Jf4Gb6A"


def reasons(*secrets_: str) -> list[str]:
    return [p.reason for p in key_problems({f"k{n}": s for n, s in enumerate(secrets_)})]


@pytest.mark.parametrize("secret, reason", [
    (DEVELOPMENT_TRACKING_KEY, "development"),
    ("INSECURE-development-key-but-edited-0123456789", "development"),
    ("replace-with-a-long-random-secret", "example"),
    ("prefix-REPLACE-WITH-A-LONG-RANDOM-SECRET-2", "example"),  # a copied example stays public with edits
    ("change-me-0123456789abcdefghijklmnopq", "example"),
    ("replace_with_a_long_random_secret", "example"),  # other separators: as public
    ("Replace With A Long Random Secret, 2027!", "example"),
    ("a-test-secret-0123456789", "short"),
    ("x" * 31 + "", "short"),
    ("a" * 40, "repetitive"),
    ("aabbccddeeffgg" * 3, "repetitive"),  # 7 different characters
    ("abcd1234" * 5, "repetitive"),  # 8 different, but one piece repeated
    ("0123456789abcdef" * 2, "repetitive"),
])
def test_unsafe_keys_and_why(secret, reason):
    assert reasons(secret) == [reason]


def test_generated_keys_pass_and_every_listed_key_counts():
    for _ in range(200):
        assert reasons(secrets.token_urlsafe(32), secrets.token_hex(16)) == []
    assert reasons(STRONG, "0123456789abcdefghijklmnopqrstuv") == []
    # An old key kept for rotation still verifies tokens, so it is checked too; ids sorted.
    problems = key_problems({"new": STRONG, "dev": DEVELOPMENT_TRACKING_KEY, "abc": "short-but-16-chars"})
    assert [(p.key_id, p.reason) for p in problems] == [("abc", "short"), ("dev", "development")]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.8.7", "localhost", "LocalHost.", "::1", "[::1]",
                                  "::ffff:127.0.0.1", " 127.0.0.1 "])
def test_loopback_hosts(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.1", "192.168.1.2", "kafka", "localhost.example.com",
                                  "127.0.0.1.nip.io", "fe80::1%lo", "::ffff:10.0.0.1"])
def test_not_loopback_hosts(host):
    assert not is_loopback_host(host)


def test_bootstrap_hosts():
    assert bootstrap_hosts("a:9092, b.example:9093") == ["a", "b.example"]
    assert bootstrap_hosts("PLAINTEXT://127.0.0.1:9092,SASL_SSL://k.example:9094") == ["127.0.0.1", "k.example"]
    assert bootstrap_hosts("[::1]:9092,::1,kafka") == ["::1", "::1", "kafka"]
    assert bootstrap_hosts(" 127.0.0.1:1 , ") == ["127.0.0.1"]


@pytest.mark.parametrize("bootstrap, base_url, demo", [
    (None, "http://127.0.0.1:8080", True),  # the defaults: embedded broker, local links
    ("127.0.0.1:45123", "http://127.0.0.1:8080", True),  # issue 17: `threadline up`'s broker, exported
    ("localhost:9092,[::1]:9093", "http://localhost:8080/t", True),
    ("127.0.0.1:9092,kafka:9092", "http://127.0.0.1:8080", False),  # one remote broker is a cluster
    ("kafka:9092", "http://127.0.0.1:8080", False),
    (None, "https://track.example.com", False),  # links recipients can follow
    (None, "http://0.0.0.0:8080", False),
])
def test_loopback_demo(bootstrap, base_url, demo):
    assert is_loopback_demo(bootstrap, base_url) is demo


def settings_with(**environ):
    return load_settings(None, environ=environ)


def test_refusal_says_what_why_and_the_fix_but_never_the_secret():
    demo = settings_with()  # the loopback demo
    assert key_refusal(demo.tracking, demo.kafka.bootstrap, "threadline tracking", listen_host="127.0.0.1") is None
    listening = key_refusal(demo.tracking, demo.kafka.bootstrap, "threadline tracking", listen_host="0.0.0.0")
    assert "it listens on 0.0.0.0, which is not loopback" in listening
    assert key_refusal(demo.tracking, demo.kafka.bootstrap, "threadline worker") is None  # no listen host: not a condition
    weak = settings_with(THREADLINE_KAFKA_BOOTSTRAP="kafka:9092", THREADLINE_TRACKING_KEYS='{"k1": "weak-but-long-enough"}',
                         THREADLINE_TRACKING_CURRENT_KEY_ID="k1")
    message = key_refusal(weak.tracking, weak.kafka.bootstrap, "threadline worker")
    assert message.startswith("threadline worker refuses to run: tracking key 'k1' is shorter than 32 characters")
    assert "kafka.bootstrap names kafka, which is not loopback" in message
    assert 'secrets.token_urlsafe(32)' in message and "THREADLINE_TRACKING_KEYS" in message
    assert "THREADLINE_TRACKING_CURRENT_KEY_ID" in message and "weak-but-long-enough" not in message
    strong = settings_with(THREADLINE_KAFKA_BOOTSTRAP="kafka:9092", THREADLINE_TRACKING_KEYS=f'{{"k1": "{STRONG}"}}',
                           THREADLINE_TRACKING_CURRENT_KEY_ID="k1")
    assert key_refusal(strong.tracking, strong.kafka.bootstrap, "threadline tracking", listen_host="0.0.0.0") is None


# -- the documentation ships no usable example key ---------------------------------------------

# "id": "secret" / id = "secret" (quotes possibly backslash-escaped in shell); braces end a value,
# so `TRACKING_KEYS: '{...` is not read as a key named TRACKING_KEYS.
_PAIR = re.compile(r"""\\?["']?[A-Za-z0-9._-]{1,16}\\?["']?\s*[:=]\s*\\?["']([^"'\\{}]*)\\?["']""")
_MENTIONS_KEYS = re.compile(r"TRACKING_KEYS|tracking\.keys|\bkeys\s*=\s*\{", re.IGNORECASE)


def assigned_tracking_keys(text: str, name: str = "") -> list[str]:
    """Secrets a text assigns to tracking keys: on lines naming them (variables, TOML dotted keys,
    inline tables, Python dicts), in ``[tracking.keys]`` tables and in TOML of ``[tracking]``."""
    found = []
    for line in text.splitlines():
        if _MENTIONS_KEYS.search(line):
            found += _PAIR.findall(line)
    in_table = False
    for line in text.splitlines():
        if line.strip().startswith("["):
            in_table = line.strip().replace(" ", "") == "[tracking.keys]"
        elif in_table:
            found += _PAIR.findall(line)
    blocks = [text] if name.endswith(".toml") else re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    for block in blocks:
        try:
            keys = tomllib.loads(block).get("tracking", {}).get("keys", {})
        except tomllib.TOMLDecodeError:
            continue  # a fragment; the line rules above still read it
        found += [value for value in keys.values() if isinstance(value, str)]
    return found


def shipped_texts():
    paths = [ROOT / "README.md", *(ROOT / "docs").rglob("*"), *(ROOT / "deploy").rglob("*")]
    for path in paths:
        if path.is_file() and path.suffix not in (".png", ".svg", ".jpg", ".gif"):
            yield path, path.read_text(encoding="utf-8", errors="replace")


def test_the_scanner_finds_keys_in_every_form_a_doc_uses():
    text = """THREADLINE_TRACKING_KEYS={"k1": "env-file-secret-0123456789abcdef"}
  THREADLINE_TRACKING_KEYS: '{"k1": "k8s-secret-0123456789abcdefghij"}'
kubectl create secret generic s --from-literal=THREADLINE_TRACKING_KEYS='{\\"k2\\": \\"kubectl-0123456789abcdefghij\\"}'
| `tracking.keys` | `THREADLINE_TRACKING_KEYS` | `{"dev": "table-default-0123456789abcdefgh"}` | x |
TrackingSettings(keys={"k1": "python-0123456789abcdefghijklmn"})
```toml
[tracking]
keys = { "2026a" = "inline-table-0123456789abcdefghi" }
```
[tracking.keys]
2026b = "toml-table-0123456789abcdefghijkl"
"""
    assert assigned_tracking_keys(text) == [
        "env-file-secret-0123456789abcdef", "k8s-secret-0123456789abcdefghij", "kubectl-0123456789abcdefghij",
        "table-default-0123456789abcdefgh", "python-0123456789abcdefghijklmn", "inline-table-0123456789abcdefghi",
        "toml-table-0123456789abcdefghijkl", "inline-table-0123456789abcdefghi"]
    # Such a new example would pass the rules: the test below would fail until it joins EXAMPLE_SECRETS.
    assert key_problems({"k": "use-your-own-long-random-value-here"}) == []


def test_no_document_assigns_a_tracking_key_the_rules_accept():
    found = {(path.relative_to(ROOT).as_posix(), secret)
             for path, text in shipped_texts() for secret in assigned_tracking_keys(text, path.name)}
    assert ("deploy/compose/threadline.env.example", "replace-with-a-long-random-secret") in found  # it reads them
    accepted = sorted((where, secret) for where, secret in found if not key_problems({"k": secret}))
    assert accepted == [], ("documented tracking keys the rules accept: add them to EXAMPLE_SECRETS in "
                            "pipeline/tracking/safety.py")
    assert set(EXAMPLE_SECRETS) >= {DEVELOPMENT_TRACKING_KEY, "replace-with-a-long-random-secret"}


def test_worker_app_refuses_on_a_real_cluster():
    from pipeline.streams.app import build_app

    with pytest.raises(SystemExit, match="threadline worker refuses to run: tracking key 'dev'"):
        build_app(settings_with(THREADLINE_KAFKA_BOOTSTRAP="kafka.invalid:9092"))
