"""Campaigns and tracked mail: mark one mail for tracking, create, list and send campaigns, record
conversions, and generate seeded campaign traffic."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from pipeline.cli.common import (CommandFactory, UserError, add_out, add_progress_flag, add_tenant, add_tenant_filter,
                                 as_user_error, avro_codec, broker_bootstrap, delivery_summary, ensure_topics, open_out,
                                 open_store, print_rows, produce_one, progress_bar, refuse_unsafe_keys, settings_from)
from pipeline.contracts.records import campaign_record, conversion_record
from pipeline.contracts.topics import CAMPAIGNS, CONVERSIONS
from pipeline.settings import Settings


def cmd_mark(args: argparse.Namespace) -> int:
    from pipeline.tracking.mark import MarkError, mark_message

    settings = settings_from(args)
    refuse_unsafe_keys(settings, "threadline mark")  # the links it writes are signed with the keys
    source = Path(args.message)
    if not source.is_file():
        raise UserError(f"no such message: {source}")
    with as_user_error(MarkError):
        result = mark_message(source.read_bytes(), settings.tracking, tenant=args.tenant, recipient=args.recipient,
                              campaign_id=args.campaign)
    with open_out(args.out, binary=True) as out:
        out.write(result.data)
    print(result.summary.format(), file=sys.stderr)
    return 0


def add_mark(command: CommandFactory) -> None:
    mark = command("mark", cmd_mark, "Mark an outbound mail for open and click tracking (pixel, signed links).")
    mark.add_argument("message", metavar="IN.eml")
    add_out(mark, None, "the marked mail", metavar="OUT.eml")
    mark.add_argument("--campaign", metavar="ID", help="campaign mail: always tracked")
    add_tenant(mark)
    mark.add_argument("--recipient", metavar="ADDR", help="recipient the tokens name (default: the only one)")


def cmd_campaign_create(args: argparse.Namespace) -> int:
    from pipeline.correlation.model import stable_event_id

    if args.cost < 0:
        raise UserError("--cost cannot be negative")
    now = datetime.now(timezone.utc)
    # A new event id per update: the newest version (by updated_at) wins in ClickHouse.
    produce_one(settings_from(args), CAMPAIGNS, args.tenant, campaign_record(
        stable_event_id("campaign", args.tenant, args.campaign, now.isoformat()), args.tenant, args.campaign,
        name=args.name, cost=args.cost, currency=args.currency, started_at=now, updated_at=now))
    print(f"campaign {args.campaign} recorded", file=sys.stderr)
    return 0


def cmd_campaign_list(args: argparse.Namespace) -> int:
    from pipeline.analytics.dashboards import CAMPAIGN_ROI
    from pipeline.analytics.panels import panel_query

    store = open_store(settings_from(args))
    panel = next(p for p in CAMPAIGN_ROI.panels if p.title == "Campaigns")
    tenants = [args.tenant] if args.tenant is not None else [
        row[0] for row in store.query("SELECT DISTINCT tenant FROM {db}.campaigns ORDER BY tenant").result_rows]
    columns, rows = [], []
    for tenant in tenants or [""]:  # no campaign at all: the panel's columns, no row
        # The tenant goes as a server-side parameter, never into the SQL text.
        sql, parameters = panel_query(panel.sql, database=store.database,
                                      time_from=datetime(1970, 1, 2, tzinfo=timezone.utc),
                                      time_to=datetime.now(timezone.utc), variables={"tenant": tenant, "campaign": "All"})
        result = store.client.query(sql, parameters=parameters)
        columns = ["tenant", *result.column_names]
        rows += [(tenant, *row) for row in result.result_rows]
    print_rows(columns, rows)
    return 0


class _MailRawProducer:
    """Hands every sent mail to ``mail.raw`` (direction out), so the pipeline correlates replies."""

    def __init__(self, settings: Settings, tenant: str, campaign_id: str) -> None:
        from pipeline.contracts.records import MailRawCodec
        from pipeline.runtime.producer import RecordProducer

        bootstrap = broker_bootstrap(settings)  # kafka.bootstrap, else the running threadline up's
        ensure_topics(settings, bootstrap, timeout_s=10)
        self.records = RecordProducer(settings.kafka, bootstrap)
        self.mail_raw = MailRawCodec(settings.mail, settings.blob_dir, avro_codec(settings))
        self.tenant, self.campaign_id = tenant, campaign_id

    def __call__(self, mail) -> None:
        from pipeline.contracts.records import mail_raw_record

        record = mail_raw_record(tenant=self.tenant, mailbox=f"campaign:{self.campaign_id}", direction="out",
                                 source=f"campaign:{self.campaign_id}#{mail.row}", raw=mail.data,
                                 received_at=datetime.now(timezone.utc))
        self.records.produce_mail(self.mail_raw, record, agent="campaign")


def cmd_campaign_send(args: argparse.Namespace) -> int:
    """Send and print the report (stderr); 1 when interrupted or a mail did not reach mail.raw."""
    from pipeline.campaigns.recipients import RecipientListError
    from pipeline.campaigns.send import CampaignError, CampaignInterrupted, send_campaign
    from pipeline.campaigns.template import TemplateLoadError, TemplateRenderError

    settings = settings_from(args)
    refuse_unsafe_keys(settings, "threadline campaign send")  # send_campaign checks too; before any topic
    producer = _MailRawProducer(settings, args.tenant, args.campaign) if args.to_mail_raw and not args.dry_run else None
    code = 0
    try:
        report = send_campaign(settings, args.campaign, args.template, args.recipients, tenant=args.tenant,
                               rate_per_s=args.rate, dry_run=args.dry_run, state_path=args.state, producer=producer,
                               progress=iter if args.no_progress else _sending_bar(args.dry_run))
    except (CampaignError, RecipientListError, TemplateLoadError, TemplateRenderError) as exc:
        raise UserError(str(exc)) from exc
    except CampaignInterrupted as exc:
        report, code = exc.report, 1
        print(f"threadline: {exc}", file=sys.stderr)
    finally:
        if producer is not None:
            sent = producer.records.finish(60)
            if sent.produced != sent.delivered or sent.errors:
                code = 1
                print(f"threadline: {sent.produced - sent.delivered} mails not delivered to mail.raw {sent.errors[:3]}",
                      file=sys.stderr)
    print(report.format(), file=sys.stderr)
    for row, address, reason in report.skipped[:20]:
        print(f"  row {row} {address}: {reason}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"  ... {len(report.skipped) - 20} more{' (see ' + args.report + ')' if args.report else ''}",
              file=sys.stderr)
    if not args.dry_run:
        print(f"resume state: {report.state_path}", file=sys.stderr)
    if args.report:
        with open_out(args.report) as out:
            out.write(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n")
    return code


def _sending_bar(dry_run: bool):
    return lambda recipients: progress_bar("render" if dry_run else "send", iterable=recipients)


def add_campaign(command: CommandFactory) -> None:
    campaign = command("campaign", lambda a: campaign.print_help() or 2, "Campaign mail: personalised, tracked, "
                       "rate limited, resumable, with one-click unsubscribe.")
    campaign_commands = campaign.add_subparsers(dest="campaign_command", required=True)
    campaign_create = campaign_commands.add_parser("create", help="record a campaign and its cost (topic campaigns)")
    campaign_create.set_defaults(handler=cmd_campaign_create)
    campaign_create.add_argument("--campaign", required=True, metavar="ID")
    campaign_create.add_argument("--name", required=True)
    campaign_create.add_argument("--cost", type=float, default=0.0, help="total cost (updates replace it)")
    campaign_create.add_argument("--currency", default="EUR")
    add_tenant(campaign_create)
    campaign_list = campaign_commands.add_parser("list", help="campaigns with opens, clicks, conversions and ROI")
    campaign_list.set_defaults(handler=cmd_campaign_list)
    add_tenant_filter(campaign_list)
    campaign_send = campaign_commands.add_parser(
        "send", help="send a template to a CSV recipient list through the configured SMTP server")
    campaign_send.set_defaults(handler=cmd_campaign_send)
    campaign_send.add_argument("--campaign", required=True, metavar="ID", help="campaign id (in every token)")
    campaign_send.add_argument("--template", required=True, metavar="T.toml|DIR",
                               help="TOML with subject/text/html, or a folder with subject.txt, body.txt, body.html")
    campaign_send.add_argument("--recipients", required=True, metavar="R.csv", help="CSV with a header and an email column")
    add_tenant(campaign_send)
    campaign_send.add_argument("--rate", type=float, metavar="N", help="mails per second (default: campaigns.rate_per_s)")
    campaign_send.add_argument("--dry-run", action="store_true", help="check and render every mail, send nothing")
    campaign_send.add_argument("--state", metavar="FILE", help="resume state (default: in worker.data_dir/campaigns)")
    campaign_send.add_argument("--to-mail-raw", action="store_true", help="also produce every sent mail to mail.raw "
                               "(direction out) on kafka.bootstrap, else on the broker of the threadline up running here")
    add_progress_flag(campaign_send)
    campaign_send.add_argument("--report", metavar="FILE", help="write the report, every skipped row included, as JSON "
                               "(- for stdout)")


def cmd_convert(args: argparse.Namespace) -> int:
    if args.revenue < 0:
        raise UserError("--revenue cannot be negative")
    produce_one(settings_from(args), CONVERSIONS, args.tenant, conversion_record(
        uuid.uuid4().hex, args.tenant, args.campaign, recipient=args.recipient, message_id=args.message_id,
        revenue=args.revenue, currency=args.currency, event_time=datetime.now(timezone.utc)))
    print(f"conversion of {args.revenue:.2f} {args.currency} recorded for {args.campaign}", file=sys.stderr)
    return 0


def add_convert(command: CommandFactory) -> None:
    convert = command("convert", cmd_convert, "Record a conversion (revenue) for a campaign (topic conversions).")
    convert.add_argument("--campaign", required=True, metavar="ID")
    convert.add_argument("--revenue", type=float, required=True)
    convert.add_argument("--currency", default="EUR")
    convert.add_argument("--recipient", metavar="ADDR")
    convert.add_argument("--message-id", metavar="ID", help="the mail that led to it")
    add_tenant(convert)


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.synth_traffic import CampaignTraffic, produce_traffic

    settings = settings_from(args)
    refuse_unsafe_keys(settings, "threadline generate")  # its tokens are signed with the keys
    bootstrap = broker_bootstrap(settings)
    if args.campaigns < 1 or args.recipients < 1:
        raise UserError("--campaigns and --recipients must be positive")
    ensure_topics(settings, bootstrap)
    traffic = CampaignTraffic(settings.tracking, seed=args.seed, tenant=args.tenant,
                              sender_domain=args.sender_domain).records(args.campaigns, args.recipients)
    report = produce_traffic(traffic, settings, avro_codec(settings), bootstrap)
    counts = dict(Counter(record.topic for record in traffic))
    return delivery_summary(report, f"records delivered: {counts}")


def add_generate(command: CommandFactory) -> None:
    generate = command("generate", cmd_generate, "Produce seeded campaign traffic: sends, opens, clicks, replies, "
                       "bounces, conversions.")
    generate.add_argument("--campaigns", type=int, default=3)
    generate.add_argument("--recipients", type=int, default=300, help="per campaign")
    generate.add_argument("--seed", type=int, default=7)
    add_tenant(generate)
    generate.add_argument("--sender-domain", default="support.threadline.test",
                          help="the organisation's domain campaign mail is sent from")
