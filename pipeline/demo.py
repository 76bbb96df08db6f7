"""``threadline demo``: correlate a real corpus with and without threading headers, score it
against its ground truth and explain a few decisions. Runs on files only (no broker)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.batch import ParseFailure, correlate_sources
from pipeline.correlation.evaluate import evaluate, format_table, read_truth
from pipeline.correlation.explain import describe
from pipeline.settings import CorrelationSettings, UntrackedSettings


def run_demo(mbox: Path, truth: Path | None, out_dir: Path, correlation: CorrelationSettings,
             untracked: UntrackedSettings, *, progress) -> None:
    """Correlate ``mbox`` with and without its threading headers; score each run against ``truth`` if given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for strip in (False, True):
        label = "without threading headers" if strip else "with all headers"
        out = out_dir / ("correlations-stripped.jsonl" if strip else "correlations.jsonl")
        print(f"\n== {mbox.name}, {label} -> {out}")
        predictions = []
        with open(out, "w", encoding="utf-8") as handle:
            items = correlate_sources([str(mbox)], correlation, untracked, strip_headers=strip)
            for item in progress(items, desc="correlate"):
                if isinstance(item, ParseFailure):
                    continue
                predictions.append(item)
                handle.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
        if truth is not None:
            print(format_table(evaluate(read_truth(truth), predictions)))
        if strip:
            shown = set()
            for prediction in predictions:
                reason = prediction.evidence.get("quoted_lines") and "quoted" or prediction.method_name
                if prediction.parent_message_id and reason not in shown:
                    shown.add(reason)
                    print("\n" + describe(prediction.to_dict()))
                if len(shown) >= 2:
                    break
    hints = [f"threadline explain '<message-id>' --from {out_dir / 'correlations-stripped.jsonl'}"]
    if truth is not None:
        hints.append(f"threadline eval {truth.parent} --strip-headers --strategy dynamics")
    hints.append("threadline correlate YOUR.mbox -o data/mine.jsonl")
    print("\nLook further:\n" + "\n".join(f"  {hint}" for hint in hints))
