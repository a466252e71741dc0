"""Event statuses over the store: written by the ingress and the consumers, read by the API.

The ingress records an accepted event, with the subscriptions it was routed to, before answering
202: each of them shows as `pending` until its consumer reports the delivery's progress through
`consumers.StatusLedger`.
Progress notes (`processing`) are queued without waiting; states a client acts on (retrying,
succeeded, dead-lettered) are stored before the delivery is acked, so a status never runs ahead
of what happened, and a redelivery can see that an event already succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from consumers.status import DeliveryState, DeliveryUpdate
from consumers.subscription import Subscription
from producers import OutgoingEvent
from producers.event import format_timestamp
from producers.first_copy import FirstCopyMarks
from service.broker.routing import routed_subscriptions
from service.clock import SYSTEM_CLOCK, Clock
from service.store import BatchWriter, Coalescer, Statements, Store, Write

__all__ = ["EventStatus", "StatusBook"]

_POLL_SECONDS = 0.5  # how often a waiter looks again for changes made by other processes
# Long-polls held at once; past this a request with ?wait= is answered at once (each waiter
# costs a few store reads per poll, and the store also serves ingest).
MAX_WAITERS = 500
# Dedup lookups asked at once in one query. Each key takes three parameters: 256 keys stay
# under 999, SQLite's limit before 3.32 (32,766 since), and far under PostgreSQL's 32,767.
MAX_LOOKUPS_PER_QUERY = 256
# As long as a consumer waits for the answer (consumers.reporting): a query that hangs longer
# fails its lookups, which then run the handler, and the next batch goes out.
LOOKUP_TIMEOUT_SECONDS = 5.0
# Earlier rounds of a delivery shown in its status (each replay from the DLQ ends one).
MAX_HISTORY_SHOWN = 20
_CANCELLED = "cancelled"
# A delayed event's own states, before (or instead of) any subscription's.
_WAITING_STATES = frozenset(("scheduled", _CANCELLED))
_SucceededKey = tuple[str, str, str]  # event id, source, subscription
_EVENT_ROW_STATEMENTS = frozenset(
    (Statements.accept_event, Statements.see_event, Statements.put_delivery)
)


@dataclass(frozen=True, slots=True)
class EventStatus:
    """One event (one source and id) and where it stands in each subscription."""

    attributes: dict[str, str]
    accepted_at: float | None
    subscriptions: dict[str, dict[str, Any]]
    unrouted: bool
    due_at: float | None = None  # a delayed event: when it is (or was) due
    delay_state: str | None = None  # scheduled, due or cancelled (service.http.delay_book)

    @property
    def state(self) -> str:
        if self.delay_state in _WAITING_STATES:
            return str(self.delay_state)
        states = {str(entry["state"]) for entry in self.subscriptions.values()}
        if not states:
            return "unrouted" if self.unrouted else DeliveryState.PENDING.value
        if len(states) > 1:
            # Left out by some subscriptions' filters: the event stands where the others are.
            states.discard(DeliveryState.FILTERED.value)
        if len(states) == 1:
            return states.pop()
        if states <= {DeliveryState.SUCCEEDED.value, DeliveryState.DEAD_LETTERED.value}:
            return DeliveryState.DEAD_LETTERED.value  # finished, and not everywhere well
        return "in-progress"

    @property
    def done(self) -> bool:
        """Nothing more will happen to it: every subscription finished, or it went nowhere."""
        if self.delay_state in _WAITING_STATES:
            return self.delay_state == _CANCELLED
        if not self.subscriptions:
            return self.unrouted
        return all(DeliveryState(entry["state"]).terminal for entry in self.subscriptions.values())

    def to_json(self) -> dict[str, Any]:
        shown = {
            "id": self.attributes.get("id"),
            "source": self.attributes.get("source"),
            "type": self.attributes.get("type"),
            "state": self.state,
            "done": self.done,
            "accepted_at": _time(self.accepted_at),
            "attributes": self.attributes,
            "subscriptions": self.subscriptions,
        }
        if self.due_at is not None:
            shown["due"] = _time(self.due_at)
        return shown


class StatusBook:
    """The service's `consumers.StatusLedger`, and the reader behind GET /v1/events/{id}."""

    def __init__(
        self,
        store: Store,
        writer: BatchWriter,
        *,
        ttl: float,
        dedup_window: float,
        subscriptions: Sequence[Subscription],
        lookup_timeout: float = LOOKUP_TIMEOUT_SECONDS,
        clock: Clock = SYSTEM_CLOCK,
        marks: FirstCopyMarks | None = None,
    ) -> None:
        self._store = store
        # First-copy marks under the deployment's key (service.store.first_copy_key); without
        # one, a key of this book's own: marks then hold only within this process.
        self.marks = marks or FirstCopyMarks()
        self._clock = clock  # acceptance times, and what has expired or left the dedup window
        self._writer = writer
        self._ttl = ttl
        # A success counts for dedup only this long: the ingress refuses an id reused for other
        # content for as long (the idempotency TTL); after it, the same id may be a new event.
        self._dedup_window = dedup_window
        self._subscriptions = tuple(subscriptions)
        self._changed: dict[str, asyncio.Event] = {}  # event id -> set when a write touched it
        self._waiters = 0
        # Concurrent deliveries each ask whether their event already succeeded: one query
        # answers all the questions asked while the previous one ran.
        self._succeeded: Coalescer[_SucceededKey, bool] = Coalescer(
            self._succeeded_among,
            default=False,
            max_batch=MAX_LOOKUPS_PER_QUERY,
            timeout=lookup_timeout,
            name="conveyor-dedup-lookups",
        )

    async def close(self) -> None:
        await self._succeeded.close()

    @property
    def waiting(self) -> int:
        """Long-polls holding on right now (`wait`)."""
        return self._waiters

    def wake_waiters(self, writes: Sequence[Write]) -> None:
        """Called after each committed batch: waiters on the events it touched look again."""
        if not self._changed:
            return
        for statement, params in writes:
            if statement in _EVENT_ROW_STATEMENTS and (
                changed := self._changed.pop(params[0], None)
            ):
                changed.set()

    def accepted_writes(self, event: OutgoingEvent) -> list[Write]:
        """What records an event RabbitMQ confirmed: its attributes and the subscriptions it
        was routed to (none: unrouted); the caller commits it with its idempotency answer.

        One row. A routed subscription shows as `pending` from `routed` until its consumer
        writes a row of its own (`lookup`); a `pending` row per subscription would say the same
        at the cost of one more insert an event and subscription, and make the consumer's first
        report an update instead of an insert.
        """
        now = self._clock.now()
        attributes = dict(event.attributes)
        if event.datacontenttype is not None:
            attributes["datacontenttype"] = event.datacontenttype
        return [
            (
                Statements.accept_event,
                (
                    event.id,
                    event.source,
                    orjson.dumps(attributes).decode(),
                    orjson.dumps(routed_subscriptions(self._subscriptions, event.type)).decode(),
                    now,
                    now + self._ttl,
                ),
            )
        ]

    async def succeeded_before(self, subscription: str, source: str, event_id: str) -> bool:
        return await self._succeeded.get((event_id, source, subscription))

    def vouches_first_copy(self, mark: object, source: str, event_id: str) -> bool:
        return self.marks.vouches(mark, source, event_id)

    async def _succeeded_among(self, keys: Sequence[_SucceededKey]) -> dict[_SucceededKey, bool]:
        # Padded to a power of two with repeats of the last key: a handful of statement shapes
        # stay in the drivers' statement caches instead of one per batch size.
        padded = [*keys, *[keys[-1]] * ((1 << (len(keys) - 1).bit_length()) - len(keys))]
        since = self._clock.now() - self._dedup_window
        parameters = [value for key in padded for value in key]
        rows = await self._store.query(
            Statements.select_succeeded_among(len(padded)), *parameters, since
        )
        return {(str(row[0]), str(row[1]), str(row[2])): True for row in rows}

    def note(self, update: DeliveryUpdate) -> None:
        self._writer.submit(*self._update_writes(update))

    async def record(self, update: DeliveryUpdate) -> None:
        await self._writer.store(*self._update_writes(update))

    async def record_many(self, updates: Sequence[DeliveryUpdate]) -> None:
        await self._writer.store(*[write for u in updates for write in self._update_writes(u)])

    def _update_writes(self, update: DeliveryUpdate) -> tuple[Write, Write]:
        expires_at = update.at + self._ttl
        event_row = (
            Statements.see_event,
            (
                update.event_id,
                update.source,
                orjson.dumps(dict(update.attributes)).decode(),
                expires_at,
            ),
        )
        return event_row, _delivery_write(update, self._ttl)

    async def lookup(self, event_id: str, source: str | None = None) -> list[EventStatus]:
        """The statuses of events with this id (one per source), or of the one from `source`."""
        now = self._clock.now()
        rows = await self._store.query(Statements.select_events, event_id, now)
        found = []
        for _, row_source, attributes, routed, accepted_at, due_at, delay_state in rows:
            if source is not None and row_source != source:
                continue
            if delay_state in _WAITING_STATES:
                # Not routed yet (or never to be): no subscription has it.
                waiting = EventStatus(
                    orjson.loads(attributes),
                    accepted_at,
                    subscriptions={},
                    unrouted=False,
                    due_at=due_at,
                    delay_state=delay_state,
                )
                found.append(waiting)
                continue
            deliveries = await self._store.query(
                Statements.select_deliveries, event_id, row_source, now
            )
            attributes_json = orjson.loads(attributes)
            subscriptions = {row[0]: _delivery_json(row) for row in deliveries}
            if routed is not None:
                # Accepted over HTTP: a subscription it was routed to that has no row of its own
                # has not reported yet, and is pending since the acceptance (the ingress writes
                # no row per subscription). In name order, as the rows come.
                expected = orjson.loads(routed)
                for name in expected:
                    if name not in subscriptions:
                        subscriptions[name] = _pending_json(accepted_at)
                subscriptions = dict(sorted(subscriptions.items()))
            else:
                # Not accepted over HTTP (published straight to RabbitMQ, or its accept write
                # failed): expect the subscriptions this process knows, so that one
                # subscription's success does not make the event look done while another has
                # not started.
                expected = routed_subscriptions(
                    self._subscriptions, attributes_json.get("type", "")
                )
                for name in expected:
                    subscriptions.setdefault(
                        name, {"state": DeliveryState.PENDING.value, "attempts": 0}
                    )
            found.append(
                EventStatus(
                    attributes=attributes_json,
                    accepted_at=accepted_at,
                    subscriptions=subscriptions,
                    unrouted=routed is not None and not expected,
                    due_at=due_at,
                    delay_state=delay_state,
                )
            )
        return found

    async def wait(self, event_id: str, source: str | None, timeout: float) -> list[EventStatus]:
        """Like `lookup`, but wait up to `timeout` seconds for the event to be done."""
        if self._waiters >= MAX_WAITERS:
            return await self.lookup(event_id, source)
        deadline = asyncio.get_running_loop().time() + timeout
        self._waiters += 1
        try:
            while True:
                changed = self._changed.setdefault(event_id, asyncio.Event())
                found = await self.lookup(event_id, source)
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or (found and all(status.done for status in found)):
                    return found
                # Our own writes wake us at once; another process's are seen on the next poll.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(_POLL_SECONDS, remaining)):
                        await changed.wait()
        finally:
            self._waiters -= 1
            if self._waiters == 0:
                self._changed.clear()


