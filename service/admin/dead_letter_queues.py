"""Dead-letter queues as a product: list, show, replay and discard, never losing a message.

AMQP cannot browse a queue. Taking messages and handing them back (nack, or closing the channel)
would raise each one's delivery count every time someone looks; on RabbitMQ 4.0-4.2 that counts
towards the quorum queue's default delivery limit of 20, past which a dead-letter queue with no
dead-letter exchange of its own drops the message. So every operation is one pass over the
queue's head instead: each message taken is either copied to the tail of the same queue (kept),
copied to where it is replayed to, or (discard) neither; the original is acked only after its
copy is confirmed. A crash mid-pass leaves a duplicate at worst, never a gap.

An entry no copy can be made of (its headers leave no room for ours in one frame, or cannot be
written again) is skipped, not a reason to stop: a replay of it keeps it instead, and one that
cannot even be put back at the tail is held unacked until the pass ends, then handed back with
a nack (to the head; its delivery count goes up by one). Each skip is reported with why.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiormq.abc
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

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
from consumers.moves import MessageMover, MoveFailedError, UncopyableMessageError
from producers.formats import parse_time
from producers.publisher import BROKER_FAILURES

__all__ = [
    "Action",
    "DeadLetter",
    "PassResult",
    "ReplayTarget",
    "Selection",
    "SkippedEntry",
    "pass_over",
]

MAX_PASS_MESSAGES = 10_000  # one pass looks at most at this many messages from the head
MAX_SKIPPED_LISTED = 100  # skipped entries a pass names (it counts them all)
HAND_BACK_POLLS = 100  # about two seconds at most
HAND_BACK_POLL_SECONDS = 0.02
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


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """An entry a pass could not handle as asked; it is still in the queue."""

    entry_id: str
    event: dict[str, str | None]
    why: str

    def summary(self) -> dict[str, Any]:
        return {"id": self.entry_id, "event": self.event, "why": self.why}


@dataclass(slots=True)
class PassResult:
    kept: int = 0  # still in the queue after the pass (skipped ones included)
    replayed: int = 0
    discarded: int = 0
    truncated: bool = False  # the queue held more than one pass looks at
    stopped: str | None = None  # why the pass ended early (a copy RabbitMQ did not confirm)
    skipped: int = 0  # entries not handled as asked (see `skipped_entries`), all still queued
    skipped_entries: list[SkippedEntry] = field(default_factory=list)  # the first ones

    def skip(self, letter: DeadLetter, why: str) -> None:
        self.skipped += 1
        if len(self.skipped_entries) < MAX_SKIPPED_LISTED:
            event = {"id": letter.event_id, "source": letter.source, "type": letter.type}
            self.skipped_entries.append(SkippedEntry(letter.entry_id, event, why))


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
    never holds ten thousand bodies). An entry no copy can be made of is skipped (see the module
    docstring). A copy RabbitMQ does not confirm ends the pass: a failed replay is kept
    instead, and a failed keep leaves that one message unacked, handed back with a nack, the
    only way left.
    """
    queue = await channel.declare_queue(queue_name, passive=True, robust=False)
    count = queue.declaration_result.message_count or 0
    result = PassResult(truncated=count > MAX_PASS_MESSAGES)
    pause = 1.0 / rate if rate else 0.0
    held: list[tuple[aiormq.abc.AbstractChannel, int]] = []  # skipped, unacked: by tag, no body
    try:
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
            if done.held and message.delivery_tag is not None:
                with contextlib.suppress(*BROKER_FAILURES):  # closed: handed back already
                    held.append((message.channel, message.delivery_tag))
            _tally(result, letter, done)
            if done.stop is not None:
                break
            if done.action is Action.REPLAY and pause:
                await asyncio.sleep(pause)  # after the ack: a cancelled pause loses nothing
    finally:
        await _hand_back(channel, queue_name, held)
    return result


async def _hand_back(
    channel: AbstractRobustChannel,
    queue_name: str,
    held: list[tuple[aiormq.abc.AbstractChannel, int]],
) -> None:
    """Back in the queue, at its head; a closed channel has handed them back already."""
    if not held:
        return
    with contextlib.suppress(*BROKER_FAILURES):
        before = await _ready(channel, queue_name)
        for underlay, tag in held:
            await underlay.basic_nack(tag, requeue=True)
        # A nack has no answer, and a quorum queue counts the message again only a moment
        # later: wait a little for it, or a pass right after this one would not see it.
        for _ in range(HAND_BACK_POLLS):
            if await _ready(channel, queue_name) >= before + len(held):
                return
            await asyncio.sleep(HAND_BACK_POLL_SECONDS)


async def _ready(channel: AbstractRobustChannel, queue_name: str) -> int:
    queue = await channel.declare_queue(queue_name, passive=True, robust=False)
    return queue.declaration_result.message_count or 0


@dataclass(frozen=True, slots=True)
class _Step:
    """What became of one entry taken from the queue."""

    action: Action | None  # what was done (a held entry counts as kept); None: nacked back
    skipped: str | None = None  # why it was not handled as asked
    stop: str | None = None  # why the pass must end here
    held: bool = False  # left unacked, to be handed back when the pass ends


def _tally(result: PassResult, letter: DeadLetter, done: _Step) -> None:
    if done.skipped is not None:
        result.skip(letter, done.skipped)
    match done.action:
        case Action.REPLAY:
            result.replayed += 1
        case Action.DISCARD:
            result.discarded += 1
        case Action.KEEP:
            result.kept += 1
    if done.stop is not None:
        result.stopped = done.stop


async def _move(
    message: AbstractIncomingMessage,
    letter: DeadLetter,
    action: Action,
    *,
    mover: MessageMover,
    queue_name: str,
    replay_to: ReplayTarget,
) -> _Step:
    """Copy (unless discarding), then ack; what was done, or why the pass must stop."""
    stop = skipped = None
    try:
        if action is Action.REPLAY:
            try:
                await mover.copy(
                    message,
                    exchange=replay_to.exchange,
                    routing_key=replay_to.routing_key(letter),
                    headers=replay_headers(letter.headers),
                )
            except UncopyableMessageError as error:
                skipped, action = f"not replayed, kept: {error}", Action.KEEP
            except MoveFailedError as error:
                stop, action = f"replay not confirmed: {error}", Action.KEEP
        if action is Action.KEEP:
            # Back to the tail: the head moves on and the queue keeps its order.
            await mover.copy(
                message, exchange="", routing_key=queue_name, headers=letter.kept_headers()
            )
    except UncopyableMessageError as error:
        # No copy of it can ever go to the tail: it stays where it is, unacked until the pass
        # ends, and the pass goes on with the others.
        why = f"left in place at the head of the queue, it cannot be copied: {error}"
        return _Step(Action.KEEP, why, stop, held=True)
    except MoveFailedError as error:
        await message.nack(requeue=True)
        return _Step(None, stop=f"could not put an entry back in its place: {error}")
    await message.ack()
    return _Step(action, skipped, stop)
