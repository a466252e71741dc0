"""Dead-letter queues as a product: list, show, replay and discard, never losing a message.

AMQP cannot browse a queue. Taking messages and handing them back (nack, or closing the channel)
would raise each one's delivery count every time someone looks; on RabbitMQ 4.0-4.2 that counts
towards the quorum queue's default delivery limit of 20, past which a dead-letter queue with no
dead-letter exchange of its own drops the message. So every operation is one pass over the
queue's head instead: each message taken is either copied to the tail of the same queue (kept),
copied to where it is replayed to, or (discard) neither; the original is acked only after its
copy is confirmed. A crash mid-pass leaves a duplicate at worst, never a gap.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from consumers import MessageMover, MoveFailedError
from consumers.dead_letter import (
    ATTEMPTS,
    ERROR_CLASS,
    ERROR_MESSAGE,
    FIRST_FAILURE,
    LAST_FAILURE,
    ORIGINAL_ROUTING_KEY,
    REASON,
    REPLAYS,
    read_int,
    replay_headers,
)
from producers import parse_time

__all__ = [
    "Action",
    "DeadLetter",
    "PassResult",
    "ReplayTarget",
    "Selection",
    "pass_over",
    "read_dead_letter",
]

MAX_PASS_MESSAGES = 10_000  # one pass looks at most at this many messages from the head
ENTRY_ID = "x-conveyor-entry-id"


class Action(enum.StrEnum):
    KEEP = "keep"
    REPLAY = "replay"
    DISCARD = "discard"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in a dead-letter (or the unrouted) queue, as conveyor's headers describe it."""

    entry_id: str  # stable across passes (stamped on the first pass that keeps the message)
    event_id: str | None
    source: str | None
    type: str | None
    reason: str | None
    error_class: str | None
    error_message: str | None
    attempts: int | None
    replays: int
    first_failure: str | None
    last_failure: str | None
    original_routing_key: str | None  # where it was published: the event type
    headers: dict[str, Any] = field(repr=False)
    body: bytes = field(repr=False)
    content_type: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.entry_id,
            "event": {"id": self.event_id, "source": self.source, "type": self.type},
            "reason": self.reason,
            "error": {"class": self.error_class, "message": self.error_message},
            "attempts": self.attempts,
            "replays": self.replays,
            "first_failure": self.first_failure,
            "last_failure": self.last_failure,
        }

    def kept_headers(self) -> dict[str, Any]:
        """Headers for the copy that goes back to the tail: the same, plus what keeps this
        entry recognisable (its id, and where it was first published) on every later pass."""
        headers = dict(self.headers)
        headers[ENTRY_ID] = self.entry_id
        if self.original_routing_key is not None:
            headers.setdefault(ORIGINAL_ROUTING_KEY, self.original_routing_key)
        return headers


