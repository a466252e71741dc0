"""Replays: archived events published again to one subscription, and each replay's progress.

A replay publishes to that subscription alone, never through `{ns}.events`: to its queue
through the default exchange (as the retry ladder returns messages), or, for an ordered
subscription, to its partition exchange, which hashes the key to the right partition. Each
message carries `x-conveyor-replay: <id>`; the consumer records and deduplicates it under the
subscription's replay key (`consumers.reporting.replay_subscription`), so it runs again once
however many copies arrive. Publishes go one at a time, each confirmed before the next: a
cut leaves at most one event whose fate is unknown, and the progress says which.

A replay id is used once. Its claim in the store (scope `replay`) makes it so across processes
and restarts; in the process that ran it, asking again answers its progress, or resumes it
after the last confirmed event when a lost connection interrupted it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel

from consumers.dead_letter import REPLAY
from consumers.subscription import Subscription
from producers import BrokerUnavailableError
from producers.topology import Topology
from service.archive.events import ArchivedEvent, ArchiveQuery
from service.archive.reading import first_and_last, read_archive
from service.archive.replay_progress import (
    ReplayConflictError,
    ReplayDoneError,
    ReplayProgress,
    ReplayRequest,
    ReplayState,
    UnknownSubscriptionError,
)
from service.cancellation import stop_if_cancelled
from service.clock import Clock
from service.observability.metrics import Metrics
from service.store import ClaimOutcome, Store
from service.store.sql import Statements

__all__ = ["BACKFILL_PREFIX", "BACKFILL_RATE", "REPLAY_SCOPE", "Replays"]

_log = structlog.get_logger(component="archive")
REPLAY_SCOPE = "replay"
BACKFILL_SCOPE = "backfill"  # when each backfilled subscription was first declared
# Long enough for the one write that records a first declaration.
_RECORDING_SECONDS = 60.0
BACKFILL_PREFIX = "backfill-"  # a backfill's replay id: this and the subscription's name
# A replay's record outlives any archive: its id is never used twice.
_RECORD_SECONDS = 100 * 365 * 24 * 3600.0
# How long a replay's claim holds while it runs (a process that died frees its id then).
_LEASE_SECONDS = 24 * 3600.0
# A connection cut surfaces as any of these (aiormq's and aio-pika's own, or the socket's).
_CUT = (
    BrokerUnavailableError,
    ConnectionError,
    OSError,
    TimeoutError,
    RuntimeError,
    aio_pika.exceptions.AMQPError,
)
# A backfill cut off by the broker's absence tries again this often.
_BACKFILL_RETRY_SECONDS = 1.0

ChannelFactory = Callable[..., AbstractAsyncContextManager[AbstractChannel]]


class Pace:
    """At most `rate` starts a second, evenly spaced."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(self._next, now) + self._interval


