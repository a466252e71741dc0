"""The store's batchers stop in bounded time even when the driver under them swallows their
cancellation (service.cancellation.stop_task): a shutdown must not wait on a store for good.

The drivers here are stand-ins that ignore cancellation, a timing no real store gives on
demand; the batchers against the real stores are covered by the integration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from service.store import BatchWriter, ClaimBatcher, Coalescer
from service.store.base import Store


class _Stuck:
    """A driver call that takes its cancellation for nothing and waits on (until released)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, *_args: Any) -> Any:
        self.entered.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue  # the misbehaviour under test
        raise RuntimeError("released after the test")


async def _closes_within(
    close: Callable[[], Coroutine[Any, Any, None]], stuck: _Stuck, caller: asyncio.Task[Any]
) -> bool:
    """True if `close()` returned within 2 s; then frees the stuck call and its caller."""
    closing = asyncio.create_task(close())
    done, _ = await asyncio.wait({closing}, timeout=2)
    stuck.release.set()
    await asyncio.wait({closing, caller}, timeout=2)
    if caller.done() and not caller.cancelled():
        caller.exception()  # whatever the caller got after the release is not the point
    return bool(done)


async def test_the_lookup_coalescer_closes_past_a_fetch_that_ignores_cancellation() -> None:
    stuck = _Stuck()
    lookups: Coalescer[str, bool] = Coalescer(stuck, default=False, max_batch=10, timeout=0.2)
    lookup = asyncio.create_task(lookups.get("event-1"))
    await stuck.entered.wait()
    assert await _closes_within(lookups.close, stuck, lookup), "close() waited on the stuck fetch"


async def test_the_claim_batcher_closes_past_a_claim_that_ignores_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("service.store.claims.STOP_SECONDS", 0.2, raising=False)
    stuck = _Stuck()
    store = type("StuckClaims", (), {"claim_many": staticmethod(stuck)})()
    claims = ClaimBatcher(cast("Any", store), remember=60)
    claim = asyncio.create_task(claims.claim("ingest", "k-1", "f", owner="o", lease=5.0))
    await stuck.entered.wait()
    assert await _closes_within(claims.close, stuck, claim), "close() waited on the stuck claim"


async def test_the_status_writer_closes_past_a_write_that_ignores_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("service.store.batching.CLOSE_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr("service.store.batching.STOP_SECONDS", 0.2, raising=False)
    stuck = _Stuck()
    store = type("StuckWrites", (), {"write": staticmethod(stuck)})()
    writer = BatchWriter(cast("Store", store))
    writer.start()
    write = asyncio.create_task(writer.store(("UPDATE x SET y = ?", (1,))))
    await stuck.entered.wait()
    assert await _closes_within(writer.close, stuck, write), "close() waited on the stuck write"
