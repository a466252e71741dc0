"""A replay's terms (which window, into which subscription, how fast) and its progress so far."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from service.archive.events import ArchiveQuery

__all__ = [
    "ReplayConflictError",
    "ReplayDoneError",
    "ReplayProgress",
    "ReplayRequest",
    "ReplayState",
    "UnknownSubscriptionError",
]


class ReplayState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the broker connection went; asking again resumes it
    FAILED = "failed"  # the subscription's queue refused it (returned or nacked)


class UnknownSubscriptionError(LookupError):
    pass


class ReplayDoneError(Exception):
    """The id's replay ended, in this process or another: what it came to."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__("this replay has ended")
        self.document = document


class ReplayConflictError(RuntimeError):
    """The id was used for another replay, or runs in another process."""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    replay_id: str
    subscription: str
    query: ArchiveQuery
    rate: float  # events a second at most
    dry_run: bool = False
    backfill: bool = False  # a new subscription's: its window moves with each start

    def fingerprint(self) -> str:
        if self.backfill:
            return hashlib.sha256(f"backfill\0{self.subscription}".encode()).hexdigest()
        spec = [
            self.subscription,
            self.query.since,
            self.query.until,
            self.query.type_pattern,
            self.query.source,
            self.query.subject,
            self.dry_run,
        ]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()


@dataclass(slots=True)
class ReplayProgress:
    request: ReplayRequest
    started_at: float
    state: ReplayState = ReplayState.RUNNING
    scanned: int = 0  # archived events read
    matched: int = 0  # of those, in the window and through the filters
    published: int = 0  # confirmed by RabbitMQ
    after_offset: int | None = None  # every event up to this offset is done with
    uncertain: dict[str, Any] | None = None  # published, confirm lost: it may be there
    error: str | None = None
    finished_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    owner: str = ""

    def document(self) -> dict[str, Any]:
        query = self.request.query
        return {
            "replay_id": self.request.replay_id,
            "subscription": self.request.subscription,
            "state": self.state.value,
            "dry_run": self.request.dry_run,
            "since": query.since,
            "until": query.until,
            "filters": {
                "type": query.type_pattern,
                "source": query.source,
                "subject": query.subject,
            },
            "rate": self.request.rate,
            "scanned": self.scanned,
            "matched": self.matched,
            "published": self.published,
            "after_offset": self.after_offset,
            "uncertain": self.uncertain,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
