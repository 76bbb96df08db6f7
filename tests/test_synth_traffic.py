"""The generated campaign traffic is deterministic, carries genuine tokens, and its machine
traffic is what the classifier calls machine traffic."""

from collections import Counter

from pipeline.mail.parse import parse_mail
from pipeline.settings import Settings
from pipeline.synth_traffic import CampaignTraffic
from pipeline.tracking.classify import Hit, MailFacts, classify_hit
from pipeline.tracking.tokens import verify_with_settings


def _records(seed=7):
    return CampaignTraffic(Settings().tracking, seed=seed).records(2, 200)


def test_same_seed_same_traffic_other_seed_other_traffic():
    assert _records() == _records()
    assert _records() != _records(seed=8)


def test_traffic_is_in_time_order_and_every_kind_is_there():
    records = _records()
    assert [r.at for r in records] == sorted(r.at for r in records)
    topics = Counter(r.topic for r in records)
    assert topics["campaigns"] == 2 and topics["conversions"] > 0 and topics["tracking.raw"] > 200
    mails = [parse_mail(r.value) for r in records if r.topic == "mail.raw"]
    assert sum(m.is_bounce for m in mails) > 0 and sum(bool(m.in_reply_to) and not m.is_bounce for m in mails) > 0


def test_hits_carry_genuine_tokens_and_machine_hits_classify_as_machines():
    settings = Settings().tracking
    reasons = Counter()
    for record in _records():
        if record.topic != "tracking.raw":
            continue
        hit = record.value
        payload = verify_with_settings(hit["token"], settings, expect_kind=hit["kind"],
                                       now=hit["received_at"].timestamp())
        verdict = classify_hit(Hit(kind=hit["kind"], time=hit["received_at"], method=hit["method"], ip=hit["ip"],
                                   user_agent=hit["user_agent"], link_url=payload.link_url),
                               MailFacts(sent_at=None), [], settings)
        reasons[verdict.machine_reason] += 1
    assert reasons["apple_mpp"] > 0 and reasons["head_request"] > 0 and reasons[None] > 0
