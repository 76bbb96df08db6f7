"""The tracking agent's batch step: verified hits become classified events, the sender hears of
the first human open only, forged tokens are dead-lettered, PTR names are used when enabled."""

from datetime import datetime, timedelta, timezone

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.settings import Settings
from pipeline.runtime.batch import RawItem
from pipeline.streams.tracking import TrackingProcessor
from pipeline.tracking.tokens import Keyring, TokenPayload, sign_token

CODEC = AvroCodec(EmbeddedRegistry())
SENT = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
OUTLOOK = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Microsoft Outlook 16.0"


def _settings(**tracking) -> Settings:
    settings = Settings()
    return settings.model_copy(update={"tracking": settings.tracking.model_copy(update=tracking)})


def _hit(settings, offset, minutes, *, ua=OUTLOOK, ip="81.2.3.4", method="GET", token=None):
    token = token or sign_token(TokenPayload("open", "acme", "<m1@acme.test>", "bob@customer.test", "cmp-1",
                                             issued_at=int(SENT.timestamp())), Keyring.from_settings(settings.tracking))
    record = {"event_id": f"hit-{offset}", "kind": "open", "token": token, "received_at": SENT + timedelta(minutes=minutes),
              "method": method, "ip": ip, "user_agent": ua, "headers": {}}
    return RawItem(0, offset, b"acme", CODEC.encode("tracking.raw", record))


def _decoded(result, topic):
    return [CODEC.decode(topic, o.value) for o in result.outputs if o.topic == topic]


def test_first_human_open_alerts_the_sender_once():
    settings = _settings()
    owners = {("acme", "<m1@acme.test>"): "anna@acme.test"}
    table = {}
    processor = TrackingProcessor(settings.tracking, CODEC, table, owner_of=lambda t, m: owners.get((t, m)))
    result = processor.process([_hit(settings, 0, 0.2, ua="Mozilla/5.0", ip="17.1.2.3"),  # Apple proxy on delivery
                                _hit(settings, 1, 90), _hit(settings, 2, 300)])
    result.apply_to(table)
    events = _decoded(result, "tracking.events")
    assert [(e["is_machine"], e["nth_open"]) for e in events] == [(True, 0), (False, 1), (False, 2)]
    alerts = _decoded(result, "alerts")
    assert [(a["user"], a["event_type"], a["source_record_id"]) for a in alerts] == [
        ("anna@acme.test", "mail_opened", events[1]["event_id"])]
    # Later batches, even in a restarted worker, remember the first open: no second alert.
    restarted = TrackingProcessor(settings.tracking, CODEC, table, owner_of=lambda t, m: owners.get((t, m)))
    later = restarted.process([_hit(settings, 3, 600)])
    assert _decoded(later, "alerts") == [] and _decoded(later, "tracking.events")[0]["nth_open"] == 3


def test_no_owner_no_alert_and_alerts_can_be_switched_off():
    settings = _settings(open_alerts=False)
    processor = TrackingProcessor(settings.tracking, CODEC, {}, owner_of=lambda t, m: "anna@acme.test")
    assert _decoded(processor.process([_hit(settings, 0, 90)]), "alerts") == []
    processor = TrackingProcessor(_settings().tracking, CODEC, {}, owner_of=lambda t, m: None)
    assert _decoded(processor.process([_hit(_settings(), 0, 90)]), "alerts") == []


def test_forged_token_is_dead_lettered_with_its_reason():
    settings = _settings()
    good = _hit(settings, 0, 90)
    token = CODEC.decode("tracking.raw", good.value)["token"]
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    result = TrackingProcessor(settings.tracking, CODEC, {}).process([_hit(settings, 0, 90, token=forged)])
    assert _decoded(result, "tracking.events") == []
    assert [d["reason"] for d in _decoded(result, "deadletter")] in (["token_bad_signature"], ["token_malformed"])


def test_reverse_dns_names_are_used_when_enabled():
    settings = _settings(reverse_dns=True)
    names = {"52.1.2.3": "ec2-52-1-2-3.compute-1.amazonaws.com"}
    processor = TrackingProcessor(settings.tracking, CODEC, {}, reverse_dns=names.get)
    result = processor.process([_hit(settings, 0, 90, ip="52.1.2.3"), _hit(settings, 1, 95, ip="81.2.3.4")])
    events = _decoded(result, "tracking.events")
    assert events[0]["reverse_dns"] == names["52.1.2.3"] and events[0]["is_machine"]
    assert events[1]["reverse_dns"] is None and not events[1]["is_machine"]


def test_each_kind_expires_after_its_own_maximum_age_counted_from_when_the_hit_arrived():
    settings = _settings()  # defaults: opens 180 days, clicks 365
    keys = Keyring.from_settings(settings.tracking)
    click = sign_token(TokenPayload("click", "acme", "<m1@acme.test>", "bob@customer.test", "cmp-1",
                                    link_url="https://shop.example/", issued_at=int(SENT.timestamp())), keys)

    def click_hit(offset, days):
        record = {"event_id": f"click-{offset}", "kind": "click", "token": click, "method": "GET", "ip": "81.2.3.4",
                  "received_at": SENT + timedelta(days=days), "user_agent": OUTLOOK, "headers": {}}
        return RawItem(0, offset, b"acme", CODEC.encode("tracking.raw", record))

    day = 24 * 60
    result = TrackingProcessor(settings.tracking, CODEC, {}).process([
        _hit(settings, 0, 179 * day), _hit(settings, 1, 181 * day), click_hit(2, 181), click_hit(3, 366)])
    assert [(e["kind"], e["event_time"]) for e in _decoded(result, "tracking.events")] == [
        ("open", SENT + timedelta(days=179)), ("click", SENT + timedelta(days=181))]
    assert [d["reason"] for d in _decoded(result, "deadletter")] == ["token_expired", "token_expired"]


def test_hits_remembered_by_the_previous_version_still_count():
    settings = _settings()
    # As the step wrote its table before the one state encoding (its own json.dumps, \u escapes).
    key = "acme\x1f<m1@acme.test>\x1fbob@customer.test"
    table = {key: b'[{"kind":"open","time":"2026-03-02T10:30:00+00:00","is_machine":false,'
                  b'"user_agent_family":"Outl\\u00f6ok","network":"81.2.3.0/24","link_url":null}]'}
    result = TrackingProcessor(settings.tracking, CODEC, table).process([_hit(settings, 0, 300)])
    assert [e["nth_open"] for e in _decoded(result, "tracking.events")] == [2]
    assert b'"user_agent_family":"Outl\xc3\xb6ok"' in result.writes[0][key]  # rewritten in the one encoding
