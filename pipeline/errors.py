"""The one error type for input that cannot be handled: it carries the stable reason code that
its dead-letter record gets, so the agents dead-letter every kind of it the same way."""

from __future__ import annotations


class RejectedInput(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
