"""The rebalance plan on plain data: fewest moves, most to least loaded, within storage
groups, never a session that is not settled."""

from __future__ import annotations

import pytest

from controller.moves import Move, PodLoad, plan_rebalance, spread


def pod(name: str, sessions: int, *, capacity: int = 10, group: str = "shared",
        movable: int | None = None, accepts: bool = True) -> PodLoad:
    names = tuple(f"{name}-s{i}" for i in range(sessions if movable is None else movable))
    return PodLoad(name, group, capacity, sessions, names, accepts)


def after(pods: list[PodLoad], moves: list[Move]) -> list[PodLoad]:
    load = {p.name: p.sessions for p in pods}
    for move in moves:
        load[move.source] -= 1
        load[move.target] += 1
    return [PodLoad(p.name, p.group, p.capacity, load[p.name], (), p.accepts) for p in pods]


def test_two_new_empty_pods_beside_two_full_ones_take_half_with_the_fewest_moves() -> None:
    fleet = [pod("wa-0", 10), pod("wa-1", 10), pod("wa-2", 0), pod("wa-3", 0)]

    moves = plan_rebalance(fleet, threshold=0.1)

    assert len(moves) == 10
    assert spread(after(fleet, moves)) == 0.0
    assert {m.source for m in moves} == {"wa-0", "wa-1"}
    assert {m.target for m in moves} == {"wa-2", "wa-3"}
    assert len({m.session for m in moves}) == 10  # no session moves twice


def test_a_fleet_within_the_threshold_moves_nothing() -> None:
    assert plan_rebalance([pod("a", 5), pod("b", 4)], threshold=0.1) == []
    assert plan_rebalance([pod("a", 6), pod("b", 4)], threshold=0.2) == []


def test_no_move_only_swaps_which_pod_is_busier() -> None:
    assert plan_rebalance([pod("a", 5), pod("b", 4)], threshold=0.05) == []


def test_moves_stay_within_a_storage_group() -> None:
    fleet = [pod("a", 10, group="eu"), pod("b", 0, group="us"), pod("c", 0, group="eu")]

    moves = plan_rebalance(fleet, threshold=0.0)

    assert {(m.source, m.target) for m in moves} == {("a", "c")}
    assert len(moves) == 5
    assert spread(fleet) == 1.0  # within "eu"; b is alone in "us"
    assert spread(after(fleet, moves)) == 0.0


def test_sessions_that_are_not_settled_stay_and_a_pod_that_accepts_none_gets_none() -> None:
    fleet = [pod("a", 8, movable=2), pod("b", 0), pod("c", 0, accepts=False)]

    moves = plan_rebalance(fleet, threshold=0.0)

    assert moves == [Move("a-s0", "a", "b"), Move("a-s1", "a", "b")]


@pytest.mark.parametrize("capacities", [(20, 10), (10, 20)])
def test_capacity_weighs_the_load(capacities: tuple[int, int]) -> None:
    big, small = capacities
    fleet = [pod("a", 12, capacity=big), pod("b", 0, capacity=small)]

    moves = plan_rebalance(fleet, threshold=0.1)

    final = {p.name: p.ratio for p in after(fleet, moves)}
    assert abs(final["a"] - final["b"]) <= 0.1
    assert len(moves) == min(range(13), key=lambda n: abs((12 - n) / big - n / small))
