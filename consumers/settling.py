"""Settling a delivery: the one place a verdict becomes an ack, a move, or a give-back.

Nothing is acked before its handler returned or a confirmed copy sits in the retry tier or the
dead-letter queue; whatever is unsettled when the channel closes goes back to the queue, so a
crash or shutdown yields a redelivery, never a loss. A message no copy can be made of (its own
headers leave no room for ours in one frame, or RabbitMQ refuses the copy) is rejected instead:
the queue's own dead-lettering puts it, as it is, in the dead-letter queue, once.

An ordered subscription never gives a delivery back with a nack: measured on RabbitMQ 3.10.8, a
quorum queue redelivers nacked messages in nack order, ahead of the rest, while later events of
that key may already be held here. What it cannot settle stays unacked until its channel closes,
which returns it in its original order, at the head; while the channel lives, the settlement is
retried in place and the key waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aio_pika.exceptions import ChannelInvalidStateError

from consumers.acking import AckCoalescer
from consumers.dead_letter import DeadLetterReason, Failure, failure_headers
from consumers.delivery import Inbound
from consumers.moves import (
    CopyRefusedError,
    MoveFailedError,
    Mover,
    UncopyableMessageError,
)
from consumers.reporting import StatusOf, StatusReporter
from consumers.retry import delay_label
from consumers.status import DeliveryState, DeliveryUpdate
from consumers.subscription import Subscription
from producers.publisher import BROKER_FAILURES
from producers.topology import Topology

__all__ = ["Move", "Outcome", "Release", "Settler", "Verdict", "channel_gone"]

_log = structlog.get_logger(component="consumer")
SETTLE_RETRY_PAUSE_SECONDS = 1.0


class Outcome(enum.StrEnum):
    """What happened to one delivery."""

    ACKED = "acked"  # the handler returned
    RETRY_SCHEDULED = "retry-scheduled"  # a copy waits in a retry tier
    DEAD_LETTERED = "dead-lettered"  # a copy sits in {ns}.{subscription}.dlq
    RETURNED = "returned"  # back to the queue untouched (shutdown, or a move that failed)
    SKIPPED = "skipped"  # acked without running the handler: it already succeeded here
    FILTERED = "filtered"  # acked without running the handler: the filters left it out
    DEFERRED = "deferred"  # not due yet: a copy waits in the delay chain (consumers.deferral)


@dataclass(frozen=True, slots=True)
class Move:
    """Where a copy of the delivery goes, and with which headers."""

    exchange: str
    routing_key: str
    headers: dict[str, Any]
    tier: str | None = None  # the retry tier's delay label, for a move into the ladder


@dataclass(slots=True)  # not frozen: one per delivery (see DeliveryUpdate); treat as immutable
class Verdict:
    outcome: Outcome
    move: Move | None = None  # for RETRY_SCHEDULED, DEAD_LETTERED and DEFERRED
    status: DeliveryUpdate | None = None  # what to record (and announce, when terminal)


class Release(Protocol):
    """How the subscription's delivery order (consumers.delivery_order) lets go of a delivery."""

    def settle_again(self, message: Inbound) -> bool:
        """Whether a settlement that failed is tried again in place."""

    async def give_back(self, message: Inbound) -> bool:
        """Return an unsettled delivery to its queue; False: left to the channel's closing."""


def channel_gone(message: Inbound) -> bool:
    """True once the delivery's channel closed: the broker has taken the delivery back."""
    try:
        _ = message.channel
    except ChannelInvalidStateError:
        return True
    return False


