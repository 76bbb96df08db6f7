"""The gateways between the pipeline and the outside, each a long-running process: the IMAP poller,
the tracking endpoint, the SMTP relay and the alert notifier."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.cli.common import (CommandFactory, UserError, as_user_error, avro_codec, broker_bootstrap, ensure_topics,
                                 refuse_unsafe_keys, settings_from)


def _log_to_stderr(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_imap(args: argparse.Namespace) -> int:
    from pipeline.gateways.imap import DeliveryError, ImapError, ImapPoller

    settings = settings_from(args)
    bootstrap = broker_bootstrap(settings)
    _log_to_stderr()
    ensure_topics(settings, bootstrap)
    codec = avro_codec(settings)
    with as_user_error(ImapError):
        poller = ImapPoller(settings, bootstrap, codec)
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


def add_imap(command: CommandFactory) -> None:
    imap = command("imap", cmd_imap, "Poll the IMAP folders of imap.* into mail.raw (IDLE where offered; "
                   "docs/imap.md).")
    imap.add_argument("--once", action="store_true", help="ingest what is new in every folder, then exit")


def cmd_tracking(args: argparse.Namespace) -> int:
    from pipeline.broker import create_topics
    from pipeline.gateways.tracking_http import serve

    settings = settings_from(args)
    bootstrap = broker_bootstrap(settings)
    refuse_unsafe_keys(settings, "threadline tracking", listen_host=args.host)  # serve() checks too
    _log_to_stderr(logging.INFO if args.access_log else logging.WARNING)
    try:
        create_topics(settings.kafka, bootstrap, timeout_s=5)
    except Exception as exc:  # the endpoint serves pixels even while the broker is down
        print(f"threadline: broker not reachable yet ({exc}); hits are buffered", file=sys.stderr)
    spool = settings.worker.data_dir.resolve() / "tracking-spool.jsonl"
    spool.parent.mkdir(parents=True, exist_ok=True)
    print(f"tracking on http://{args.host}:{args.port} (spool {spool}); Ctrl-C stops", file=sys.stderr)
    serve(settings, bootstrap, avro_codec(settings), host=args.host, port=args.port, spool_path=spool)
    return 0


def add_tracking(command: CommandFactory) -> None:
    tracking = command("tracking", cmd_tracking, "Serve the open pixel and click redirects; hits go to tracking.raw.")
    tracking.add_argument("--host", default="127.0.0.1")
    tracking.add_argument("--port", type=int, default=8080)
    tracking.add_argument("--access-log", action="store_true", help="log every request (no personal data "
                          "unless tracking.access_log_personal_data)")


def cmd_smtp(args: argparse.Namespace) -> int:
    from pipeline.gateways.smtp.policy import RelayError
    from pipeline.gateways.smtp.server import run_relay

    settings = settings_from(args)
    if not args.inbound and settings.relay.mode == "outbound":  # outbound mail gets signed tracking links
        refuse_unsafe_keys(settings, "threadline smtp", listen_host=args.host or settings.relay.host)
    bootstrap = broker_bootstrap(settings)
    _log_to_stderr()
    with as_user_error(RelayError, OSError):  # OSError: the port is taken or not ours to bind
        return run_relay(settings, bootstrap, avro_codec(settings),
                         inbound=True if args.inbound else None, host=args.host, port=args.port)


def add_smtp(command: CommandFactory) -> None:
    smtp = command("smtp", cmd_smtp, "SMTP relay: record every mail in mail.raw, then hand it to relay.upstream.host "
                   "(queued and retried while the upstream is down).")
    smtp.add_argument("--inbound", action="store_true", help="MX-side filter: direction in, nothing stamped or marked "
                      "(default: relay.mode)")
    smtp.add_argument("--host", help="listen address (default: relay.host)")
    smtp.add_argument("--port", type=int, help="listen port (default: relay.port)")


def cmd_notify(args: argparse.Namespace) -> int:
    from pipeline.gateways.notify import DeliveryError, Notifier

    settings = settings_from(args)
    bootstrap = broker_bootstrap(settings)
    _log_to_stderr()
    if not settings.notifications.smtp.host and not settings.notifications.webhook_urls:
        raise UserError("nothing to deliver to: set notifications.smtp.host and/or notifications.webhook_urls")
    notifier = Notifier(settings.notifications, settings.kafka, bootstrap, avro_codec(settings),
                        app_id=settings.worker.app_id)
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


def add_notify(command: CommandFactory) -> None:
    command("notify", cmd_notify, "Deliver alerts by e-mail (notifications.smtp) and to webhooks.")
