"""Secrets followed live, with an injected clock: re-read on an interval and on refusal, the
previous webhook secret accepted for an overlap, deletion revoking at once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from controller.relay import Destination
from controller.secrets import SecretValue
from controller.services import relay_destinations
from devtools.fake_clock import FakeClock


class SecretStore:
    """What the API server would answer for one Secret key, and how often it was asked."""

    def __init__(self, value: str | None) -> None:
        self.value: str | None = value
        self.failing = False
        self.reads = 0
        self.slow = asyncio.Event()
        self.slow.set()

    async def read(self) -> str | None:
        self.reads += 1
        await self.slow.wait()
        if self.failing:
            raise ConnectionError("the API server is away")
        return self.value


def secret(store: SecretStore, clock: FakeClock, overlap: float = 0.0) -> SecretValue:
    return SecretValue(store.read, "Secret ns/s key k", refresh_interval=10.0, overlap=overlap,
                       min_refresh_interval=1.0, clock=clock)


async def test_the_value_is_read_again_after_the_refresh_interval_not_before() -> None:
    store, clock = SecretStore("one"), FakeClock()
    value = secret(store, clock)
    assert await value.get() == "one"
    store.value = "two"
    clock.advance(9.9)
    assert (await value.get(), store.reads) == ("one", 1)
    clock.advance(0.1)
    assert (await value.get(), store.reads) == ("two", 2)


async def test_a_refusal_rereads_at_once_but_a_flood_of_them_reads_once_a_second() -> None:
    store, clock = SecretStore("one"), FakeClock()
    value = secret(store, clock)
    await value.get()
    store.value = "two"
    clock.advance(1.0)
    for _ in range(50):
        await value.refresh()
    assert (await value.get(), store.reads) == ("two", 2)


async def test_the_previous_value_is_accepted_for_the_overlap_only() -> None:
    store, clock = SecretStore("old"), FakeClock()
    value = secret(store, clock, overlap=30.0)
    assert await value.accepted() == ["old"]
    store.value = "new"
    clock.advance(10.0)
    assert await value.accepted() == ["new", "old"]
    clock.advance(29.9)
    assert await value.accepted() == ["new", "old"]
    clock.advance(0.1)
    assert await value.accepted() == ["new"]


async def test_deleting_the_secret_revokes_the_current_and_the_previous_value() -> None:
    store, clock = SecretStore("old"), FakeClock()
    value = secret(store, clock, overlap=300.0)
    await value.get()
    store.value = "new"
    clock.advance(10.0)
    assert await value.accepted() == ["new", "old"]
    store.value = None
    clock.advance(10.0)
    assert (await value.get(), await value.accepted()) == (None, [])


async def test_a_failed_read_keeps_the_known_value_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    store, clock = SecretStore("one"), FakeClock()
    value = secret(store, clock)
    await value.get()
    store.failing = True
    caplog.set_level(logging.WARNING, logger="wa_controller.secrets")
    for _ in range(3):
        clock.advance(10.0)
        assert await value.get() == "one"
    assert [r.getMessage() for r in caplog.records] == [
        "Secret ns/s key k cannot be read (ConnectionError: the API server is away); "
        "keeping the value read before"]
    assert all("one" not in r.getMessage() for r in caplog.records)


async def test_callers_that_ask_while_the_first_read_runs_get_its_value() -> None:
    store, clock = SecretStore("key"), FakeClock()
    value = secret(store, clock)
    store.slow.clear()
    first = asyncio.ensure_future(value.get())
    others = [asyncio.ensure_future(value.get()) for _ in range(5)]
    await asyncio.sleep(0)
    store.slow.set()
    assert await asyncio.gather(first, *others) == ["key"] * 6
    assert store.reads == 1


class RelaySecrets:
    """Each namespace's relay Secret as the API server would answer it, and the reads."""

    def __init__(self, data: dict[str, dict[str, str] | None]) -> None:
        self.data = data
        self.failing = False
        self.reads: list[str] = []
        self.slow = asyncio.Event()
        self.slow.set()

    async def read(self, namespace: str) -> dict[str, str] | None:
        self.reads.append(namespace)
        await self.slow.wait()
        if self.failing:
            raise ConnectionError("the API server is away")
        return self.data[namespace]


async def test_relays_waiting_for_a_namespaces_secret_share_one_read() -> None:
    store, clock = RelaySecrets({"a": {"url": "http://app-a", "hmac-secret": "sa"},
                                 "b": None}), FakeClock()
    destination = relay_destinations(store.read, clock)
    store.slow.clear()
    waiting = [asyncio.create_task(destination(ns)) for ns in ["a"] * 50 + ["b"] * 50]
    await asyncio.sleep(0)
    store.slow.set()
    found = await asyncio.gather(*waiting)
    assert store.reads == ["a", "b"]
    assert found == [Destination("http://app-a", "sa")] * 50 + [None] * 50

    clock.advance(9.9)
    await destination("a")
    assert store.reads == ["a", "b"]
    clock.advance(0.2)
    store.data["a"] = {"url": "http://app-a2", "hmac-secret": "sa2"}
    assert await destination("a") == Destination("http://app-a2", "sa2")
    assert store.reads == ["a", "b", "a"]


async def test_a_relay_secret_that_cannot_be_read_keeps_the_one_read_before(
        caplog: pytest.LogCaptureFixture) -> None:
    store, clock = RelaySecrets({"a": {"url": "http://app-a", "hmac-secret": "sa"}}), FakeClock()
    destination = relay_destinations(store.read, clock)
    assert await destination("a") == Destination("http://app-a", "sa")
    store.failing = True
    for _ in range(3):
        clock.advance(10)
        assert await destination("a") == Destination("http://app-a", "sa")
    assert len(store.reads) == 4
    warnings = [r for r in caplog.records if "relay Secret" in r.getMessage()]
    assert len(warnings) == 1
