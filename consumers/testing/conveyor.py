"""`TestConveyor`: a set of subscriptions run in memory, one sent event at a time or many."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from consumers.event import Event
from consumers.subscription import Subscription
from consumers.testing.broker import InMemoryBroker, MemoryLedger, VirtualClock
from consumers.testing.events import SendableEvent, event_to_publish
from consumers.testing.results import DeadLetter, SendResult, SubscriptionRun
from consumers.testing.runtime import SubscriptionRuntime
from consumers.topics import routed_subscriptions
from producers.topology import Topology
from producers.wire import to_wire_message

__all__ = ["LOADER_GROUP", "TestConveyor", "load_subscriptions_file"]

# The entry point through which the installed service lends its subscriptions-file loader.
LOADER_GROUP = "conveyor.subscriptions_loaders"
# CONVEYOR_NAMESPACE's default: queue and exchange names in headers read as in a deployment.
DEFAULT_NAMESPACE = "conveyor"


def load_subscriptions_file(path: str | PathLike[str]) -> tuple[Subscription, ...]:
    """The subscriptions of a TOML file, loaded (and checked) as `conveyor serve` loads them."""
    found = entry_points(group=LOADER_GROUP, name="toml")
    if not found:
        raise LookupError(
            f"no subscriptions-file loader is installed (entry point group {LOADER_GROUP!r}): "
            "install conveyor itself (pip install -e . or make install), or pass the "
            "subscriptions as Subscription objects"
        )
    loader = next(iter(found)).load()
    return tuple(cast("Iterable[Subscription]", loader(Path(path))))


class TestConveyor:
    """The subscriptions of a file (or given as `Subscription`s) run in memory, with the
    decisions the real runtime makes; no broker, no store, no network.

    `async with TestConveyor("subscriptions.toml") as conveyor:` then `await conveyor.send(...)`.
    """

    __test__ = False  # a class named Test* that pytest must not collect from a user's module

    def __init__(
        self,
        subscriptions: str | PathLike[str] | Iterable[Subscription],
        *,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        if isinstance(subscriptions, str | PathLike):
            subscriptions = load_subscriptions_file(subscriptions)
        self.subscriptions = tuple(subscriptions)
        self.clock = VirtualClock()
        self.ledger = MemoryLedger()
        self._kicked = asyncio.Event()
        self.broker = InMemoryBroker(
            self.subscriptions, topology=Topology(namespace), clock=self.clock, kick=self._kick
        )
        self._stopping = asyncio.Event()
        self._runtimes = {
            s.name: SubscriptionRuntime.assemble(
                s, broker=self.broker, ledger=self.ledger, stopping=self._stopping
            )
            for s in self.subscriptions
        }
        self._open: list[SendResult] = []
        self._running: set[asyncio.Task[None]] = set()
        self._driving = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel what still runs (a send that was itself cancelled left it behind)."""
        self._stopping.set()
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.wait(set(self._running))
        for runtime in self._runtimes.values():
            await runtime.path.settler.acks.flush()

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Every copy in every dead-letter queue so far, in order."""
        return list(self.broker.dead_letters)

    @property
    def completions(self) -> list[Event]:
        """Every completion event published to `{ns}.results` so far, in order."""
        return list(self.broker.completions)

    async def send(self, event: SendableEvent, *, correlation_id: str | None = None) -> SendResult:
        """Publish `event` as `POST /v1/events` would; return once every subscription it is
        routed to has its final outcome."""
        (result,) = await self.send_many([event], correlation_id=correlation_id)
        return result

    async def send_many(
        self, events: Sequence[SendableEvent], *, correlation_id: str | None = None
    ) -> list[SendResult]:
        """Publish `events` in order (as a batch, or one request after another), then wait for
        the final outcome of each: an ordered subscription sees them in this order per key."""
        if self._stopping.is_set():
            raise RuntimeError("this TestConveyor is closed: start another")
        published = [event_to_publish(event) for event in events]
        results = [self._publish(event, correlation_id) for event in published]
        if not self._driving:
            self._driving = True
            try:
                await self._drive()
            finally:
                self._driving = False
        await asyncio.gather(*(result.done for result in results))
        return results

    def _publish(self, event: Any, correlation_id: str | None) -> SendResult:
        names = routed_subscriptions(self.subscriptions, event.type)
        runs = {name: SubscriptionRun(name) for name in names}
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        result = SendResult(event.id, event.source, event.type, runs, done)
        for name, run in runs.items():
            self.broker.open_runs.setdefault((name, event.source, event.id), deque()).append(run)
        message = to_wire_message(event, correlation_id=correlation_id or str(uuid.uuid4()))
        self.broker.publish(message, event.type, runs)
        self._open.append(result)
        return result

    def _kick(self) -> None:
        self._kicked.set()

    async def _drive(self) -> None:
        try:
            await self._deliver_until_settled()
        except BaseException as error:
            # Whoever else waits for a send learns why it will not settle.
            failure = error if isinstance(error, Exception) else asyncio.CancelledError()
            for result in self._open:
                if not result.done.done():
                    result.done.set_exception(failure)
                    result.done.exception()  # the driving send raises it; no "never retrieved"
            self._open.clear()
            raise

    async def _deliver_until_settled(self) -> None:
        """Deliver what the queues hold until every open send is settled: as deliveries and
        acks come, and, when nothing else can happen, by moving the virtual clock to the next
        copy due out of a retry tier."""
        while self._close_settled():
            self._kicked.clear()
            self._dispatch()
            if self._running:
                kicked = asyncio.ensure_future(self._kicked.wait())
                done, _ = await asyncio.wait(
                    {*self._running, kicked}, return_when=asyncio.FIRST_COMPLETED
                )
                kicked.cancel()
                for task in done - {kicked}:
                    self._running.discard(cast("asyncio.Task[None]", task))
                    task.result()  # a failure of the harness itself ends the send
                continue
            for runtime in self._runtimes.values():
                await runtime.path.settler.acks.flush()  # finished deliveries get their acks
            if self._kicked.is_set() or self.broker.release_next_tier():
                continue
            if self._close_settled():
                unsettled = [result.event_id for result in self._open]
                raise RuntimeError(f"deliveries left unsettled with nothing running: {unsettled}")

    def _close_settled(self) -> bool:
        """Resolve the sends that are settled; True while any is still open."""
        for result in [r for r in self._open if r.settled]:
            self._open.remove(result)
            for name, run in result.runs.items():
                key = (name, result.source, result.event_id)
                waiting = self.broker.open_runs.get(key)
                if waiting is not None and run in waiting:
                    waiting.remove(run)
                    if not waiting:
                        del self.broker.open_runs[key]
            result.done.set_result(None)
        return bool(self._open)

    def _dispatch(self) -> None:
        for name, queue in self.broker.queues.items():
            runtime = self._runtimes[name]
            for delivery in queue.take():
                delivery.run.running += 1
                task = asyncio.create_task(runtime.deliver(delivery), name=f"conveyor-test-{name}")
                self._running.add(task)
