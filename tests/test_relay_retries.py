"""When the relay tries a delivery again, and when it gives up: every case of the rule."""

from __future__ import annotations

import pytest

from controller.relay import RelayLimits, retry_delay

LIMITS = RelayLimits(attempts=5, first_delay=0.5, max_delay=3.0)


@pytest.mark.parametrize(("status", "attempt", "retry_after", "expected"), [
    (None, 1, None, 0.5),  # no answer at all: tried again after the first delay
    (503, 2, None, 1.0),  # doubled per attempt
    (500, 3, None, 2.0),
    (429, 4, None, 3.0),  # capped
    (429, 1, "2", 2.0),  # the application asks for longer than the backoff: as it asks
    (429, 3, "1", 2.0),  # for less: the backoff
    (429, 1, "60", 3.0),  # never longer than the cap
    (503, 1, "Wed, 02 Dec 2026 10:00:00 GMT", 0.5),  # a date, not seconds: the backoff
    (503, 5, None, None),  # the last attempt: given up
    (200, 1, None, None),  # delivered
    (400, 1, None, None),  # the application refuses the event itself: not retried
    (404, 2, None, None),
])
def test_a_delivery_is_retried_on_no_answer_429_and_5xx_with_capped_backoff(
    status: int | None, attempt: int, retry_after: str | None, expected: float | None
) -> None:
    assert retry_delay(status, attempt, LIMITS, retry_after) == expected
