"""Where the shell gets time from, so that time-dependent rules are tested without waiting."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, UTC (what status records)."""

    def monotonic(self) -> float:
        """Seconds for durations and deadlines (never jumps)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
