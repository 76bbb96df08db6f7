"""Business time: how much working time lies between two instants, and when a span of it ends.

A policy without business hours runs 24/7 (minus its holidays, as UTC dates). With business
hours the clock runs on the listed weekdays between ``start`` and ``end`` local time of
``business_hours.timezone``; holidays are local dates. Working windows are built in local time and
converted to UTC instants, so a DST change shortens or lengthens the night, never the working
day. Pure functions of their arguments: no clock, no I/O.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Iterator
from zoneinfo import ZoneInfo

from pipeline.settings import EscalationPolicy

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY = timedelta(days=1)


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


@lru_cache(maxsize=256)
def _zone(name: str) -> tzinfo:
    return timezone.utc if name == "UTC" else ZoneInfo(name)


def _minutes(clock_time: str) -> int:
    hours, minutes = clock_time.split(":")
    return int(hours) * 60 + int(minutes)


def _is_24_7(policy: EscalationPolicy) -> bool:
    return policy.business_hours is None and not policy.holidays


def working_windows(start: datetime, policy: EscalationPolicy) -> Iterator[tuple[datetime, datetime]]:
    """Working windows ``[open, close)`` as UTC instants, ascending, from the local day of ``start``
    on (the first may end before ``start``). Endless: the caller stops."""
    hours = policy.business_hours
    zone = _zone(hours.timezone) if hours else timezone.utc
    holidays = frozenset(policy.holidays)
    if hours:
        weekdays = frozenset(_WEEKDAYS.index(day) for day in hours.weekdays)
        open_at, close_at = timedelta(minutes=_minutes(hours.start)), timedelta(minutes=_minutes(hours.end))
    else:
        weekdays = frozenset(range(7))
        open_at, close_at = timedelta(0), _DAY
    day: date = as_utc(start).astimezone(zone).date()
    while True:
        if day.weekday() in weekdays and day.isoformat() not in holidays:
            midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
            # Aware + timedelta is wall-clock arithmetic; the zone then supplies the offset valid at
            # that local time, so 08:00 is 08:00 on both sides of a DST change.
            yield (midnight + open_at).astimezone(timezone.utc), (midnight + close_at).astimezone(timezone.utc)
        day += _DAY


def business_seconds_between(start: datetime, end: datetime, policy: EscalationPolicy) -> float:
    """Working seconds in ``[start, end)`` under ``policy``; 0 when ``end`` is not after ``start``."""
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        return 0.0
    if _is_24_7(policy):
        return (end - start).total_seconds()
    total = timedelta(0)
    for open_, close in working_windows(start, policy):
        if open_ >= end:
            break
        low, high = max(open_, start), min(close, end)
        if high > low:
            total += high - low
    return total.total_seconds()


def add_business_time(start: datetime, hours: float, policy: EscalationPolicy) -> datetime:
    """The UTC instant at which ``hours`` of working time have passed since ``start``.

    A span that ends exactly at closing time ends then (not at the next opening); a start outside
    working time counts from the next opening.
    """
    start = as_utc(start)
    remaining = timedelta(hours=hours)
    if remaining <= timedelta(0):
        return start
    if _is_24_7(policy):
        return start + remaining
    for open_, close in working_windows(start, policy):
        if close <= start:
            continue
        open_ = max(open_, start)
        span = close - open_
        if remaining <= span:
            return open_ + remaining
        remaining -= span
    raise AssertionError("unreachable: working windows never end")  # pragma: no cover
