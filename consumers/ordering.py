"""Ordered processing per key: which key an event has, one key at a time, retries holding the key.

An ordered subscription's events reach `{ns}.{subscription}.partitions`, a consistent-hash
exchange that hashes the `ce-<ordered_by>` header, and from there one of N quorum queues with
single-active-consumer, so all events of one key sit in one queue and one process takes them in
order. Inside that process `KeyLanes` runs the events of one key one after another, in delivery
order, while other keys run in parallel (up to the subscription's concurrency).

Retries never leave the process: a TTL tier would let later events of the key overtake the one
that waits. `run_holding_key` walks the whole retry policy inside the delivery (the ladder's
delays waited in process), so later events of that key wait too; then the event is dead-lettered
and the key moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from aio_pika.exceptions import ChannelInvalidStateError

from consumers.attempts import AttemptsResult, run_attempts
from consumers.dead_letter import Failure
from consumers.deadlines import SharedTimeout
from consumers.delivery import Inbound
from consumers.event import Event, Handler
from consumers.retry import IN_PROCESS_MAX_WAIT_SECONDS, RetryPolicy
from producers.wire import CE_HEADER_PREFIX

__all__ = [
    "CONSISTENT_HASH",
    "LOOP_RETRY_CLOCK",
    "MAX_HOLD_SECONDS",
    "MAX_PARTITIONS",
    "ORDER_ATTRIBUTES",
    "HandlerSlot",
    "HeldAttempts",
    "HeldDelivery",
    "KeyLanes",
    "Ordering",
    "PartitioningUnavailableError",
    "RetryClock",
    "explain_missing_exchange_type",
    "longest_hold",
    "run_holding_key",
    "wait_holding_key",
    "worst_pass",
]

CONSISTENT_HASH = "x-consistent-hash"
PLUGIN = "rabbitmq_consistent_hash_exchange"
# The CloudEvents attributes whose value can be the key: the broker can hash only a header, and
# only these two are ever headers of their own (a data field lives in the body).
ORDER_ATTRIBUTES = ("partitionkey", "subject")
MAX_PARTITIONS = 64
# RabbitMQ closes a channel whose delivery stays unacked past consumer_timeout (30 minutes by
# default): an ordered event holds its delivery through every retry, so the worst case must stay
# well below that.
MAX_HOLD_SECONDS = 25 * 60
# Points on the hash ring per partition queue (the binding key): more points spread keys more
# evenly; the plugin's README warns that thousands slow routing down.
PARTITION_WEIGHT = "20"


@dataclass(frozen=True, slots=True)
class Ordering:
    by: str  # "partitionkey" or "subject": the CloudEvents attribute holding the key
    partitions: int = 1

    @property
    def header(self) -> str:
        """The header RabbitMQ hashes, as the CloudEvents RabbitMQ binding writes it."""
        return CE_HEADER_PREFIX + self.by

    def key_of(self, headers: Mapping[str, Any] | None) -> str | None:
        """The key of a delivery, read as the broker hashed it; None when it has none."""
        value = (headers or {}).get(self.header)
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode(errors="replace")
        return None if value is None else str(value)


def longest_hold(policy: RetryPolicy, timeout: float) -> float:
    """Seconds an always-failing ordered event may hold its delivery before it is dead-lettered."""
    return worst_pass(policy, timeout) * (len(policy.delays) + 1) + sum(policy.delays)


class PartitioningUnavailableError(RuntimeError):
    """The broker does not know the consistent-hash exchange type: its plugin is not enabled."""


def explain_missing_exchange_type(error: BaseException) -> PartitioningUnavailableError | None:
    """The clear error for a declare the broker refused for want of the plugin, else None.

    Measured on RabbitMQ 3.10.8: declaring an unknown exchange type closes the whole connection
    with 503 COMMAND_INVALID "unknown exchange type 'x-...'".
    """
    text = str(error)
    if "COMMAND_INVALID" not in text or f"unknown exchange type '{CONSISTENT_HASH}'" not in text:
        return None
    return PartitioningUnavailableError(
        f"RabbitMQ has no '{CONSISTENT_HASH}' exchange type, which ordered subscriptions "
        f"(ordered_by) need: enable the plugin with `rabbitmq-plugins enable {PLUGIN}` "
        "(no restart needed; conveyor keeps trying meanwhile)"
    )


class _Turn:
    """One delivery's place in its key's lane: entered once the one before it left."""

    def __init__(self, before: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
        self._before = before
        self._mine = mine

    async def __aenter__(self) -> None:
        if self._before is None:
            return
        try:
            await asyncio.shield(self._before)
        except asyncio.CancelledError:
            # Cancelled while waiting (shutdown): the next one must still wait for the one before.
            self._before.add_done_callback(lambda _: self._done())
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done()

    def _done(self) -> None:
        if not self._mine.done():
            self._mine.set_result(None)


class HandlerSlot:
    """One of a subscription's handler slots, held by one delivery."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self._held = False

    async def __aenter__(self) -> None:
        await self._slots.acquire()
        self._held = True

    async def __aexit__(self, *_: object) -> None:
        if self._held:
            self._held = False
            self._slots.release()

    @contextlib.asynccontextmanager
    async def lent(self) -> AsyncIterator[None]:
        """Let other deliveries use the slot meanwhile (an ordered event waiting out a delay)."""
        self._held = False
        self._slots.release()
        try:
            yield
        finally:
            await self._slots.acquire()  # cancelled here, the slot is not held: nothing to free
            self._held = True


