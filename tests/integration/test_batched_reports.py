"""Status reports made together (issue 7): one store write, then each completion confirmed."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiormq
import pytest
import structlog
from structlog.testing import capture_logs

from consumers.dead_letter import Failure
from consumers.moves import MessageMover
from consumers.reporting import StatusReporter
from consumers.status import DeliveryState
from producers.topology import declare_results_exchange
from service.http.status_book import StatusBook
from tests.conftest import subscription
from tests.integration.test_status_store import CountingStore, open_book, state, update
from tests.support.namespace import Namespace


async def _noop(event: object) -> None:
    return None


@pytest.fixture
async def results(namespace: Namespace) -> AsyncIterator[str]:
    """A queue bound to `{ns}.results` for every completion event; deleted afterwards."""
    name = f"{namespace.name}.results-watch"
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        exchange = await declare_results_exchange(channel, namespace.topology)
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key="conveyor.event.#")
    yield name
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        with contextlib.suppress(aiormq.exceptions.ChannelClosed):
            await channel.queue_delete(name)


@dataclass
class Reporting:
    reporter: StatusReporter
    book: StatusBook
    counting: CountingStore
    channel: aio_pika.abc.AbstractChannel  # the mover's: closing it stops every announcement


@contextlib.asynccontextmanager
async def reporting(
    namespace: Namespace, tmp_path: Path, *, timeout: float = 5.0
) -> AsyncIterator[Reporting]:
    """A subscription's reporter over a real SQLite status book and a real broker channel."""
    async with (
        open_book(f"sqlite:///{tmp_path}/reports.db") as (book, counting),
        await aio_pika.connect_robust(namespace.amqp_url) as connection,
    ):
        channel = await connection.channel(publisher_confirms=True)
        reporter = StatusReporter(
            subscription("sub", ("t",), _noop, completions=True),
            ledger=book,
            mover=MessageMover(channel, timeout=timeout),
            topology=namespace.topology,
        )
        yield Reporting(reporter, book, counting, channel)


async def test_reports_made_together_are_stored_in_one_write_and_each_announced(
    namespace: Namespace, results: str, tmp_path: Path
) -> None:
    async with reporting(namespace, tmp_path) as used:
        ids = [f"e-{index}" for index in range(50)]
        announced = await asyncio.gather(
            *[
                used.reporter.report(
                    update(DeliveryState.SUCCEEDED, 1, event_id),
                    correlation_id=f"c-{event_id}",
                    record=True,
                )
                for event_id in ids
            ]
        )
        assert announced == [True] * 50
        assert used.counting.transactions == 1  # the fifty states in one write
        for event_id in ids:
            assert await state(used.book, event_id) == ("succeeded", 1)
    taken = await namespace.take_at_least(results, 50)
    assert len(taken) == 50
    assert {message.routing_key for message in taken} == {"conveyor.event.succeeded.sub"}
    assert sorted(message.correlation_id or "" for message in taken) == sorted(
        f"c-{event_id}" for event_id in ids
    )


async def test_an_unannounced_success_returns_its_delivery_and_other_states_do_not(
    namespace: Namespace, results: str, tmp_path: Path
) -> None:
    async with reporting(namespace, tmp_path, timeout=1.0) as used:
        await used.channel.close()  # no completion event can go out
        succeeded, dead, retrying = await asyncio.gather(
            used.reporter.report(
                update(DeliveryState.SUCCEEDED, 1, "s"), correlation_id=None, record=True
            ),
            used.reporter.report(
                update(DeliveryState.DEAD_LETTERED, 1, "d"), correlation_id=None, record=True
            ),
            used.reporter.report(
                update(DeliveryState.RETRYING, 1, "r"), correlation_id=None, record=True
            ),
        )
        # A deduplicating subscription's success is acked only once announced: it returns.
        assert succeeded is False
        assert dead is True  # announced once at most: logged, never dead-lettered twice
        assert retrying is True  # nothing to announce
        # The states were stored all the same.
        assert await state(used.book, "s") == ("succeeded", 1)
        assert await state(used.book, "d") == ("dead-lettered", 1)
        assert await state(used.book, "r") == ("retrying", 1)
    assert await namespace.take_all(results) == []


