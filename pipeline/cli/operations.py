"""Operating an installation: the effective settings, the doctor's checks, the Avro schema
releases, and erasing one person's data."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from pipeline.cli.common import (CommandFactory, UserError, as_user_error, broker_bootstrap, choice, open_store,
                                 settings_from)


def cmd_settings(args: argparse.Namespace) -> int:
    from pipeline.settings import settings_reference_markdown

    if args.reference:
        print(settings_reference_markdown(), end="")
        return 0
    from pipeline.redact import SHOW_SECRETS

    settings = settings_from(args)
    values = settings.model_dump(mode="json", context={SHOW_SECRETS: args.show_secrets})
    print(json.dumps(values, indent=2) if args.json else settings_toml(values), end="\n")
    print(f"correlation settings fingerprint: {settings.correlation.fingerprint()}", file=sys.stderr)
    return 0


def settings_toml(values: dict) -> str:
    """Dumped settings as a TOML file that load_settings reads back, with comments on what it leaves
    out: settings without a value (TOML has no null) and masked secrets, which load_settings then
    takes from the environment (THREADLINE_..._FILE) or its defaults instead of a mask."""
    import tomli_w

    left_out: dict[str, list[str]] = {"unset": [], "masked": []}
    text = tomli_w.dumps(_printable(values, "", left_out))
    header = ["# The effective settings (defaults, then the settings file, then THREADLINE_* variables);",
              "# save as threadline.toml to use them."]
    for kind, intro in (("unset", "Settings without a value are left out, TOML having no null"),
                        ("masked", "Secrets are left out (--show-secrets prints them; or give them as "
                                   "THREADLINE_<SECTION>_<FIELD>[_FILE])")):
        if left_out[kind]:
            header += textwrap.wrap(f"{intro}: {', '.join(left_out[kind])}.", width=100, initial_indent="# ",
                                    subsequent_indent="#   ", break_on_hyphens=False)
    return "\n".join(header) + "\n\n" + text


def _printable(values: dict, section: str, left_out: dict[str, list[str]]) -> dict:
    from pipeline.redact import MASK

    kept = {}
    for name, value in values.items():
        key = f"{section}{name}"
        if value is None:
            left_out["unset"].append(key)
        elif isinstance(value, str) and MASK in value:  # a masked secret, or a URL with one inside
            left_out["masked"].append(key)
        elif isinstance(value, dict):
            printable = _printable(value, f"{key}.", left_out)
            if printable or not value:  # a table of secrets only (tracking.keys) goes whole: not as empty
                kept[name] = printable
        elif isinstance(value, list) and any(isinstance(item, str) and MASK in item for item in value):
            left_out["masked"].append(key)
        elif isinstance(value, list):
            kept[name] = [_printable(item, f"{key}[{n}].", left_out) if isinstance(item, dict) else item
                          for n, item in enumerate(value)]
        else:
            kept[name] = value
    return kept


def add_settings(command: CommandFactory) -> None:
    settings = command("settings", cmd_settings, "Print the effective settings as TOML (or the reference of every "
                       "setting).")
    settings.add_argument("--reference", action="store_true", help="Markdown table of every setting")
    settings.add_argument("--json", action="store_true", help="as JSON instead of TOML (unset settings as null)")
    settings.add_argument("--show-secrets", action="store_true",
                          help="print passwords and keys instead of ******** (e.g. to copy a configuration)")


def cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.doctor import iter_checks

    checks = []
    for check in iter_checks(settings_from(args)):  # each as soon as it is known
        print(check.format(), flush=True)
        checks.append(check)
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} ok, {len(failed)} to fix")
    return 1 if failed else 0


def add_doctor(command: CommandFactory) -> None:
    command("doctor", cmd_doctor, "Check broker, topics, schemas, ClickHouse and settings; say how to fix problems.")


def cmd_schemas(args: argparse.Namespace) -> int:
    from pipeline.contracts.avro import SchemaError, check_schemas, release_schemas

    if args.action == "check":
        report = check_schemas()
        for topic, problems in report.items():
            print(f"{topic:<18} {'ok' if not problems else '; '.join(problems)}")
        return 1 if any(report.values()) else 0
    from pipeline.contracts.avro import SCHEMA_DIR
    from pipeline.doctor import checkout_of

    if checkout_of(SCHEMA_DIR) is None:
        # Releasing hands out schema ids; an installed package's ids are those of its release.
        raise UserError(f"{SCHEMA_DIR} belongs to an installed package: release schemas in a checkout of Threadline")
    with as_user_error(SchemaError):
        released = release_schemas()
    print("\n".join(released) if released else "nothing changed: every schema is released")
    return 0


def add_schemas(command: CommandFactory) -> None:
    schemas = command("schemas", cmd_schemas, "Check or release the Avro schemas of schemas/.")
    schemas.add_argument("action", **choice("check", "release"))


def cmd_erase(args: argparse.Namespace) -> int:
    from pipeline.erase import EraseError, erase_from_clickhouse, erase_from_topics, validate_address

    settings = settings_from(args)
    bootstrap = broker_bootstrap(settings)
    with as_user_error(EraseError):
        address = validate_address(args.address)
        if not args.yes:
            raise UserError(f"this rewrites every topic that mentions {address} and deletes its ClickHouse rows; "
                            "stop the workers, sink and notifier first, then run again with --yes (see "
                            "docs/operations.md)")
        store = open_store(settings, write=True)  # before any topic is rewritten: a store up serves is read-only
        report = erase_from_topics(settings, bootstrap, address, progress=lambda m: print(m, file=sys.stderr))
    rows = erase_from_clickhouse(store, address)
    print(json.dumps({"address": address, "records_removed": report.records_removed,
                      "topics_rewritten": report.topics_rewritten, "blobs_deleted": report.blobs_deleted,
                      "clickhouse_rows_deleted": {t: n for t, n in rows.items() if n}}, indent=2))
    print("next: start the next generation on the rewritten topics (threadline replay --settings ...) and retire "
          "the old workers; the sink re-reads the rewritten output topics (idempotent)", file=sys.stderr)
    return 0


def add_erase(command: CommandFactory) -> None:
    erase = command("erase", cmd_erase, "Remove one person's data from every topic and from ClickHouse.")
    erase.add_argument("--address", required=True)
    erase.add_argument("--yes", action="store_true", help="really do it (the pipeline must be stopped)")
