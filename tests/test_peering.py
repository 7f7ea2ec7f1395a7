"""kopf's peering rule, read from the peering object: one replica acts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller.peering import acting

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def peer(priority: int, seen_ago: float = 1.0, lifetime: float = 60) -> dict[str, object]:
    seen = (NOW - timedelta(seconds=seen_ago)).isoformat()
    return {"priority": priority, "lastseen": seen, "lifetime": lifetime}


def test_the_highest_priority_acts_and_the_others_stand_by() -> None:
    peers = {"a": peer(10), "b": peer(20)}
    assert acting(peers, 20, NOW)
    assert not acting(peers, 10, NOW)


def test_a_dead_higher_peer_does_not_hold_us_back() -> None:
    assert acting({"a": peer(10), "b": peer(20, seen_ago=120)}, 10, NOW)


def test_equal_priorities_freeze_both_as_kopf_does() -> None:
    assert not acting({"a": peer(10), "b": peer(10)}, 10, NOW)


def test_nothing_acts_until_kopf_wrote_our_own_entry() -> None:
    assert not acting({}, 10, NOW)
    assert not acting({"a": peer(5)}, 10, NOW)
