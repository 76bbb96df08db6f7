"""Business time: working hours, weekdays, holidays and time zones (DST), and 24/7 policies."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.escalation.business_time import add_business_time, business_seconds_between
from pipeline.settings import BusinessHours, EscalationPolicy

FAST = settings(max_examples=150, deadline=None)
UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
OFFICE = EscalationPolicy(business_hours=BusinessHours(start="08:00", end="17:00"))  # Mon-Fri, UTC
BERLIN_OFFICE = EscalationPolicy(business_hours=BusinessHours(start="08:00", end="17:00", timezone="Europe/Berlin"))
ALWAYS = EscalationPolicy()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def test_without_business_hours_the_clock_runs_24_7():
    start = utc(2026, 3, 7, 23, 0)  # a Saturday night
    assert add_business_time(start, 2, ALWAYS) == utc(2026, 3, 8, 1, 0)
    assert business_seconds_between(start, utc(2026, 3, 9, 23, 0), ALWAYS) == 2 * 86_400


def test_friday_afternoon_continues_on_monday_morning():
    friday = utc(2026, 3, 6, 16, 30)
    assert friday.strftime("%a") == "Fri"
    assert add_business_time(friday, 2, OFFICE) == utc(2026, 3, 9, 9, 30)
    assert business_seconds_between(friday, utc(2026, 3, 9, 9, 30), OFFICE) == 2 * 3600


def test_a_span_ending_at_closing_time_ends_then():
    assert add_business_time(utc(2026, 3, 4, 15, 0), 2, OFFICE) == utc(2026, 3, 4, 17, 0)


def test_mail_outside_working_hours_counts_from_the_next_opening():
    assert add_business_time(utc(2026, 3, 7, 12, 0), 1, OFFICE) == utc(2026, 3, 9, 9, 0)  # Saturday
    assert add_business_time(utc(2026, 3, 4, 20, 0), 1, OFFICE) == utc(2026, 3, 5, 9, 0)  # Wednesday evening
    assert add_business_time(utc(2026, 3, 4, 6, 0), 1, OFFICE) == utc(2026, 3, 4, 9, 0)  # Wednesday early
    assert business_seconds_between(utc(2026, 3, 7, 0, 0), utc(2026, 3, 9, 0, 0), OFFICE) == 0


def test_long_spans_cross_several_days():
    # 9 working hours a day: 20 hours from Monday 08:00 end Wednesday 10:00.
    assert add_business_time(utc(2026, 3, 2, 8, 0), 20, OFFICE) == utc(2026, 3, 4, 10, 0)


def test_berlin_business_hours_across_the_spring_dst_change():
    # Clocks go from 02:00 CET to 03:00 CEST on Sunday 2026-03-29.
    friday = berlin(2026, 3, 27, 16, 30)  # 15:30 UTC
    deadline = add_business_time(friday, 2, BERLIN_OFFICE)
    assert deadline == berlin(2026, 3, 30, 9, 30)
    assert deadline == utc(2026, 3, 30, 7, 30)  # CEST is UTC+2
    assert business_seconds_between(friday, deadline, BERLIN_OFFICE) == 2 * 3600
    # Friday 16:30 to Monday 09:30 is 65 hours on an ordinary weekend; this one is an hour shorter.
    assert deadline - friday == timedelta(hours=64)


def test_berlin_business_hours_across_the_autumn_dst_change():
    # Clocks go from 03:00 CEST back to 02:00 CET on Sunday 2026-10-25.
    friday = berlin(2026, 10, 23, 16, 30)  # 14:30 UTC
    deadline = add_business_time(friday, 2, BERLIN_OFFICE)
    assert deadline == berlin(2026, 10, 26, 9, 30) == utc(2026, 10, 26, 8, 30)
    assert deadline - friday == timedelta(hours=66)  # an hour longer


def test_a_whole_day_shift_on_the_dst_sunday_is_23_hours():
    weekend_shift = EscalationPolicy(business_hours=BusinessHours(start="00:00", end="24:00",
                                                                  weekdays=["sun"], timezone="Europe/Berlin"))
    sunday = berlin(2026, 3, 29)
    # The local day is 23 hours long: that is the whole working day.
    assert business_seconds_between(sunday, berlin(2026, 3, 30), weekend_shift) == 23 * 3600
    assert add_business_time(sunday, 23, weekend_shift) == berlin(2026, 3, 30)


def test_holidays_are_skipped():
    christmas = EscalationPolicy(business_hours=BusinessHours(), holidays=["2026-12-25", "2026-12-28"])
    thursday = utc(2026, 12, 24, 16, 30)
    # Friday 25th and Monday 28th are holidays: Tuesday 29th 09:30.
    assert add_business_time(thursday, 2, christmas) == utc(2026, 12, 29, 9, 30)
    assert business_seconds_between(thursday, utc(2026, 12, 29, 9, 30), christmas) == 2 * 3600


def test_holidays_are_local_dates_of_the_business_time_zone():
    policy = EscalationPolicy(business_hours=BusinessHours(start="00:00", end="24:00",
                                                           weekdays=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                                                           timezone="Europe/Berlin"),
                              holidays=["2026-05-01"])
    # 23:30 UTC on 30 April is 01:30 on 1 May in Berlin: the holiday has begun.
    assert add_business_time(utc(2026, 4, 30, 23, 30), 1, policy) == berlin(2026, 5, 2, 1, 0)


def test_24_7_policy_with_holidays_skips_whole_utc_days():
    policy = EscalationPolicy(holidays=["2026-01-01"])
    assert add_business_time(utc(2025, 12, 31, 23, 0), 2, policy) == utc(2026, 1, 2, 1, 0)
    assert business_seconds_between(utc(2025, 12, 31, 12, 0), utc(2026, 1, 2, 12, 0), policy) == 24 * 3600


def test_reversed_or_empty_ranges_are_zero_and_zero_hours_is_the_start():
    start = utc(2026, 3, 4, 10, 0)
    assert business_seconds_between(start, start - timedelta(hours=1), OFFICE) == 0
    assert business_seconds_between(start, start, OFFICE) == 0
    assert add_business_time(start, 0, OFFICE) == start


def test_naive_datetimes_are_utc():
    assert add_business_time(datetime(2026, 3, 6, 16, 30), 2, OFFICE) == utc(2026, 3, 9, 9, 30)


POLICIES = st.sampled_from([
    ALWAYS,
    OFFICE,
    BERLIN_OFFICE,
    EscalationPolicy(business_hours=BusinessHours(start="09:30", end="12:15", weekdays=["tue", "sat"],
                                                  timezone="America/New_York"), holidays=["2026-03-10"]),
    EscalationPolicy(holidays=["2026-03-08", "2026-03-29"]),
])
# Includes both 2026 DST changes of Europe and the US.
MOMENTS = st.datetimes(min_value=datetime(2026, 3, 1), max_value=datetime(2026, 11, 10), timezones=st.just(UTC))
HOURS = st.floats(min_value=0.01, max_value=60, allow_nan=False)


@FAST
@given(policy=POLICIES, start=MOMENTS, hours=HOURS)
def test_business_seconds_between_inverts_add_business_time(policy, start, hours):
    end = add_business_time(start, hours, policy)
    assert end >= start
    assert business_seconds_between(start, end, policy) == pytest.approx(hours * 3600, abs=1e-5)


@FAST
@given(policy=POLICIES, start=MOMENTS, first=HOURS, second=HOURS)
def test_adding_business_time_in_two_steps_is_adding_it_once(policy, start, first, second):
    once = add_business_time(start, first + second, policy)
    twice = add_business_time(add_business_time(start, first, policy), second, policy)
    assert abs(once - twice) <= timedelta(microseconds=2)


@FAST
@given(policy=POLICIES, start=MOMENTS, middle=st.timedeltas(timedelta(0), timedelta(days=9)),
       rest=st.timedeltas(timedelta(0), timedelta(days=9)))
def test_business_seconds_are_additive(policy, start, middle, rest):
    whole = business_seconds_between(start, start + middle + rest, policy)
    parts = business_seconds_between(start, start + middle, policy) + business_seconds_between(
        start + middle, start + middle + rest, policy)
    assert whole == pytest.approx(parts, abs=1e-5)
    assert 0 <= whole <= (middle + rest).total_seconds() + 1e-6
