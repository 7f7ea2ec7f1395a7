"""The work queue with an injected clock: deduplication, delayed requeues, one worker per
key at a time, and per-key exponential backoff, without waiting in real time."""

from __future__ import annotations

from controller.workqueue import Backoff, WorkQueue
from devtools.fake_clock import FakeClock


def drain(queue: WorkQueue[str]) -> list[str]:
    keys = []
    while (key := queue.pop()) is not None:
        keys.append(key)
        queue.done(key)
    return keys


def test_many_adds_while_queued_are_one_reconcile() -> None:
    queue: WorkQueue[str] = WorkQueue(FakeClock())
    for _ in range(50):
        queue.add("a")
    queue.add("b")
    assert drain(queue) == ["a", "b"]
    assert drain(queue) == []


def test_a_key_added_while_held_comes_back_once_it_is_done_never_twice_at_once() -> None:
    queue: WorkQueue[str] = WorkQueue(FakeClock())
    queue.add("a")
    assert queue.pop() == "a"
    queue.add("a")
    queue.add("a")
    assert queue.pop() is None  # held by a worker: not handed to a second one
    queue.done("a")
    assert queue.pop() == "a"
    queue.done("a")
    assert queue.pop() is None


def test_delayed_keys_come_when_due_and_the_earliest_due_wins() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    queue.add_after("a", 10)
    queue.add_after("a", 30)  # later: ignored
    queue.add_after("b", 5)
    assert queue.pop() is None
    clock.advance(5)
    assert drain(queue) == ["b"]
    clock.advance(5)
    assert drain(queue) == ["a"]
    clock.advance(60)
    assert drain(queue) == []  # the superseded 30 s entry is not handed out again


def test_an_add_now_replaces_a_pending_delay() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    queue.add_after("a", 10)
    queue.add("a")
    assert drain(queue) == ["a"]
    clock.advance(10)
    assert drain(queue) == []


def test_failures_back_off_exponentially_to_the_cap_and_success_resets() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock, Backoff(base=1.0, cap=300.0))
    delays = []
    queue.add("a")
    for _ in range(11):  # a reconcile that keeps failing, retried when due
        waited = 0.0
        while (key := queue.pop()) is None:
            clock.advance(0.5)
            waited += 0.5
        assert waited >= (delays[-1] if delays else 0)  # never handed out early
        delays.append(queue.fail(key))
        queue.done(key)
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert queue.failures("a") == 11
    queue.forget("a")
    assert queue.fail("a") == 1


def test_a_discarded_key_is_gone_with_its_delays() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    queue.add("a")
    queue.add_after("b", 1)
    queue.discard("a")
    queue.discard("b")
    clock.advance(2)
    assert drain(queue) == []