class Replays:
    """The replays this process runs or ran, and the store claims that keep ids unique."""

    def __init__(
        self,
        *,
        channel: ChannelFactory,
        topology: Topology,
        subscriptions: Sequence[Subscription],
        store: Store,
        metrics: Metrics,
        clock: Clock,
        idle: float,
        publish_timeout: float,
    ) -> None:
        self._channel = channel
        self._topology = topology
        self._subscriptions = {subscription.name: subscription for subscription in subscriptions}
        self._store = store
        self._metrics = metrics
        self.clock = clock
        self._idle = idle
        self._publish_timeout = publish_timeout
        self._replays: dict[str, ReplayProgress] = {}
        self._backfills: set[asyncio.Task[None]] = set()
        self._closing = False
        # Replays that ended before (another process, an earlier start), as the store keeps them.
        self._ended_elsewhere: dict[str, dict[str, Any]] = {}

    def get(self, replay_id: str) -> dict[str, Any] | None:
        """The replay's progress, if this process ran it or has learned how it ended."""
        progress = self._replays.get(replay_id)
        if progress is not None:
            return progress.document()
        return self._ended_elsewhere.get(replay_id)

    def all(self) -> list[dict[str, Any]]:
        documents = [progress.document() for progress in self._replays.values()]
        documents += self._ended_elsewhere.values()
        return sorted(documents, key=lambda document: -float(document["started_at"]))

    async def start(self, request: ReplayRequest) -> tuple[dict[str, Any], bool]:
        """Start (or resume) the replay: its progress, and whether it started just now."""
        if request.subscription not in self._subscriptions:
            raise UnknownSubscriptionError(request.subscription)
        known = self._replays.get(request.replay_id)
        if known is not None:
            if known.request.fingerprint() != request.fingerprint():
                raise ReplayConflictError("this replay id was used for another replay")
            if known.state is ReplayState.INTERRUPTED:
                known.state, known.error = ReplayState.RUNNING, None
                self._run(known)
                return known.document(), True
            return known.document(), False
        owner = uuid.uuid4().hex
        if not request.dry_run:  # a dry run publishes nothing: its id stays free
            try:
                await self._claim(request, owner)
            except ReplayDoneError as done:
                self._ended_elsewhere[request.replay_id] = done.document
                return done.document, False
        progress = ReplayProgress(request, started_at=self.clock.now(), owner=owner)
        self._replays[request.replay_id] = progress
        self._run(progress)
        return progress.document(), True

    async def _claim(self, request: ReplayRequest, owner: str) -> None:
        claim = await self._store.claim(
            REPLAY_SCOPE,
            request.replay_id,
            request.fingerprint(),
            owner=owner,
            lease=_LEASE_SECONDS,
        )
        if claim.outcome is ClaimOutcome.REPLAY and claim.body is not None:
            raise ReplayDoneError(json.loads(claim.body))
        if claim.outcome is ClaimOutcome.CONFLICT:
            raise ReplayConflictError("this replay id was used for another replay")
        if claim.outcome is ClaimOutcome.IN_PROGRESS:
            raise ReplayConflictError("this replay runs in another process")

    async def cancel(self, replay_id: str) -> dict[str, Any] | None:
        """Stop the replay where it is (what was published stays published): its progress."""
        progress = self._replays.get(replay_id)
        if progress is None:
            return self._ended_elsewhere.get(replay_id)
        task = progress.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return progress.document()

    def backfill_soon(self, subscription: Subscription) -> None:
        """`backfill` in a task of its own: the broker link calls this as it declares."""
        if subscription.backfill is None:
            return
        task = asyncio.create_task(
            self.backfill(subscription, subscription.backfill),
            name=f"conveyor-backfill-{subscription.name}",
        )
        self._backfills.add(task)
        task.add_done_callback(self._backfills.discard)

    async def backfill(self, subscription: Subscription, since_seconds: float) -> None:
        """The archive's `since_seconds` before the subscription was first declared, replayed
        into it once ever: the replay id `backfill-<name>` is claimed in the store, so a restart
        or another replica finds it taken. The window is fixed by the first declaration, as
        the store records it, so a backfill started again (after a shutdown cut it) replays
        the same events. Up to the next whole second: an event of the second in which the
        queue was bound may come twice rather than not at all."""
        while True:
            try:
                declared = await self._first_declared(subscription.name)
                request = ReplayRequest(
                    replay_id=BACKFILL_PREFIX + subscription.name,
                    subscription=subscription.name,
                    query=ArchiveQuery(
                        since=declared - since_seconds, until=float(int(declared) + 1)
                    ),
                    rate=BACKFILL_RATE,
                    backfill=True,
                )
                _, started = await self.start(request)
            except ReplayConflictError:
                return  # taken: it ran, or runs, elsewhere
            except Exception as error:  # noqa: BLE001 - the store may be back in a moment
                stop_if_cancelled(error)
                _log.warning("could not start the backfill", error=_why(error))
                await asyncio.sleep(_BACKFILL_RETRY_SECONDS)
                continue
            progress = self._replays.get(request.replay_id)
            if not started or progress is None or progress.task is None:
                return
            _log.info("backfilling a new subscription", subscription=subscription.name)
            await asyncio.wait([progress.task])
            if progress.state is not ReplayState.INTERRUPTED:
                return
            # The link was not up yet, or went: resume once it can be.
            await asyncio.sleep(_BACKFILL_RETRY_SECONDS)

    async def _first_declared(self, name: str) -> float:
        """When the subscription was first declared with a backfill: recorded by the first
        process to get here (scope `backfill`, kept for good), read by every later one."""
        owner, now = uuid.uuid4().hex, self.clock.now()
        claim = await self._store.claim(
            BACKFILL_SCOPE, name, "first-declared", owner=owner, lease=_RECORDING_SECONDS
        )
        if claim.outcome is ClaimOutcome.OWNER:
            recorded = (200, repr(now).encode(), now + _RECORD_SECONDS, BACKFILL_SCOPE, name, owner)
            await self._store.write([(Statements.complete, recorded)])
            return now
        if claim.outcome is ClaimOutcome.REPLAY and claim.body is not None:
            return float(claim.body.decode())
        raise RuntimeError("another process is recording when the subscription was declared")

    async def span(self) -> tuple[ArchivedEvent | None, ArchivedEvent | None]:
        """The oldest and newest event the archive holds; the size and age gauges follow."""
        async with self._channel() as channel:
            oldest, newest = await first_and_last(channel, self._topology, idle=self._idle)
        if oldest is not None and newest is not None:
            self._metrics.archive_events.set(newest.offset - oldest.offset + 1)
            if oldest.time is not None:
                self._metrics.archive_oldest_age.set(max(0.0, self.clock.now() - oldest.time))
        else:
            self._metrics.archive_events.set(0)
            self._metrics.archive_oldest_age.set(0)
        return oldest, newest

    async def watch_span(self, interval: float) -> None:
        """`span` every `interval` seconds, for the gauges."""
        while True:
            wait = interval
            try:
                await self.span()
            except Exception as error:  # noqa: BLE001 - the gauges keep their last values
                stop_if_cancelled(error)
                _log.debug("could not look at the archive's span", error=_why(error))
                wait = min(interval, _BACKFILL_RETRY_SECONDS * 5)  # the link may be up soon
            await asyncio.sleep(wait)

    async def close(self) -> None:
        self._closing = True
        for progress in self._replays.values():
            # Interrupted and not resumed here: its id is given back for after a restart.
            if progress.state is ReplayState.INTERRUPTED:
                await self._release(progress)
        for task in list(self._backfills):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for progress in self._replays.values():
            if progress.task is not None and not progress.task.done():
                progress.task.cancel()
                with contextlib.suppress(BaseException):
                    await progress.task

    def _run(self, progress: ReplayProgress) -> None:
        progress.task = asyncio.create_task(
            self._replay(progress), name=f"conveyor-replay-{progress.request.replay_id}"
        )

    async def _replay(self, progress: ReplayProgress) -> None:
        self._metrics.archive_replays_running.inc()
        try:
            await self._publish_all(progress)
        except asyncio.CancelledError:
            if self._closing:
                # Stopped with the process, not by an operator: the id is given back, so the
                # same replay can be asked for again after a restart.
                progress.state, progress.error = ReplayState.INTERRUPTED, "conveyor stopped"
                await self._release(progress)
            else:
                progress.state = ReplayState.CANCELLED
                await self._finish(progress)
            raise
        except _CUT as error:
            stop_if_cancelled(error)
            progress.state, progress.error = ReplayState.INTERRUPTED, _why(error)
            if progress.uncertain is not None:
                progress.matched -= 1  # a resume takes it again, from after `after_offset`
            _log.warning(
                "replay interrupted", replay_id=progress.request.replay_id, error=_why(error)
            )
        except aio_pika.exceptions.DeliveryError as error:
            progress.state, progress.error = ReplayState.FAILED, _why(error)
            await self._finish(progress)
        except Exception as error:  # noqa: BLE001 - the replay says why it stopped
            _log.exception("replay failed", replay_id=progress.request.replay_id)
            progress.state, progress.error = ReplayState.FAILED, _why(error)
            await self._finish(progress)
        else:
            progress.state = ReplayState.DONE
            await self._finish(progress)
        finally:
            self._metrics.archive_replays_running.dec()

    async def _publish_all(self, progress: ReplayProgress) -> None:
        request = progress.request
        subscription = self._subscriptions[request.subscription]
        pace = Pace(request.rate)
        async with (
            self._channel(publisher_confirms=True) as publishing,
            self._channel() as reading,
        ):
            events = read_archive(
                reading,
                self._topology,
                since=request.query.since,
                after_offset=progress.after_offset,
                idle=self._idle,
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    progress.scanned += 1
                    if request.query.past(event):
                        break
                    if request.query.matches(event):
                        progress.matched += 1
                        if not request.dry_run:
                            await pace.wait()
                            await self._publish(publishing, subscription, progress, event)
                    progress.after_offset = event.offset

    async def _publish(
        self,
        channel: AbstractChannel,
        subscription: Subscription,
        progress: ReplayProgress,
        event: ArchivedEvent,
    ) -> None:
        if subscription.ordering is None:
            exchange = channel.default_exchange
            routing_key = self._topology.queue(subscription.name)
        else:
            exchange = await channel.get_exchange(
                self._topology.partition_exchange(subscription.name), ensure=False
            )
            routing_key = event.routing_key
        message = aio_pika.Message(
            event.body,
            headers=event.replay_headers(progress.request.replay_id, REPLAY),
            content_type=event.content_type,
            correlation_id=event.correlation_id,
            message_id=event.id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            app_id="conveyor",
        )
        progress.uncertain = {"offset": event.offset, "id": event.id, "source": event.source}
        await exchange.publish(
            message, routing_key=routing_key, mandatory=True, timeout=self._publish_timeout
        )
        progress.uncertain = None
        progress.published += 1
        self._metrics.archive_replayed.labels(subscription.name).inc()

    async def _release(self, progress: ReplayProgress) -> None:
        if progress.request.dry_run:
            return
        try:
            # Given back at once: a resumed replay claims the id again (and is no first copy).
            await self._store.release(
                REPLAY_SCOPE, progress.request.replay_id, progress.owner, remember=0.0
            )
        except Exception as error:  # noqa: BLE001 - the claim's lease frees it later anyway
            _log.warning("could not give the replay id back", error=_why(error))

    async def _finish(self, progress: ReplayProgress) -> None:
        """Keep the outcome under its id for good: the id is never used again."""
        progress.finished_at = self.clock.now()
        if progress.request.dry_run:
            return
        body = json.dumps(progress.document()).encode()
        write = (
            Statements.complete,
            (
                200,
                body,
                self.clock.now() + _RECORD_SECONDS,
                REPLAY_SCOPE,
                progress.request.replay_id,
                progress.owner,
            ),
        )
        try:
            await self._store.write([write])
        except Exception as error:  # noqa: BLE001 - the replay is over either way
            stop_if_cancelled(error)
            _log.warning("could not record the replay's outcome", error=_why(error))


# A backfill goes at this pace: a new subscription should not starve the others.
BACKFILL_RATE = 200.0


def _why(error: BaseException) -> str:
    return str(error) or type(error).__name__
