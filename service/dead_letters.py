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

from consumers import MessageMover
from consumers.dead_letter import replay_headers
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


class Action(enum.StrEnum):
    KEEP = "keep"
    REPLAY = "replay"
    DISCARD = "discard"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in a dead-letter (or the unrouted) queue, as conveyor's headers describe it."""

    entry_id: str  # stable across passes: the event id, the last failure time and the body
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

    last_failure = text("x-conveyor-last-failure")
    digest = hashlib.sha256()
    for part in (message.message_id or "", last_failure or ""):
        digest.update(part.encode() + b"\0")
    digest.update(message.body)
    return DeadLetter(
        entry_id=digest.hexdigest()[:20],
        event_id=text("ce-id") or message.message_id,
        source=text("ce-source"),
        type=text("ce-type") or message.routing_key,
        reason=text("x-conveyor-reason"),
        error_class=text("x-conveyor-error-class"),
        error_message=text("x-conveyor-error-message"),
        attempts=number("x-conveyor-attempts"),
        replays=number("x-conveyor-replays") or 0,
        first_failure=text("x-conveyor-first-failure"),
        last_failure=last_failure,
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
    seen: list[DeadLetter] = field(default_factory=list)
    replayed: int = 0
    discarded: int = 0
    truncated: bool = False  # the queue held more than one pass looks at


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    exchange: str
    routing_key: Callable[[AbstractIncomingMessage], str]


async def pass_over(
    channel: AbstractRobustChannel,
    mover: MessageMover,
    queue_name: str,
    decide: Callable[[DeadLetter], Action],
    *,
    replay_to: ReplayTarget | None = None,
    rate: float | None = None,
) -> PassResult:
    """Take each message now in the queue once and keep, replay or discard it as `decide` says."""
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
        if action is Action.REPLAY and replay_to is not None:
            await mover.copy(
                message,
                exchange=replay_to.exchange,
                routing_key=replay_to.routing_key(message),
                headers=replay_headers(letter.headers),
            )
            result.replayed += 1
            if pause:
                await asyncio.sleep(pause)
        elif action is Action.DISCARD:
            result.discarded += 1
        else:
            # Back to the tail, unchanged: the head moves on and the queue keeps its order.
            await mover.copy(message, exchange="", routing_key=queue_name, headers=letter.headers)
            result.seen.append(letter)
        await message.ack()
    return result
