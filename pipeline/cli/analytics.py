"""Reading the ClickHouse store: ad-hoc SQL, the HTML report, the escalation list, and the Grafana
dashboards built from the same panels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pipeline.cli.common import CommandFactory, UserError, open_store, print_table, settings_from


def _sql_parameters(pairs: Sequence[str]) -> dict[str, str]:
    parameters = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name.isidentifier():
            raise UserError(f"--param {pair!r}: write NAME=VALUE and use {{NAME:String}} (or another type) in the query")
        parameters[name] = value
    return parameters


def cmd_sql(args: argparse.Namespace) -> int:
    parameters = _sql_parameters(args.param)
    unused = [name for name in parameters if f"{{{name}:" not in args.query]
    if unused:
        # Without a {name:Type} placeholder clickhouse-connect would format the value into the
        # text on the client instead of binding it.
        raise UserError(f"--param {unused[0]} is not used as {{{unused[0]}:Type}} in the query")
    store = open_store(settings_from(args))
    try:
        # Values given with --param are bound by ClickHouse ({name:Type}), not pasted into the text.
        result = store.query(args.query, parameters=parameters or None)
    except Exception as exc:  # ClickHouse reports syntax and type errors as exceptions
        raise UserError(str(exc).splitlines()[0]) from exc
    print_table(result)
    return 0


def add_sql(command: CommandFactory) -> None:
    sql = command("sql", cmd_sql, "Run a query on the ClickHouse store ({db} stands for the database).")
    sql.add_argument("query")
    sql.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a value for {NAME:String} (or another type) in the query, bound by ClickHouse; repeatable")


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.analytics.report import render_report

    store = open_store(settings_from(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png_dir = Path(args.png_dir) if args.png_dir else None
    out.write_text(render_report(store, tenant=args.tenant, png_dir=png_dir), encoding="utf-8")
    print(f"report written to {out.resolve()}", file=sys.stderr)
    if png_dir is not None:
        print(f"{len(list(png_dir.glob('*.png')))} chart PNGs in {png_dir.resolve()}", file=sys.stderr)
    return 0


def add_report(command: CommandFactory) -> None:
    report = command("report", cmd_report, "Render every dashboard panel into one self-contained HTML page.")
    report.add_argument("--out", default="data/report.html")
    report.add_argument("--tenant", help="tenant to show (default: the first one)")
    report.add_argument("--png-dir", help="also write every chart panel as a PNG into this folder")


def cmd_escalations(args: argparse.Namespace) -> int:
    store = open_store(settings_from(args))
    result = store.query("""
SELECT tenant, message_id, argMax(state, event_time) AS state, max(event_time) AS since,
       argMax(owner, event_time) AS owner, argMax(mailbox, event_time) AS mailbox, argMax(policy, event_time) AS policy
FROM {db}.escalations FINAL
WHERE {tenant:String} = '' OR tenant = {tenant:String}
GROUP BY tenant, message_id
HAVING (state = {state:String} OR ({state:String} = '' AND state != 'RESOLVED'))
   AND ({owner:String} = '' OR owner = {owner:String})
ORDER BY since""", parameters={"state": args.state or "", "owner": args.owner or "", "tenant": args.tenant or ""})
    print_table(result)
    print(f"{len(result.result_rows)} mails", file=sys.stderr)
    return 0


def add_escalations(command: CommandFactory) -> None:
    escalations = command("escalations", cmd_escalations,
                          "List unanswered mail by escalation state (open ones by default).")
    escalations.add_argument("--state", choices=("OPEN", "WARNED", "ESCALATED", "RESOLVED"))
    escalations.add_argument("--owner")
    escalations.add_argument("--tenant", help="only this tenant (default: every tenant)")


def cmd_dashboards(args: argparse.Namespace) -> int:
    from pipeline.analytics.dashboards import out_of_date, write_all

    if args.action == "build":
        for path in write_all():
            print(path)
        return 0
    stale = out_of_date()
    for name in stale:
        print(f"{name} is out of date: run `threadline dashboards build`")
    return 1 if stale else 0


def add_dashboards(command: CommandFactory) -> None:
    dashboards = command("dashboards", cmd_dashboards, "Build the Grafana dashboard JSON, or check it is current.")
    dashboards.add_argument("action", choices=("build", "check"))
