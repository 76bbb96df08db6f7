"""Correlation: correlate mailboxes into JSONL, explain one decision, measure the accuracy against a
ground truth, the demo that does all three on a real corpus (no broker), and people's corrections,
written to the broker for the correlator."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from pipeline.cli.common import (CommandFactory, UserError, add_progress_flag, add_tenant, as_user_error,
                                 message_id_value, produce_one, progress_bar, require_paths, settings_from)

DEFAULT_CORRELATIONS = Path("data") / "correlations.jsonl"
# The shared corpora beside the project, as `demo --corpus` finds them (relative to the working folder).
DEFAULT_CORPUS_DIR = Path("..") / "shared" / "corpus"


def _progress(iterable, *, enabled: bool, desc: str):
    return progress_bar(desc, iterable=iterable) if enabled else iterable


def cmd_correlate(args: argparse.Namespace) -> int:
    from pipeline.batch import ParseFailure, correlate_sources

    settings = settings_from(args)
    require_paths(args.mailbox)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    failures = 0
    with open(out_path, "w", encoding="utf-8") as out, open(str(out_path) + ".errors", "w", encoding="utf-8") as errors:
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
    print(f"{total} mails correlated -> {out_path}", file=sys.stderr)
    for label, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<18}{count:>8}", file=sys.stderr)
    if failures:
        print(f"{failures} messages could not be parsed; reasons in {out_path}.errors", file=sys.stderr)
    return 0


def add_correlate(command: CommandFactory) -> None:
    correlate = command("correlate", cmd_correlate, "Correlate mailboxes (mbox, maildir, .eml directory) into JSONL.")
    correlate.add_argument("mailbox", nargs="+")
    correlate.add_argument("-o", "--out", default=str(DEFAULT_CORRELATIONS), help="JSONL output (default: %(default)s)")
    add_tenant(correlate)
    correlate.add_argument("--direction", choices=("in", "out"), default="in")
    correlate.add_argument("--strip-headers", action="store_true",
                           help="ignore In-Reply-To, References, Thread-Index and our own header")
    add_progress_flag(correlate)


def cmd_explain(args: argparse.Namespace) -> int:
    from pipeline.correlation.explain import describe

    path = Path(args.source)
    if not path.is_file():
        raise UserError(f"{path} does not exist: run `threadline correlate MAILBOX -o {path}` first")
    wanted = args.message_id
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


def add_explain(command: CommandFactory) -> None:
    explain = command("explain", cmd_explain, "Explain why a mail was correlated the way it was.")
    explain.add_argument("message_id", type=message_id_value)
    explain.add_argument("--from", dest="source", default=str(DEFAULT_CORRELATIONS),
                         help="correlations JSONL (default: %(default)s)")


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
    for name, mbox, truth in _eval_corpora(args):
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


def _eval_corpora(args: argparse.Namespace) -> list[tuple[str, Path, Path]]:
    """(name, mbox, truth) of the one corpus --mbox/--truth name, else of every subfolder of
    --corpus-dir holding both files."""
    if args.mbox or args.truth:
        if not (args.mbox and args.truth):
            raise UserError("--mbox and --truth go together")
        require_paths([args.mbox, args.truth])
        return [(args.mbox, Path(args.mbox), Path(args.truth))]
    folder = Path(args.corpus_dir)
    if not folder.is_dir():
        raise UserError(f"no corpus folder at {folder}: pass --corpus-dir DIR (subfolders with messages.mbox and "
                        "truth.jsonl) or --mbox and --truth")
    corpora = [(sub.name, sub / "messages.mbox", sub / "truth.jsonl") for sub in sorted(folder.iterdir())
               if (sub / "messages.mbox").is_file() and (sub / "truth.jsonl").is_file()]
    if not corpora:
        raise UserError(f"{folder} has no corpus: no subfolder holds both messages.mbox and truth.jsonl")
    return corpora


def add_eval(command: CommandFactory) -> None:
    evaluate = command("eval", cmd_eval, "Measure correlation accuracy against a ground truth, on every corpus of a "
                                         "folder or on one mbox.")
    evaluate.add_argument("--corpus-dir", default=str(DEFAULT_CORPUS_DIR),
                          help="evaluate every subfolder with messages.mbox and truth.jsonl (default: %(default)s)")
    evaluate.add_argument("--mbox", help="evaluate this mbox instead (with --truth)")
    evaluate.add_argument("--truth", help="truth JSONL of --mbox (one line per mail)")
    evaluate.add_argument("--mode", choices=("both", "headers", "stripped"), default="both",
                          help="with the threading headers, without them (--strip-headers), or both (default)")
    evaluate.add_argument("--strip-headers", dest="mode", action="store_const", const="stripped",
                          help="the same as --mode stripped")
    evaluate.add_argument("--strategy", choices=("dynamics", "evidence"), help="override the smart matching strategy")
    evaluate.add_argument("--details", action="store_true",
                          help="after the table, per method and the largest groups of false links, for each run")
    evaluate.add_argument("--json", action="store_true", help="print everything as JSON instead of tables")
    add_progress_flag(evaluate)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    corpus = Path(args.corpus)
    if not (corpus / "messages.mbox").is_file():
        raise UserError(f"{corpus} has no messages.mbox (pass --corpus DIR)")
    settings = settings_from(args)
    run_demo(corpus, Path(args.out_dir), settings.correlation, settings.untracked,
             progress=lambda items, desc: _progress(items, enabled=not args.no_progress, desc=desc))
    return 0


def add_demo(command: CommandFactory) -> None:
    demo = command("demo", cmd_demo, "Correlate a real corpus, score it and explain a few decisions.")
    demo.add_argument("--corpus", default=str(DEFAULT_CORPUS_DIR / "ponymail"), help="folder with messages.mbox and truth.jsonl")
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
