"""``threadline``: thin command-line front end.  Assemble the parser from the areas of
``pipeline.cli``, call the command's handler, turn a :class:`UserError` into one line on stderr.

Every command takes ``--settings FILE`` (TOML); environment variables ``THREADLINE_*`` override it.
Errors a user can fix print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipeline.cli import analytics, bench, campaigns, correlation, gateways, operations, run, topics
from pipeline.cli.common import Handler, UserError

# `threadline --help` lists the commands in this order, which mixes the areas (it predates them).
COMMANDS = (correlation.add_correlate, correlation.add_explain, correlation.add_eval, correlation.add_correct,
            operations.add_settings,
            campaigns.add_mark, campaigns.add_campaign, campaigns.add_convert, correlation.add_demo, run.add_up,
            run.add_ingest, gateways.add_imap, run.add_worker, run.add_replay, operations.add_doctor,
            analytics.add_sql, analytics.add_report, gateways.add_tracking, gateways.add_smtp,
            campaigns.add_generate, gateways.add_notify, operations.add_erase, analytics.add_escalations,
            correlation.add_sla,
            analytics.add_dashboards, run.add_sink, operations.add_schemas, topics.add_tail, bench.add_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadline", description="E-mail correlation, tracking and escalation pipeline.")
    parser.add_argument("--settings", metavar="FILE", help="TOML settings file (default: ./threadline.toml if present)")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    for add_command in COMMANDS:
        add_command(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"threadline: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("threadline: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from confluent_kafka import KafkaException  # loaded already if it raised: no start-up cost

        if not isinstance(exc, KafkaException):
            raise
        # A broker that cannot be reached or refuses us: one line too, not a traceback.
        error = exc.args[0] if exc.args else None
        what = f"{error.str()} ({error.name()})" if hasattr(error, "str") else str(exc)
        print(f"threadline: Kafka: {what}; is the broker running? `threadline doctor` checks it", file=sys.stderr)
        return 2
