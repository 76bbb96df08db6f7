"""``threadline``: thin command-line front end.  Parse arguments, call the modules, print.

Every command takes ``--settings FILE`` (TOML); environment variables ``THREADLINE_*`` override it.
Errors a user can fix print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from pipeline.settings import Settings, SettingsError, load_settings

DEFAULT_CORRELATIONS = Path("data") / "correlations.jsonl"


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _progress(iterable, *, enabled: bool, desc: str, unit: str = "mail"):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args.settings)
    except SettingsError as exc:
        raise UserError(str(exc)) from exc


def _refuse_unsafe_keys(settings: Settings, command: str, listen_host: str | None = None) -> None:
    """Stop before anything starts when the tracking keys are unsafe outside the loopback demo."""
    from pipeline.tracking.safety import key_refusal

    refused = key_refusal(settings, command, listen_host=listen_host)
    if refused:
        raise UserError(refused)


def _require_paths(paths: Sequence[str]) -> None:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UserError(f"no such mailbox: {', '.join(missing)}")


# -- correlate / explain / eval ---------------------------------------------------------------
def cmd_correlate(args: argparse.Namespace) -> int:
    from pipeline.batch import ParseFailure, correlate_sources

    settings = _settings(args)
    _require_paths(args.mailbox)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    failures = 0
    with open(out_path, "w", encoding="utf-8") as out, open(str(out_path) + ".errors", "w", encoding="utf-8") as errors:
        items = correlate_sources(args.mailbox, settings, tenant=args.tenant, direction=args.direction,
                                  strip_headers=args.strip_headers)
        for item in _progress(items, enabled=not args.no_progress, desc="correlate"):
            if isinstance(item, ParseFailure):
                failures += 1
                errors.write(json.dumps(item.to_dict()) + "\n")
                continue
            counts[item.method.label] = counts.get(item.method.label, 0) + 1
            out.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
    total = sum(counts.values())
    print(f"{total} mails correlated -> {out_path}", file=sys.stderr)
    for label, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<18}{count:>8}", file=sys.stderr)
    if failures:
        print(f"{failures} messages could not be parsed; reasons in {out_path}.errors", file=sys.stderr)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from pipeline.correlation.explain import describe

    path = Path(args.source)
    if not path.is_file():
        raise UserError(f"{path} does not exist: run `threadline correlate MAILBOX -o {path}` first")
    wanted = args.message_id.strip()
    if not wanted.startswith("<"):
        wanted = f"<{wanted}>"
    found = None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if wanted in line:
                record = json.loads(line)
                # The newest generation wins; a duplicate delivery only repeats the first decision.
                if record.get("message_id") == wanted and (found is None or record.get("untracked_reason") != "duplicate"):
                    found = record
    if found is None:
        raise UserError(f"{wanted} is not in {path}")
    print(describe(found))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.batch import ParseFailure, correlate_sources
    from pipeline.correlation.evaluate import evaluate, format_table, read_truth

    settings = _settings(args)
    _require_paths([args.mbox, args.truth])
    if args.strategy:
        smart = settings.correlation.smart_matching.model_copy(update={"strategy": args.strategy})
        settings = settings.model_copy(update={"correlation": settings.correlation.model_copy(update={"smart_matching": smart})})
    items = correlate_sources([args.mbox], settings, strip_headers=args.strip_headers)
    predictions = [item for item in _progress(items, enabled=not args.no_progress, desc="eval")
                   if not isinstance(item, ParseFailure)]
    result = evaluate(read_truth(args.truth), predictions)
    if args.json:
        print(json.dumps({"strip_headers": args.strip_headers,
                          "strategy": settings.correlation.smart_matching.strategy,
                          "settings_fingerprint": settings.correlation.fingerprint(),
                          **result.as_dict()}, indent=2))
    else:
        title = f"{args.mbox}  strip_headers={args.strip_headers}  strategy={settings.correlation.smart_matching.strategy}"
        print(format_table(result, title))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    corpus = Path(args.corpus)
    if not (corpus / "messages.mbox").is_file():
        raise UserError(f"{corpus} has no messages.mbox (pass --corpus DIR)")
    run_demo(corpus, Path(args.out_dir), _settings(args),
             progress=lambda items, desc: _progress(items, enabled=not args.no_progress, desc=desc))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from pipeline.settings import settings_reference_markdown

    if args.reference:
        print(settings_reference_markdown(), end="")
        return 0
    from pipeline.redact import SHOW_SECRETS

    settings = _settings(args)
    print(json.dumps(settings.model_dump(mode="json", context={SHOW_SECRETS: args.show_secrets}), indent=2))
    print(f"correlation settings fingerprint: {settings.correlation.fingerprint()}", file=sys.stderr)
    return 0


def cmd_mark(args: argparse.Namespace) -> int:
    from pipeline.tracking.mark import MarkError, mark_message

    settings = _settings(args)
    _refuse_unsafe_keys(settings, "threadline mark")  # the links it writes are signed with the keys
    source = Path(args.message)
    if not source.is_file():
        raise UserError(f"no such message: {source}")
    try:
        result = mark_message(source.read_bytes(), settings.tracking, tenant=args.tenant, recipient=args.recipient,
                              campaign_id=args.campaign)
    except MarkError as exc:
        raise UserError(str(exc)) from exc
    if args.out:
        Path(args.out).write_bytes(result.data)
    else:
        sys.stdout.buffer.write(result.data)
        sys.stdout.flush()
    print(result.summary.format(), file=sys.stderr)
    return 0


def _produce_one(settings: Settings, topic: str, tenant: str, record: dict) -> None:
    from pipeline.avro import AvroCodec, registry_from_settings
    from pipeline.broker import create_topics
    from pipeline.streams.ingest import RecordProducer

    bootstrap = _bootstrap(settings)
    create_topics(settings.kafka, bootstrap)
    producer = RecordProducer(settings, bootstrap)
    producer.produce(topic, tenant.encode(), AvroCodec(registry_from_settings(settings.schema_registry.url)).encode(topic, record))
    report = producer.finish(30)
    if report.errors:
        raise UserError(f"not delivered to {topic}: {report.errors[0]}")


def cmd_campaign_create(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from pipeline.correlation.model import stable_event_id

    if args.cost < 0:
        raise UserError("--cost cannot be negative")
    now = datetime.now(timezone.utc)
    _produce_one(_settings(args), "campaigns", args.tenant, {
        # A new event id per update: the newest version (by updated_at) wins in ClickHouse.
        "event_id": stable_event_id("campaign", args.tenant, args.campaign, now.isoformat()), "tenant": args.tenant,
        "campaign_id": args.campaign, "name": args.name, "cost": args.cost, "currency": args.currency,
        "started_at": now, "updated_at": now})
    print(f"campaign {args.campaign} recorded", file=sys.stderr)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import uuid
    from datetime import datetime, timezone

    if args.revenue < 0:
        raise UserError("--revenue cannot be negative")
    _produce_one(_settings(args), "conversions", args.tenant, {
        "event_id": uuid.uuid4().hex, "tenant": args.tenant, "campaign_id": args.campaign,
        "recipient": args.recipient, "message_id": args.message_id, "revenue": args.revenue,
        "currency": args.currency, "event_time": datetime.now(timezone.utc)})
    print(f"conversion of {args.revenue:.2f} {args.currency} recorded for {args.campaign}", file=sys.stderr)
    return 0


def cmd_campaign_list(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from pipeline.analytics.dashboards import CAMPAIGN_ROI
    from pipeline.analytics.panels import panel_query

    store = _store(_settings(args))
    panel = next(p for p in CAMPAIGN_ROI.panels if p.title == "Campaigns")
    # The tenant goes as a server-side parameter, never into the SQL text.
    sql, parameters = panel_query(panel.sql, database=store.database,
                                  time_from=datetime(1970, 1, 2, tzinfo=timezone.utc), time_to=datetime.now(timezone.utc),
                                  variables={"tenant": args.tenant, "campaign": "All"})
    result = store.client.query(sql, parameters=parameters)
    print("\t".join(result.column_names))
    for row in result.result_rows:
        print("\t".join("" if value is None else str(value) for value in row))
    return 0


def cmd_campaign(args: argparse.Namespace) -> int:
    from pipeline.campaigns.command import USER_ERRORS, run_send

    settings = _settings(args)
    try:
        return run_send(settings, campaign_id=args.campaign, template=args.template, recipients=args.recipients,
                        tenant=args.tenant, rate=args.rate, dry_run=args.dry_run, state=args.state,
                        to_mail_raw=args.to_mail_raw, report_path=args.report)
    except USER_ERRORS as exc:
        raise UserError(str(exc)) from exc


# -- bench ------------------------------------------------------------------------------------
def cmd_bench_correlate(args: argparse.Namespace) -> int:
    from pipeline.bench.correlate import run_correlate_bench

    corpus = Path(args.corpus) if args.corpus else None
    if corpus is not None and not corpus.is_file():
        raise UserError(f"no such mbox: {corpus}")
    try:
        sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        raise UserError("--sizes takes comma-separated whole numbers") from None
    if any(size < 1 for size in sizes) or args.measure < 1:
        raise UserError("--sizes and --measure must be positive")
    result = run_correlate_bench(sizes, seed=args.seed, measure=args.measure, progress=not args.no_progress,
                                 corpus_mbox=corpus)
    return _write_bench(result, args.out)


def _run_bench(args: argparse.Namespace, run: Callable[..., dict]) -> int:
    """Run ``run(settings, data_dir=..., progress=...)``, write its JSON, print its summary."""
    settings = _settings(args)
    data_dir = settings.worker.data_dir.resolve() / "bench"
    data_dir.mkdir(parents=True, exist_ok=True)
    progress = (lambda _message: None) if args.no_progress else (lambda message: print(message, file=sys.stderr))
    return _write_bench(run(settings, data_dir=data_dir, progress=progress), args.out)


def _write_bench(result: dict, out_path: str) -> int:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from pipeline.bench.pipeline import run_pipeline_bench

    if args.mails < 1:
        raise UserError("--mails must be positive")
    return _run_bench(args, lambda settings, **kw: run_pipeline_bench(settings, mails=args.mails, seed=args.seed, **kw))


TRACKING_BENCH_OUT = "bench-results/tracking.json"


def cmd_bench_tracking(args: argparse.Namespace) -> int:
    from pipeline.bench.tracking import run_tracking_bench, run_tracking_outage_bench

    concurrency = args.concurrency if args.concurrency is not None else (32 if args.broker_down is None else 64)
    if args.seconds <= 0 or concurrency < 1:
        raise UserError("--seconds and --concurrency must be positive")
    if args.broker_down is None:
        return _run_bench(args, lambda settings, **kw: run_tracking_bench(
            settings, seconds=args.seconds, concurrency=concurrency, **kw))
    if args.broker_down <= 0 or args.rate <= 0 or args.recovery_s < 0:
        raise UserError("--broker-down and --rate must be positive, --recovery-s not negative")
    if args.out == TRACKING_BENCH_OUT:
        args.out = "bench-results/tracking-broker-down.json"
    return _run_bench(args, lambda settings, **kw: run_tracking_outage_bench(
        settings, outage_s=args.broker_down, rate=args.rate, recovery_s=args.recovery_s,
        concurrency=concurrency, **kw))


def cmd_bench_all(args: argparse.Namespace) -> int:
    from pipeline.bench.all import run_all

    def run(settings, **kw):
        results = run_all(settings, data_dir=kw["data_dir"], results_dir=Path(args.out).parent,
                          docs_path=Path(args.docs), quick=args.quick, progress=kw["progress"])
        return {"summary": {name: result["summary"] for name, result in results.items() if isinstance(result, dict)}
                | {"pipeline": [run["summary"] for run in results["pipeline"]]}, "results": results}

    code = _run_bench(args, run)
    print(f"{args.docs} updated", file=sys.stderr)
    return code


def cmd_bench_clickhouse(args: argparse.Namespace) -> int:
    from pipeline.bench.clickhouse import run_clickhouse_bench

    if args.mails < 1000 or args.repeat < 1:
        raise UserError("--mails must be at least 1000 and --repeat positive")
    return _run_bench(args, lambda settings, **kw: run_clickhouse_bench(
        settings, mails=args.mails, repeat=args.repeat, insert_mails=args.insert_mails, **kw))


def cmd_bench_parse(args: argparse.Namespace) -> int:
    from pipeline.bench.parse import run_parse_bench

    if args.repeat < 1:
        raise UserError("--repeat must be positive")
    return _write_bench(run_parse_bench(seed=args.seed, repeat=args.repeat, progress=not args.no_progress), args.out)


# -- pipeline ---------------------------------------------------------------------------------
def _bar_factory(enabled: bool):
    """progress(desc, total) -> update(count_so_far): a progress bar on stderr per phase."""
    def progress(desc: str, total: int | None):
        if not enabled:
            return lambda _count: None
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="mail", file=sys.stderr, mininterval=0.5, dynamic_ncols=True)

        def update(count: int) -> None:
            bar.update(count - bar.n)
            if total is not None and count >= total:
                bar.close()
        return update
    return progress



def _settings_file(args: argparse.Namespace) -> Path | None:
    import os

    path = args.settings or os.environ.get("THREADLINE_SETTINGS")
    if path:
        return Path(path).resolve()
    return Path("threadline.toml").resolve() if Path("threadline.toml").is_file() else None


def cmd_up(args: argparse.Namespace) -> int:
    from pipeline.broker import BrokerError
    from pipeline.up import run_up

    settings = _settings(args)
    # Its endpoint and workers would refuse one by one; say it once, before the broker starts.
    _refuse_unsafe_keys(settings, "threadline up")
    if args.mailbox:
        _require_paths(args.mailbox)
    try:
        return run_up(settings, mailboxes=args.mailbox, tenant=args.tenant, direction=args.direction,
                      workers=args.workers, exit_when_done=args.exit_when_done, settings_file=_settings_file(args),
                      progress=_bar_factory(not args.no_progress))
    except (BrokerError, TimeoutError, RuntimeError) as exc:
        raise UserError(str(exc)) from exc


def _bootstrap(settings: Settings) -> str:
    if not settings.kafka.bootstrap:
        raise UserError("no broker configured: set THREADLINE_KAFKA_BOOTSTRAP (printed by `threadline up`) "
                        "or kafka.bootstrap in the settings file")
    return settings.kafka.bootstrap


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.avro import AvroCodec, registry_from_settings
    from pipeline.broker import create_topics
    from pipeline.mail.sources import iter_mail_sources
    from pipeline.streams.ingest import ingest

    settings = _settings(args)
    bootstrap = _bootstrap(settings)
    _require_paths(args.mailbox)
    create_topics(settings.kafka, bootstrap)
    codec = AvroCodec(registry_from_settings(settings.schema_registry.url))
    if args.direction == "auto" and not settings.untracked.own_domains:
        raise UserError("--direction auto needs untracked.own_domains in the settings")
    report = ingest(iter_mail_sources(args.mailbox), settings, codec, bootstrap, tenant=args.tenant,
                    direction=args.direction, mailbox=args.mailbox_name,
                    on_progress=_bar_factory(not args.no_progress)("ingest mail.raw", None))
    return _delivery_summary(report, f"mails delivered to mail.raw ({report.bytes / 2**20:.1f} MB)")


def cmd_imap(args: argparse.Namespace) -> int:
    import logging

    from pipeline.avro import AvroCodec, registry_from_settings
    from pipeline.broker import create_topics
    from pipeline.gateways.imap import DeliveryError, ImapError, ImapPoller

    settings = _settings(args)
    bootstrap = _bootstrap(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    create_topics(settings.kafka, bootstrap)
    codec = AvroCodec(registry_from_settings(settings.schema_registry.url))
    try:
        poller = ImapPoller(settings, bootstrap, codec)
    except ImapError as exc:
        raise UserError(str(exc)) from exc
    if not args.once:
        print(f"polling {', '.join(f['name'] for f in settings.imap.folders)} at {settings.imap.host}; Ctrl-C stops",
              file=sys.stderr)
    try:
        poller.run(once=args.once)
    except DeliveryError as exc:
        print(f"threadline: {exc}", file=sys.stderr)
        return 1
    except ImapError as exc:
        raise UserError(str(exc)) from exc
    except KeyboardInterrupt:
        pass
    finally:
        poller.close()
        print(poller.report.format(), file=sys.stderr)
    return 0


def _delivery_summary(report, what: str) -> int:
    """Print how many records the broker acknowledged and the first delivery errors; exit code."""
    print(f"{report.delivered} of {report.produced} {what}", file=sys.stderr)
    if report.dead_lettered:
        print(f"  {report.dead_lettered} mails over mail.max_message_bytes went to deadletter (reason too_large)",
              file=sys.stderr)
    for error in report.errors[:10]:
        print(f"  delivery error: {error}", file=sys.stderr)
    return 1 if report.errors else 0


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    settings = _settings(args)
    _bootstrap(settings)
    _refuse_unsafe_keys(settings, "threadline worker")  # build_app checks too; this is before Faust loads
    if args.settings:
        os.environ["THREADLINE_SETTINGS"] = str(Path(args.settings).resolve())
    from pipeline.streams.app import main as worker_main

    worker_main(["worker", "-l", args.log_level])
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from pipeline.avro import AvroCodec, registry_from_settings
    from pipeline.settings import load_settings
    from pipeline.streams.replay import ReplayRefused, diff_generations, known_generations, plan_generations
    from pipeline.streams.runner import WorkerProcess, count_records, wait_for_outputs

    current = _settings(args)
    try:
        new = load_settings(args.new_settings)
    except SettingsError as exc:
        raise UserError(str(exc)) from exc
    bootstrap = _bootstrap(current if current.kafka.bootstrap else new)
    codec = AvroCodec(registry_from_settings(new.schema_registry.url))
    total = count_records(new.kafka, bootstrap, "mail.raw")
    if not total:
        raise UserError(f"{new.kafka.topic_prefix}mail.raw on {bootstrap} holds no mail: nothing to replay "
                        "(nothing was started)")
    # The settings name only the live generation: the ones a replay already made are found on the cluster.
    known = known_generations(new.kafka, bootstrap, codec, {current.worker.app_id, new.worker.app_id})
    try:
        old_generation, generation = plan_generations(known, current.worker.generation, args.generation,
                                                      args.from_generation)
    except ReplayRefused as exc:
        raise UserError(f"{exc} (nothing was started)") from exc
    print(f"replaying {total} mails of mail.raw as the new generation {generation}, to compare with generation "
          f"{old_generation} (new settings {new.correlation.fingerprint()}, current settings "
          f"{current.correlation.fingerprint()})",
          file=sys.stderr)
    if old_generation not in known.with_outputs:
        print(f"note: generation {old_generation} has no correlations on the cluster: every mail will count as "
              "changed", file=sys.stderr)
    data_dir = new.worker.data_dir.resolve()
    workers = []
    for n in range(args.workers):
        log_path = data_dir / f"replay-g{generation}-{n}.log"
        log_path.unlink(missing_ok=True)  # a crash reported from it must be this run's
        workers.append(WorkerProcess.start(bootstrap=bootstrap, data_dir=data_dir / f"replay-g{generation}-{n}",
                                           generation=generation, log_path=log_path,
                                           settings_file=Path(args.new_settings).resolve()))
    try:
        counts = wait_for_outputs(new.kafka, bootstrap, codec, generation, total, workers=workers,
                                  timeout_s=max(600.0, total / 100),
                                  on_progress=_bar_factory(not args.no_progress)("replay", total))
    except (TimeoutError, RuntimeError) as exc:
        raise UserError(f"the replay as generation {generation} failed: {exc}") from exc
    finally:
        if not args.keep_running:
            for worker in workers:
                worker.stop()
    if not counts["mail.correlated"] + counts["mail.untracked"]:
        raise UserError(f"the replay failed: generation {generation} produced no correlation for the {total} mails "
                        f"of mail.raw ({counts['deadletter']} dead letters); worker logs: "
                        f"{data_dir}/replay-g{generation}-*.log")
    diff = diff_generations(new.kafka, bootstrap, codec, old_generation, generation)
    print(diff.format())
    if args.keep_running:
        print(f"generation {generation} workers keep running (pids {[w.process.pid for w in workers]})", file=sys.stderr)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.doctor import run_checks

    checks = run_checks(_settings(args))
    for check in checks:
        print(check.format())
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} ok, {len(failed)} to fix")
    return 1 if failed else 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from pipeline.avro import SchemaError, check_schemas, release_schemas

    if args.action == "check":
        report = check_schemas()
        for topic, problems in report.items():
            print(f"{topic:<18} {'ok' if not problems else '; '.join(problems)}")
        return 1 if any(report.values()) else 0
    try:
        released = release_schemas()
    except SchemaError as exc:
        raise UserError(str(exc)) from exc
    print("\n".join(released) if released else "nothing changed: every schema is released")
    return 0


# -- analytics --------------------------------------------------------------------------------
def _store(settings: Settings):
    from pipeline.sinks.clickhouse import ClickHouseStore

    try:
        store = ClickHouseStore(settings)
    except Exception as exc:  # chDB refuses a folder another process holds; servers refuse logins
        raise UserError(f"cannot open ClickHouse: {exc} (is `threadline up` running on the same data folder? "
                        "chDB allows one process per folder; set THREADLINE_CLICKHOUSE_URL to share a server)") from exc
    store.migrate()
    return store


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
    store = _store(_settings(args))
    try:
        # Values given with --param are bound by ClickHouse ({name:Type}), not pasted into the text.
        result = store.query(args.query, parameters=parameters or None)
    except Exception as exc:  # ClickHouse reports syntax and type errors as exceptions
        raise UserError(str(exc).splitlines()[0]) from exc
    print("\t".join(result.column_names))
    for row in result.result_rows:
        print("\t".join("" if value is None else str(value) for value in row))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.analytics.report import render_report

    store = _store(_settings(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png_dir = Path(args.png_dir) if args.png_dir else None
    out.write_text(render_report(store, tenant=args.tenant, png_dir=png_dir), encoding="utf-8")
    print(f"report written to {out.resolve()}", file=sys.stderr)
    if png_dir is not None:
        print(f"{len(list(png_dir.glob('*.png')))} chart PNGs in {png_dir.resolve()}", file=sys.stderr)
    return 0


def cmd_tracking(args: argparse.Namespace) -> int:
    import logging

    from pipeline.avro import AvroCodec, registry_from_settings
    from pipeline.broker import create_topics
    from pipeline.gateways.tracking_http import serve

    settings = _settings(args)
    bootstrap = _bootstrap(settings)
    _refuse_unsafe_keys(settings, "threadline tracking", listen_host=args.host)  # serve() checks too
    logging.basicConfig(level=logging.INFO if args.access_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        create_topics(settings.kafka, bootstrap, timeout_s=5)
    except Exception as exc:  # the endpoint serves pixels even while the broker is down
        print(f"threadline: broker not reachable yet ({exc}); hits are buffered", file=sys.stderr)
    spool = settings.worker.data_dir.resolve() / "tracking-spool.jsonl"
    spool.parent.mkdir(parents=True, exist_ok=True)
    print(f"tracking on http://{args.host}:{args.port} (spool {spool}); Ctrl-C stops", file=sys.stderr)
    serve(settings, bootstrap, AvroCodec(registry_from_settings(settings.schema_registry.url)),
          host=args.host, port=args.port, spool_path=spool)
    return 0


def cmd_smtp(args: argparse.Namespace) -> int:
    import logging

    from pipeline.avro import AvroCodec, registry_from_settings
    from pipeline.gateways.smtp.relay import RelayError, run_relay

    settings = _settings(args)
    if not args.inbound and settings.relay.mode == "outbound":  # outbound mail gets signed tracking links
        _refuse_unsafe_keys(settings, "threadline smtp", listen_host=args.host or settings.relay.host)
    bootstrap = _bootstrap(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_relay(settings, bootstrap, AvroCodec(registry_from_settings(settings.schema_registry.url)),
                         inbound=True if args.inbound else None, host=args.host, port=args.port)
    except (RelayError, OSError) as exc:  # OSError: the port is taken or not ours to bind
        raise UserError(str(exc)) from exc


def cmd_notify(args: argparse.Namespace) -> int:
    import logging

    from pipeline.avro import AvroCodec, registry_from_settings
    from pipeline.gateways.notify import DeliveryError, Notifier

    settings = _settings(args)
    bootstrap = _bootstrap(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.notifications.smtp_host and not settings.notifications.webhook_urls:
        raise UserError("nothing to deliver to: set notifications.smtp_host and/or notifications.webhook_urls")
    notifier = Notifier(settings, bootstrap, AvroCodec(registry_from_settings(settings.schema_registry.url)))
    print("delivering alerts; Ctrl-C stops", file=sys.stderr)
    try:
        while True:
            notifier.poll_once()
    except KeyboardInterrupt:
        pass
    except DeliveryError as exc:
        raise UserError(f"{exc}; nothing was committed: restart to deliver the rest") from exc
    finally:
        notifier.close()
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.avro import AvroCodec, registry_from_settings
    from pipeline.broker import create_topics
    from pipeline.synth_traffic import CampaignTraffic, produce_traffic

    settings = _settings(args)
    _refuse_unsafe_keys(settings, "threadline generate")  # its tokens are signed with the keys
    bootstrap = _bootstrap(settings)
    if args.campaigns < 1 or args.recipients < 1:
        raise UserError("--campaigns and --recipients must be positive")
    create_topics(settings.kafka, bootstrap)
    traffic = CampaignTraffic(settings.tracking, seed=args.seed, tenant=args.tenant,
                              sender_domain=args.sender_domain).records(args.campaigns, args.recipients)
    report = produce_traffic(traffic, settings, AvroCodec(registry_from_settings(settings.schema_registry.url)), bootstrap)
    counts: dict[str, int] = {}
    for record in traffic:
        counts[record.topic] = counts.get(record.topic, 0) + 1
    return _delivery_summary(report, f"records delivered: {counts}")


def cmd_erase(args: argparse.Namespace) -> int:
    from pipeline.erase import EraseError, erase_from_clickhouse, erase_from_topics, validate_address

    settings = _settings(args)
    bootstrap = _bootstrap(settings)
    try:
        address = validate_address(args.address)
    except EraseError as exc:
        raise UserError(str(exc)) from exc
    if not args.yes:
        raise UserError(f"this rewrites every topic that mentions {address} and deletes its ClickHouse rows; stop "
                        "the workers, sink and notifier first, then run again with --yes (see docs/operations.md)")
    try:
        report = erase_from_topics(settings, bootstrap, address, progress=lambda m: print(m, file=sys.stderr))
    except EraseError as exc:
        raise UserError(str(exc)) from exc
    rows = erase_from_clickhouse(_store(settings), address)
    print(json.dumps({"address": address, "records_removed": report.records_removed,
                      "topics_rewritten": report.topics_rewritten, "blobs_deleted": report.blobs_deleted,
                      "clickhouse_rows_deleted": {t: n for t, n in rows.items() if n}}, indent=2))
    print("next: start the next generation on the rewritten topics (threadline replay --settings ...) and retire "
          "the old workers; the sink re-reads the rewritten output topics (idempotent)", file=sys.stderr)
    return 0


def cmd_escalations(args: argparse.Namespace) -> int:
    store = _store(_settings(args))
    rows = store.query("""
