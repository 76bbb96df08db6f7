"""``threadline campaign send``: the command behind the CLI (pipeline/cli/campaigns.py only parses arguments)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from pipeline.campaigns.recipients import RecipientListError
from pipeline.campaigns.send import CampaignError, CampaignInterrupted, SentMail, send_campaign
from pipeline.campaigns.template import TemplateLoadError, TemplateRenderError
from pipeline.settings import Settings

USER_ERRORS = (CampaignError, RecipientListError, TemplateLoadError, TemplateRenderError)


class _MailRawProducer:
    """Hands every sent mail to ``mail.raw`` (direction out), so the pipeline correlates replies."""

    def __init__(self, settings: Settings, tenant: str, campaign_id: str) -> None:
        from pipeline.broker import create_topics
        from pipeline.contracts.avro import AvroCodec, registry_from_settings
        from pipeline.contracts.records import MailRawCodec
        from pipeline.runtime.producer import RecordProducer

        if not settings.kafka.bootstrap:
            raise CampaignError("--to-mail-raw needs a broker: set THREADLINE_KAFKA_BOOTSTRAP or kafka.bootstrap")
        create_topics(settings.kafka, settings.kafka.bootstrap, timeout_s=10)
        self.codec = AvroCodec(registry_from_settings(settings.schema_registry.url))
        self.records = RecordProducer(settings, settings.kafka.bootstrap)
        self.mail_raw = MailRawCodec(settings, self.codec)
        self.tenant, self.campaign_id = tenant, campaign_id

    def __call__(self, mail: SentMail) -> None:
        from pipeline.contracts.records import mail_raw_record

        record = mail_raw_record(tenant=self.tenant, mailbox=f"campaign:{self.campaign_id}", direction="out",
                                 source=f"campaign:{self.campaign_id}#{mail.row}", raw=mail.data,
                                 received_at=datetime.now(timezone.utc))
        self.records.produce_mail(self.mail_raw, record, agent="campaign")

    @property
    def errors(self) -> list[str]:
        return self.records.report.errors

    def close(self) -> int:
        """Undelivered records after 60 s (0 when all arrived)."""
        report = self.records.finish(60)
        return report.produced - report.delivered


def run_send(settings: Settings, *, campaign_id: str, template: str, recipients: str, tenant: str = "default",
             rate: float | None = None, dry_run: bool = False, state: str | None = None, to_mail_raw: bool = False,
             report_path: str | None = None) -> int:
    """Send and print the report (stderr); 0 ok, 1 interrupted or mail.raw delivery errors.
    User errors raise one of :data:`USER_ERRORS`."""
    from pipeline.tracking.safety import key_refusal

    refused = key_refusal(settings, "threadline campaign send")  # send_campaign checks too; before any topic
    if refused:
        raise CampaignError(refused)
    producer = _MailRawProducer(settings, tenant, campaign_id) if to_mail_raw and not dry_run else None
    code = 0
    try:
        report = send_campaign(settings, campaign_id, template, recipients, tenant=tenant, rate_per_s=rate,
                               dry_run=dry_run, state_path=state, producer=producer)
    except CampaignInterrupted as exc:
        report, code = exc.report, 1
        print(f"threadline: {exc}", file=sys.stderr)
    finally:
        if producer is not None:
            undelivered = producer.close()
            if undelivered or producer.errors:
                code = 1
                print(f"threadline: {undelivered} mails not delivered to mail.raw {producer.errors[:3]}",
                      file=sys.stderr)
    print(report.format(), file=sys.stderr)
    for row, address, reason in report.skipped[:20]:
        print(f"  row {row} {address}: {reason}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"  ... {len(report.skipped) - 20} more{' (see ' + report_path + ')' if report_path else ''}",
              file=sys.stderr)
    if not dry_run:
        print(f"resume state: {report.state_path}", file=sys.stderr)
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return code
