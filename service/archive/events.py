"""What an archived message is read as, and which of them a browse or a replay takes.

Pure: no broker I/O, so the window and the filters are unit-tested on their own.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumers.dead_letter import without_conveyor_headers
from consumers.decoding import decode_event
from producers.event import format_timestamp
from producers.wire import CE_HEADER_PREFIX
from service.broker.routing import topic_matches

__all__ = ["STREAM_OFFSET", "ArchiveQuery", "ArchivedEvent", "archived_event"]

# The header RabbitMQ adds to each message read from a stream: its offset there.
STREAM_OFFSET = "x-stream-offset"
# Publishers' clocks differ by a little: a read goes this far past `until` before it stops.
CLOCK_SKEW_SECONDS = 1.0
MAX_SHOWN_DATA_BYTES = 262_144


@dataclass(frozen=True, slots=True)
class ArchivedEvent:
    """One message of the archive: its event's attributes, and all it needs to be sent again."""

    offset: int
    id: str
    type: str
    source: str
    subject: str | None
    time: float | None  # when it was published: the AMQP timestamp, else the event's `time`
    body: bytes = field(repr=False)
    headers: Mapping[str, Any] = field(repr=False)
    content_type: str | None = None
    correlation_id: str | None = None
    routing_key: str = ""

    @property
    def size(self) -> int:
        return len(self.body)

    def summary(self) -> dict[str, Any]:
        """The listing's row."""
        return {
            "offset": self.offset,
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "subject": self.subject,
            "time": None if self.time is None else format_timestamp(self.time),
            "size": self.size,
        }

    def document(self) -> dict[str, Any]:
        """The whole event: its row, headers, content type and data (text, else base64)."""
        shown = self.body[:MAX_SHOWN_DATA_BYTES]
        try:
            data, encoding = shown.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            data, encoding = base64.b64encode(shown).decode("ascii"), "base64"
        return self.summary() | {
            "content_type": self.content_type,
            "headers": {name: _plain(value) for name, value in self.headers.items()},
            "data": data,
            "data_encoding": encoding,
            "data_truncated": len(self.body) > len(shown),
        }

    def replay_headers(self, replay_id: str, header: str) -> dict[str, Any]:
        """Its headers for a replay: conveyor's counters of an earlier life dropped, the
        replay's id added."""
        headers = without_conveyor_headers(dict(self.headers))
        headers.pop(STREAM_OFFSET, None)
        headers[header] = replay_id
        return headers


@dataclass(frozen=True, slots=True)
class ArchiveQuery:
    """A time window `[since, until)` (Unix seconds) and optional exact filters."""

    since: float
    until: float
    type_pattern: str | None = None  # an AMQP topic pattern over the type
    source: str | None = None
    subject: str | None = None

    def matches(self, event: ArchivedEvent) -> bool:
        """In the window and through the filters. A stream places a read by whole chunks, so
        events a little older than `since` come first and are left out here."""
        if event.time is not None and not self.since <= event.time < self.until:
            return False
        if self.type_pattern is not None and not topic_matches(self.type_pattern, event.type):
            return False
        if self.source is not None and event.source != self.source:
            return False
        return self.subject is None or event.subject == self.subject

    def past(self, event: ArchivedEvent) -> bool:
        """Far enough past the window that nothing later can be inside it."""
        return event.time is not None and event.time >= self.until + CLOCK_SKEW_SECONDS


def archived_event(
    offset: int,
    body: bytes,
    headers: Mapping[str, Any] | None,
    *,
    content_type: str | None,
    correlation_id: str | None = None,
    message_id: str | None,
    routing_key: str,
    timestamp: datetime | None,
) -> ArchivedEvent:
    """An archived message read as an event; one that is no CloudEvent keeps what it has."""
    kept = dict(headers or {})
    attributes: dict[str, Any] = {
        "id": message_id or "",
        "type": routing_key,
        "source": "",
        "subject": None,
        "time": None,
    }
    try:
        decoded = decode_event(kept, content_type, body)
    except Exception:  # noqa: BLE001 - any message may sit in the archive; list what it has
        for name in ("id", "type", "source", "subject"):
            value = kept.get(CE_HEADER_PREFIX + name)
            if isinstance(value, str | bytes):
                attributes[name] = value.decode() if isinstance(value, bytes) else value
    else:
        attributes.update(
            id=decoded.id, type=decoded.type, source=decoded.source, subject=decoded.subject
        )
        attributes["time"] = decoded.time
    published = timestamp if timestamp is not None else attributes["time"]
    return ArchivedEvent(
        offset=offset,
        id=attributes["id"],
        type=attributes["type"],
        source=attributes["source"],
        subject=attributes["subject"],
        time=None if published is None else _seconds(published),
        body=body,
        headers=kept,
        content_type=content_type,
        correlation_id=correlation_id,
        routing_key=routing_key,
    )


def _seconds(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # AMQP timestamps are UTC
    return moment.timestamp()


def _plain(value: Any) -> Any:
    """A header value as JSON can show it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return _seconds(value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