def _delivery_write(update: DeliveryUpdate, ttl: float) -> Write:
    error = None
    if update.failure is not None:
        error = {"class": update.failure.error_class, "message": update.failure.message}
        if update.reason is not None:
            error["reason"] = update.reason
    state = update.state
    return (
        Statements.put_delivery,
        (
            update.event_id,
            update.source,
            update.subscription,
            state.value,
            state.rank,
            update.replays,
            update.attempts,
            update.next_attempt_at,
            None if error is None else orjson.dumps(error).decode(),
            update.at if state is DeliveryState.PROCESSING else update.first_attempt_at,  # kept
            update.at,
            update.at if state.terminal else None,
            update.at + ttl,
        ),
    )


def _pending_json(accepted_at: float) -> dict[str, Any]:
    """A routed subscription's entry before its consumer reported: pending since it was
    accepted, the same entry a `pending` row of its own would give."""
    return {
        "state": DeliveryState.PENDING.value,
        "attempts": 0,
        "first_attempt_at": None,
        "updated_at": _time(accepted_at),
        "finished_at": None,
    }


def _delivery_json(row: tuple[Any, ...]) -> dict[str, Any]:
    (_, state, attempts, next_attempt_at, last_error, first_attempt_at, updated_at, finished) = row[
        :8
    ]
    history = row[8]
    entry: dict[str, Any] = {
        "state": state,
        "attempts": attempts,
        "first_attempt_at": _time(first_attempt_at),
        "updated_at": _time(updated_at),
        "finished_at": _time(finished),
    }
    if state == DeliveryState.RETRYING.value:
        entry["next_attempt_at"] = _time(next_attempt_at)
    if last_error is not None:
        entry["last_error"] = orjson.loads(last_error)
    if history is not None:
        entry["history"] = _history_json(history)
    return entry


def _history_json(history: str) -> list[dict[str, Any]]:
    """The earlier rounds (one per replay from the DLQ), oldest first: the last
    MAX_HISTORY_SHOWN of them."""
    rounds: list[dict[str, Any]] = orjson.loads(f"[{history}]")
    shown = []
    for earlier in rounds[-MAX_HISTORY_SHOWN:]:
        error = earlier.get("last_error")
        shown.append(
            {
                "state": earlier.get("state"),
                "attempts": earlier.get("attempts"),
                "at": _time(earlier["at_us"] / 1_000_000),
                "reason": error.get("reason") if isinstance(error, dict) else None,
                "last_error": error,
            }
        )
    return shown


def _time(seconds: float | None) -> str | None:
    return None if seconds is None else format_timestamp(seconds)
