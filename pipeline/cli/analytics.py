"""Reading the ClickHouse store: ad-hoc SQL, the HTML report, the escalation list, and the Grafana
dashboards built from the same panels."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from pipeline.cli.common import (CommandFactory, UserError, add_out, add_tenant_filter, choice, is_stdout, open_out,
                                 open_store, print_table, settings_from)

# The FORMAT clause that ends a query (ClickHouse reads it; we only need to know one is there).
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+\w+\s*$", re.IGNORECASE)
SQL_DEFAULT_FORMAT = "TabSeparatedWithNames"


def _sql_parameters(pairs: Sequence[str]) -> dict[str, str]:
    parameters = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name.isidentifier():
            raise UserError(f"--param {pair!r}: write NAME=VALUE and use {{NAME:String}} (or another type) in the query")
        parameters[name] = value
    return parameters


def cmd_sql(args: argparse.Namespace) -> int:
    query = args.query.strip().rstrip(";").rstrip()
    parameters = _sql_parameters(args.param)
    if args.tenant is not None:
        if "tenant" in parameters:
            raise UserError("--tenant T is --param tenant=T: give one of them")
        parameters["tenant"] = args.tenant
    unused = [name for name in parameters if f"{{{name}:" not in query]
    if unused:
        # Without a {name:Type} placeholder clickhouse-connect would format the value into the
        # text on the client instead of binding it.
        option = "--tenant" if unused[0] == "tenant" and args.tenant is not None else f"--param {unused[0]}"
        raise UserError(f"{option} is not used as {{{unused[0]}:Type}} in the query")
    named = _FORMAT_CLAUSE.search(query)
    if named and args.format:
        raise UserError(f"the query ends in {named[0]!r} and --format {args.format} names another: give one")
    store = open_store(settings_from(args))
    try:
        # Values given with --param are bound by ClickHouse ({name:Type}), not pasted into the text;
        # the answer is ClickHouse's own bytes in the format asked for.
        answer = store.raw_query(query, parameters=parameters or None,
                                 fmt=None if named else args.format or SQL_DEFAULT_FORMAT)
    except Exception as exc:  # ClickHouse reports syntax, type and format errors as exceptions
        raise UserError(str(exc).splitlines()[0]) from exc
    sys.stdout.buffer.write(answer)
    sys.stdout.buffer.flush()
    return 0


def add_sql(command: CommandFactory) -> None:
    sql = command("sql", cmd_sql, "Run a query on the ClickHouse store ({db} stands for the database); the answer "
                  f"in the query's FORMAT, else --format, else {SQL_DEFAULT_FORMAT}.")
    sql.add_argument("query")
    sql.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a value for {NAME:String} (or another type) in the query, bound by ClickHouse; repeatable")
    add_tenant_filter(sql, "bind {tenant:String} in the query to this tenant (--param tenant=T); the query "
                      "sees every tenant unless it filters")
    sql.add_argument("--format", metavar="NAME", help="a ClickHouse output format, e.g. PrettyCompact, JSONEachRow, "
                     "CSVWithNames (default: the query's FORMAT clause, else %s)" % SQL_DEFAULT_FORMAT)


def _report_moment(text: str, *, end_of_day: bool) -> datetime:
    """A --from/--to value: an ISO date or date and time, UTC unless it names a zone; a date
    alone is the start of that day, or for --to its end."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{text!r} is not a date: write 2026-01-31 or 2026-01-31T18:00") from None
    if end_of_day and len(text) <= len("2026-01-31"):
        moment += timedelta(days=1) - timedelta(milliseconds=1)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.analytics.report import render_report, report_scope

    time_from = _report_moment(args.time_from, end_of_day=False) if args.time_from else None
    time_to = _report_moment(args.time_to, end_of_day=True) if args.time_to else None
    if time_from and time_to and time_from >= time_to:
        raise UserError("--from must come before --to")
    if args.screenshot and is_stdout(args.out):
        raise UserError("--screenshot renders the written page: give -o a file, not -")
    store = open_store(settings_from(args))
    scope = report_scope(store, tenant=args.tenant, time_from=time_from, time_to=time_to)
    png_dir = Path(args.png_dir) if args.png_dir else None
    others = ", ".join(name for name, _ in scope.tenants if name != scope.tenant) or "none"
    # Said before the rendering, which takes seconds: what is being drawn.
    print(f"tenant {scope.tenant}: {scope.tenant_reason} (other tenants: {others}; choose with --tenant)\n"
          f"time range {scope.time_from:%Y-%m-%d %H:%M} to {scope.time_to:%Y-%m-%d %H:%M} UTC: {scope.range_reason} "
          f"(choose with --from/--to)\nrendering ...", file=sys.stderr, flush=True)
    with open_out(args.out) as out:
        out.write(render_report(store, scope, png_dir=png_dir))
    if not is_stdout(args.out):
        print(f"report written to {Path(args.out).resolve()}", file=sys.stderr)
    if png_dir is not None:
        print(f"{len(list(png_dir.glob('*.png')))} chart PNGs in {png_dir.resolve()}", file=sys.stderr)
    if args.screenshot:
        from pipeline.analytics.screenshot import ScreenshotError, screenshot

        try:
            width, height = screenshot(Path(args.out), Path(args.screenshot))
        except ScreenshotError as exc:
            raise UserError(f"--screenshot: {exc}") from exc
        print(f"screenshot ({width} x {height} px, headless Chromium) written to {Path(args.screenshot).resolve()}",
              file=sys.stderr)
    return 0


