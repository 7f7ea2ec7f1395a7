"""Which sessions to move to even out the fleet, as a pure function of plain data.

A move is stop-then-start, so it costs a session a short outage: the plan moves as few
sessions as it can, from the most loaded pod to the least loaded one of the same storage
group (pods that can read each other's stored logins), one at a time, until the spread of
`load / capacity` within each group is at most `threshold`. Sessions that are starting or
waiting for a QR scan are never moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PodLoad:
    """One instance pod as the rebalance sees it."""

    name: str
    group: str  # its storage group
    capacity: int
    sessions: int  # sessions it holds (every one counts toward its load)
    movable: tuple[str, ...]  # the sessions that may move (running, settled), in move order
    accepts: bool = True  # may receive sessions (Ready, answering, not draining)

    @property
    def ratio(self) -> float:
        return self.sessions / self.capacity if self.capacity else float("inf")


@dataclass(frozen=True)
class Move:
    session: str
    source: str
    target: str


def spread(pods: Sequence[PodLoad]) -> float:
    """Most minus least `load / capacity` among the pods of one storage group that hold or
    accept sessions; the largest over the groups."""
    spreads = [0.0]
    for group in {p.group for p in pods}:
        ratios = [p.ratio for p in pods
                  if p.group == group and p.capacity and (p.accepts or p.sessions)]
        if ratios:
            spreads.append(max(ratios) - min(ratios))
    return max(spreads)


def plan_rebalance(pods: Sequence[PodLoad], threshold: float) -> list[Move]:
    """The moves, in order, that bring every storage group within `threshold`."""
    moves: list[Move] = []
    for group in sorted({p.group for p in pods}):
        moves += _even_out([p for p in pods if p.group == group], threshold)
    return moves


def _even_out(pods: list[PodLoad], threshold: float) -> list[Move]:
    load = {p.name: p.sessions for p in pods}
    movable = {p.name: list(p.movable) for p in pods}
    by_name = {p.name: p for p in pods}
    moves: list[Move] = []

    def ratio(name: str) -> float:
        return load[name] / by_name[name].capacity

    while True:
        sources = [n for n in load if movable[n] and by_name[n].capacity]
        targets = [n for n in load if by_name[n].accepts and by_name[n].capacity
                   and load[n] < by_name[n].capacity]
        if not sources or not targets:
            return moves
        source = max(sources, key=lambda n: (ratio(n), load[n], n))
        target = min(targets, key=lambda n: (ratio(n), load[n], n))
        gap = ratio(source) - ratio(target)
        # Within the threshold, or a move would only swap which pod is the busier one.
        if gap <= threshold or (load[source] - 1) / by_name[source].capacity < \
                (load[target] + 1) / by_name[target].capacity - threshold:
            return moves
        session = movable[source].pop(0)
        load[source] -= 1
        load[target] += 1
        moves.append(Move(session, source, target))
