"""The one exception every decoder raises for input it drops."""

from __future__ import annotations


class DecodeError(ValueError):
    """One line or object that cannot become a sample.

    ``reason`` is one of :data:`pystatsd.selfstats.REJECT_REASONS` (it names the counter
    ``rejected.<reason>``); ``detail`` is a short text for the operator's log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
