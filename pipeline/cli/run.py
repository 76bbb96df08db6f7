"""Running the pipeline: everything at once on the embedded defaults (up), mailboxes into mail.raw
(ingest), one correlator worker, a replay as a new generation, and the ClickHouse sink."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.cli.common import (CommandFactory, UserError, add_progress_flag, add_tenant, as_user_error, avro_codec,
                                 broker_bootstrap, choice, delivery_summary, ensure_topics, open_store, progress_bar,
                                 refuse_unsafe_keys, require_paths, settings_from)
from pipeline.contracts.topics import DEADLETTER, MAIL_CORRELATED, MAIL_RAW, MAIL_UNTRACKED


def _bar_factory(enabled: bool):
    """progress(desc, total) -> update(count_so_far): a progress bar on stderr per phase."""
    def progress(desc: str, total: int | None):
        if not enabled:
            return lambda _count: None
        bar = progress_bar(desc, total)

        def update(count: int) -> None:
            bar.update(count - bar.n)
            if total is not None and count >= total:
                bar.close()
        return update
    return progress


def _settings_file(args: argparse.Namespace) -> Path | None:
    path = args.settings or os.environ.get("THREADLINE_SETTINGS")
    if path:
        return Path(path).resolve()
    return Path("threadline.toml").resolve() if Path("threadline.toml").is_file() else None


def cmd_up(args: argparse.Namespace) -> int:
    from pipeline.broker import BrokerError
    from pipeline.up import run_up

    settings = settings_from(args)
    # Its endpoint and workers would refuse one by one; say it once, before the broker starts.
    refuse_unsafe_keys(settings, "threadline up")
    if args.mailbox:
        require_paths(args.mailbox)
    with as_user_error(BrokerError, TimeoutError, RuntimeError):
        return run_up(settings, mailboxes=args.mailbox, tenant=args.tenant, direction=args.direction,
                      workers=args.workers, exit_when_done=args.exit_when_done, settings_file=_settings_file(args),
                      progress=_bar_factory(not args.no_progress))


def add_up(command: CommandFactory) -> None:
    up = command("up", cmd_up, "Run the pipeline on the embedded defaults: broker, workers, a sample mailbox.")
    up.add_argument("mailbox", nargs="*", help="mailboxes to ingest (default: a generated sample)")
    add_tenant(up)
    up.add_argument("--direction", **choice("in", "out", "auto"), default="auto",
                    help="auto: out when the sender is in untracked.own_domains (default)")
    up.add_argument("--workers", type=int, default=1, choices=range(1, 9), metavar="N")
    up.add_argument("--exit-when-done", action="store_true", help="stop once the mailbox is handled")
    add_progress_flag(up)


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.mail.sources import iter_mail_sources
    from pipeline.streams.ingest import ingest

    settings = settings_from(args)
    bootstrap = broker_bootstrap(settings)
    require_paths(args.mailbox)
    ensure_topics(settings, bootstrap)
    codec = avro_codec(settings)
    if args.direction == "auto" and not settings.untracked.own_domains:
        raise UserError("--direction auto needs untracked.own_domains in the settings")
    report = ingest(iter_mail_sources(args.mailbox), settings, codec, bootstrap, tenant=args.tenant,
                    direction=args.direction, mailbox=args.mailbox_name,
                    on_progress=_bar_factory(not args.no_progress)("ingest mail.raw", None))
    return delivery_summary(report, f"mails delivered to mail.raw ({report.bytes / 2**20:.1f} MB)")


def add_ingest(command: CommandFactory) -> None:
    ingest = command("ingest", cmd_ingest, "Produce mailboxes to mail.raw.")
    ingest.add_argument("mailbox", nargs="+")
    add_tenant(ingest)
    ingest.add_argument("--direction", **choice("in", "out", "auto"), default="in",
                        help="auto: out when the sender is in untracked.own_domains")
    ingest.add_argument("--mailbox-name", help="mailbox name recorded with every mail (default: the path)")
    add_progress_flag(ingest)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    broker_bootstrap(settings)
    refuse_unsafe_keys(settings, "threadline worker")  # build_app checks too; this is before Faust loads
    if args.settings:
        os.environ["THREADLINE_SETTINGS"] = str(Path(args.settings).resolve())
    from pipeline.streams.app import main as worker_main

    worker_main(["worker", "-l", args.log_level])
    return 0


def add_worker(command: CommandFactory) -> None:
    worker = command("worker", cmd_worker, "Run one correlator worker (Faust) against kafka.bootstrap.")
    worker.add_argument("-l", "--log-level", default="info", **choice("crit", "error", "warn", "info", "debug"))


def cmd_replay(args: argparse.Namespace) -> int:
    from pipeline.streams.replay import ReplayRefused, diff_generations, known_generations, plan_generations
    from pipeline.streams.runner import WorkerProcess, app_id, count_outputs, topic_extent, wait_for_consumed

    current = settings_from(args)
    new = settings_from(args, "new_settings")
    bootstrap = broker_bootstrap(current if current.kafka.bootstrap else new)
    codec = avro_codec(new)
    mail = topic_extent(new.kafka, bootstrap, MAIL_RAW)  # what the new generation must get through
    total = sum(end - first for first, end in mail.values())
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
    progress = _bar_factory(not args.no_progress)
    replayed = new.model_copy(update={"worker": new.worker.model_copy(update={"generation": generation})})
    try:
        # The correlator commits a mail only once its outputs are out: the group's commits say how
        # far the replay is, at the cost of one request a second (reading the outputs each time
        # grew with them and took a core away from the workers).
        wait_for_consumed(new.kafka, bootstrap, app_id(replayed), MAIL_RAW, workers=workers,
                          timeout_s=max(600.0, total / 100), progress=progress, extent=mail)
        # The escalation agent reads those correlations after the correlator wrote them: stopped
        # now, the workers would leave the last escalations and SLA events unmade.
        wait_for_consumed(new.kafka, bootstrap, app_id(replayed), MAIL_CORRELATED, workers=workers,
                          timeout_s=max(600.0, total / 100), progress=progress)
    except (TimeoutError, RuntimeError) as exc:
        raise UserError(f"the replay as generation {generation} failed: {exc}") from exc
    finally:
        if not args.keep_running:
            for worker in workers:
                worker.stop()
    if not args.no_progress:
        print(f"comparing generation {generation} with generation {old_generation} ...", file=sys.stderr)
    diff = diff_generations(new.kafka, bootstrap, codec, old_generation, generation)
    if not diff.mails:  # no correlation of the new generation: only untracked mail, or none at all
        counts = count_outputs(new.kafka, bootstrap, codec, generation)
        if not counts[MAIL_UNTRACKED]:
            raise UserError(f"the replay failed: generation {generation} produced no correlation for the {total} "
                            f"mails of mail.raw ({counts[DEADLETTER]} dead letters); worker logs: "
                            f"{data_dir}/replay-g{generation}-*.log")
    print(diff.format())
    if args.keep_running:
        print(f"generation {generation} workers keep running (pids {[w.process.pid for w in workers]})", file=sys.stderr)
    return 0


def add_replay(command: CommandFactory) -> None:
    replay = command("replay", cmd_replay, "Recompute every correlation with new settings as a new generation.")
    replay.add_argument("--settings", dest="new_settings", required=True, metavar="NEW.toml")
    replay.add_argument("--from-generation", type=int, metavar="N",
                        help="generation to compare with (default: the newest one with correlations)")
    replay.add_argument("--generation", type=int, metavar="N", help="number of the new generation (default: one above "
                        "every generation on the cluster; an existing or lower one is refused)")
    replay.add_argument("--workers", type=int, default=1, choices=range(1, 9), metavar="N")
    replay.add_argument("--keep-running", action="store_true", help="leave the new generation's workers running")
    add_progress_flag(replay)


def cmd_sink(args: argparse.Namespace) -> int:
    from pipeline.sinks.clickhouse import ClickHouseSink

    settings = settings_from(args)
    bootstrap = broker_bootstrap(settings)
    store = open_store(settings, write=True)
    sink = ClickHouseSink(settings.kafka, bootstrap, store, avro_codec(settings), app_id=settings.worker.app_id)
    print(f"sinking output topics into {store.location}; Ctrl-C stops", file=sys.stderr)
    try:
        while True:
            if count := sink.poll_once():
                print(f"{count} records inserted; totals {dict(sink.inserted)}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        sink.close()
    return 0


def add_sink(command: CommandFactory) -> None:
    command("sink", cmd_sink, "Insert the output topics into ClickHouse (commit after insert).")
