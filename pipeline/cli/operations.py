"""Operating an installation: the effective settings, the doctor's checks, the Avro schema
releases, and erasing one person's data."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli.common import (CommandFactory, UserError, as_user_error, broker_bootstrap, choice, open_store,
                                 settings_from)


def cmd_settings(args: argparse.Namespace) -> int:
    from pipeline.settings import settings_reference_markdown

    if args.reference:
        print(settings_reference_markdown(), end="")
        return 0
    from pipeline.redact import SHOW_SECRETS

    settings = settings_from(args)
    print(json.dumps(settings.model_dump(mode="json", context={SHOW_SECRETS: args.show_secrets}), indent=2))
    print(f"correlation settings fingerprint: {settings.correlation.fingerprint()}", file=sys.stderr)
    return 0


def add_settings(command: CommandFactory) -> None:
    settings = command("settings", cmd_settings, "Print the effective settings (or the reference of every setting).")
    settings.add_argument("--reference", action="store_true", help="Markdown table of every setting")
    settings.add_argument("--show-secrets", action="store_true",
                          help="print passwords and keys instead of ******** (e.g. to copy a configuration)")


def cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.doctor import run_checks

    checks = run_checks(settings_from(args))
    for check in checks:
        print(check.format())
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
        report = erase_from_topics(settings, bootstrap, address, progress=lambda m: print(m, file=sys.stderr))
    rows = erase_from_clickhouse(open_store(settings), address)
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