async def test_one_unstorable_state_does_not_leave_the_rest_of_its_batch_unrecorded(
    namespace: Namespace, results: str, tmp_path: Path
) -> None:
    # A failure message the store cannot take (a lone surrogate) costs its own record only.
    async with reporting(namespace, tmp_path) as used:
        bad = dataclasses.replace(
            update(DeliveryState.RETRYING, 1, "r"), failure=Failure("E", "bad \udcff", "")
        )
        with capture_logs() as logs:
            outcomes = await asyncio.gather(
                used.reporter.report(
                    update(DeliveryState.SUCCEEDED, 1, "s"), correlation_id=None, record=True
                ),
                used.reporter.report(bad, correlation_id=None, record=True),
            )
        assert list(outcomes) == [True, True]  # both acked: a status is a helper, not a gate
        assert await state(used.book, "s") == ("succeeded", 1)
        unrecorded = [
            line for line in logs if line["event"] == "could not record the event's status"
        ]
        assert len(unrecorded) == 1
    [completion] = await namespace.take_at_least(results, 1)
    assert completion.routing_key == "conveyor.event.succeeded.sub"


async def test_an_unannounced_completion_is_logged_with_its_own_event_context(
    namespace: Namespace, tmp_path: Path
) -> None:
    async with reporting(namespace, tmp_path, timeout=1.0) as used:
        await used.channel.close()  # no completion event can go out

        async def deliver(event_id: str) -> bool:
            structlog.contextvars.bind_contextvars(
                subscription="sub",
                event_id=event_id,
                event_type=f"type-{event_id}",
                correlation_id=f"corr-{event_id}",
            )
            return await used.reporter.report(
                update(DeliveryState.DEAD_LETTERED, 1, event_id), correlation_id=None, record=True
            )

        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            await asyncio.gather(
                *[
                    asyncio.create_task(deliver(event_id), context=contextvars.Context())
                    for event_id in ("a", "b")
                ]
            )
        lines = [line for line in logs if line["event"] == "could not publish the completion event"]
        assert sorted(line["event_id"] for line in lines) == ["a", "b"]
        for line in lines:
            event_id = line["event_id"]
            assert line.get("event_type") == f"type-{event_id}"
            assert line.get("correlation_id") == f"corr-{event_id}"


class _StalledLedger:
    """A ledger whose writes never finish: the report is still under way when it is stopped."""

    def __init__(self) -> None:
        self.writing = asyncio.Event()

    async def succeeded_before(self, subscription: str, source: str, event_id: str) -> bool:
        return False

    def vouches_first_copy(self, mark: object, source: str, event_id: str) -> bool:
        return False

    def note(self, update: object) -> None:
        pass

    async def record(self, update: object) -> None:
        await self.record_many([update])

    async def record_many(self, updates: object) -> None:
        self.writing.set()
        await asyncio.Event().wait()


async def test_a_success_without_completions_is_acked_when_its_report_is_interrupted(
    namespace: Namespace, tmp_path: Path
) -> None:
    # With completions on, an interrupted report returns a deduplicating subscription's
    # success (its completion may not have gone out); with nothing to announce, it is acked.
    async with await aio_pika.connect_robust(namespace.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        outcomes = {}
        for completions in (True, False):
            ledger = _StalledLedger()
            reporter = StatusReporter(
                dataclasses.replace(subscription("sub", ("t",), _noop), completions=completions),
                ledger=ledger,
                mover=MessageMover(channel, timeout=5.0),
                topology=namespace.topology,
            )
            report = asyncio.create_task(
                reporter.report(
                    update(DeliveryState.SUCCEEDED, 1, "s"), correlation_id=None, record=True
                )
            )
            await asyncio.wait_for(ledger.writing.wait(), 5.0)
            (reporting_task,) = [
                task for task in asyncio.all_tasks() if task.get_name() == "conveyor-reports-sub"
            ]
            reporting_task.cancel()
            outcomes[completions] = await asyncio.wait_for(report, 5.0)
    assert outcomes == {True: False, False: True}
