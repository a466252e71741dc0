"""Loss accounting, the way RabbitMQ's Jepsen checks count: what was said yes to, and where it went.

Every id the ingress answered 202 must end up handled or in a dead-letter queue. The ledger
records each answer and each handler call, takes the DLQs at the end, and reports: sent,
accepted, rejected (by status), handled, dead-lettered, lost (accepted but nowhere), duplicated
(handled successfully more than once; a retry after a failure is not a duplicate), recovered
(answered with an error, yet delivered: a publish whose confirm was lost with the connection,
which is why a 503 means "retry", not "lost") and unexpected (handled but never sent).
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from aiohttp import ClientError

from consumers import Event
from tests.support.processes import done_ids
from tests.support.waiting import eventually

if TYPE_CHECKING:  # conftest imports this module for its summary table: no import cycle
    from tests.support.namespace import Namespace


class Ingress(Protocol):
    """What the ledger sends to: conveyor in this process, or a real `conveyor serve`."""

    async def post_status(self, document: dict[str, Any]) -> int: ...


@dataclass(frozen=True, slots=True)
class Account:
    scenario: str
    sent: int
    accepted: int
    rejected: dict[int, int]
    handled: int
    dead_lettered: int
    lost: int
    recovered: int
    duplicated: int
    unexpected: int
    notes: str  # what the scenario measured besides the counts (detection time, peak memory)

    def row(self) -> str:
        rejected = ", ".join(f"{count}x{status}" for status, count in sorted(self.rejected.items()))
        return (
            f"| {self.scenario} | {self.sent} | {self.accepted} | {rejected or '0'} | "
            f"{self.handled} | {self.dead_lettered} | {self.lost} | {self.recovered} | "
            f"{self.duplicated} | {self.unexpected} | {self.notes} |"
        )


ACCOUNTS = pytest.StashKey[list[Account]]()  # every scenario's account, for the summary table
HEADER = (
    "| scenario | sent | accepted | rejected | handled | dead-lettered | lost | recovered | "
    "duplicated | unexpected | measured |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Ledger:
    """Records answers and handler calls for one scenario; `account()` settles them."""

    scenario: str
    answers: dict[str, int] = field(default_factory=dict)  # event id -> HTTP status
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    succeeded: collections.Counter[str] = field(default_factory=collections.Counter)
    dead: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)  # seconds per answered request
    notes: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def handler(self, fail: Callable[[Event], Awaitable[None]] | None = None) -> Any:
        """A handler that counts each call, and each call that returned (`fail` may raise)."""

        async def handle(event: Event) -> None:
            self.calls[event.id] += 1
            if fail is not None:
                try:
                    await fail(event)
                finally:
                    self._changed.set()
            self.succeeded[event.id] += 1
            self._changed.set()

        return handle

    @property
    def accepted(self) -> set[str]:
        return {event_id for event_id, status in self.answers.items() if status == 202}

    async def send(
        self,
        conveyor: Ingress,
        count: int,
        *,
        concurrency: int,
        event_type: str = "chaos.event",
        data: dict[str, Any] | None = None,
        pause_after_503: float = 0.0,
    ) -> None:
        """POST `count` events, `concurrency` at a time; a dropped connection counts as 0.

        `pause_after_503`: a client that got 503 waits this long before its next POST, as one
        honouring conveyor's `Retry-After` does (0: it sends again at once).
        """
        slots = asyncio.Semaphore(concurrency)
        run = uuid.uuid4().hex[:8]
        clock = asyncio.get_running_loop().time

        async def one(index: int) -> None:
            event_id = f"{run}-{index}"
            document: dict[str, Any] = {"type": event_type, "id": event_id, "source": "/chaos"}
            if data is not None:
                document["data"] = data
            async with slots:
                started = clock()
                try:
                    self.answers[event_id] = await conveyor.post_status(document)
                except (ClientError, TimeoutError):
                    self.answers[event_id] = 0  # no answer: not a yes
                    return
                self.latencies.append(clock() - started)
                if self.answers[event_id] == 503 and pause_after_503:
                    await asyncio.sleep(pause_after_503)

        await asyncio.gather(*(one(index) for index in range(count)))

    async def settled(self, timeout: float = 60.0) -> None:
        """Wait until every accepted id was handled (or the time is up: the account says)."""
        async with asyncio.timeout(timeout):
            while not self.accepted <= set(self.succeeded) | self.dead:
                self._changed.clear()
                try:
                    async with asyncio.timeout(1.0):
                        await self._changed.wait()
                except TimeoutError:
                    continue

    async def handled_by_log(self, log: Path, *, timeout: float) -> None:
        """Wait until the slow handler's `log` shows every accepted id done, then count them.

        For handlers in real `conveyor serve` processes, which report through that file.
        """

        async def all_done() -> bool:
            return self.accepted <= set(done_ids(log))

        await eventually(all_done, timeout=timeout, what="every accepted event to be handled")
        self.succeeded.update(done_ids(log))

    async def take_dead_letters(self, namespace: Namespace, subscriptions: Iterable[str]) -> None:
        for name in subscriptions:
            messages = await namespace.take_all(namespace.topology.dead_letter_queue(name))
            self.dead |= {message.message_id or "" for message in messages}

    def account(self) -> Account:
        accepted = self.accepted
        handled = set(self.succeeded)
        refused = set(self.answers) - accepted
        rejected = collections.Counter(s for s in self.answers.values() if s != 202)
        return Account(
            scenario=self.scenario,
            sent=len(self.answers),
            accepted=len(accepted),
            rejected=dict(rejected),
            handled=len(handled & accepted),
            dead_lettered=len(self.dead & accepted),
            lost=len(accepted - handled - self.dead),
            recovered=len((handled | self.dead) & refused),
            duplicated=sum(1 for count in self.succeeded.values() if count > 1),
            unexpected=len(handled - set(self.answers)),
            notes="; ".join(self.notes),
        )