def read_dead_letter(message: AbstractIncomingMessage) -> DeadLetter:
    headers = dict(message.headers or {})

    def text(name: str) -> str | None:
        value = headers.get(name)
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode(errors="replace")
        return value if isinstance(value, str) else None

    def number(name: str) -> int | None:
        value = headers.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    # A message straight from the events exchange (through its alternate exchange, or from an
    # earlier conveyor) still has its routing key; once a pass kept it, a header has it.
    original_routing_key = text(ORIGINAL_ROUTING_KEY) or (
        message.routing_key if message.exchange else None
    )
    entry_id = text(ENTRY_ID)
    if entry_id is None:
        digest = hashlib.sha256()
        for part in (text("ce-source"), message.message_id, text(LAST_FAILURE)):
            digest.update((part or "").encode() + b"\0")
        digest.update(message.body)
        entry_id = digest.hexdigest()[:20]
    return DeadLetter(
        entry_id=entry_id,
        event_id=text("ce-id") or message.message_id,
        source=text("ce-source"),
        type=text("ce-type") or original_routing_key,
        reason=text(REASON),
        error_class=text(ERROR_CLASS),
        error_message=text(ERROR_MESSAGE),
        attempts=number(ATTEMPTS),
        replays=read_int(headers, REPLAYS),
        first_failure=text(FIRST_FAILURE),
        last_failure=text(LAST_FAILURE),
        original_routing_key=original_routing_key,
        headers=headers,
        body=message.body,
        content_type=message.content_type,
    )


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters an operation applies to: by entry id, or by filters (all must hold)."""

    ids: frozenset[str] | None = None
    event_type: str | None = None
    error_class: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.ids is not None and letter.entry_id not in self.ids:
            return False
        checks = (
            (self.event_type, letter.type),
            (self.error_class, letter.error_class),
            (self.reason, letter.reason),
        )
        if any(wanted is not None and wanted != actual for wanted, actual in checks):
            return False
        if self.since is None and self.until is None:
            return True
        failed = _moment(letter.last_failure)
        if failed is None:
            return False
        return (self.since is None or failed >= self.since) and (
            self.until is None or failed < self.until
        )


def _moment(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None


@dataclass(slots=True)
class PassResult:
    kept: int = 0
    replayed: int = 0
    discarded: int = 0
    truncated: bool = False  # the queue held more than one pass looks at
    stopped: str | None = None  # why the pass ended early (a copy RabbitMQ did not confirm)


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    exchange: str  # "" (the default exchange) or the events exchange
    queue: str | None  # for the default exchange: the subscription's queue

    def routing_key(self, letter: DeadLetter) -> str:
        return self.queue if self.queue is not None else letter.original_routing_key or ""


async def pass_over(
    channel: AbstractRobustChannel,
    mover: MessageMover,
    queue_name: str,
    decide: Callable[[DeadLetter], Action],
    *,
    replay_to: ReplayTarget,
    rate: float | None = None,
) -> PassResult:
    """Take each message now in the queue once and keep, replay or discard it as `decide` says.

    `decide` sees every message (a listing collects what it wants from it there, so a pass
    never holds ten thousand bodies). A copy RabbitMQ does not confirm ends the pass: a failed
    replay is kept instead, and a failed keep leaves that one message unacked, handed back
    with a nack, the only way left.
    """
    queue = await channel.declare_queue(queue_name, passive=True, robust=False)
    count = queue.declaration_result.message_count or 0
    result = PassResult(truncated=count > MAX_PASS_MESSAGES)
    pause = 1.0 / rate if rate else 0.0
    for _ in range(min(count, MAX_PASS_MESSAGES)):
        message = await queue.get(no_ack=False, fail=False)
        if message is None:  # someone else took the rest
            break
        letter = read_dead_letter(message)
        action = decide(letter)
        # Shielded: once a copy is confirmed, the ack must follow even if the request is
        # cancelled meanwhile (shutdown), or the entry would be both replayed and still here.
        step = _move(
            message, letter, action, mover=mover, queue_name=queue_name, replay_to=replay_to
        )
        done = await asyncio.shield(step)
        match done:
            case Action.REPLAY:
                result.replayed += 1
            case Action.DISCARD:
                result.discarded += 1
            case Action.KEEP:
                result.kept += 1
            case str(reason):
                result.stopped = reason
                break
        if done is Action.REPLAY and pause:
            await asyncio.sleep(pause)  # after the ack: a cancelled pause loses nothing
    return result


async def _move(
    message: AbstractIncomingMessage,
    letter: DeadLetter,
    action: Action,
    *,
    mover: MessageMover,
    queue_name: str,
    replay_to: ReplayTarget,
) -> Action | str:
    """Copy (unless discarding), then ack; the action done, or why the pass must stop."""
    stop = None
    try:
        if action is Action.REPLAY:
            try:
                await mover.copy(
                    message,
                    exchange=replay_to.exchange,
                    routing_key=replay_to.routing_key(letter),
                    headers=replay_headers(letter.headers),
                )
            except MoveFailedError as error:
                stop, action = f"replay not confirmed: {error}", Action.KEEP
        if action is Action.KEEP:
            # Back to the tail: the head moves on and the queue keeps its order.
            await mover.copy(
                message, exchange="", routing_key=queue_name, headers=letter.kept_headers()
            )
    except MoveFailedError as error:
        await message.nack(requeue=True)
        return f"could not put an entry back in its place: {error}"
    await message.ack()
    return stop or action
