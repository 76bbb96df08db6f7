"""One typed settings object for the whole project.

Sources, lowest priority first: the defaults below, a TOML file, environment variables.
Every field of a section is reachable from the environment as ``THREADLINE_<SECTION>_<FIELD>``
(upper case), so ``kafka.bootstrap`` is ``THREADLINE_KAFKA_BOOTSTRAP`` and ``clickhouse.url`` is
``THREADLINE_CLICKHOUSE_URL``.  List values are given as JSON (``'["a.com", "b.com"]'``).

``CorrelationSettings`` is everything that shapes hashes and matching; its fingerprint names a
*generation* (DESIGN.md §3): a replay with a different fingerprint recomputes every correlation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "THREADLINE_"
DEFAULT_SETTINGS_FILE = "threadline.toml"


class SettingsError(ValueError):
    """A settings file or variable is missing, unreadable or invalid; the message says which."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class TrackingTokenSettings(_Section):
    """Dynamics-style tracking token in the subject, e.g. ``CRM:0001001``.

    Layout: prefix, one base digit, ``user_digits`` digits of the sending user's number,
    ``counter_digits`` digits of that user's message counter (wraps to 0 after all nines).
    """

    enabled: bool = Field(True, description="Recognise and generate tracking tokens (method 4).")
    prefix: str = Field("CRM:", description="Text before the digits; 1-20 characters, no spaces.")
    base_digit: int = Field(0, ge=0, le=9, description="First digit of every token (tells deployments apart).")
    user_digits: int = Field(3, ge=1, le=9, description="Digits for the user number.")
    counter_digits: int = Field(3, ge=1, le=9, description="Digits for the per-user message counter.")
    mode: Literal["decides", "confirms"] = Field(
        "decides",
        description=(
            "decides: a known token correlates on its own (CRM 3.0 semantics). confirms: a token "
            "correlates when the subject is unchanged; when the subject changed, it must be "
            "confirmed by at least one common address (CRM 4.0 semantics: the token raises "
            "confidence, it does not decide alone)."
        ),
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_is_printable(cls, value: str) -> str:
        if not 1 <= len(value) <= 20 or any(ch.isspace() for ch in value):
            raise ValueError("prefix must be 1-20 characters without white space")
        return value


class SmartMatchingSettings(_Section):
    """Subject and address hashing as in Dynamics CRM 4.0 (same knobs, same defaults)."""

    enabled: bool = Field(True, description="Use smart matching (method 6).")
    hash_filter_keywords: str = Field(
        r"^[\s]*([\w]+\s?:[\s]*)+",
        description="Regex; every match is removed from the subject before it is split into words.",
    )
    hash_max_count: int = Field(20, ge=1, le=1000, description="At most this many subject words / addresses are hashed.")
    hash_delta_subject_count: int = Field(
        0, ge=0, le=100, description="Allowed difference between subject hash count and matching hash count."
    )
    hash_min_address_count: int = Field(2, ge=0, le=100, description="Address hashes that must match.")
    strategy: Literal["dynamics", "evidence"] = Field(
        "evidence",
        description=(
            "dynamics: exactly the CRM 4.0 rule above. evidence: the CRM 4.0 candidates, plus "
            "replies whose normalized subject, quoted text, attribution line or participants point "
            "at an indexed mail; every accepted link records which evidence decided."
        ),
    )

    @field_validator("hash_filter_keywords")
    @classmethod
    def _regex_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"hash_filter_keywords is not a valid regular expression: {exc}") from exc
        return value


