"""What a handler receives: the handler's view of one CloudEvent, and the handler contract."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic

from typing_extensions import TypeVar

__all__ = ["Event", "Handler"]

# What `data` holds: a handler that names it (`Event[Signup]`) gets it validated (see
# consumers.payloads); `Event` alone is `Event[Any]`, the parsed JSON or the bytes.
DataT = TypeVar("DataT", default=Any)  # a default: `Event` alone stays valid under strict typing


@dataclass(frozen=True, slots=True)
class Event(Generic[DataT]):
    """One CloudEvent as delivered to a handler.

    `data` is the parsed JSON for JSON content types and the raw bytes otherwise, or, for a
    handler that declares `event: Event[Model]`, that JSON validated into a `Model`; `raw_data`
    is always the bytes as they arrived. `extensions` holds every other context attribute as
    its canonical string. `attempt` counts handler attempts for this subscription, from 1.
    """

    id: str
    source: str
    type: str
    specversion: str
    time: datetime | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: DataT = field(default=None, repr=False)  # type: ignore[assignment] # None until decoded
    extensions: Mapping[str, str] = field(default_factory=dict)
    raw_data: bytes = field(default=b"", repr=False)
    correlation_id: str | None = None
    redelivered: bool = False
    attempt: int = 1


# async def handle(event: Event) -> None: returning acks the delivery; raising does not.
Handler = Callable[[Event], Awaitable[None]]