SELECT tenant, message_id, argMax(state, event_time) AS state, max(event_time) AS since,
       argMax(owner, event_time) AS owner, argMax(mailbox, event_time) AS mailbox, argMax(policy, event_time) AS policy
FROM {db}.escalations FINAL
WHERE {tenant:String} = '' OR tenant = {tenant:String}
GROUP BY tenant, message_id
HAVING (state = {state:String} OR ({state:String} = '' AND state != 'RESOLVED'))
   AND ({owner:String} = '' OR owner = {owner:String})
ORDER BY since""", parameters={"state": args.state or "", "owner": args.owner or "", "tenant": args.tenant or ""}).result_rows
    print("tenant\tmessage_id\tstate\tsince\towner\tmailbox\tpolicy")
    for row in rows:
        print("\t".join("" if v is None else str(v) for v in row))
    print(f"{len(rows)} mails", file=sys.stderr)
    return 0


def cmd_dashboards(args: argparse.Namespace) -> int:
    from pipeline.analytics.dashboards import DASHBOARD_DIR, render_all, write_all

    if args.action == "build":
        for path in write_all():
            print(path)
        return 0
    stale = [name for name, text in render_all().items()
             if not (DASHBOARD_DIR / name).is_file() or (DASHBOARD_DIR / name).read_text(encoding="utf-8") != text]
    for name in stale:
        print(f"{name} is out of date: run `threadline dashboards build`")
    return 1 if stale else 0


def cmd_sink(args: argparse.Namespace) -> int:
    from pipeline.avro import AvroCodec, registry_from_settings
    from pipeline.sinks.clickhouse import ClickHouseSink

    settings = _settings(args)
    bootstrap = _bootstrap(settings)
    store = _store(settings)
    sink = ClickHouseSink(settings, bootstrap, store, AvroCodec(registry_from_settings(settings.schema_registry.url)))
    print(f"sinking output topics into {store.location}; Ctrl-C stops", file=sys.stderr)
    try:
        sink.run(lambda: False, on_batch=lambda n: print(f"{n} records inserted; totals {dict(sink.inserted)}",
                                                         file=sys.stderr))
    except KeyboardInterrupt:
        pass
    finally:
        sink.close()
    return 0


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadline", description="E-mail correlation, tracking and escalation pipeline.")
    parser.add_argument("--settings", metavar="FILE", help="TOML settings file (default: ./threadline.toml if present)")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def progress_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    correlate = command("correlate", cmd_correlate, "Correlate mailboxes (mbox, maildir, .eml directory) into JSONL.")
    correlate.add_argument("mailbox", nargs="+")
    correlate.add_argument("-o", "--out", default=str(DEFAULT_CORRELATIONS), help="JSONL output (default: %(default)s)")
    correlate.add_argument("--tenant", default="default")
    correlate.add_argument("--direction", choices=("in", "out"), default="in")
    correlate.add_argument("--strip-headers", action="store_true",
                           help="ignore In-Reply-To, References, Thread-Index and our own header")
    progress_flag(correlate)

    explain = command("explain", cmd_explain, "Explain why a mail was correlated the way it was.")
    explain.add_argument("message_id")
    explain.add_argument("--from", dest="source", default=str(DEFAULT_CORRELATIONS),
                         help="correlations JSONL (default: %(default)s)")

    evaluate = command("eval", cmd_eval, "Measure correlation accuracy against a ground truth.")
    evaluate.add_argument("--mbox", required=True)
    evaluate.add_argument("--truth", required=True, help="truth JSONL (one line per mail of the mbox)")
    evaluate.add_argument("--strip-headers", action="store_true")
    evaluate.add_argument("--strategy", choices=("dynamics", "evidence"), help="override the smart matching strategy")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    progress_flag(evaluate)

    settings_command = command("settings", cmd_settings, "Print the effective settings (or the reference of every setting).")
    settings_command.add_argument("--reference", action="store_true", help="Markdown table of every setting")
    settings_command.add_argument("--show-secrets", action="store_true",
                                  help="print passwords and keys instead of ******** (e.g. to copy a configuration)")

    mark = command("mark", cmd_mark, "Mark an outbound mail for open and click tracking (pixel, signed links).")
    mark.add_argument("message", metavar="IN.eml")
    mark.add_argument("-o", "--out", metavar="OUT.eml", help="write here (default: stdout)")
    mark.add_argument("--campaign", metavar="ID", help="campaign mail: always tracked")
    mark.add_argument("--tenant", default="default")
    mark.add_argument("--recipient", metavar="ADDR", help="recipient the tokens name (default: the only one)")

    campaign = command("campaign", lambda a: campaign.print_help() or 2, "Campaign mail: personalised, tracked, "
                       "rate limited, resumable, with one-click unsubscribe.")
    campaign_commands = campaign.add_subparsers(dest="campaign_command", required=True)
    campaign_create = campaign_commands.add_parser("create", help="record a campaign and its cost (topic campaigns)")
    campaign_create.set_defaults(handler=cmd_campaign_create)
    campaign_create.add_argument("--campaign", required=True, metavar="ID")
    campaign_create.add_argument("--name", required=True)
    campaign_create.add_argument("--cost", type=float, default=0.0, help="total cost (updates replace it)")
    campaign_create.add_argument("--currency", default="EUR")
    campaign_create.add_argument("--tenant", default="default")
    campaign_list = campaign_commands.add_parser("list", help="campaigns with opens, clicks, conversions and ROI")
    campaign_list.set_defaults(handler=cmd_campaign_list)
    campaign_list.add_argument("--tenant", default="default")
    convert = command("convert", cmd_convert, "Record a conversion (revenue) for a campaign (topic conversions).")
    convert.add_argument("--campaign", required=True, metavar="ID")
    convert.add_argument("--revenue", type=float, required=True)
    convert.add_argument("--currency", default="EUR")
    convert.add_argument("--recipient", metavar="ADDR")
    convert.add_argument("--message-id", metavar="ID", help="the mail that led to it")
    convert.add_argument("--tenant", default="default")
    campaign_send = campaign_commands.add_parser(
        "send", help="send a template to a CSV recipient list through the configured SMTP server")
    campaign_send.set_defaults(handler=cmd_campaign)
    campaign_send.add_argument("--campaign", required=True, metavar="ID", help="campaign id (in every token)")
    campaign_send.add_argument("--template", required=True, metavar="T.toml|DIR",
                               help="TOML with subject/text/html, or a folder with subject.txt, body.txt, body.html")
    campaign_send.add_argument("--recipients", required=True, metavar="R.csv", help="CSV with a header and an email column")
    campaign_send.add_argument("--tenant", default="default")
    campaign_send.add_argument("--rate", type=float, metavar="N", help="mails per second (default: campaigns.rate_per_s)")
    campaign_send.add_argument("--dry-run", action="store_true", help="check and render every mail, send nothing")
    campaign_send.add_argument("--state", metavar="FILE", help="resume state (default: in worker.data_dir/campaigns)")
    campaign_send.add_argument("--to-mail-raw", action="store_true", help="also produce every sent mail to mail.raw "
                               "(direction out) on kafka.bootstrap")
    campaign_send.add_argument("--report", metavar="FILE", help="write the report, every skipped row included, as JSON")

    demo = command("demo", cmd_demo, "Correlate a real corpus, score it and explain a few decisions.")
    demo.add_argument("--corpus", default="../shared/corpus/ponymail", help="folder with messages.mbox and truth.jsonl")
    demo.add_argument("--out-dir", default="data/demo")
    progress_flag(demo)

    up = command("up", cmd_up, "Run the pipeline on the embedded defaults: broker, workers, a sample mailbox.")
    up.add_argument("mailbox", nargs="*", help="mailboxes to ingest (default: a generated sample)")
    up.add_argument("--tenant", default="default")
    up.add_argument("--direction", choices=("in", "out", "auto"), default="auto",
                    help="auto: out when the sender is in untracked.own_domains (default)")
    up.add_argument("--workers", type=int, default=1, choices=range(1, 9), metavar="N")
    up.add_argument("--exit-when-done", action="store_true", help="stop once the mailbox is handled")
    progress_flag(up)

    ingest = command("ingest", cmd_ingest, "Produce mailboxes to mail.raw.")
    ingest.add_argument("mailbox", nargs="+")
    ingest.add_argument("--tenant", default="default")
    ingest.add_argument("--direction", choices=("in", "out", "auto"), default="in",
                        help="auto: out when the sender is in untracked.own_domains")
    ingest.add_argument("--mailbox-name", help="mailbox name recorded with every mail (default: the path)")
    progress_flag(ingest)

    imap = command("imap", cmd_imap, "Poll the IMAP folders of imap.* into mail.raw (IDLE where offered; "
                   "docs/imap.md).")
    imap.add_argument("--once", action="store_true", help="ingest what is new in every folder, then exit")

    worker = command("worker", cmd_worker, "Run one correlator worker (Faust) against kafka.bootstrap.")
    worker.add_argument("-l", "--log-level", default="info", choices=("crit", "error", "warn", "info", "debug"))

    replay = command("replay", cmd_replay, "Recompute every correlation with new settings as a new generation.")
    replay.add_argument("--settings", dest="new_settings", required=True, metavar="NEW.toml")
    replay.add_argument("--from-generation", type=int, metavar="N",
                        help="generation to compare with (default: the newest one with correlations)")
    replay.add_argument("--generation", type=int, metavar="N", help="number of the new generation (default: one above "
                        "every generation on the cluster; an existing or lower one is refused)")
    replay.add_argument("--workers", type=int, default=1, choices=range(1, 9), metavar="N")
    replay.add_argument("--keep-running", action="store_true", help="leave the new generation's workers running")
    progress_flag(replay)

    command("doctor", cmd_doctor, "Check broker, topics, schemas, ClickHouse and settings; say how to fix problems.")

    sql = command("sql", cmd_sql, "Run a query on the ClickHouse store ({db} stands for the database).")
    sql.add_argument("query")
    sql.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a value for {NAME:String} (or another type) in the query, bound by ClickHouse; repeatable")

    report = command("report", cmd_report, "Render every dashboard panel into one self-contained HTML page.")
    report.add_argument("--out", default="data/report.html")
    report.add_argument("--tenant", help="tenant to show (default: the first one)")
    report.add_argument("--png-dir", help="also write every chart panel as a PNG into this folder")

    tracking = command("tracking", cmd_tracking, "Serve the open pixel and click redirects; hits go to tracking.raw.")
    tracking.add_argument("--host", default="127.0.0.1")
    tracking.add_argument("--port", type=int, default=8080)
    tracking.add_argument("--access-log", action="store_true", help="log every request (no personal data "
                          "unless tracking.access_log_personal_data)")

    smtp = command("smtp", cmd_smtp, "SMTP relay: record every mail in mail.raw, then hand it to relay.upstream_host "
                   "(queued and retried while the upstream is down).")
    smtp.add_argument("--inbound", action="store_true", help="MX-side filter: direction in, nothing stamped or marked "
                      "(default: relay.mode)")
    smtp.add_argument("--host", help="listen address (default: relay.host)")
    smtp.add_argument("--port", type=int, help="listen port (default: relay.port)")

    generate = command("generate", cmd_generate, "Produce seeded campaign traffic: sends, opens, clicks, replies, "
                       "bounces, conversions.")
    generate.add_argument("--campaigns", type=int, default=3)
    generate.add_argument("--recipients", type=int, default=300, help="per campaign")
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument("--tenant", default="default")
    generate.add_argument("--sender-domain", default="support.threadline.test",
                          help="the organisation's domain campaign mail is sent from")

    command("notify", cmd_notify, "Deliver alerts by e-mail (notifications.smtp_host) and to webhooks.")

    erase = command("erase", cmd_erase, "Remove one person's data from every topic and from ClickHouse.")
    erase.add_argument("--address", required=True)
    erase.add_argument("--yes", action="store_true", help="really do it (the pipeline must be stopped)")

    escalations = command("escalations", cmd_escalations, "List unanswered mail by escalation state (open ones by default).")
    escalations.add_argument("--state", choices=("OPEN", "WARNED", "ESCALATED", "RESOLVED"))
    escalations.add_argument("--owner")
    escalations.add_argument("--tenant", help="only this tenant (default: every tenant)")

    dashboards = command("dashboards", cmd_dashboards, "Build the Grafana dashboard JSON, or check it is current.")
    dashboards.add_argument("action", choices=("build", "check"))

    command("sink", cmd_sink, "Insert the output topics into ClickHouse (commit after insert).")

    schemas = command("schemas", cmd_schemas, "Check or release the Avro schemas of schemas/.")
    schemas.add_argument("action", choices=("check", "release"))

    bench = command("bench", lambda a: bench.print_help() or 2, "Benchmarks; results as JSON.")
    bench_commands = bench.add_subparsers(dest="bench", required=True)
    def bench_command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str,
                      out: str) -> argparse.ArgumentParser:
        sub = bench_commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("-o", "--out", default=out)
        progress_flag(sub)
        return sub

    bench_correlate = bench_command("correlate", cmd_bench_correlate, "mails/s of the pure engine at growing index "
                                    "sizes", "bench-results/correlate.json")
    bench_correlate.add_argument("--sizes", default="10000,100000,1000000", help="indexed mails, comma separated")
    bench_correlate.add_argument("--measure", type=int, default=20_000, help="mails timed at each size")
    bench_correlate.add_argument("--seed", type=int, default=7)
    bench_correlate.add_argument("--corpus", metavar="MBOX", help="also time parsing this real mbox")
    bench_pipeline = bench_command("pipeline", cmd_bench_pipeline, "mails/s end to end per worker vs raw "
                                   "confluent-kafka", "bench-results/pipeline.json")
    bench_pipeline.add_argument("--mails", type=int, default=20_000)
    bench_pipeline.add_argument("--seed", type=int, default=7)
    bench_clickhouse = bench_command("clickhouse", cmd_bench_clickhouse, "sink insert rate and dashboard query "
                                     "latency", "bench-results/clickhouse.json")
    bench_clickhouse.add_argument("--mails", type=int, default=10_000_000, help="correlated mails in the tables")
    bench_clickhouse.add_argument("--insert-mails", type=int, default=20_000, help="seeded mails for the insert rate")
    bench_clickhouse.add_argument("--repeat", type=int, default=5)
    bench_all = bench_command("all", cmd_bench_all, "every benchmark; updates docs/benchmarks.md and its plots",
                              "bench-results/all-summary.json")
    bench_all.add_argument("--quick", action="store_true", help="smaller sizes (minutes instead of ~15)")
    bench_all.add_argument("--docs", default="docs/benchmarks.md")
    bench_tracking = bench_command("tracking", cmd_bench_tracking, "pixel requests/s and latency under load; "
                                   "with --broker-down: latency, memory and spool while the broker is down",
                                   TRACKING_BENCH_OUT)
    bench_tracking.add_argument("--seconds", type=float, default=10.0)
    bench_tracking.add_argument("--concurrency", type=int, default=None,
                                help="client connections (default 32; 64 with --broker-down)")
    bench_tracking.add_argument("--broker-down", type=float, metavar="SECONDS",
                                help="kill the broker for SECONDS under a paced load, bring it back, check every "
                                     "hit reaches tracking.raw (default JSON: bench-results/tracking-broker-down.json)")
    bench_tracking.add_argument("--rate", type=float, default=1000.0, help="with --broker-down: requests/s")
    bench_tracking.add_argument("--recovery-s", type=float, default=60.0,
                                help="with --broker-down: seconds of load after the broker is back")
    bench_parse = bench_command("parse", cmd_bench_parse, "seconds to parse huge and hostile mail",
                                "bench-results/parse.json")
    bench_parse.add_argument("--repeat", type=int, default=3, help="parses per huge mail; the best is kept")
    bench_parse.add_argument("--seed", type=int, default=7)
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


if __name__ == "__main__":
    sys.exit(main())
