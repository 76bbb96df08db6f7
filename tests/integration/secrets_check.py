"""A check for integration runs (issue 13): no configured secret appears in any output, log, file
or command line of a run. Used by tests/integration/test_up_listeners.py on its `threadline up`;
usable on any run: build its settings with :func:`secret_settings_toml`, then call :func:`leaks`."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from pipeline.redact import is_secret
from pipeline.settings import leaf_fields


def secret_settings_toml() -> tuple[str, set[str]]:
    """TOML giving every secret field of the settings (found by the one marker, so a new secret
    field is covered without touching this) a fresh random value, and a password inside a URL
    setting that a run without a server still accepts (notifications.webhook_urls); returns the
    TOML and every secret in it. The values are strong keys: commands that refuse weak tracking
    keys accept them, so the run really uses the tracking keys."""
    sections: dict[str, list[str]] = {}
    found: set[str] = set()
    for section, name, field in leaf_fields():
        if not is_secret(field):
            continue
        value = secrets.token_urlsafe(32)
        found.add(value)
        is_table = "dict" in str(field.annotation)
        sections.setdefault(section, []).append(f"{name} = {{ k1 = {json.dumps(value)} }}" if is_table
                                                else f"{name} = {json.dumps(value)}")
    # What some secrets need beside them to load: the key id that signs, the user of the password.
    sections.setdefault("tracking", []).append('current_key_id = "k1"')
    sections.setdefault("relay", []).append('auth_username = "relay-user"')
    webhook_password = secrets.token_urlsafe(24)
    found.add(webhook_password)
    # Nothing in `up` posts to webhooks (no notifier), so the URL is never called; it is loaded by
    # every process that loads the settings, which is what is checked.
    sections.setdefault("notifications", []).append(
        f'webhook_urls = ["https://alerts:{webhook_password}@hooks.invalid/threadline"]')
    toml = "".join(f"\n[{section}]\n" + "\n".join(lines) + "\n" for section, lines in sections.items())
    return toml, found


def leaks(secret_values: set[str], *, files_under: Path, skip: set[Path] = frozenset(),
          texts: dict[str, str] | None = None) -> list[str]:
    """Where any of ``secret_values`` occurs: every file below ``files_under`` (logs, outputs,
    spool, stores; byte search, so binary files count too) except ``skip`` (the settings file
    itself), and every named text in ``texts`` (command lines, say). Empty: no leak."""
    needles = {secret: secret.encode() for secret in secret_values}
    found = []
    for path in sorted(files_under.rglob("*")):
        if not path.is_file() or path in skip:
            continue
        try:
            data = path.read_bytes()
        except OSError:  # removed meanwhile (a temporary file of a store)
            continue
        found += [f"{path}: secret {secret[:4]}..." for secret, needle in needles.items() if needle in data]
    for name, text in (texts or {}).items():
        found += [f"{name}: secret {secret[:4]}..." for secret in secret_values if secret in text]
    return found