class CorrelationSettings(_Section):
    """Everything that shapes hashes and matching (DESIGN.md §3). Its fingerprint names a generation."""

    enabled: bool = Field(True, description="False: every mail gets method 1 (Skipped).")
    xheader_name: str = Field("X-Threadline-Ref", description="Our own reference header on mail we send (method 2).")
    instance_id: str = Field("threadline", description="Names this installation inside X-Threadline-Ref values.")
    use_xheader: bool = Field(True, description="Correlate by our own header (method 2).")
    use_in_reply_to: bool = Field(True, description="Correlate by In-Reply-To, then References (method 3).")
    use_conversation_index: bool = Field(True, description="Correlate by Outlook Thread-Index (method 5).")
    custom_rule: str | None = Field(
        None, description="'module:function' called as rule(mail, index) -> message id or None (method 7)."
    )
    window_days: float = Field(90.0, gt=0, description="Older mail is no candidate and is evicted from the index.")
    forwards_as_replies: bool = Field(True, description="False: a forward starts a new conversation.")
    tracking_token: TrackingTokenSettings = TrackingTokenSettings()
    smart_matching: SmartMatchingSettings = SmartMatchingSettings()

    def fingerprint(self) -> str:
        """Stable 12-hex-digit digest of these settings: equal settings, equal fingerprint."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class UntrackedSettings(_Section):
    """Which mail is not tracked, and why (reasons land on ``mail.untracked``)."""

    own_domains: tuple[str, ...] = Field((), description="Mail only between these domains is internal.")
    track_internal: bool = Field(False, description="True: internal mail is tracked too.")
    excluded_addresses: tuple[str, ...] = Field((), description="Recipients with tracking disabled.")
    excluded_domains: tuple[str, ...] = Field((), description="Recipient domains with tracking disabled.")
    excluded_mailboxes: tuple[str, ...] = Field((), description="Mailboxes whose mail is never tracked.")


class KafkaSettings(_Section):
    bootstrap: str | None = Field(
        None, description="host:port list of a real cluster; unset: the embedded broker is started."
    )
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of every topic the project creates.")
    replication_factor: int = Field(1, ge=1, le=10, description="Replicas of every topic the project creates.")
    security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: str | None = Field(None, repr=False, description="SASL password (never logged).")
    topic_prefix: str = Field("", description="Prepended to every topic name (several installations, one cluster).")


class SchemaRegistrySettings(_Section):
    url: str | None = Field(None, description="A Confluent-compatible registry; unset: the embedded registry file.")


class ClickHouseSettings(_Section):
    url: str | None = Field(None, description="http(s)://user:pass@host:port/db of a real server; unset: embedded chDB.")
    database: str = Field("threadline", description="Database that holds every Threadline table.")


class WorkerSettings(_Section):
    data_dir: Path = Field(Path("data"), description="Local state: RocksDB tables, chDB store, broker logs.")
    app_id: str = Field("threadline", description="Faust app id; the consumer group is app_id + generation.")
    batch_size: int = Field(1000, ge=1, le=100_000, description="Events an agent handles per batch.")
    batch_window_s: float = Field(0.2, gt=0, le=60, description="Longest wait to fill a batch.")
    generation: int = Field(0, ge=0, description="Settings generation this worker computes; `threadline replay` "
                            "starts the next one (new consumer group and table names).")


class Settings(_Section):
    """The whole configuration. Build it with :func:`load_settings`."""

    correlation: CorrelationSettings = CorrelationSettings()
    untracked: UntrackedSettings = UntrackedSettings()
    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    worker: WorkerSettings = WorkerSettings()


def _env_overrides(model: type[BaseModel], environ: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """Collect ``PREFIX_FIELD`` variables for every field of ``model``, recursing into sections."""
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        var = f"{prefix}{name}".upper()
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested = _env_overrides(annotation, environ, var + "_")
            if nested:
                found[name] = nested
        elif var in environ:
            raw = environ[var]
            # Lists and tuples come as JSON; scalars stay strings and pydantic coerces them.
            if raw.lstrip().startswith("["):
                try:
                    found[name] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise SettingsError(f"{var} is not a JSON list: {exc}") from exc
            else:
                found[name] = raw
    return found


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file (``path``, else ``$THREADLINE_SETTINGS``, else ./threadline.toml
    when present), then environment variables. Raises :class:`SettingsError` with the reason."""
    environ = os.environ if environ is None else environ
    explicit = path or environ.get(ENV_PREFIX + "SETTINGS")
    file_values: dict[str, Any] = {}
    if explicit or Path(DEFAULT_SETTINGS_FILE).is_file():
        settings_path = Path(explicit or DEFAULT_SETTINGS_FILE)
        try:
            file_values = tomllib.loads(settings_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SettingsError(f"settings file {settings_path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file {settings_path} is not valid TOML: {exc}") from exc
    values = _deep_merge(file_values, _env_overrides(Settings, environ, ENV_PREFIX))
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(f"invalid settings: {exc}") from exc


def settings_reference(model: type[BaseModel] = Settings, section: str = "") -> list[str]:
    """Markdown rows (one per field) documenting every setting: TOML path, variable, default."""
    rows: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{section}.{name}" if section else name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(settings_reference(annotation, path))
            continue
        if not section:
            continue
        variable = ENV_PREFIX + path.replace(".", "_").upper()
        default = json.dumps(field.default if not isinstance(field.default, Path) else str(field.default))
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{path}` | `{variable}` | `{default}` | {description} |")
    return rows


def settings_reference_markdown() -> str:
    header = [
        "# Settings reference",
        "",
        "Generated by `threadline settings --reference`; a test keeps this file current.",
        "Sources, lowest priority first: defaults, the TOML file (`--settings FILE`, `$THREADLINE_SETTINGS`",
        "or `./threadline.toml`), environment variables. Lists are JSON in variables.",
        "",
        "| TOML key | environment variable | default | meaning |",
        "|---|---|---|---|",
    ]
    return "\n".join(header + settings_reference()) + "\n"
