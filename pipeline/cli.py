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
    settings = _settings(args)
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    print(f"correlation settings fingerprint: {settings.correlation.fingerprint()}", file=sys.stderr)
    return 0


# -- bench ------------------------------------------------------------------------------------
def cmd_bench_correlate(args: argparse.Namespace) -> int:
    from pipeline.bench.correlate import run_correlate_bench

    sizes = [int(size) for size in args.sizes.split(",")]
    if any(size < 1 for size in sizes) or args.measure < 1:
        raise UserError("--sizes and --measure must be positive")
    corpus = Path(args.corpus) if args.corpus else None
    if corpus is not None and not corpus.is_file():
        raise UserError(f"no such mbox: {corpus}")
    result = run_correlate_bench(sizes, seed=args.seed, measure=args.measure, progress=not args.no_progress,
                                 corpus_mbox=corpus)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"written to {out}", file=sys.stderr)
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

    demo = command("demo", cmd_demo, "Correlate a real corpus, score it and explain a few decisions.")
    demo.add_argument("--corpus", default="../shared/corpus/ponymail", help="folder with messages.mbox and truth.jsonl")
    demo.add_argument("--out-dir", default="data/demo")
    progress_flag(demo)

    bench = command("bench", lambda a: bench.print_help() or 2, "Benchmarks; results as JSON.")
    bench_commands = bench.add_subparsers(dest="bench", required=True)
    bench_correlate = bench_commands.add_parser("correlate", help="mails/s of the pure engine at growing index sizes")
    bench_correlate.set_defaults(handler=cmd_bench_correlate)
    bench_correlate.add_argument("--sizes", default="10000,100000,1000000", help="indexed mails, comma separated")
    bench_correlate.add_argument("--measure", type=int, default=20_000, help="mails timed at each size")
    bench_correlate.add_argument("--seed", type=int, default=7)
    bench_correlate.add_argument("--corpus", metavar="MBOX", help="also time parsing this real mbox")
    bench_correlate.add_argument("-o", "--out", default="bench-results/correlate.json")
    progress_flag(bench_correlate)
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
