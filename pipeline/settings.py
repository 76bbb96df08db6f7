"""One typed settings object for the whole project.

Sources, lowest priority first: the defaults below, a TOML file, environment variables.
Every field of a section is reachable from the environment as ``THREADLINE_<SECTION>_<FIELD>``
(upper case), so ``kafka.bootstrap`` is ``THREADLINE_KAFKA_BOOTSTRAP`` and ``clickhouse.url`` is
``THREADLINE_CLICKHOUSE_URL``.  Lists and tables are given as JSON (``'["a.com", "b.com"]'``), which
pydantic-settings decodes (``_EnvironmentSource``); a field's own validators then see the same
values as from the TOML file.

``CorrelationSettings`` is everything that shapes hashes and matching; its fingerprint names a
*generation* (DESIGN.md §3): a replay with a different fingerprint recomputes every correlation.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

from pydantic import (BaseModel, ConfigDict, Field, PositiveInt, SerializationInfo, SerializerFunctionWrapHandler,
                      ValidationError, ValidationInfo, field_validator, model_serializer, model_validator)
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource

from pipeline.redact import SHOW_SECRETS, is_secret, mask_section, masked, redact_strings, secret_values, \
    validation_message

ENV_PREFIX = "THREADLINE_"
DEFAULT_SETTINGS_FILE = "threadline.toml"



def _cidr_networks(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    """CIDR networks in their normal form (host bits dropped: 10.1.2.3/8 is 10.0.0.0/8)."""
    try:
        return tuple(str(ipaddress.ip_network(item.strip(), strict=False)) for item in value)
    except ValueError as exc:
        raise ValueError(f"{name}: not a CIDR network: {exc} (CIDR like 192.0.2.0/24 or 2001:db8::/32)") from exc

class SettingsError(ValueError):
    """A settings file or variable is missing, unreadable or invalid; the message says which."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # Secrets (fields with repr=False, URL passwords: pipeline/redact.py) are masked in every dump,
    # so that no printed or logged dump shows them; model_dump(context={SHOW_SECRETS: True}) keeps them.
    @model_serializer(mode="wrap")
    def _masked(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if info.context and info.context.get(SHOW_SECRETS):
            return data
        return mask_section(type(self), data)

    def __repr_args__(self):
        # pydantic leaves repr=False fields out; the password inside a URL field needs redacting too.
        return [(name, redact_strings(value)) for name, value in super().__repr_args__()]

    @model_validator(mode="before")
    @classmethod
    def _smtp_keys_moved(cls, data: Any) -> Any:
        # The SMTP servers were flat keys (relay.upstream_host): extra=forbid alone would not name the new key.
        for name, field in cls.model_fields.items() if isinstance(data, Mapping) else ():
            if isinstance(field.annotation, type) and issubclass(field.annotation, SmtpSettings):
                for sub in sorted(sub for sub in SmtpSettings.model_fields if f"{name}_{sub}" in data):
                    raise ValueError(f"{name}_{sub} is now {name}.{sub}: the key {sub} of this section's {name} "
                                     "table (its environment variable keeps its name)")
        return data


class SmtpSettings(_Section):
    """An SMTP server that mail is handed to (pipeline/smtp_client.py): the shape of the relay's
    upstream, of campaign mail and of alert mail, each with its own defaults (the subclasses)."""

    host: str | None = Field(None, description="SMTP server; unset: none.")
    port: int = Field(25, ge=1, le=65535, description="SMTP port (587 with STARTTLS, 465 is not supported).")
    starttls: bool = Field(False, description="Upgrade the connection with STARTTLS (certificate verified) before sending.")
    username: str | None = Field(None, description="SMTP AUTH user; unset: no AUTH.")
    password: str | None = Field(None, repr=False, description="SECRET, never logged: SMTP AUTH password.")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Longest wait for one SMTP command.")


class RelayUpstreamSettings(SmtpSettings):
    host: str | None = Field(None, description="Smarthost (outbound) or next hop (inbound) of every mail; required.")
    timeout_s: float = Field(60.0, gt=0, le=600, description="Longest wait for one upstream SMTP command.")


class NotificationSmtpSettings(SmtpSettings):
    host: str | None = Field(None, description="SMTP server for alert mail; unset: no alert mail is sent.")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Longest wait for one SMTP command of an alert mail.")


class CampaignSmtpSettings(SmtpSettings):
    host: str | None = Field(None, description="SMTP server for campaign mail; unset: notifications.smtp, with this timeout_s.")


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
    min_confidence: float = Field(
        0.9, ge=0, le=1, description="A content method (SmartMatching, ConversationIndex) less sure of its match "
        "than this abstains: the mail starts a new conversation, and its evidence says what would have matched. "
        "The default keeps judged precision at or above 99 % on every development corpus (docs/correlation.md).",
    )
    unknown_parent_min_confidence: float = Field(
        0.999, ge=0, le=1, description="The same floor for a mail whose In-Reply-To/References name only mail that "
        "was never indexed (ghost parents): it says it continues a conversation that is not here, so a content "
        "method links it only on strong evidence.",
    )
    tracking_token: TrackingTokenSettings = TrackingTokenSettings()
    smart_matching: SmartMatchingSettings = SmartMatchingSettings()

    def fingerprint(self) -> str:
        """Stable 12-hex-digit digest of these settings: equal settings, equal fingerprint."""
        # Unmasked: the fingerprint is of the settings themselves, not of what is shown of them.
        canonical = json.dumps(self.model_dump(mode="json", context={SHOW_SECRETS: True}), sort_keys=True,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class UntrackedSettings(_Section):
    """Which mail is not tracked, and why (reasons land on ``mail.untracked``)."""

    own_domains: tuple[str, ...] = Field((), description="Mail only between these domains is internal.")
    track_internal: bool = Field(False, description="True: internal mail is tracked too.")
    excluded_addresses: tuple[str, ...] = Field((), description="Recipients with tracking disabled.")
    excluded_domains: tuple[str, ...] = Field((), description="Recipient domains with tracking disabled.")
    excluded_mailboxes: tuple[str, ...] = Field((), description="Mailboxes whose mail is never tracked.")


# librdkafka producer settings that kafka.producer_options may not change (see its description).
_PRODUCER_OPTIONS_OF_THE_PROJECT = frozenset({
    "bootstrap.servers", "metadata.broker.list", "acks", "request.required.acks", "enable.idempotence",
    "partitioner", "compression.type", "compression.codec", "transactional.id",
})


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
    ssl_ca_location: str | None = Field(None, description="CA certificate file for SSL / SASL_SSL; unset: the system's CAs.")
    topic_prefix: str = Field("", description="Prepended to every topic name (several installations, one cluster).")
    producer_options: dict[str, str | int | float | bool] = Field(
        {}, description="More librdkafka settings for every Kafka producer of the project (ingest, the workers' "
        "outputs, SMTP relay, IMAP, tracking endpoint, dead letters of sink and notify), e.g. "
        "`{\"message.max.bytes\": 8000000}` for a cluster that takes bigger records (the broker must allow them "
        "too), or `message.timeout.ms`: a TOML table, a JSON object in the variable. Not Faust's own producers "
        "(table changelogs). Refused here: the connection and security settings (the fields above, which Faust "
        "gets too) and what the pipeline relies on (acks, enable.idempotence, partitioner, compression)."
    )

    @field_validator("producer_options")
    @classmethod
    def _options_left_to_the_project(cls, value: dict[str, Any]) -> dict[str, Any]:
        refused = sorted(key for key in value if key in _PRODUCER_OPTIONS_OF_THE_PROJECT
                         or key.startswith(("security.", "sasl.", "ssl.")))
        if refused:
            raise ValueError(f"producer_options cannot set {', '.join(refused)}: connection and security settings "
                             "are the kafka.* fields (Faust needs them too); acks, idempotence, the partitioner "
                             "(tenants' records and table entries must share a partition) and compression (Faust "
                             "reads only some codecs) are the project's")
        return value


class MailSettings(_Section):
    """Limits of one mail and where big mail is kept (docs/pipeline.md, "Big mail")."""

    max_message_bytes: int = Field(
        50 * 2**20, ge=1024, le=1024 * 2**20, description="Largest mail taken in, bytes. From files and IMAP a "
        "larger one becomes a dead letter (reason too_large) at the door; the SMTP relay refuses it with 552, "
        "so the sender still holds it."
    )
    inline_max_bytes: int = Field(
        512 * 1024, ge=1024, le=900 * 1024, description="Mail up to this size travels inside its mail.raw record; "
        "a larger one is kept in the blob store and mail.raw carries its SHA-256 (claim check). At most 900 KiB, "
        "so that every record fits the default record limit of Kafka clients and brokers (1 MB)."
    )
    blob_dir: Path | None = Field(
        None, description="Content-addressed folder of big mail (shared by every ingest, relay, IMAP and worker "
        "process: a network file system when they run on several hosts); unset: worker.data_dir/blobs."
    )


class SchemaRegistrySettings(_Section):
    url: str | None = Field(None, description="A Confluent-compatible registry; unset: the embedded registry file.")


class ClickHouseSettings(_Section):
    url: str | None = Field(None, description="http(s)://user:pass@host:port/db of a real server; unset: embedded chDB.")
    database: str = Field("threadline", description="Database that holds every Threadline table.")

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        # The message never repeats the value: it usually holds the password.
        from urllib.parse import urlsplit

        if value is None:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be http(s)://[user:password@]host[:port][/database] (not repeated here: "
                             "it may hold a password)")
        return value


class WorkerSettings(_Section):
    data_dir: Path = Field(Path("data"), description="Local state: RocksDB tables, chDB store, broker logs.")
    app_id: str = Field("threadline", description="Faust app id; the consumer group is app_id + generation.")
    batch_size: int = Field(1000, ge=1, le=100_000, description="Events an agent handles per batch.")
    batch_window_s: float = Field(0.2, gt=0, le=60, description="Longest wait to fill a batch.")
    generation: int = Field(0, ge=0, description="Settings generation this worker computes; `threadline replay` "
                            "starts the next one (new consumer group and table names).")
    parse_processes: int | None = Field(None, ge=0, le=64, description="Processes that parse mail ahead of the "
                                        "correlator (each worker its own); 0: in the worker process; unset: one "
                                        "less than the machine's cores, at least 1 (on 2 cores that gave 5 % more "
                                        "mails/s than 0 with one worker and 8 % with two: the pool pays for its "
                                        "copying only where a core is free).")
    gc_thresholds: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (50_000, 20, 100), description="CPython's garbage collector thresholds in the worker and `threadline "
        "correlate` (`gc.set_threshold`; CPython's own: 700, 10, 10). An index of a million mails is millions of "
        "objects, and with CPython's thresholds a full collection walks all of them whenever they have grown by a "
        "quarter: with these, a 1M-mail replay (2 workers) took 17 % less of the workers' CPU at the same peak RSS.")
    web_port: int | None = Field(None, ge=1, le=65535, description="Open Faust's web server (its /table/ and "
                                 "/router/ pages show index entries, addresses and subjects, without "
                                 "authentication) on 127.0.0.1:PORT, for debugging one worker; unset: no web server.")


