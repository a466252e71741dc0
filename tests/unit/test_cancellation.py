"""Loops that retry broker errors still stop when cancelled, even when the AMQP client reports
the cancellation as a connection error. aiormq does, for a call cancelled while its connection
closes (service.cancellation): the queue stats poller once took that for a failed poll and
polled on, and the shutdown that had cancelled it waited for it forever (the TLS tests with
uvloop as the tests' loop hung so in 3 of 27 runs under load; the poller's call was in
aiormq's `queue_declare`).

The connections here are stand-ins that raise what aiormq raises: what is tested is how our
loops read an error that came in place of their cancellation, which needs that timing every
time; the broker side of both loops is covered by the integration tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import aiormq.exceptions
import pytest
from aio_pika.abc import AbstractRobustConnection

from consumers.observe import NO_HANDLER_TRACER
from consumers.status import StatusLedger
from consumers.subscription import Subscription
from producers.topology import Topology
from service.broker.link import BrokerLink
from service.broker.queue_stats import poll_queue_stats
from service.observability.metrics import Metrics
from service.settings import Settings
from tests.support.waiting import eventually


class _GiveUpError(BaseException):
    """Ends a loop that would not stop (the failure tested for), so a test fails instead of
    hanging the event loop's teardown."""


class _CancelledAsConnectionError:
    """A call that waits until cancelled, then raises aiormq's connection error instead."""

    def __init__(self) -> None:
        self.calls = 0
        self.waiting = asyncio.Event()
        self.give_up = False

    async def __call__(self, *_args: Any, **_kwargs: Any) -> Any:
        self.calls += 1
        self.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.give_up:
                raise _GiveUpError from None
            raise aiormq.exceptions.AMQPConnectionError("connection closed") from None


async def _stops(task: asyncio.Task[Any], call: _CancelledAsConnectionError) -> bool:
    """Cancel `task`: True if it ended within 2 s (ended by force otherwise)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    if not done:
        call.give_up = True
        task.cancel()
        with contextlib.suppress(_GiveUpError, asyncio.CancelledError):
            await task
    return bool(done)


async def _noop(event: Any) -> None:
    return None


class _Connection:
    def __init__(self, open_channel: Any) -> None:
        self._open_channel = open_channel

    def channel(self) -> Any:
        return self._open_channel()


def _poller(connection: object) -> asyncio.Task[None]:
    return asyncio.create_task(
        poll_queue_stats(
            cast("AbstractRobustConnection", connection),
            Topology("test-poller"),
            (Subscription(name="orders", events=("order.*",), handler=_noop, handler_path="t:n"),),
            Metrics(),
            interval=0.01,
        )
    )


async def test_the_poller_stops_when_its_cancellation_comes_back_as_a_connection_error() -> None:
    call = _CancelledAsConnectionError()
    poller = _poller(_Connection(call))
    await asyncio.wait_for(call.waiting.wait(), 2)

    assert await _stops(poller, call), "the poller polled on after its cancellation"
    assert poller.cancelled()
    assert call.calls == 1  # it did not go round again


async def test_failed_polls_alone_do_not_stop_the_poller() -> None:
    calls = 0

    def refuse() -> Any:
        nonlocal calls
        calls += 1
        raise RuntimeError("Connection was not opened")  # a robust connection, reconnecting

    poller = _poller(_Connection(refuse))
    try:

        async def tried_five_times() -> bool:
            return calls >= 5  # tried again every interval

        await eventually(tried_five_times, what="five failed polls")
        assert not poller.done()
    finally:
        poller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poller


async def test_the_link_stops_connecting_when_its_cancellation_comes_back_as_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = _CancelledAsConnectionError()
    link = _link()
    monkeypatch.setattr(link, "_open", call)  # the connection attempt, as aiormq answers it
    link.start(cast("StatusLedger", object()))  # unused: no consumers, no connection
    await asyncio.wait_for(call.waiting.wait(), 2)

    closing = asyncio.create_task(link.close())
    done, _ = await asyncio.wait({closing}, timeout=2)
    if not done:
        call.give_up = True
        closing.cancel()  # and with it the link's task it waits for
        with contextlib.suppress(_GiveUpError, asyncio.CancelledError):
            await closing

    assert done == {closing}, "close() waited on a link that went on connecting"
    assert call.calls == 1  # no attempt after the cancellation
    assert link.status().problem == "closed"


def _link() -> BrokerLink:
    return BrokerLink(
        Settings(),
        publisher=None,
        subscriptions=(),
        consume=False,
        metrics=Metrics(),
        tracer=NO_HANDLER_TRACER,
        max_backoff=0.01,
    )


class _ClosingAsConnectionError:
    """A connection whose close() is cancelled into aiormq's connection error."""

    def __init__(self) -> None:
        self.close = _CancelledAsConnectionError()


async def test_a_failover_cancelled_while_it_closes_the_old_connection_stops() -> None:
    # The failover path gives up the old connection (_abandon) before it tries the next
    # address; cancelled by close() right then, it must not go on to connect.
    connection = _ClosingAsConnectionError()
    giving_up = asyncio.create_task(
        _link()._abandon(cast("AbstractRobustConnection", connection))  # the step under test
    )
    await asyncio.wait_for(connection.close.waiting.wait(), 2)

    assert await _stops(giving_up, connection.close), "it carried on after its cancellation"
    assert giving_up.cancelled(), "it ended as if it had not been cancelled"


async def test_close_returns_even_when_the_link_ignores_its_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("service.broker.link._LINK_STOP_SECONDS", 0.2)
    link = _link()
    running = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:  # a link task that takes its cancellation for something else
        running.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        await release.wait()

    monkeypatch.setattr(link, "_run", stubborn)
    link.start(cast("StatusLedger", object()))
    await asyncio.wait_for(running.wait(), 2)
    closing = asyncio.create_task(link.close())
    try:
        done, _ = await asyncio.wait({closing}, timeout=1)
        assert done == {closing}, "close() waited on a link that ignored its cancellation"
        assert link.status().problem == "closed"
    finally:
        release.set()
        await closing
