"""Correlation: correlate mailboxes into JSONL, explain one decision, measure the accuracy against a
ground truth, the demo that does all three on a real corpus (no broker), and people's corrections,
written to the broker for the correlator."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

from pipeline.cli.common import (CommandFactory, UserError, add_out, add_progress_flag, add_tenant,
                                 add_tenant_filter, as_user_error, avro_codec, broker_bootstrap, choice, ctrl_c_stops,
                                 deprecated,
                                 is_stdout, message_id_value, open_out, open_store, produce_one, progress_bar,
                                 require_paths, settings_from, store_exists)
from pipeline.runtime.collector import tune_collector

DEFAULT_CORRELATIONS = Path("data") / "correlations.jsonl"
# The shared corpora beside the project, as `eval` and `demo` find them (relative to the working folder).
DEFAULT_CORPUS_DIR = Path("..") / "shared" / "corpus"
# A corpus: a folder with the mails and, for scoring, what each one really answers.
CORPUS_MBOX, CORPUS_TRUTH = "messages.mbox", "truth.jsonl"


def _progress(iterable, *, enabled: bool, desc: str):
    return progress_bar(desc, iterable=iterable) if enabled else iterable


def cmd_correlate(args: argparse.Namespace) -> int:
    from pipeline.batch import ParseFailure, correlate_sources

    settings = settings_from(args)
    require_paths(args.mailbox)
    tune_collector(settings.worker)  # one index of the whole mailbox, as in a worker
    # The reasons a message could not be parsed go beside the output file; with stdout, to stderr.
    errors_path = None if is_stdout(args.out) else f"{args.out}.errors"
    counts: dict[str, int] = {}
    failures = 0
    with open_out(args.out) as out, open_out(errors_path) if errors_path else nullcontext(sys.stderr) as errors:
        items = correlate_sources(args.mailbox, settings.correlation, settings.untracked, tenant=args.tenant,
                                  direction=args.direction, strip_headers=args.strip_headers)
        for item in _progress(items, enabled=not args.no_progress, desc="correlate"):
            if isinstance(item, ParseFailure):
                failures += 1
                errors.write(json.dumps(item.to_dict()) + "\n")
                continue
            counts[item.method_name] = counts.get(item.method_name, 0) + 1
            out.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
    total = sum(counts.values())
    print(f"{total} mails correlated -> {'stdout' if errors_path is None else args.out}", file=sys.stderr)
    for label, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<18}{count:>8}", file=sys.stderr)
    if failures:
        print(f"{failures} messages could not be parsed; reasons {f'in {errors_path}' if errors_path else 'above'}",
              file=sys.stderr)
    return 0


def add_correlate(command: CommandFactory) -> None:
    correlate = command("correlate", cmd_correlate, "Correlate mailboxes (mbox, maildir, .eml directory) into JSONL.")
    correlate.add_argument("mailbox", nargs="+")
    add_out(correlate, str(DEFAULT_CORRELATIONS), "the correlations as JSON lines")
    add_tenant(correlate)
    correlate.add_argument("--direction", **choice("in", "out"), default="in")
    correlate.add_argument("--strip-headers", action="store_true",
                           help="ignore In-Reply-To, References, Thread-Index and our own header")
    add_progress_flag(correlate)


def cmd_explain(args: argparse.Namespace) -> int:
    """Find the mail's correlation in the first source that has it (a --file; else ClickHouse,
    the output topics, data/correlations.jsonl) and describe it, per tenant."""
    from pipeline.correlation.explain import describe
    from pipeline.decisions import choose

    settings = settings_from(args)
    wanted = args.message_id
    searched: list[str] = []
    for source, decisions in _decision_sources(args, settings, searched):
        if not decisions:
            searched.append(f"not in {source}")
            continue
        choices = choose(decisions, tenant=args.tenant, generation=args.generation)
        if not choices:
            generations = sorted({d.get("generation", 0) for d in decisions})
            raise UserError(f"{wanted} has no decision of generation {args.generation} in {source} "
                            f"(it has generation {', '.join(map(str, generations))})")
        if len(choices) > 1:
            print(f"{wanted} is in {len(choices)} tenants ({', '.join(c.tenant for c in choices)}): each is shown; "
                  "--tenant T shows one", file=sys.stderr)
        for n, chosen in enumerate(choices):
            others = [g for g in chosen.generations if g != chosen.decision.get("generation", 0)]
            print(("\n" if n else "") + describe(chosen.decision))
            print(f"  tenant:       {chosen.tenant}")
            if others:
                print(f"  generations:  also {', '.join(map(str, others))} (--generation N explains another)")
            print(f"  found in:     {source}")
        return 0
    raise UserError(f"{wanted}" + ("" if args.tenant is None else f" of tenant {args.tenant}") + " was not found: "
                    + "; ".join(searched))


def _decision_sources(args: argparse.Namespace, settings, searched: list[str]):
    """(where, decisions about the mail) of each source to search, in order, while the caller
    wants more; ``searched`` gets why a source could not be searched."""
    from confluent_kafka import KafkaException

    from pipeline.decisions import in_file, in_store, on_topics

    wanted = args.message_id
    if args.file is not None and args.source not in ("auto", "file"):
        raise UserError(f"--file reads only that file: it goes with --source file, not --source {args.source}")
    if args.file is not None or args.source == "file":
        path = Path(args.file or DEFAULT_CORRELATIONS)
        if not path.is_file():
            raise UserError(f"{path} does not exist: run `threadline correlate MAILBOX -o {path}` first")
        yield str(path), in_file(path, wanted)
        return
    if args.source in ("auto", "clickhouse"):
        if args.source == "clickhouse" or store_exists(settings):
            store = open_store(settings) if args.source == "clickhouse" else _store_or_none(settings, searched)
            if store is not None:
                where = f"ClickHouse {store.location}, tables mail_correlated, mail_untracked and mail_responses"
                yield where, in_store(store, wanted, args.tenant)
        else:
            searched.append("no ClickHouse store here (no clickhouse.url, no `threadline up` running, no "
                            f"{settings.worker.data_dir / 'clickhouse'})")
    if args.source in ("auto", "topic"):
        bootstrap = _bootstrap_or_none(settings, searched) if args.source == "auto" else broker_bootstrap(settings)
        if bootstrap is not None:
            codec = avro_codec(settings)
            where = f"the topics mail.correlated, mail.untracked and mail.responses on {bootstrap}"
            try:
                with ctrl_c_stops() as interrupted:
                    found = on_topics(settings.kafka, bootstrap, codec, wanted, args.tenant, stop=interrupted)
            except (KafkaException, TimeoutError) as exc:
                if interrupted():
                    raise KeyboardInterrupt from None
                if args.source == "topic":
                    raise UserError(f"cannot read {where}: {exc}") from exc
                searched.append(f"cannot read {where}: {exc}")
            else:
                if interrupted():  # a search cut short answers nothing
                    raise KeyboardInterrupt
                if found.undecodable:
                    print(f"{found.undecodable} records holding {wanted} could not be decoded", file=sys.stderr)
                yield where, found.decisions
    if args.source == "auto":
        if DEFAULT_CORRELATIONS.is_file():
            yield str(DEFAULT_CORRELATIONS), in_file(DEFAULT_CORRELATIONS, wanted)
        else:
            searched.append(f"no {DEFAULT_CORRELATIONS} (`threadline correlate MAILBOX` writes it)")


def _store_or_none(settings, searched: list[str]):
    try:
        return open_store(settings)
    except UserError as exc:
        searched.append(str(exc))
        return None


def _bootstrap_or_none(settings, searched: list[str]) -> str | None:
    try:
        return broker_bootstrap(settings)
    except UserError:
        searched.append("no broker for the topics (no kafka.bootstrap, no `threadline up` running here)")
        return None


def add_explain(command: CommandFactory) -> None:
    explain = command("explain", cmd_explain, "Explain why a mail was correlated the way it was: from the pipeline's "
                                              "output (ClickHouse, else the topics) or a `threadline correlate` file.")
    explain.add_argument("message_id", type=message_id_value)
    explain.add_argument("--file", "--from", dest="file", metavar="JSONL",
                         help=f"only this file `threadline correlate` wrote (without it, the pipeline's output is "
                              f"searched first, then {DEFAULT_CORRELATIONS} if it exists)")
    explain.add_argument("--source", default="auto", **choice("auto", "clickhouse", "topic", "file"),
                         help="where to look: auto (default: ClickHouse, the topics, then the file, the first that "
                              "has the mail), or only there")
    add_tenant_filter(explain, "only this tenant's mail (default: every tenant that has the Message-ID)")
    explain.add_argument("--generation", type=int, metavar="N",
                         help="the decision of this settings generation (default: the newest)")


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.batch import MODES, evaluate_corpus
    from pipeline.correlation.evaluate import format_summary, format_table

    settings = settings_from(args)
    correlation = settings.correlation
    if args.strategy:
        smart = correlation.smart_matching.model_copy(update={"strategy": args.strategy})
        correlation = correlation.model_copy(update={"smart_matching": smart})
    modes = MODES if args.mode == "both" else (args.mode,)
    runs = []
    for name, mbox, truth in _eval_corpora(_deprecated_paths(args), args.truth):
        runs += evaluate_corpus(name, mbox, truth, correlation, settings.untracked, modes=modes,
                                progress=lambda items, desc: _progress(items, enabled=not args.no_progress, desc=desc))
    if args.json:
        print(json.dumps({"runs": [run.as_dict() for run in runs]}, indent=2))
        return 0
    print(format_summary(runs))
    if args.details:
        for run in runs:
            print("\n" + format_table(run.evaluation, f"{run.corpus}  {run.mode}  strategy={run.strategy}"))
    return 0


def _deprecated_paths(args: argparse.Namespace) -> list[str]:
    """The positional paths, with those of the options `eval` had before (--corpus-dir, --mbox)."""
    paths = list(args.paths)
    for option, value in (("--corpus-dir", args.corpus_dir), ("--mbox", args.mbox)):
        if value is not None:
            deprecated("eval", option, f"eval {value}{' --truth T' if option == '--mbox' else ''}")
            paths.append(value)
    return paths or [str(DEFAULT_CORPUS_DIR)]


def _eval_corpora(paths: list[str], truth: str | None) -> list[tuple[str, Path, Path]]:
    """(name, mbox, truth) of every corpus the paths name: a folder with messages.mbox and
    truth.jsonl, a folder of such folders, or one mbox with ``--truth``."""
    missing = [path for path in paths + ([truth] if truth else []) if not Path(path).exists()]
    if missing:
        raise UserError(f"no such corpus, mbox or truth file: {', '.join(missing)}")
    mboxes = [path for path in paths if Path(path).is_file()]
    if mboxes or truth:
        if not (len(paths) == len(mboxes) == 1 and truth):
            raise UserError("an mbox is evaluated alone, with its --truth T (a corpus folder holds its own "
                            f"{CORPUS_TRUTH})")
        return [(mboxes[0], Path(mboxes[0]), Path(truth))]
    corpora = []
    for path in map(Path, paths):
        found = [path] if _is_corpus(path) else [sub for sub in sorted(path.iterdir()) if _is_corpus(sub)]
        if not found:
            raise UserError(f"{path} is no corpus: neither it nor a subfolder holds both {CORPUS_MBOX} and "
                            f"{CORPUS_TRUTH}")
        corpora += [(folder.name, folder / CORPUS_MBOX, folder / CORPUS_TRUTH) for folder in found]
    return corpora


def _is_corpus(folder: Path) -> bool:
    return (folder / CORPUS_MBOX).is_file() and (folder / CORPUS_TRUTH).is_file()


def add_eval(command: CommandFactory) -> None:
    evaluate = command("eval", cmd_eval, "Measure correlation accuracy against a ground truth, on every corpus of a "
                                         "folder or on one mbox.")
    evaluate.add_argument("paths", nargs="*", metavar="CORPUS",
                          help=f"a folder with {CORPUS_MBOX} and {CORPUS_TRUTH}, a folder of such folders, or one mbox "
                          f"with --truth (default: {DEFAULT_CORPUS_DIR})")
    evaluate.add_argument("--truth", metavar="T.jsonl", help="the truth of an mbox given alone (one line per mail)")
    # Before the positional paths (deprecated: a note on stderr, gone in the next release).
    evaluate.add_argument("--corpus-dir", help=argparse.SUPPRESS)
    evaluate.add_argument("--mbox", help=argparse.SUPPRESS)
    evaluate.add_argument("--mode", **choice("both", "headers", "stripped"), default="both",
                          help="with the threading headers, without them (--strip-headers), or both (default)")
    evaluate.add_argument("--strip-headers", dest="mode", action="store_const", const="stripped",
                          help="the same as --mode stripped")
    evaluate.add_argument("--strategy", **choice("dynamics", "evidence"), help="override the smart matching strategy")
    evaluate.add_argument("--details", action="store_true",
                          help="after the table, per method and the largest groups of false links, for each run")
    evaluate.add_argument("--json", action="store_true", help="print everything as JSON instead of tables")
    add_progress_flag(evaluate)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    if args.corpus is not None:
        deprecated("demo", "--corpus", f"demo {args.corpus}")
    path = Path(args.path or args.corpus or DEFAULT_CORPUS_DIR / "ponymail")
    require_paths([str(path)])
    if path.is_dir():
        mbox, truth = path / CORPUS_MBOX, path / CORPUS_TRUTH
        if not mbox.is_file():
            raise UserError(f"{path} has no {CORPUS_MBOX}: give a corpus folder or an mbox")
    else:
        mbox, truth = path, None
    settings = settings_from(args)
    run_demo(mbox, truth if truth is not None and truth.is_file() else None, Path(args.out_dir), settings.correlation,
             settings.untracked, progress=lambda items, desc: _progress(items, enabled=not args.no_progress, desc=desc))
    return 0


def add_demo(command: CommandFactory) -> None:
    demo = command("demo", cmd_demo, "Correlate a real corpus, score it and explain a few decisions.")
    demo.add_argument("path", nargs="?", metavar="CORPUS|MAILBOX",
                      help=f"a folder with {CORPUS_MBOX} (scored when it has {CORPUS_TRUTH}), or an mbox "
                      f"(default: {DEFAULT_CORPUS_DIR / 'ponymail'})")
    demo.add_argument("--corpus", help=argparse.SUPPRESS)  # deprecated: the folder is the argument now
    demo.add_argument("--out-dir", default="data/demo")
    add_progress_flag(demo)


def cmd_correct(args: argparse.Namespace) -> int:
    """Write one correction to the corrections topic and print its event id."""
    from pipeline.contracts.records import correction_record
    from pipeline.contracts.topics import CORRECTIONS
    from pipeline.correlation.corrections import Action, CorrectionError

    action = Action(args.correct_command.upper())
    # merge A B: B's conversation is the one corrected (it joins A's).
    message_id, other = (args.other, args.mail) if action is Action.MERGE else (args.mail, args.other)
    with as_user_error(CorrectionError):
        record = correction_record(tenant=args.tenant, action=action, message_id=message_id, other_message_id=other,
                                   author=args.author or _os_user(), reason=args.reason,
                                   created_at=datetime.now(timezone.utc))
    produce_one(settings_from(args), CORRECTIONS, args.tenant, record)
    print(record["event_id"])
    return 0


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError) as exc:  # no LOGNAME/USER and no password entry (a bare container)
        raise UserError("cannot tell who you are: pass --author") from exc


def add_correct(command: CommandFactory) -> None:
    correct = command("correct", lambda a: correct.print_help() or 2,
                      "Correct the correlation: link, unlink, merge or split conversations (topic corrections); "
                      "a correction outranks every method and every replay applies it again.")
    actions = correct.add_subparsers(dest="correct_command", required=True)
    forms = (("link", "MAIL's parent is PARENT: MAIL and the mail below it join PARENT's conversation", "PARENT"),
             ("unlink", "MAIL has no parent: MAIL and the mail below it start MAIL's own conversation", None),
             ("merge", "every mail of OTHER's conversation joins the conversation of MAIL", "OTHER"),
             ("split", "MAIL and the mail below it leave their conversation for MAIL's own one", None))
    for name, help_text, other in forms:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=cmd_correct, other=None)
        sub.add_argument("mail", metavar="MAIL", type=message_id_value, help="Message-ID (angle brackets optional)")
        if other:
            sub.add_argument("other", metavar=other, type=message_id_value)
        add_tenant(sub)
        sub.add_argument("--author", help="who corrects (default: the user running the command)")
        sub.add_argument("--reason", default="", help="why, for whoever reads the explanation later")

def cmd_sla(args: argparse.Namespace) -> int:
    from pipeline.batch import ParseFailure, desk_by_replies, parse_sources, run_support, with_direction
    from pipeline.escalation.figures import current_states, format_duration, sla_figures
    from pipeline.synth import AutomaticMail, with_automatic_mail

    settings = settings_from(args)
    require_paths(args.mailbox)
    mails = [item for item in _progress(parse_sources(args.mailbox, settings.correlation, tenant=args.tenant),
                                        enabled=not args.no_progress, desc="parse")
             if not isinstance(item, ParseFailure)]
    own_domains = frozenset(domain.lower() for domain in settings.untracked.own_domains)
    desk = desk_by_replies(mails, args.desk_share) if args.desk_share else frozenset()
    if not own_domains and not desk:
        raise UserError("no mail is ours: set untracked.own_domains, or --desk-share for a mailing-list archive")
    mails = list(with_direction(mails, own_domains, desk))
    runs = {"mailbox": mails}
    if args.mix_automatic:
        runs["with automatic mail"] = [item.record if isinstance(item, AutomaticMail) else item
                                       for item in with_automatic_mail(mails, seed=args.seed)]
    results = {}
    for label, run_mails in runs.items():
        run = run_support(_progress(run_mails, enabled=not args.no_progress, desc=label), settings)
        results[label] = run
    if args.json:
        print(json.dumps({label: {"mails": run.mails, "responses": len(run.responses),
                                  "escalations_now": current_states(run.transitions),
                                  "sla": {target: figures.as_dict() for target, figures in
                                          sla_figures(run.sla_events).items()}}
                          for label, run in results.items()}, indent=2))
    else:
        for label, run in results.items():
            print(f"\n== {label}: {run.mails} mails ({sum(m.direction == 'out' for m in runs[label])} ours), "
                  f"{len(run.responses)} responses")
            print(f"  {'target':<16}{'instances':>10}{'met on time':>13}{'met late':>10}{'breached':>10}{'open':>7}"
                  f"{'met':>8}  {'p50 working time':>17}  {'p90':>10}")
            for target, figures in sla_figures(run.sla_events).items():
                share = "–" if figures.share_met is None else f"{figures.share_met:.1%}"
                print(f"  {target:<16}{figures.instances:>10}{figures.met_on_time:>13}{figures.met_late:>10}"
                      f"{figures.breached_open:>10}{figures.open:>7}{share:>8}  "
                      f"{format_duration(figures.p50_business_seconds):>17}  "
                      f"{format_duration(figures.p90_business_seconds):>10}")
            states = current_states(run.transitions)
            print("  escalations now: " + ", ".join(f"{state} {states[state]}" for state in sorted(states)))
    if args.mix_automatic:
        plain, mixed = results["mailbox"], results["with automatic mail"]
        same = {"escalations": plain.transitions == mixed.transitions, "SLA events": plain.sla_events == mixed.sla_events,
                "responses": plain.responses == mixed.responses}
        print("\nautomatic mail changed: " + (", ".join(name for name, equal in same.items() if not equal) or "nothing"),
              file=sys.stderr)
        return 0 if all(same.values()) else 1
    return 0


def add_sla(command: CommandFactory) -> None:
    sla = command("sla", cmd_sla, "SLA and escalation figures of mailboxes, offline: what the escalation agent "
                  "would emit for them under the settings' policies.")
    sla.add_argument("mailbox", nargs="+")
    add_tenant(sla)
    sla.add_argument("--desk-share", type=float, metavar="SHARE",
                     help="for a mailing-list archive: the fewest senders who wrote this share of the replies "
                     "(e.g. 0.5) are the desk, their mail outbound (else: untracked.own_domains decides)")
    sla.add_argument("--mix-automatic", action="store_true",
                     help="also run with generated out-of-office replies, acknowledgements and bounces mixed in; "
                     "exit 1 unless they change no escalation, SLA event or response")
    sla.add_argument("--seed", type=int, default=11, help="seed of the generated automatic mail")
    sla.add_argument("--json", action="store_true", help="figures as JSON on stdout")
    add_progress_flag(sla)
