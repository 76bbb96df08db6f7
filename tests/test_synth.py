"""The synthetic support mail and the automatic mail mixed into it (pipeline/synth.py)."""

from collections import Counter

from pipeline.mail.bounce import parse_bounce
from pipeline.synth import AutomaticMail, AutomaticMix, MailGenerator, with_automatic_mail


def _people(seed=7, tenant="default", count=600):
    return list(MailGenerator(seed, tenant=tenant, customers=200, agents=6, seconds_between_mails=120).mails(count))


def test_dropping_the_automatic_mail_gives_back_the_people_mail_unchanged_and_in_order():
    people = _people()
    mixed = list(with_automatic_mail(people))
    automatic = [item for item in mixed if isinstance(item, AutomaticMail)]
    assert [item for item in mixed if not isinstance(item, AutomaticMail)] == people
    assert Counter(item.made_as for item in automatic).keys() == {"acknowledgement", "out_of_office", "bounce"}
    times = [(item.record if isinstance(item, AutomaticMail) else item).event_time for item in mixed]
    assert times == sorted(times)


def test_same_seed_same_mail_other_seed_other_mail_and_no_mix_no_automatic_mail():
    people = _people()
    assert list(with_automatic_mail(people, seed=3)) == list(with_automatic_mail(people, seed=3))
    assert list(with_automatic_mail(people, seed=3)) != list(with_automatic_mail(people, seed=4))
    assert list(with_automatic_mail(people, mix=AutomaticMix(0, 0, 0))) == people


def test_each_automatic_mail_answers_the_mail_it_follows_as_a_live_one_would():
    people = {mail.message_id: mail for mail in _people()}
    mixed = list(with_automatic_mail(people.values()))
    subject_only = 0
    for item in (item for item in mixed if isinstance(item, AutomaticMail)):
        record = item.record
        if item.made_as == "bounce":
            bounce = parse_bounce(item.raw)
            original = people[bounce.original_message_id]
            assert record.is_bounce and record.direction == "in" and bounce.kind == "hard"
            assert original.direction == "out" and bounce.recipients[0].address == original.to[0]
            continue
        answered = people[record.in_reply_to[0]]
        if item.made_as == "acknowledgement":
            assert (answered.direction, record.direction, record.auto_submitted) == ("in", "out", "auto-replied")
            assert record.to == (answered.from_addr,) and record.from_addr == answered.to[0]
        else:
            assert (answered.direction, record.direction) == ("out", "in")
            assert record.from_addr == answered.to[0] and record.subject.endswith(answered.subject)
            subject_only += record.auto_submitted == ""
        assert record.event_time > answered.event_time
    assert subject_only > 0  # some out-of-office replies say what they are only in the subject


def test_automatic_mail_stays_with_the_tenant_of_the_mail_it_answers():
    mixed = list(with_automatic_mail(sorted(_people(tenant="acme") + _people(seed=8, tenant="globex"),
                                            key=lambda mail: mail.event_time)))
    tenants = Counter(item.record.tenant for item in mixed if isinstance(item, AutomaticMail))
    assert set(tenants) == {"acme", "globex"} and min(tenants.values()) > 50
