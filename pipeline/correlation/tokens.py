"""Dynamics-style tracking tokens in the subject, e.g. ``CRM:0001001``.

Layout: prefix, one base digit, ``user_digits`` digits of the user number, ``counter_digits``
digits of that user's message counter.  The counter wraps to 0 after all nines, so a token is
reused after 10**counter_digits mails of one user: the correlation window keeps that safe.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pipeline.settings import TrackingTokenSettings


def _width(settings: TrackingTokenSettings) -> int:
    return 1 + settings.user_digits + settings.counter_digits


@lru_cache(maxsize=32)
def _token_pattern(settings: TrackingTokenSettings) -> re.Pattern[str]:
    # The digits must not run on: "CRM:00010012" is not a token of 7 digits.  ASCII digits only
    # (``\d`` would also take e.g. "٠١", giving a second spelling of the same token).
    return re.compile(rf"(?<![\w]){re.escape(settings.prefix)}([0-9]{{{_width(settings)}}})(?!\d)", re.IGNORECASE)


def format_token(settings: TrackingTokenSettings, user_number: int, counter: int) -> str:
    if not 0 <= user_number < 10 ** settings.user_digits:
        raise ValueError(f"user number {user_number} does not fit {settings.user_digits} digits")
    counter %= 10 ** settings.counter_digits
    return (f"{settings.prefix}{settings.base_digit}{user_number:0{settings.user_digits}d}"
            f"{counter:0{settings.counter_digits}d}")


def find_token(settings: TrackingTokenSettings, subject: str) -> str | None:
    """The first well-formed token of ours in ``subject`` (canonical prefix case), else None."""
    if settings.prefix.casefold() not in subject.casefold():
        return None  # the common case: no regex work at all
    base = str(settings.base_digit)
    for match in _token_pattern(settings).finditer(subject):
        digits = match.group(1)
        if digits[0] == base:
            return settings.prefix + digits
    return None


def parse_token(settings: TrackingTokenSettings, token: str) -> tuple[int, int]:
    """(user number, counter) of a token; ValueError when it is not one of ours."""
    match = _token_pattern(settings).fullmatch(token)
    if match is None or match.group(1)[0] != str(settings.base_digit):
        raise ValueError(f"{token!r} is not a tracking token of this installation")
    digits = match.group(1)[1:]
    return int(digits[: settings.user_digits]), int(digits[settings.user_digits:])


def strip_token(settings: TrackingTokenSettings, subject: str) -> str:
    """The subject without our token(s), white space folded."""
    return " ".join(_token_pattern(settings).sub(" ", subject).split())


def add_token(settings: TrackingTokenSettings, subject: str, token: str) -> str:
    """Append the token (Dynamics puts it at the end) unless the subject already carries it."""
    # Any of the subject's tokens, not only the first: "x CRM:0001005 CRM:0001001" carries CRM:0001001.
    if any(settings.prefix + match.group(1) == token for match in _token_pattern(settings).finditer(subject)):
        return subject
    return f"{subject} {token}" if subject else token


class TokenCounter:
    """Per-user message counters for generating tokens; its state is a plain dict to persist."""

    def __init__(self, settings: TrackingTokenSettings, state: dict[int, int] | None = None) -> None:
        self.settings = settings
        self._next: dict[int, int] = dict(state or {})

    def next_token(self, user_number: int) -> str:
        counter = self._next.get(user_number, 1)
        token = format_token(self.settings, user_number, counter)
        self._next[user_number] = (counter + 1) % 10 ** self.settings.counter_digits
        return token

    def state(self) -> dict[int, int]:
        return dict(self._next)
