"""The link to RabbitMQ: connect in the background, fail over between addresses, and on each
new connection declare the topology (`declaring`) and start the consumers (`consumer_set`).

The process starts whether or not the broker answers; until it does, /readyz is 503 and the
ingress answers 503. Connection attempts back off with jitter (tenacity) and never give up.
Once connected, aio-pika's robust connection restores channels, bindings and consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from consumers.observe import HandlerTracer
from consumers.runtime import SubscriptionConsumer
from consumers.status import StatusLedger
from consumers.subscription import Subscription
from consumers.watch import HandlerSteps
from producers import BrokerUnavailableError
from producers.amqp_internals import is_blocked
from producers.delay import DelayChain, declare_delay_chain, levels_for
from producers.publisher import AmqpPublisher
from producers.topology import Topology
from service.archive.stream import archive_spec, declare_archive
from service.broker.addresses import AddressRotation, redact_url
from service.broker.consumer_set import ConsumerFactory
from service.broker.declaring import attach_publisher, declare_exchanges, declare_subscription
from service.broker.due import DueBook, DueConsumer
from service.broker.queue_stats import poll_queue_stats
from service.broker.watchdog import watch_for_silence
from service.cancellation import stop_if_cancelled, stop_task
from service.observability.metrics import Metrics
from service.settings import Settings

__all__ = ["BrokerLink", "LinkStatus", "NoBrokerAnsweredError"]

_log = structlog.get_logger(component="broker")
# Failures worth another attempt: the broker is away, or refused what we declared (an operator
# may fix a conflicting queue while we wait; /readyz shows the reason meanwhile).
# RuntimeError: aio-pika raises it from channel() when the connection drops mid-setup.
_RETRYABLE = (aiormq.exceptions.AMQPError, ConnectionError, OSError, TimeoutError, RuntimeError)
RECONNECT_INTERVAL_SECONDS = 2.0
_FAILOVER_POLL_SECONDS = 0.25
_WATCHER_STOP_SECONDS = 5.0
_LINK_STOP_SECONDS = 10.0  # more than a connection's close (_CLOSE_SECONDS) takes
_CLOSE_SECONDS = 5.0


class NoBrokerAnsweredError(ConnectionError):
    """None of the broker addresses could be connected to; the message says why for each."""


class HandshakeCutError(ConnectionError):
    """The connection ended while it was being set up (the AMQP handshake, or the declarations
    after it): the broker, or something in front of it, closed it."""


@dataclass(frozen=True, slots=True)
class LinkStatus:
    connected: bool
    problem: str | None  # why the link is not up, when it is not


class BrokerLink:
    def __init__(
        self,
        settings: Settings,
        *,
        publisher: AmqpPublisher | None,
        subscriptions: Sequence[Subscription],
        consume: bool,
        metrics: Metrics,
        tracer: HandlerTracer,
        steps: HandlerSteps | None = None,
        max_backoff: float = 5.0,
        queue_poll_interval: float = 10.0,
    ) -> None:
        self._settings = settings
        self._topology = Topology(settings.namespace)
        self._publisher = publisher
        self._subscriptions = tuple(subscriptions)
        self._consume = consume
        self._max_backoff = max_backoff
        self._metrics = metrics
        self._consumers = ConsumerFactory(
            settings,
            topology=self._topology,
            metrics=metrics,
            tracer=tracer,
            steps=steps if steps is not None else HandlerSteps(),
        )
        self._queue_poll_interval = queue_poll_interval
        self._addresses = AddressRotation(settings.amqp_addresses)
        self._tls = settings.amqp_tls_context()
        self._opened: set[AbstractRobustConnection] = set()
        self._poller: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._connection: AbstractRobustConnection | None = None
        self._problem: str | None = "connecting"
        self._task: asyncio.Task[None] | None = None
        self._ledger: StatusLedger | None = None
        self._due_book: DueBook | None = None
        levels = levels_for(settings.max_delay)
        self.chain = DelayChain(self._topology, levels) if levels else None
        self.consumers: list[SubscriptionConsumer] = []
        # Told of each subscription declared with a backfill (it starts the backfill, once).
        self.on_backfill: Callable[[Subscription], None] | None = None

    def start(self, ledger: StatusLedger, due_book: DueBook | None = None) -> None:
        """Connect in the background; consumers report their deliveries' progress to `ledger`;
        with a publisher and `due_book`, this process also routes delayed events when due."""
        self._ledger = ledger
        self._due_book = due_book
        self._task = asyncio.create_task(self._run(), name="conveyor-broker-link")

    def status(self) -> LinkStatus:
        connection = self._connection
        if connection is None or self._problem is not None:
            return LinkStatus(connected=False, problem=self._problem or "connecting")
        if connection.is_closed or not connection.connected.is_set():
            return LinkStatus(connected=False, problem="reconnecting")
        if self._publisher is not None and not self._publisher.usable:
            return LinkStatus(connected=False, problem="publishing channel not restored yet")
        return LinkStatus(connected=True, problem=None)

    @contextlib.asynccontextmanager
    async def channel(
        self, *, publisher_confirms: bool = False
    ) -> AsyncIterator[AbstractRobustChannel]:
        """A short-lived channel for the admin API; 503 when not connected."""
        connection = self._connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            raise BrokerUnavailableError("the connection to RabbitMQ is down")
        channel = await connection.channel(publisher_confirms=publisher_confirms)
        try:
            yield channel
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    def blocked(self) -> bool:
        """True while RabbitMQ blocks this connection (a memory or disk alarm): publishes wait."""
        connection = self._connection
        if connection is None or connection.is_closed:
            return False
        return is_blocked(connection)

    def missing_subscriptions(self) -> list[str]:
        if not self._consume:
            return []
        started = {consumer.subscription.name for consumer in self.consumers}
        return [s.name for s in self._subscriptions if s.name not in started]

    async def _run(self) -> None:
        """Connect, then (with several addresses) move to the next node whenever the current
        one stays away longer than the failover time; with one address, aio-pika's robust
        connection reconnects to it for as long as it takes."""
        while True:
            connection = await self._establish()
            if connection is None:
                return
            self._start_watchers(connection)
            if len(self._addresses) == 1:
                return
            lost = await self._until_lost(connection)
            _log.warning(
                "broker node unreachable; failing over to the next address",
                url=redact_url(lost),
                down_for_seconds=self._settings.amqp_failover_after,
            )
            self._problem = f"failing over: {redact_url(lost)} unreachable"
            self._connection = None
            await self._stop_watchers()
            await self._abandon(connection)
            self._addresses.move_past(lost)

    async def _establish(self) -> AbstractRobustConnection | None:
        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=0.5, max=self._max_backoff),
            retry=retry_if_exception_type(_RETRYABLE),
            before_sleep=self._note_failure,
            reraise=True,
        )
        connection: AbstractRobustConnection | None = None
        try:
            async for attempt in retrying:
                with attempt:
                    connection = await self._connect_in_turn()
        except Exception as error:  # noqa: BLE001 - logged with traceback; readiness shows it
            # Not a broker hiccup tenacity knows to retry: say so loudly, stay not-ready.
            self._problem = f"broker link failed: {type(error).__name__}: {error}"[:300]
            _log.exception("broker link failed; the process stays not ready")
            return None
        self._problem = None
        _log.info("broker link up", url=redact_url(self._addresses.current))
        return connection

    async def _connect_in_turn(self) -> AbstractRobustConnection:
        """The first address that answers, starting with the current one; each failure is
        remembered, and when none answers the error names them all."""
        failures: list[str] = []
        last: BaseException | None = None
        for url in self._addresses.in_turn():
            try:
                connection = await self._connect_once(url)
            except _RETRYABLE as error:
                last = error
                failures.append(f"{redact_url(url)}: {type(error).__name__}: {error}")
                if len(self._addresses) > 1:
                    _log.warning("broker node not reachable", url=redact_url(url), error=str(error))
                continue
            self._addresses.settle_on(url)
            return connection
        if len(failures) == 1 and last is not None:
            raise last
        raise NoBrokerAnsweredError("; ".join(failures))

    def _start_watchers(self, connection: AbstractRobustConnection) -> None:
        self._watchdog = asyncio.create_task(
            watch_for_silence(connection, self._heartbeat), name="conveyor-link-watchdog"
        )
        self._poller = asyncio.create_task(
            poll_queue_stats(
                connection,
                self._topology,
                self._subscriptions,
                self._metrics,
                interval=self._queue_poll_interval,
                chain=self.chain,
            ),
            name="conveyor-queue-stats",
        )

    async def _stop_watchers(self) -> None:
        for task in (self._poller, self._watchdog):
            if task is not None:
                await stop_task(task, _WATCHER_STOP_SECONDS)
        self._poller = self._watchdog = None

    async def _until_lost(self, connection: AbstractRobustConnection) -> str:
        """Return the address once the connection has been down for the failover time (aio-pika
        would keep retrying that one node forever)."""
        clock = asyncio.get_running_loop().time
        down_since: float | None = None
        while True:
            await asyncio.sleep(_FAILOVER_POLL_SECONDS)
            if not connection.is_closed and connection.connected.is_set():
                down_since = None
                continue
            down_since = clock() if down_since is None else down_since
            if clock() - down_since >= self._settings.amqp_failover_after:
                return self._addresses.current

    @property
    def _heartbeat(self) -> int:
        # AMQP negotiates the heartbeat in whole seconds.
        return max(1, math.ceil(self._settings.amqp_heartbeat))

    def _note_failure(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        self._problem = f"{type(error).__name__}: {error}"[:300] if error else "unknown"
        _log.warning(
            "broker not reachable yet; retrying",
            url=self._settings.amqp_url_redacted,
            attempt=state.attempt_number,
            error=self._problem,
        )

    def _tracked_connection(self, *args: Any, **kwargs: Any) -> AbstractRobustConnection:
        """aio-pika's RobustConnection, remembered until closed: `close` closes every one, so a
        connect cancelled half-way (or a connection abandoned on failover whose close timed
        out) cannot linger and reconnect, re-declaring what it had, after the link is closed."""
        connection = aio_pika.RobustConnection(*args, **kwargs)
        self._opened.add(connection)
        return connection

    async def _connect_once(self, url: str) -> AbstractRobustConnection:
        try:
            connection = await self._open(url)
            try:
                await self._declare_and_attach(connection)
            except BaseException:
                await self._abandon(connection)
                raise
        except _RETRYABLE as error:
            # A cancellation (a shutdown) that aiormq turned into a connection error must not
            # be retried: the link would go on connecting after close() (service.cancellation).
            stop_if_cancelled(error)
            raise
        except StopAsyncIteration as error:
            stop_if_cancelled(error)
            # aiormq's handshake reads frames with get_frame(), which raises StopAsyncIteration
            # on a stream already at its end: seen on uvloop when the peer resets the connection
            # (asyncio reports the reset itself). Raised as is inside tenacity's `async for`, it
            # ended the retry loop as if it were exhausted: the link never came up, silently.
            raise HandshakeCutError("the connection ended while it was being set up") from error
        self._connection = connection
        return connection

    async def _open(self, url: str) -> AbstractRobustConnection:
        return await aio_pika.connect_robust(
            url,
            # connect_robust calls its connection_class with the connection's arguments; a
            # factory that tracks what it makes serves as well as the class.
            connection_class=self._tracked_connection,
            timeout=10,
            heartbeat=self._heartbeat,
            # aio-pika's own reconnect loop after a lost connection: a fixed interval.
            reconnect_interval=min(RECONNECT_INTERVAL_SECONDS, self._max_backoff),
            client_properties={"connection_name": f"conveyor {self._settings.role.value}"},
            ssl_context=self._tls if url.startswith("amqps://") else None,
        )

    async def _declare_and_attach(self, connection: AbstractRobustConnection) -> None:
        exchange = await declare_exchanges(connection, self._topology)
        if (spec := archive_spec(self._settings)) is not None:
            # On a channel that stays open, so a reconnect restores the stream's binding.
            await declare_archive(await connection.channel(), self._topology, spec)
        if self._publisher is not None:
            await attach_publisher(connection, self._publisher, exchange)
        if self.chain is not None:
            await self._declare_chain(connection, self.chain)
        mover = await self._consumers.mover(connection)
        consumers = []
        for subscription in self._subscriptions:
            channel, queues = await declare_subscription(connection, self._topology, subscription)
            if subscription.backfill is not None and self.on_backfill is not None:
                self.on_backfill(subscription)
            if not self._consume or self._ledger is None:
                continue
            consumers.append(
                await self._consumers.start(
                    subscription, channel=channel, queues=queues, mover=mover, ledger=self._ledger
                )
            )
        self.consumers = consumers

    async def _declare_chain(self, connection: AbstractRobustConnection, chain: DelayChain) -> None:
        """The delay chain, on a channel that stays open (so a reconnect re-declares it), and
        its due queue consumed there when this process publishes."""
        channel = await connection.channel()
        due = await declare_delay_chain(channel, chain)
        if self._publisher is None or self._due_book is None:
            return
        consumer = DueConsumer(
            topology=self._topology,
            publisher=self._publisher,
            book=self._due_book,
            metrics=self._metrics,
        )
        await consumer.start(due)

    async def _abandon(self, connection: AbstractRobustConnection) -> None:
        if self._publisher is not None:
            self._publisher.detach()
        retired, self.consumers = self.consumers, []
        try:
            async with asyncio.timeout(_CLOSE_SECONDS):
                await connection.close()
        except Exception as error:  # noqa: BLE001 - the connection is given up either way
            # A failover cancelled by close() must not go on to the next address.
            stop_if_cancelled(error)
        finally:
            self._consumers.retire(retired)

    async def close(self) -> None:
        """Drain consumers (handlers get the shutdown timeout), then close the connection.

        The connections close whatever happened before: one left open would, once its queues
        are deleted or it reconnects, declare them again and consume on (seen as queues of a
        finished test reappearing on the broker).
        """
        try:
            if self._task is not None:
                await stop_task(self._task, _LINK_STOP_SECONDS)
            await self._stop_watchers()
            await self._consumers.drain(self.consumers)
        finally:
            if self._publisher is not None:
                self._publisher.detach()
            opened = [self._connection, *self._opened]
            self._connection = None
            self._opened.clear()
            for connection in (c for c in opened if c is not None and not c.is_closed):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_SECONDS):
                        await connection.close()
            self._problem = "closed"