class Settler:
    """Carries out a subscription's verdicts on the broker and tells what became of each."""

    def __init__(
        self,
        subscription: Subscription,
        *,
        topology: Topology,
        mover: Mover,
        reporter: StatusReporter,
        release: Release,
    ) -> None:
        self._subscription = subscription
        self._topology = topology
        self._mover = mover
        self._reporter = reporter
        self._release = release
        self.acks = AckCoalescer()

    def dead_letter(
        self,
        message: Inbound,
        headers: dict[str, Any],
        failure: Failure,
        attempts: int,
        *,
        reason: DeadLetterReason,
        status: DeliveryUpdate | None = None,
    ) -> Verdict:
        _log.error(
            "event dead-lettered",
            reason=reason.value,
            attempt=attempts,
            error_class=failure.error_class,
            error=failure.message,
        )
        copy_headers = failure_headers(
            headers,
            failure=failure,
            attempts=attempts,
            exchange=message.exchange or "",
            routing_key=message.routing_key or "",
            reason=reason,
        )
        move = Move(self._topology.dead_letter_exchange, self._subscription.name, copy_headers)
        return Verdict(Outcome.DEAD_LETTERED, move, status)

    def retry_later(
        self,
        message: Inbound,
        headers: dict[str, Any],
        failure: Failure,
        attempts: int,
        *,
        retries: int,
        delay: float,
        status: StatusOf,
    ) -> Verdict:
        """A copy into the ladder's tier for `delay`, counted as ladder pass `retries + 1`."""
        _log.warning(
            "handler failed; retry scheduled",
            attempt=attempts,
            retry_in=delay,
            error_class=failure.error_class,
            error=failure.message,
        )
        copy_headers = failure_headers(
            headers,
            failure=failure,
            attempts=attempts,
            exchange=message.exchange or "",
            routing_key=message.routing_key or "",
            retries=retries + 1,
        )
        # The default exchange routes straight to the tier queue named as the routing key.
        label = delay_label(delay)
        tier = self._topology.retry_queue(self._subscription.name, label)
        retrying = status(DeliveryState.RETRYING, attempts, failure, next_attempt_in=delay)
        return Verdict(Outcome.RETRY_SCHEDULED, Move("", tier, copy_headers, label), retrying)

    async def settle(self, message: Inbound, verdict: Verdict) -> tuple[Outcome, Verdict]:
        """Carry out `verdict`: what actually happened to the delivery, and the verdict carried
        out (see `_carry_out`)."""
        outcome, done = await self._carry_out(message, verdict)
        while (
            outcome is Outcome.RETURNED
            and verdict.outcome is not Outcome.RETURNED
            and self._release.settle_again(message)
        ):
            await asyncio.sleep(SETTLE_RETRY_PAUSE_SECONDS)
            outcome, done = await self._carry_out(message, verdict)
        return outcome, done

    async def _carry_out(self, message: Inbound, verdict: Verdict) -> tuple[Outcome, Verdict]:
        """Settle the delivery as `verdict` says: what actually happened to it, and the verdict
        carried out (a move no copy could be made for becomes a rejection into the DLQ)."""
        outcome = verdict.outcome
        rejected = False  # settled already, by the queue's own dead-lettering
        try:
            if verdict.move is not None and channel_gone(message):
                # Handled past the loss of its channel (an ordered handler runs on): the broker
                # has the delivery back and its redelivery decides again; a copy now would be
                # a second one in the tier or DLQ.
                return Outcome.RETURNED, verdict
            if verdict.move is not None:
                verdict, outcome, rejected = await self._move(message, verdict, verdict.move)
            if outcome is not Outcome.RETURNED and verdict.status is not None:
                announced = await self._reporter.report(
                    verdict.status,
                    correlation_id=message.correlation_id,
                    record=outcome is not Outcome.SKIPPED,
                )
                if not announced and not rejected:
                    outcome = Outcome.RETURNED
                    await asyncio.sleep(SETTLE_RETRY_PAUSE_SECONDS)
            if outcome is Outcome.RETURNED:
                await self._give_back(message)
            elif not rejected:
                # Sent with the acks of its neighbours on the next turn of the loop.
                self.acks.ack(message)
        except BROKER_FAILURES as error:
            # The channel is gone: the broker requeues the unsettled delivery by itself.
            _log.warning(
                "could not settle delivery; the broker will redeliver it",
                outcome=outcome.value,
                error_class=type(error).__name__,
            )
            return Outcome.RETURNED, verdict
        except Exception:  # noqa: BLE001 - a delivery must never stay unsettled on a live channel
            _log.exception("settling failed unexpectedly; returning the event to its queue")
            with contextlib.suppress(*BROKER_FAILURES):
                await self._give_back(message)
            return Outcome.RETURNED, verdict
        if outcome is Outcome.ACKED:
            _log.debug("event handled")
        return outcome, verdict

    async def _move(
        self, message: Inbound, verdict: Verdict, move: Move
    ) -> tuple[Verdict, Outcome, bool]:
        """Copy the delivery where `move` says: the verdict carried out, the outcome, and whether
        the delivery is settled already. A copy that can never be made (it does not fit one
        frame, or RabbitMQ refuses it) leaves the delivery to the queue's own dead-lettering."""
        try:
            await self._mover.copy(
                message, exchange=move.exchange, routing_key=move.routing_key, headers=move.headers
            )
        except (UncopyableMessageError, CopyRefusedError) as error:
            # Trying again cannot help, and each try would run the handler again: rejected, the
            # queue's dead-letter exchange puts the message, as it is, in the DLQ (at-least-once
            # dead-lettering holds it in the queue until the DLQ confirmed it).
            _log.error(
                "could not move event; rejected into its dead-letter queue as it is",
                error=str(error),
                intended="retry" if move.tier else "dead-letter",
                reason=DeadLetterReason.UNMOVABLE.value,
            )
            await message.reject(requeue=False)
            self.acks.settled(message)
            return _rejected_instead(verdict), Outcome.DEAD_LETTERED, True
        except MoveFailedError as error:
            # The copy is not safe yet: leave the original in the queue to come back, after a
            # pause so a broker in trouble is not hammered with redeliveries.
            _log.warning("could not move event; it stays queued", error=str(error))
            await asyncio.sleep(SETTLE_RETRY_PAUSE_SECONDS)
            return verdict, Outcome.RETURNED, False
        return verdict, verdict.outcome, False

    async def _give_back(self, message: Inbound) -> None:
        if await self._release.give_back(message):
            self.acks.settled(message)


def _rejected_instead(verdict: Verdict) -> Verdict:
    """What a move became once the queue's own dead-lettering took the delivery: dead-lettered
    (reason `unmovable`), with the handler's failure, for the status record and its announcement."""
    update = verdict.status
    if update is not None:
        update = DeliveryUpdate(
            update.event_id,
            update.source,
            update.subscription,
            DeliveryState.DEAD_LETTERED,
            update.attempts,
            update.at,
            update.attributes,
            update.replays,
            None,
            update.failure,
            DeadLetterReason.UNMOVABLE.value,
            update.first_attempt_at,
        )
    return Verdict(Outcome.DEAD_LETTERED, verdict.move, update)
