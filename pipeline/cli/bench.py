"""``threadline bench``: the benchmarks, each writing its results as JSON and printing its summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from pipeline.cli.common import (CommandFactory, Handler, UserError, add_out, add_progress_flag, deprecated, is_stdout,
                                 open_out, settings_from)

RESULTS_DIR = Path("bench-results")
TRACKING_BENCH_OUT = str(RESULTS_DIR / "tracking.json")


def _run_bench(args: argparse.Namespace, run: Callable[..., dict]) -> int:
    """Run ``run(settings, data_dir=..., progress=...)``, write its JSON, print its summary."""
    settings = settings_from(args)
    data_dir = settings.worker.data_dir.resolve() / "bench"
    data_dir.mkdir(parents=True, exist_ok=True)
    progress = (lambda _message: None) if args.no_progress else (lambda message: print(message, file=sys.stderr))
    return _write_bench(run(settings, data_dir=data_dir, progress=progress), args.out)


def _write_bench(result: dict, out_path: str) -> int:
    """The results as JSON into ``-o``; the summary on stdout after a file (it is in the JSON)."""
    with open_out(out_path) as out:
        out.write(json.dumps(result, indent=2, default=str) + "\n")
    if not is_stdout(out_path):
        print(json.dumps(result["summary"], indent=2))
        print(f"written to {out_path}", file=sys.stderr)
    return 0


def cmd_bench_correlate(args: argparse.Namespace) -> int:
    from pipeline.bench.correlate import run_correlate_bench

    if args.corpus is not None:
        deprecated("bench correlate", "--corpus", f"bench correlate {args.corpus}")
    corpus = Path(args.mbox or args.corpus) if args.mbox or args.corpus else None
    if corpus is not None and not corpus.is_file():
        raise UserError(f"no such mbox: {corpus}")
    try:
        sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        raise UserError("--sizes takes comma-separated whole numbers") from None
    if any(size < 1 for size in sizes) or args.measure < 1:
        raise UserError("--sizes and --measure must be positive")
    corpora = Path(args.corpora) if args.corpora else None
    if corpora is not None and not corpora.is_dir():
        raise UserError(f"no such folder of corpora: {corpora}")
    result = run_correlate_bench(sizes, seed=args.seed, measure=args.measure, progress=not args.no_progress,
                                 corpus_mbox=corpus, corpora=corpora)
    return _write_bench(result, args.out)


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from pipeline.bench.pipeline import run_pipeline_bench

    if args.mails < 1 or args.workers < 1:
        raise UserError("--mails and --workers must be positive")
    return _run_bench(args, lambda settings, **kw: run_pipeline_bench(settings, mails=args.mails, seed=args.seed,
                                                                      workers=args.workers, **kw))


def cmd_bench_replay(args: argparse.Namespace) -> int:
    from pipeline.bench.replay import run_replay_bench

    if args.mails < 1 or args.tenants_per_partition < 1:
        raise UserError("--mails and --tenants-per-partition must be positive")
    return _run_bench(args, lambda settings, **kw: run_replay_bench(
        settings, mails=args.mails, workers=args.workers, seed=args.seed,
        tenants_per_partition=args.tenants_per_partition, **kw))


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
    from dataclasses import replace

    from pipeline.bench.all import FULL, QUICK, run_all

    sizes = QUICK if args.quick else FULL
    if args.replay_mails is not None:
        if args.replay_mails < 1:
            raise UserError("--replay-mails must be positive")
        sizes = replace(sizes, replay_mails=args.replay_mails)
    if args.clickhouse_mails is not None:
        if args.clickhouse_mails < 1000:
            raise UserError("--clickhouse-mails must be at least 1000")
        sizes = replace(sizes, clickhouse_mails=args.clickhouse_mails)
    corpus = Path(args.corpus)
    if not corpus.is_dir():
        raise UserError(f"no corpus folder {corpus} (real mail, DIR/*/messages.mbox): give one with --corpus")

    def run(settings, **kw):
        results = run_all(settings, data_dir=kw["data_dir"],
                          results_dir=RESULTS_DIR if is_stdout(args.out) else Path(args.out).parent,
                          docs_path=Path(args.docs), sizes=sizes, corpus_dir=corpus,
                          progress=kw["progress"])
        parts = {name: result for name, result in results.items() if name != "run"}
        return {"summary": {name: [r["summary"] for r in result] if isinstance(result, list) else result["summary"]
                            for name, result in parts.items()} | {"seconds": results["run"]["seconds"]},
                "results": results}

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
    from pipeline.bench.parse import run_parse_bench, run_parse_corpus_bench

    if args.repeat < 1:
        raise UserError("--repeat must be positive")
    corpus = Path(args.corpus) if args.corpus is not None else None
    if corpus is not None and not corpus.exists():
        raise UserError(f"no such corpus: {corpus}")
    result = run_parse_bench(seed=args.seed, repeat=args.repeat, progress=not args.no_progress)
    if corpus is not None:
        try:
            result["corpus"] = run_parse_corpus_bench(corpus, repeat=args.repeat, progress=not args.no_progress)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        result["summary"]["corpus"] = result["corpus"]["summary"]
    return _write_bench(result, args.out)


def add_bench(command: CommandFactory) -> None:
    bench = command("bench", lambda a: bench.print_help() or 2, "Benchmarks; results as JSON.")
    bench_commands = bench.add_subparsers(dest="bench", required=True)

    def bench_command(name: str, handler: Handler, help_text: str, out: str) -> argparse.ArgumentParser:
        sub = bench_commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        add_out(sub, out, "the results as JSON")
        add_progress_flag(sub)
        return sub

    bench_correlate = bench_command("correlate", cmd_bench_correlate, "mails/s of the pure engine at growing index "
                                    "sizes", "bench-results/correlate.json")
    bench_correlate.add_argument("--sizes", default="10000,100000,1000000", help="indexed mails, comma separated")
    bench_correlate.add_argument("--measure", type=int, default=20_000, help="mails timed at each size")
    bench_correlate.add_argument("--seed", type=int, default=7)
    bench_correlate.add_argument("mbox", nargs="?", metavar="MBOX", help="also time parsing this real mbox")
    bench_correlate.add_argument("--corpora", metavar="DIR",
                                 help="also time the engine alone on the parsed mail of every corpus in DIR")
    bench_correlate.add_argument("--corpus", help=argparse.SUPPRESS)  # deprecated: the mbox is the argument now
    bench_pipeline = bench_command("pipeline", cmd_bench_pipeline, "mails/s end to end per worker vs raw "
                                   "confluent-kafka", "bench-results/pipeline.json")
    bench_pipeline.add_argument("--mails", type=int, default=20_000)
    bench_pipeline.add_argument("--seed", type=int, default=7)
    bench_pipeline.add_argument("--workers", type=int, default=1, help="worker processes, sharing the partitions")
    bench_replay = bench_command("replay", cmd_bench_replay, "seconds of `threadline replay` of N mails with W workers "
                                 "vs raw confluent-kafka reading them", "bench-results/replay.json")
    bench_replay.add_argument("--mails", type=int, default=1_000_000)
    bench_replay.add_argument("--workers", type=int, default=2, choices=range(1, 9), metavar="N")
    bench_replay.add_argument("--tenants-per-partition", type=int, default=2, metavar="N",
                              help="tenants of the mail on each partition")
    bench_replay.add_argument("--seed", type=int, default=7)
    bench_clickhouse = bench_command("clickhouse", cmd_bench_clickhouse, "sink insert rate and dashboard query "
                                     "latency", "bench-results/clickhouse.json")
    bench_clickhouse.add_argument("--mails", type=int, default=10_000_000, help="correlated mails in the tables")
    bench_clickhouse.add_argument("--insert-mails", type=int, default=20_000, help="seeded mails for the insert rate")
    bench_clickhouse.add_argument("--repeat", type=int, default=5)
    bench_all = bench_command("all", cmd_bench_all, "every benchmark; updates docs/benchmarks.md and its plots",
                              "bench-results/all-summary.json")
    bench_all.add_argument("--quick", action="store_true", help="much smaller sizes (a minute or two instead of ~25)")
    bench_all.add_argument("--replay-mails", type=int, metavar="N", help="mails of the replay part (default 1,000,000; "
                           "3,000 with --quick)")
    bench_all.add_argument("--clickhouse-mails", type=int, metavar="N", help="mails in the tables the dashboard "
                           "queries read (default 10,000,000; 100,000 with --quick)")
    bench_all.add_argument("--corpus", default="../shared/corpus", metavar="DIR",
                           help="the real corpora (DIR/*/messages.mbox) for the parse rate")
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
    bench_parse = bench_command("parse", cmd_bench_parse, "seconds to parse huge and hostile mail; with --corpus "
                                "mails/s on real mail",
                                "bench-results/parse.json")
    bench_parse.add_argument("--repeat", type=int, default=3, help="parses per huge (and corpus) mail; the best is kept")
    bench_parse.add_argument("--corpus", nargs="?", const=str(Path("..") / "shared" / "corpus"), metavar="DIR",
                             help="also mails/s on real mail: an mbox, a corpus folder or a folder of them "
                                  "(default ../shared/corpus), against the stdlib in the same run")
    bench_parse.add_argument("--seed", type=int, default=7)
