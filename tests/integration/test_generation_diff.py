"""``diff_generations`` on a real ``mail.correlated`` holding three generations interleaved, a
mail written twice in a generation (the last record wins) and mails only the new generation
has: the comparison equals the one computed here from the records themselves."""

from __future__ import annotations

from collections import Counter

from pipeline.contracts.records import SourcePosition, correlated_record
from pipeline.contracts.topics import MAIL_CORRELATED, MAIL_RAW
from pipeline.correlation.engine import Correlator
from pipeline.runtime.producer import RecordProducer
from pipeline.streams.replay import diff_generations
from pipeline.synth import MailGenerator


def _records(settings, generation: int, mails) -> list[dict]:
    correlator = Correlator(settings.correlation, tenant="acme", generation=generation)
    return [correlated_record(correlator.correlate(mail), "support", SourcePosition(MAIL_RAW, 0, n))
            for n, mail in enumerate(mails)]


def test_diff_of_two_generations_among_three_with_rewrites_equals_the_records(sandbox):
    settings = sandbox.settings()
    mails = list(MailGenerator(7, tenant="acme").mails(60))
    old = _records(settings, 1, mails[:50])
    new = _records(settings, 2, mails)  # ten mails the old generation never saw
    other = _records(settings, 0, mails)
    methods = sorted({r["method_name"] for r in new})
    assert len(methods) > 1
    new[3] = {**new[3], "method_name": next(m for m in methods if m != new[3]["method_name"])}
    new[5] = {**new[5], "parent_message_id": "<elsewhere@synth.threadline.test>"}
    new[7] = {**new[7], "conversation_id": "another conversation"}  # not a change of method or parent
    stale_old = {**old[12], "method_name": next(m for m in methods if m != old[12]["method_name"])}
    stale_new = {**new[14], "parent_message_id": None, "method_name": "None"}
    # Interleaved on one partition (one tenant); stale_old is overwritten, stale_new overwrites.
    ordered = [*other[:20], stale_old, *old, *other[20:], *new[:30], *new[14:15], *new[30:], stale_new]
    producer = RecordProducer(settings.kafka, sandbox.bootstrap)
    for record in ordered:
        producer.produce(MAIL_CORRELATED, b"acme", sandbox.codec.encode(MAIL_CORRELATED, record))
    assert not producer.finish(30).errors

    last: dict[int, dict[str, dict]] = {0: {}, 1: {}, 2: {}}
    for record in ordered:
        last[record["generation"]][record["message_id"]] = record
    changed = sorted(mid for mid, r in last[2].items()
                     if mid not in last[1] or (last[1][mid]["method_name"], last[1][mid]["parent_message_id"])
                     != (r["method_name"], r["parent_message_id"]))
    by_method = Counter(f"{last[1][mid]['method_name'] if mid in last[1] else 'absent'} -> "
                        f"{last[2][mid]['method_name']}" for mid in changed)
    assert len(changed) >= 13  # the 10 new mails, 3, 5 and 14 (12 was restored, 7 is no change)

    diff = diff_generations(settings.kafka, sandbox.bootstrap, sandbox.codec, 1, 2)
    assert (diff.old_generation, diff.new_generation, diff.mails, diff.changed) == (1, 2, 60, len(changed))
    assert diff.changed_ids == changed and diff.by_method == by_method
    assert diff.format().splitlines()[0] == f"new generation 2 compared with generation 1: 60 mails, {len(changed)} " \
                                            "correlations changed"