def add_report(command: CommandFactory) -> None:
    report = command("report", cmd_report, "Render every dashboard panel into one self-contained HTML page.")
    add_out(report, "data/report.html", "the HTML page")
    add_tenant_filter(report, "tenant to show (default: the one with the most mail in the time range)")
    report.add_argument("--from", dest="time_from", metavar="DATE",
                        help="start of the time range, UTC (default: the first stored event, or 30 days before the end "
                             "when the data spans over 92 days)")
    report.add_argument("--to", dest="time_to", metavar="DATE",
                        help="end of the time range, UTC; a date alone is the whole day (default: the last stored event)")
    report.add_argument("--png-dir", help="also write every chart panel as a PNG into this folder")
    report.add_argument("--screenshot", metavar="PNG",
                        help="also render the page in headless Chromium into this PNG (needs chromium on PATH)")


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
    escalations.add_argument("--state", **choice("OPEN", "WARNED", "ESCALATED", "RESOLVED"))
    escalations.add_argument("--owner")
    add_tenant_filter(escalations)


def cmd_dashboards(args: argparse.Namespace) -> int:
    from pipeline.analytics.dashboards import DASHBOARD_DIR, out_of_date, write_all
    from pipeline.doctor import checkout_of

    if args.action == "build":
        if args.out_dir is None and checkout_of(DASHBOARD_DIR) is None:
            raise UserError(f"the installed package's dashboards in {DASHBOARD_DIR} are its own files, already built: "
                            "point Grafana's provisioning there, or write copies elsewhere with --out-dir DIR")
        for path in write_all(Path(args.out_dir) if args.out_dir else DASHBOARD_DIR):
            print(path)
        return 0
    stale = out_of_date()
    for name in stale:
        print(f"{name} is out of date: run `threadline dashboards build`")
    return 1 if stale else 0


def add_dashboards(command: CommandFactory) -> None:
    dashboards = command("dashboards", cmd_dashboards, "Build the Grafana dashboard JSON, or check it is current.")
    dashboards.add_argument("action", **choice("build", "check"))
    dashboards.add_argument("--out-dir", metavar="DIR",
                            help="build: write the dashboard JSON into this folder (default: the package's, in a checkout)")