@dataclass(frozen=True, slots=True)
class HeldDelivery:
    """An ordered delivery being handled: what its retry waits need."""

    message: Inbound
    slot: HandlerSlot
    received: float  # its delivery on the retry clock: its unacked time counts from here


async def wait_holding_key(held: HeldDelivery, delay: float, stop: asyncio.Event) -> bool:
    """Wait `delay` seconds with the key but without a handler slot (other keys run); False
    when a shutdown (`stop`) or the loss of the delivery's channel cut the wait short."""
    try:
        closing = held.message.channel.closing
    except ChannelInvalidStateError:
        return False
    stopping = asyncio.ensure_future(stop.wait())
    try:
        async with held.slot.lent():
            done, _ = await asyncio.wait({closing, stopping}, timeout=delay)
    finally:
        stopping.cancel()
        closing.cancel()  # an observer of the channel's closing: cancelling it stops only it
    return not done


class RetryClock(Protocol):
    """The time a subscription's retries are measured and waited on in process: the event
    loop's, or a virtual one (consumers.testing, where a ladder of minutes takes no time)."""

    def now(self) -> float:
        """Seconds on this clock (the event loop's time for the loop's clock)."""

    async def sleep(self, seconds: float) -> None:
        """The pause between two in-process attempts."""

    async def wait(self, held: HeldDelivery, delay: float, stop: asyncio.Event) -> bool:
        """An ordered delivery's retry wait, `wait_holding_key`, on this clock."""


class _LoopRetryClock:
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, held: HeldDelivery, delay: float, stop: asyncio.Event) -> bool:
        return await wait_holding_key(held, delay, stop)


LOOP_RETRY_CLOCK: RetryClock = _LoopRetryClock()


class KeyLanes:
    """Deliveries of one key run one at a time, in the order they joined."""

    def __init__(self) -> None:
        self._tails: dict[str | None, asyncio.Future[None]] = {}

    def join(self, key: str | None) -> _Turn:
        """Take a place behind the key's last delivery; synchronous, so that delivery order is
        the order of the calls (each delivery's task makes this call before its first await)."""
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = self._tails.get(key)
        self._tails[key] = mine
        mine.add_done_callback(lambda _: self._forget(key, mine))
        return _Turn(before, mine)

    def _forget(self, key: str | None, finished: asyncio.Future[None]) -> None:
        if self._tails.get(key) is finished:
            del self._tails[key]

    @property
    def keys_waiting(self) -> int:
        return len(self._tails)


@dataclass(frozen=True, slots=True)
class HeldAttempts:
    result: AttemptsResult  # attempts across every pass
    passes: int  # waits between passes (the in-process stand-in for ladder tiers)
    interrupted: bool = False  # a shutdown or a lost channel stopped the retries: settle nothing


def worst_pass(policy: RetryPolicy, timeout: float) -> float:
    """Seconds one pass of in-process attempts may take when every attempt fails."""
    return policy.in_process * timeout + (policy.in_process - 1) * IN_PROCESS_MAX_WAIT_SECONDS


async def run_holding_key(
    handler: Handler,
    event: Event,
    *,
    policy: RetryPolicy,
    timeout: SharedTimeout,
    settle_by: float,
    keep_going: Callable[[], bool],
    wait: Callable[[int, Failure, float], Awaitable[bool]],
    pace: Callable[[], Awaitable[bool]] | None = None,
    clock: RetryClock = LOOP_RETRY_CLOCK,
) -> HeldAttempts:
    """The whole retry policy inside one delivery: in-process attempts, then each delay of the
    ladder waited here (holding the key), until success, a permanent failure, or no delay left.

    `settle_by` (on `clock`) is when the delivery must be settled to stay inside the
    broker's consumer timeout: counted from its delivery, so time spent waiting behind its key
    counts too; a delay that would end the last pass past it is not waited (the event is
    dead-lettered instead). `keep_going()` turns false on shutdown or when the delivery's
    channel is gone (the broker has it back). `wait(attempts, failure, delay)` waits `delay`
    seconds holding the key and returns False when interrupted that way. `pace()` waits for a
    rate limit's token before every attempt but the very first (which the caller paced); False:
    a shutdown came first. `clock` is the one `settle_by` is on, and the in-process attempts
    pause on.
    """
    made = 0
    passes = 0
    total = AttemptsResult(0)
    while True:
        if passes and pace is not None and not await pace():
            return HeldAttempts(total, passes, interrupted=True)
        result = await run_attempts(
            handler,
            dataclasses.replace(event, attempt=event.attempt + made),
            policy=policy,
            timeout=timeout,
            keep_trying=keep_going,
            pace=pace,
            sleep=clock.sleep,
        )
        made += result.attempts
        total = dataclasses.replace(result, attempts=made)
        if result.failure is None or result.permanent:
            return HeldAttempts(total, passes)
        if not keep_going():
            return HeldAttempts(total, passes, interrupted=True)
        delay = policy.next_delay(passes)
        if delay is None or clock.now() + delay + worst_pass(policy, timeout.seconds) > settle_by:
            return HeldAttempts(total, passes)
        if not await wait(made, result.failure, delay):
            return HeldAttempts(total, passes, interrupted=True)
        passes += 1
