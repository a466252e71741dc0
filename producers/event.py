"""The CloudEvent as conveyor publishes it: attributes already in their canonical string form."""

from __future__ import annotations

import functools
import math
import time as clock
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["SPECVERSION", "OutgoingEvent", "format_time", "format_timestamp", "new_event"]

SPECVERSION = "1.0"
DEFAULT_SOURCE = "conveyor"
_MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """A CloudEvent ready for the wire.

    `attributes` holds every context attribute except `datacontenttype` (which travels as
    the AMQP content_type), each as the string the RabbitMQ binding writes.
    """

    attributes: Mapping[str, str]
    datacontenttype: str | None
    data: bytes = field(repr=False)

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def source(self) -> str:
        return self.attributes["source"]


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a 'Z', as the CloudEvents SDKs write it."""
    text = moment.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


def format_timestamp(seconds: float) -> str:
    """`format_time` of a Unix time, as `datetime.fromtimestamp(seconds, UTC)` would give it,
    without building the datetime: every completion event writes two."""
    fraction, whole = math.modf(seconds)
    micro = round(fraction * _MICROS)  # as datetime.fromtimestamp rounds
    if micro >= _MICROS:
        whole, micro = whole + 1, micro - _MICROS
    elif micro < 0:
        whole, micro = whole - 1, micro + _MICROS
    prefix = _second(int(whole))
    return f"{prefix}.{micro:06d}Z" if micro else f"{prefix}Z"  # isoformat drops a zero fraction


@functools.lru_cache(maxsize=16)
def _second(seconds: int) -> str:
    return clock.strftime("%Y-%m-%dT%H:%M:%S", clock.gmtime(seconds))


def new_event(
    type: str,  # noqa: A002 - the CloudEvents attribute is called type
    data: Any = None,
    *,
    source: str = DEFAULT_SOURCE,
    id: str | None = None,  # noqa: A002 - the CloudEvents attribute is called id
    subject: str | None = None,
    time: datetime | None = None,
    datacontenttype: str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> OutgoingEvent:
    """An event with id and time filled in; `data` that is not bytes is written as JSON."""
    attributes: dict[str, str] = dict(extensions or {})
    attributes.update(
        id=id or str(uuid.uuid4()),
        source=source,
        type=type,
        specversion=SPECVERSION,
        time=format_time(time) if time is not None else format_timestamp(clock.time()),
    )
    if subject is not None:
        attributes["subject"] = subject
    if isinstance(data, bytes):
        body = data
        content_type = datacontenttype or "application/octet-stream"
    else:
        body = orjson.dumps(data)
        content_type = datacontenttype or "application/json"
    return OutgoingEvent(attributes=attributes, datacontenttype=content_type, data=body)