class BusinessHours(_Section):
    """Working time of an escalation policy: its clock runs only inside these hours."""

    start: str = Field("08:00", description="Local start of a working day, HH:MM.")
    end: str = Field("17:00", description="Local end of a working day, HH:MM (24:00 = midnight); after start.")
    weekdays: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = Field(
        ("mon", "tue", "wed", "thu", "fri"), min_length=1, description="Working days (mon ... sun)."
    )
    timezone: str = Field("UTC", description="IANA time zone of start, end and holidays, e.g. Europe/Berlin (DST-aware).")

    @field_validator("start", "end")
    @classmethod
    def _is_clock_time(cls, value: str) -> str:
        match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip())
        if not match or int(match[2]) > 59 or int(match[1]) * 60 + int(match[2]) > 24 * 60:
            raise ValueError(f"{value!r} is not a time of day HH:MM (00:00 - 24:00)")
        return f"{int(match[1]):02d}:{match[2]}"

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, value: str, info: ValidationInfo) -> str:
        if "start" in info.data and value <= info.data["start"]:
            raise ValueError(f"end {value} must be after start {info.data['start']} (no overnight shifts)")
        return value

    @field_validator("weekdays", mode="before")
    @classmethod
    def _weekdays_lower_case(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(dict.fromkeys(str(day).strip().lower()[:3] for day in value))
        return value

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except (ValueError, KeyError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class EscalationMatch(_Section):
    """Which inbound mail a policy applies to; every criterion that is set must hold (unset = any)."""

    tenant: str | None = Field(None, description="Tenant, exactly.")
    mailbox: str | None = Field(None, description="Mailbox that received the mail (case-insensitive).")
    regarding_prefix: str | None = Field(None, description="Record type: the regarding record id starts with this, e.g. 'SUPP-'.")
    mail_type: Literal["new", "reply", "forward"] | None = Field(None, description="Record type by mail type.")


# The kinds of automatic mail (pipeline/mail/automatic.py classifies a mail as one of them, "" for a
# person's). Defined here, the lowest layer that needs them: policies validate their
# ignore_automatic against it, and the mail layer above imports it from here.
AUTOMATIC_KINDS = ("bounce", "notifier", "auto_reply", "auto_generated", "list")


def _later_than_warning(name: str, value: float, info: ValidationInfo) -> float:
    """A deadline after the warning: ``name`` (counted from the same start) must exceed ``warn_after``."""
    if "warn_after" in info.data and value <= info.data["warn_after"]:
        raise ValueError(f"{name} ({value}) must be greater than warn_after ({info.data['warn_after']})")
    return value


class SlaTarget(_Section):
    """The warn and breach times of one SLA target."""

    warn_after: float = Field(gt=0, description="Hours (business hours when set) from the target's start until it "
                              "is warned.")
    breach_after: float = Field(gt=0, description="Hours (business hours when set) from the same start until it is "
                                "breached; > warn_after.")

    @field_validator("breach_after")
    @classmethod
    def _breach_after_warn(cls, value: float, info: ValidationInfo) -> float:
        return _later_than_warning("breach_after", value, info)


class SlaSettings(_Section):
    """SLA targets of a policy (docs/escalation.md, "SLA targets"): first response, next response and
    resolution, on the policy's business calendar, with a pause while the desk waits on the customer."""

    first_response: SlaTarget | None = Field(
        SlaTarget(warn_after=4, breach_after=8), description="From a conversation's first inbound person's mail to "
        "our first person's reply (JSON object in a variable); false: not measured."
    )
    next_response: SlaTarget | None = Field(
        SlaTarget(warn_after=4, breach_after=8), description="From a customer's follow-up after our reply to our next "
        "reply; a follow-up while we wait on the customer starts a new cycle. false: not measured."
    )
    resolution: SlaTarget | None = Field(
        SlaTarget(warn_after=40, breach_after=72), description="From the first inbound person's mail until the "
        "conversation is resolved, paused while waiting on the customer. false: not measured."
    )
    pause: Literal["none", "after_reply", "record_state"] = Field(
        "after_reply", description="Waiting on the customer stops the resolution clock and moves its deadlines. "
        "after_reply: from our reply until the customer writes again. record_state: while the regarding record's "
        "CRM status is one of waiting_states. none: never paused."
    )
    waiting_states: tuple[str, ...] = Field(
        ("waiting", "pending"), description="CRM status values (case-insensitive) of a record that waits on the "
        "customer (pause = record_state)."
    )
    resolved_states: tuple[str, ...] = Field(
        ("resolved", "closed"), description="CRM status values (case-insensitive) of a resolved record: the "
        "conversations regarding it are resolved."
    )
    resolved_marker: str | None = Field(
        "[resolved]", description="Our person's mail whose subject contains this text (case-insensitive) resolves "
        "its conversation; empty: no marker."
    )
    resolve_after_inactivity: float | None = Field(
        120.0, ge=0, description="Hours (calendar time: silence is not working time) after our last reply without "
        "customer mail after which the conversation counts as resolved at the time of that reply; 0: never."
    )

    @field_validator("first_response", "next_response", "resolution", mode="before")
    @classmethod
    def _false_is_none(cls, value: Any) -> Any:
        # TOML has no null: `first_response = false` is how a file says the target is not measured.
        return None if value is False else value

    @field_validator("waiting_states", "resolved_states")
    @classmethod
    def _states_casefolded(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # CRM status values are compared case-insensitively: kept in their compared form.
        return tuple(dict.fromkeys(state.strip().casefold() for state in value if state.strip()))

    @field_validator("resolved_marker")
    @classmethod
    def _empty_marker_is_none(cls, value: str | None) -> str | None:
        # An empty marker would be in every subject: every reply would resolve.
        return value if value and value.strip() else None

    @field_validator("resolve_after_inactivity")
    @classmethod
    def _zero_is_never(cls, value: float | None) -> float | None:
        return value or None

    @model_validator(mode="after")
    def _states_apart(self) -> "SlaSettings":
        both = sorted(set(self.waiting_states) & set(self.resolved_states))
        if both:
            raise ValueError(f"a status cannot both wait on the customer and be resolved: {', '.join(both)}")
        return self


class EscalationPolicy(_Section):
    """When an unanswered inbound mail warns and escalates, and who is told (DESIGN.md §4).

    Recipients: ``owner`` (the record owner; skipped when the mail has none), ``manager:<addr>`` or
    ``user:<addr>`` (that address), anything else as written (a role or team name).
    """

    name: str = Field("default", min_length=1, description="Names the policy on every escalation record.")
    match: EscalationMatch = EscalationMatch()
    warn_after: float = Field(4.0, gt=0, description="Hours (business hours when set) until an unanswered mail is WARNED.")
    escalate_after: float = Field(
        8.0, gt=0, description="Hours (business hours when set) from the same start until it is ESCALATED; > warn_after."
    )
    business_hours: BusinessHours | None = Field(
        None, description="Working time the clock runs in (JSON object in a variable); unset: 24/7."
    )
    holidays: tuple[str, ...] = Field(
        (), description="ISO dates on which the clock stands still (local dates of business_hours.timezone, else UTC)."
    )
    notify_on_open: tuple[str, ...] = Field((), description="Told when a clock starts.")
    notify_on_warn: tuple[str, ...] = Field(("owner",), description="Told at WARNED.")
    notify_on_escalate: tuple[str, ...] = Field(("owner",), description="Told at ESCALATED.")
    notify_on_resolve: tuple[str, ...] = Field((), description="Told when a reply resolves a WARNED or ESCALATED mail.")
    on_customer_reply: Literal["reopen", "restart", "keep"] = Field(
        "reopen",
        description=(
            "A later inbound mail in the conversation. reopen: a RESOLVED conversation opens a new clock "
            "from it, an open one keeps its oldest unanswered mail. restart: the clock restarts from it "
            "in both cases. keep: nothing changes (a RESOLVED conversation stays resolved)."
        ),
    )
    ignore_automatic: tuple[str, ...] = Field(
        ("bounce", "notifier", "auto_reply", "auto_generated"),
        description="Kinds of automatic mail (" + ", ".join(AUTOMATIC_KINDS) + ") that under this policy never "
        "open, restart or resolve an escalation clock, are never unanswered, and never start, answer, pause, "
        "resume or resolve an SLA target, inbound and outbound alike. list (mailing-list traffic) is left out "
        "by default: it counts as a person's mail.",
    )
    team: str | None = Field(None, description="The team this policy's mail belongs to; SLA records carry it.")
    sla: SlaSettings = Field(SlaSettings(), description="SLA targets of this policy's conversations.")

    @field_validator("escalate_after")
    @classmethod
    def _escalate_after_warn(cls, value: float, info: ValidationInfo) -> float:
        return _later_than_warning("escalate_after", value, info)

    @field_validator("ignore_automatic")
    @classmethod
    def _known_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        kinds = tuple(dict.fromkeys(kind.strip().lower() for kind in value))
        unknown = [kind for kind in kinds if kind not in AUTOMATIC_KINDS]
        if unknown:
            raise ValueError(f"ignore_automatic: unknown kind {', '.join(map(repr, unknown))} "
                             f"(kinds: {', '.join(AUTOMATIC_KINDS)})")
        return kinds

    @field_validator("holidays", mode="before")
    @classmethod
    def _holidays_are_dates(cls, value: Any) -> Any:
        from datetime import date

        if not isinstance(value, (list, tuple)):
            return value
        days = []
        for day in value:
            if not isinstance(day, date):
                try:
                    day = date.fromisoformat(str(day).strip())
                except ValueError as exc:
                    raise ValueError(f"holiday {day!r} is not an ISO date (YYYY-MM-DD)") from exc
            days.append(day.isoformat()[:10])
        return tuple(sorted(set(days)))


class EscalationSettings(_Section):
    """Escalation of unanswered inbound mail (DESIGN.md §4, docs/escalation.md)."""

    enabled: bool = Field(True, description="Track unanswered inbound mail and emit escalations and alerts.")
    default_policy: EscalationPolicy = EscalationPolicy()
    policies: tuple[EscalationPolicy, ...] = Field(
        (), description="Policies tried in order before default_policy; the first whose match holds applies."
    )
    tick_interval_s: float = Field(60.0, gt=0, le=3600, description="Live: seconds between wall-clock ticks.")
    resolved_retention_days: float = Field(
        90.0, gt=0, description="A RESOLVED conversation, or an ESCALATED one nobody answers, is forgotten this many "
        "days after its last transition (keeps the state small; a later mail then starts a new clock)."
    )

    @field_validator("default_policy")
    @classmethod
    def _default_matches_everything(cls, value: EscalationPolicy) -> EscalationPolicy:
        if value.match != EscalationMatch():
            raise ValueError("default_policy applies to every mail without a policy; give the match to one in policies")
        return value

    @field_validator("policies")
    @classmethod
    def _names_are_unique(cls, value: tuple[EscalationPolicy, ...], info: ValidationInfo) -> tuple[EscalationPolicy, ...]:
        names = [policy.name for policy in value]
        if "default_policy" in info.data:
            names.append(info.data["default_policy"].name)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"policy names must be unique (default_policy included): {', '.join(duplicates)}")
        return value


# The default tracking key: public (it is in this file), so anyone can forge tokens with it.
# pipeline/tracking/safety.py refuses it outside the loopback demo.
DEVELOPMENT_TRACKING_KEY = "INSECURE-development-key-do-not-use-in-production"


class TrackingSettings(_Section):
    """Open and click tracking (DESIGN.md §5): signed tokens, machine-hit classification, marking.

    ``keys`` holds secrets: it is excluded from ``repr`` and must never be logged.
    """

    base_url: str = Field(
        "http://127.0.0.1:8080",
        description="Public http(s) address of the tracking endpoint; pixel and click URLs start with it.",
    )
    keys: dict[str, str] = Field(
        {"dev": DEVELOPMENT_TRACKING_KEY},
        repr=False,
        description=(
            "SECRET, never logged: HMAC keys as {key id: secret} (key id: 1-16 of A-Z a-z 0-9 . _ -; "
            "secret: at least 16 characters to load, at least 32 with 8 different characters to be used "
            "outside the loopback demo). Generate one with `python -c \"import secrets; "
            "print(secrets.token_urlsafe(32))\"`. Tokens are signed with current_key_id and verified with "
            "any listed key, so rotate by adding a key, switching current_key_id, and removing the old "
            "key after the longest *_max_age_days (docs/tracking.md, \"Keys\"). In a variable: a JSON object. "
            "The default is a public development key: every command that signs or verifies tokens refuses it "
            "(and documented example keys, and weak ones) unless the run is the loopback demo."
        ),
    )
    current_key_id: str = Field("dev", description="Key id (from keys) that signs new tokens.")
    pixel_max_age_days: int = Field(
        180, ge=0, le=36500,
        description="Open-pixel tokens older than this are rejected (reason expired): the pixel is still "
                    "served, the open is dead-lettered, not counted. Genuine opens come within weeks of "
                    "sending; half a year bounds how long a copied pixel URL can add opens. 0: never expire.",
    )
    click_max_age_days: int = Field(
        365, ge=0, le=36500,
        description="Click tokens older than this no longer redirect: a 'link expired' page (410) instead, "
                    "the click is dead-lettered. A year keeps links in kept mail and newsletters working "
                    "while bounding how long a leaked link redirects. 0: never expire.",
    )
    unsubscribe_max_age_days: int = Field(
        730, ge=0, le=36500,
        description="Unsubscribe tokens older than this show a 'link expired' page (410) and unsubscribe "
                    "nobody. Longest of the three: people unsubscribe from old mail, and turning an opt-out "
                    "away is worse than honouring an old one (CAN-SPAM wants it working for at least 30 "
                    "days); two years still stops a leaked link from working forever. 0: never expire.",
    )
    anonymize_ip: bool = Field(
        True, description="Store client addresses with the last IPv4 octet / last 80 IPv6 bits zeroed."
    )
    reverse_dns: bool = Field(False, description="Look up the PTR name of each hit's address (slow; off by default).")
    open_alerts: bool = Field(True, description="Tell the sender of a mail (an alert) when it is first opened by a "
                              "person; proxy and scanner fetches never alert.")
    reverse_dns_timeout_s: float = Field(1.0, gt=0, le=30, description="Longest wait for one PTR lookup.")
    scanner_window_s: float = Field(
        10.0, ge=0, le=3600,
        description="A click this soon after delivery, or clicks on every link within this window, is a scanner.",
    )
    apple_proxy_networks: tuple[str, ...] = Field(
        ("17.0.0.0/8",),
        description="CIDRs of Apple Mail Privacy Protection proxies (17.0.0.0/8 is Apple's own network).",
    )
    google_proxy_networks: tuple[str, ...] = Field(
        ("66.249.64.0/19",),
        description="CIDRs of Google's image proxy (66.249.64.0/19 is registered to Google).",
    )
    datacenter_networks: tuple[str, ...] = Field(
        (), description="CIDRs of hosting / cloud providers: hits from them are machine hits (fill from the "
                        "providers' published lists)."
    )
    access_log_personal_data: bool = Field(
        False, description="True: the endpoint's access log shows addresses, user agents and tokens."
    )
    spool_max_bytes: int = Field(
        1 << 30, ge=0,
        description="Largest size of the endpoint's spool file (tracking-spool.jsonl in worker.data_dir), which "
                    "holds the hits the broker cannot take yet and drains into it once it is back. At the cap "
                    "further hits are dropped and counted (dropped_at_cap in /health); 0: no spool. The default "
                    "(1 GiB) holds about 1.7 million browser hits of ~630 bytes: 28 minutes at 1,000 hits/s.",
    )
    producer_queue_max_messages: int = Field(
        50_000, ge=1, le=10_000_000,
        description="Hits the endpoint keeps in memory (the Kafka producer's queue, also capped at 64 MiB) "
                    "before further hits go to the spool; bounds the endpoint's memory while the broker is down.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=300,
        description="Time a client of the endpoint has to send a complete request line and headers, counted "
                    "from connecting and, on a kept-alive connection, from the end of the previous response; "
                    "then it is disconnected (slow clients, slowloris). So it is also how long an idle "
                    "keep-alive connection stays open. An unsubscribe request body gets the same time.",
    )

    @field_validator("keys")
    @classmethod
    def _keys_are_usable(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("keys needs at least one key")
        for key_id, secret in value.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,16}", key_id):
                raise ValueError(f"key id {key_id!r} must be 1-16 of A-Z a-z 0-9 . _ -")
            if len(secret) < 16:
                raise ValueError(f"the secret of key {key_id!r} is shorter than 16 characters")
        return value

    @field_validator("current_key_id")
    @classmethod
    def _current_key_is_listed(cls, value: str, info) -> str:
        keys = info.data.get("keys")
        if keys is not None and value not in keys:
            raise ValueError(f"current_key_id {value!r} is not one of keys ({', '.join(sorted(keys))})")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError(f"base_url {value!r} must be http(s)://host[:port][/path] without query or fragment")
        return value.rstrip("/")

    @field_validator("apple_proxy_networks", "google_proxy_networks", "datacenter_networks")
    @classmethod
    def _networks_parse(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        return _cidr_networks(value, info.field_name)

    @model_validator(mode="before")
    @classmethod
    def _token_max_age_days_is_gone(cls, data: Any) -> Any:
        # Replaced by per-kind ages; an old file saying 0 (never) must not silently get the defaults.
        if isinstance(data, Mapping) and "token_max_age_days" in data:
            raise ValueError("tracking.token_max_age_days was replaced by pixel_max_age_days, click_max_age_days "
                             "and unsubscribe_max_age_days (0 still means never); set those instead")
        return data


class NotificationSettings(_Section):
    """Where alerts (escalations, open notifications) are delivered: e-mail and webhooks."""

    smtp: NotificationSmtpSettings = Field(NotificationSmtpSettings(), description="The SMTP server of alert mail.")
    sender: str = Field("threadline@localhost", description="From address of alert mail.")
    webhook_urls: tuple[str, ...] = Field((), description="Every alert is POSTed as JSON to each of these URLs.")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Longest wait for one webhook delivery (mail: smtp.timeout_s).")
    max_attempts: int = Field(6, ge=1, le=100, description="Attempts per delivery before the notifier stops "
                              "(uncommitted: the alert is delivered after the next start).")
    backoff_s: float = Field(1.0, ge=0, le=600, description="First retry delay; doubles on every attempt.")


class CampaignSettings(_Section):
    """Campaign sending (``threadline campaign send``, docs/campaigns.md): SMTP, rate, recipient checks."""

    sender: str | None = Field(None, description="From address (and envelope sender) of campaign mail; unset: "
                               "notifications.sender.")
    sender_name: str | None = Field(None, description="Display name in From, e.g. 'ACME News'; unset: none.")
    smtp: CampaignSmtpSettings = Field(CampaignSmtpSettings(), description="The SMTP server of campaign mail.")
    rate_per_s: float = Field(10.0, gt=0, le=10_000, description="Mails sent per second at most (token bucket).")
    burst: int = Field(1, ge=1, le=10_000, description="Mails that may go out back to back before the rate applies.")
    mx_timeout_s: float = Field(5.0, gt=0, le=60, description="Longest wait for the DNS lookup (MX, else A/AAAA) "
                                "of one recipient domain.")
    skip_on_mx_timeout: bool = Field(False, description="True: a recipient whose domain lookup timed out or failed "
                                     "temporarily is skipped (mx_timeout / mx_error); False: it is sent and counted.")
    smtp_probe: bool = Field(False, description="Ask the recipient's mail server (RCPT TO, no mail sent) whether the "
                             "address exists; off by default (slow, often blocked, catch-all servers say yes).")
    smtp_probe_timeout_s: float = Field(10.0, gt=0, le=120, description="Longest wait for one SMTP probe command.")
    suppression_file: str = Field("suppressions.jsonl", description="Unsubscribed addresses (JSONL) in "
                                  "worker.data_dir; written by the tracking endpoint, read by every send.")

    @field_validator("sender")
    @classmethod
    def _sender_is_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", value):
            raise ValueError(f"sender {value!r} must be a plain address like news@example.com")
        return value

    @field_validator("suppression_file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError("suppression_file must be a file name inside worker.data_dir, without folders")
        return value


class ImapSettings(_Section):
    """The IMAP poller (``threadline imap``, docs/imap.md): folders whose new mail goes to ``mail.raw``.

    ``password`` is a secret: it is excluded from ``repr`` and must never be logged.
    """

    host: str | None = Field(None, description="IMAP server; unset: `threadline imap` refuses to start.")
    port: int | None = Field(None, ge=1, le=65535, description="IMAP port; unset: 993 with ssl, else 143.")
    ssl: bool = Field(True, description="IMAP over TLS (IMAPS); False: plain text (only for a local test server).")
    username: str | None = Field(None, description="Login name.")
    password: str | None = Field(None, repr=False, description="SECRET, never logged: the login password.")
    tenant: str = Field("default", min_length=1, description="Tenant of every mail the poller produces.")
    folders: tuple[dict[str, str], ...] = Field(
        ({"name": "INBOX", "direction": "in"}, {"name": "Sent", "direction": "out"}),
        min_length=1,
        description=(
            "Folders to watch, in order, as {name, direction}; direction in, out or auto (auto: out when the "
            "sender is in untracked.own_domains). The first folder is the one IDLE waits on. In a variable: JSON."
        ),
    )
    poll_interval_s: float = Field(
        60.0, gt=0, le=3600, description="Seconds between polls; with IDLE, the longest wait for the first folder "
        "(at most 29 minutes, RFC 2177) and the poll interval of the other folders."
    )
    idle: bool = Field(True, description="Wait with IMAP IDLE when the server offers it (new mail in the first folder "
                       "is ingested at once); False or not offered: poll every poll_interval_s.")
    batch_size: int = Field(100, ge=1, le=10_000, description="Messages fetched and produced per batch; the state file "
                            "is written after each batch is acknowledged by Kafka.")
    timeout_s: float = Field(60.0, gt=0, le=600, description="Longest wait for the server's answer to one command.")
    state_file: str = Field("imap-state.json", description="UIDVALIDITY and last UID per folder (JSON) in "
                            "worker.data_dir; restarts continue from it.")

    @field_validator("folders")
    @classmethod
    def _folders_are_named(cls, value: tuple[dict[str, str], ...]) -> tuple[dict[str, str], ...]:
        folders = []
        for folder in value:
            unknown = sorted(set(folder) - {"name", "direction"})
            if unknown:
                raise ValueError(f"a folder has only name and direction, not {', '.join(unknown)}")
            name, direction = str(folder.get("name", "")).strip(), str(folder.get("direction", "in")).strip().lower()
            if not name:
                raise ValueError("every folder needs a name")
            if direction not in ("in", "out", "auto"):
                raise ValueError(f"folder {name!r}: direction must be in, out or auto, not {direction!r}")
            folders.append({"name": name, "direction": direction})
        names = [f["name"] for f in folders]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"folders are listed twice: {', '.join(duplicates)}")
        return tuple(folders)

    @field_validator("state_file")
    @classmethod
    def _state_file_name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError("state_file must be a file name inside worker.data_dir, without folders")
        return value

    def effective_port(self) -> int:
        return self.port or (993 if self.ssl else 143)


class RelaySettings(_Section):
    """``threadline smtp``: the SMTP relay that records every mail in ``mail.raw`` (docs/smtp.md).

    ``upstream.password`` and ``auth_password`` are secrets: excluded from ``repr``, never logged.
    """

    mode: Literal["outbound", "inbound"] = Field(
        "outbound", description="outbound: the organisation's clients submit here (mail is stamped and marked); "
        "inbound: an MX-side filter (nothing is changed). `threadline smtp --inbound` overrides it."
    )
    host: str = Field("127.0.0.1", description="Address the relay listens on.")
    port: int = Field(2525, ge=1, le=65535, description="Port the relay listens on (25 / 587 need privileges).")
    tenant: str = Field("default", min_length=1, description="Tenant of every mail.raw record the relay writes.")
    upstream: RelayUpstreamSettings = Field(RelayUpstreamSettings(), description="The smarthost or next hop.")
    tls_cert_file: Path | None = Field(None, description="PEM certificate (chain) for STARTTLS; with tls_key_file, "
                                       "STARTTLS is offered and required before MAIL.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    auth_username: str | None = Field(None, description="User clients log in as (AUTH PLAIN / LOGIN, after "
                                      "STARTTLS); set: outbound mail needs a login. Unset: no AUTH. Not empty.")
    auth_password: str | None = Field(None, repr=False, description="SECRET, never logged: password of "
                                      "auth_username; not empty, and off loopback at least 16 characters, 8 of "
                                      "them different, no example secret.")
    auth_allow_plaintext: bool = Field(False, description="Offer AUTH without TLS; only when no TLS is configured "
                                       "and the relay listens on loopback (tests).")
    subject_tokens: bool = Field(False, description="Outbound: add a tracking token (correlation.tracking_token "
                                 "layout) to subjects that carry none; counters persist in worker.data_dir.")
    sender_user_numbers: dict[str, int] = Field(
        {}, description="Token user numbers as {sender address: number} (envelope sender, else From); "
        "unlisted senders are user 0. In a variable: a JSON object."
    )
    retry_interval_s: float = Field(60.0, gt=0, le=86_400, description="First retry of queued mail; doubles "
                                    "after every failed attempt.")
    retry_max_interval_s: float = Field(3600.0, gt=0, le=86_400, description="Longest wait between two attempts "
                                        "for queued mail.")
    max_message_size: int | None = Field(None, ge=1024, le=1024 * 2**20, description="Largest mail accepted, "
                                         "bytes (advertised as SIZE); unset: mail.max_message_bytes, which it "
                                         "must not exceed.")
    kafka_timeout_s: float = Field(30.0, gt=0, le=600, description="Longest wait for the broker to acknowledge "
                                   "a mail.raw record; then the client gets 451 (try again later).")
    # Who may use the relay, and how much (docs/smtp.md "Who may send"; pipeline/gateways/smtp/policy.py).
    own_domains: tuple[str, ...] = Field(
        (), description="The organisation's mail domains (exact, no subdomains); empty: untracked.own_domains. "
        "Outbound: the envelope sender must be in one (else 553 5.7.1); inbound: every recipient must be "
        "(else 550 5.7.1). Neither set: the relay does not start."
    )
    client_networks: tuple[str, ...] = Field(
        ("127.0.0.0/8", "::1/128"), description="Outbound: clients from these networks (CIDR) may send without "
        "AUTH; others must log in (530) or are refused (550 5.7.1). [] : everyone must log in."
    )
    trust_client_networks: bool = Field(False, description="Confirms that every host of client_networks beyond "
                                        "loopback may send as the organisation; needed to listen off loopback "
                                        "with such networks.")
    max_recipients_per_message: int = Field(100, ge=1, le=100_000, description="RCPTs accepted per mail; more "
                                            "get 452 4.5.3 (RFC 5321 asks for at least 100).")
    rate_window_s: float = Field(3600.0, gt=0, le=86_400, description="Window of the per-client limits (a token "
                                 "bucket per client address, IPv6 per /64, refilled over this time).")
    max_messages_per_client: int = Field(500, ge=1, description="Mails one client may start per rate_window_s; "
                                         "more get 451 4.7.1 at MAIL.")
    max_recipients_per_client: int = Field(2000, ge=1, description="Recipients one client may name per "
                                           "rate_window_s; more get 451 4.7.1 at RCPT.")
    max_connections: int = Field(100, ge=1, le=100_000, description="Open SMTP connections in all; more are "
                                 "answered 421 and closed.")
    max_connections_per_client: int = Field(10, ge=1, le=100_000, description="Open SMTP connections per client "
                                            "address; more are answered 421 and closed.")
    command_timeout_s: float = Field(300.0, gt=0, le=3600, description="A client silent this long is dropped; "
                                     "also the time for a whole DATA transfer (RFC 5321: at least 5 minutes).")
    session_timeout_s: float = Field(1800.0, gt=0, le=86_400, description="Longest SMTP session: then 421 and "
                                     "the connection is closed, however busy the client keeps it.")
    max_auth_failures_per_connection: int = Field(3, ge=1, le=100, description="Failed logins one connection may "
                                                  "make; its next AUTH is answered 421 4.7.0 and it is closed.")
    max_auth_failures_per_client: int = Field(10, ge=1, le=1000, description="Failed logins one client address "
                                              "(IPv6: its /64) may make within auth_failure_window_s; then its "
                                              "every AUTH, even with the right password, gets 454 4.7.0 until "
                                              "its failures fall out of the window.")
    auth_failure_window_s: float = Field(900.0, gt=0, le=86_400, description="Window of "
                                         "max_auth_failures_per_client.")

    @field_validator("own_domains")
    @classmethod
    def _domains_plain(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for domain in value:
            if not domain.strip() or "@" in domain or any(ch.isspace() for ch in domain.strip()):
                raise ValueError(f"own_domains: {domain!r} is not a domain name")
        return tuple(domain.strip().rstrip(".").lower() for domain in value)

    @field_validator("client_networks")
    @classmethod
    def _networks_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _cidr_networks(value, "client_networks")

    @field_validator("sender_user_numbers")
    @classmethod
    def _numbers_casefolded(cls, value: dict[str, int]) -> dict[str, int]:
        if any(number < 0 for number in value.values()):
            raise ValueError("sender_user_numbers must be 0 or more")
        return {address.strip().casefold(): number for address, number in value.items()}

    @field_validator("tls_key_file")
    @classmethod
    def _tls_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if (value is None) != (info.data.get("tls_cert_file") is None) and "tls_cert_file" in info.data:
            raise ValueError("tls_cert_file and tls_key_file are set together (or neither)")
        return value

    @field_validator("auth_username")
    @classmethod
    def _auth_username_not_empty(cls, value: str | None) -> str | None:
        # THREADLINE_RELAY_AUTH_USERNAME= is a value, not "unset": refused rather than guessed at.
        if value is not None and not value.strip():
            raise ValueError("auth_username is empty: unset it (no AUTH) or name the user clients log in as")
        return value

    @field_validator("auth_password")
    @classmethod
    def _auth_pair(cls, value: str | None, info: ValidationInfo) -> str | None:
        # An empty password (THREADLINE_RELAY_AUTH_PASSWORD=, an empty _FILE) would let anyone log in.
        if value is not None and not value.strip():
            raise ValueError("auth_password is empty: set the password clients log in with (or unset "
                             "auth_username and auth_password for no AUTH)")
        if "auth_username" in info.data and (value is None) != (info.data["auth_username"] is None):
            raise ValueError("auth_username and auth_password are set together (or neither)")
        return value


class Settings(_Section):
    """The whole configuration. Build it with :func:`load_settings`."""

    correlation: CorrelationSettings = CorrelationSettings()
    untracked: UntrackedSettings = UntrackedSettings()
    kafka: KafkaSettings = KafkaSettings()
    mail: MailSettings = Field(MailSettings(), description="Limits of one mail; the blob store of big mail.")
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    worker: WorkerSettings = WorkerSettings()
    escalation: EscalationSettings = Field(
        EscalationSettings(), description="Escalation of unanswered inbound mail: policies, business time (DESIGN.md §4)."
    )
    tracking: TrackingSettings = Field(
        TrackingSettings(), description="Open and click tracking: tokens, classification, marking (DESIGN.md §5)."
    )
    notifications: NotificationSettings = Field(
        NotificationSettings(), description="Delivery of alerts by e-mail and webhooks."
    )
    campaigns: CampaignSettings = Field(
        CampaignSettings(), description="Campaign sending: SMTP, rate limit, recipient checks, suppressions."
    )
    relay: RelaySettings = Field(
        RelaySettings(), description="`threadline smtp`: the SMTP relay that records every mail in mail.raw."
    )
    imap: ImapSettings = Field(
        ImapSettings(), description="IMAP poller: folders whose new mail goes to mail.raw (docs/imap.md)."
    )

    @model_validator(mode="after")
    def _mail_limits(self) -> "Settings":
        if self.relay.max_message_size is not None and self.relay.max_message_size > self.mail.max_message_bytes:
            raise ValueError(f"relay.max_message_size ({self.relay.max_message_size}) is over "
                             f"mail.max_message_bytes ({self.mail.max_message_bytes}): the relay would accept mail "
                             "that the pipeline refuses")
        return self

    @property
    def blob_dir(self) -> Path:
        """The blob store folder, absolute: every process that a command starts gets this path."""
        return (self.mail.blob_dir or self.worker.data_dir / "blobs").resolve()


class _EnvironmentSource(EnvSettingsSource):
    """The environment overlay: ``THREADLINE_<SECTION>_<FIELD>`` for every field of every section,
    nested sections joined the same way (``THREADLINE_CORRELATION_TRACKING_TOKEN_ENABLED``).

    Section and field names hold underscores themselves, so a variable cannot be split at a
    delimiter (pydantic-settings' ``env_nested_delimiter``): the names are built from the model
    instead. pydantic-settings decides which fields are complex (lists, dicts, models) and decodes
    their JSON; ``THREADLINE_X_FILE=/run/secrets/x`` gives the value of ``THREADLINE_X`` as that
    file's content (the Docker and Kubernetes secrets convention).
    """

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(Settings, case_sensitive=True, env_prefix=ENV_PREFIX)

    def _load_env_vars(self) -> Mapping[str, str]:
        return self._environ

    def __call__(self) -> dict[str, Any]:
        return self._section_values(Settings, ENV_PREFIX)

    def _section_values(self, model: type[BaseModel], prefix: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, field in model.model_fields.items():
            variable = f"{prefix}{name}".upper()
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                if nested := self._section_values(field.annotation, variable + "_"):
                    found[name] = nested
            elif (raw := self._raw_value(variable)) is not None:
                found[name] = self._decoded(name, field, variable, raw) if self._field_is_complex(field)[0] else raw
        return found

    def _raw_value(self, variable: str) -> str | None:
        if variable in self.env_vars or f"{variable}_FILE" not in self.env_vars:
            return self.env_vars.get(variable)
        path = self.env_vars[f"{variable}_FILE"]
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")  # a trailing newline is not the value's
        except OSError as exc:
            raise SettingsError(f"{variable}_FILE: cannot read {path}: {exc.strerror}") from exc

    def _decoded(self, name: str, field: FieldInfo, variable: str, raw: str) -> Any:
        kind = "list" if isinstance(field.default, tuple) else "object"
        if kind == "object" and not raw.strip():  # VAR= : no entries, or unset for an optional section
            return None if field.default is None else {}
        try:
            return self.decode_complex_value(name, field, raw)
        except ValueError as exc:
            raise SettingsError(f"{variable} is not a JSON {kind}: {exc}") from None


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
    for gone in ("THREADLINE_TRACKING_TOKEN_MAX_AGE_DAYS", "THREADLINE_TRACKING_TOKEN_MAX_AGE_DAYS_FILE"):
        if gone in environ:  # unknown variables are ignored, but this one used to mean something
            raise SettingsError(f"{gone} was replaced by THREADLINE_TRACKING_PIXEL_MAX_AGE_DAYS, "
                                "..._CLICK_MAX_AGE_DAYS and ..._UNSUBSCRIBE_MAX_AGE_DAYS (0 still means never)")
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
    values = _deep_merge(file_values, _EnvironmentSource(environ)())
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        # Not pydantic's text, which repeats each rejected input value (a password, a key), and
        # "from None": a traceback would print the chained ValidationError with those values.
        raise SettingsError("invalid settings:\n" + validation_message(exc, secret_values(Settings, values))) from None


def leaf_fields(model: type[BaseModel] = Settings, section: str = "") -> Iterator[tuple[str, str, FieldInfo]]:
    """(TOML section, name, field) of every setting of every section, nested ones (relay.upstream) too."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from leaf_fields(field.annotation, f"{section}.{name}" if section else name)
        elif section:
            yield section, name, field


def settings_reference() -> list[str]:
    """Markdown rows (one per field) documenting every setting: TOML path, variable, default."""
    rows: list[str] = []
    for section, name, field in leaf_fields():
        path = f"{section}.{name}"
        variable = ENV_PREFIX + path.replace(".", "_").upper()
        default = field.default
        if isinstance(default, Path):
            default = str(default)
        elif isinstance(default, BaseModel):  # an optional table with a default (sla.first_response)
            default = default.model_dump(mode="json")
        default = json.dumps(masked(default) if is_secret(field) else redact_strings(default))
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{path}` | `{variable}` | `{default}` | {description} |")
    return rows


def settings_reference_markdown() -> str:
    header = [
        "# Settings reference",
        "",
        "Generated by `threadline settings --reference`; a test keeps this file current.",
        "Sources, lowest priority first: defaults, the TOML file (`--settings FILE`, `$THREADLINE_SETTINGS`",
        "or `./threadline.toml`), environment variables. Lists are JSON in variables. Any variable can",
        "instead name a file holding its value with a `_FILE` suffix (e.g. `THREADLINE_KAFKA_SASL_PASSWORD_FILE",
        "=/run/secrets/kafka`), the Docker and Kubernetes secrets convention.",
        "",
        "| TOML key | environment variable | default | meaning |",
        "|---|---|---|---|",
    ]
    return "\n".join(header + settings_reference()) + "\n"
