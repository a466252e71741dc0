"""Completion events: each terminal outcome as a CloudEvent on `{ns}.results`.

Other services bind a queue to the results topic exchange instead of polling the status API.
The routing key is `<type>.<subscription>`, e.g. `conveyor.event.dead_lettered.orders`. A
completion is published (with confirm) before the delivery is acked, so it is sent at least once;
its id is derived from the outcome, so a repeat carries the same id and a receiver can drop it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from consumers.event import Event
from consumers.status import DeliveryState, DeliveryUpdate
from producers import new_event
from producers.event import format_time, format_timestamp
from producers.frames import WireMessage
from producers.wire import to_wire_message

__all__ = [
    "COMPLETION_SOURCE",
    "COMPLETION_TYPES",
    "completion_message",
    "completion_routing_key",
    "event_attributes",
]

COMPLETION_SOURCE = "conveyor"
COMPLETION_TYPES = {
    DeliveryState.SUCCEEDED: "conveyor.event.succeeded",
    DeliveryState.DEAD_LETTERED: "conveyor.event.dead_lettered",
}
_ID_NAMESPACE = uuid.UUID("8f9b8f5e-7a0c-4d0c-9a49-3c1f4e0b6a11")
_ID_NAMESPACE_BYTES = _ID_NAMESPACE.bytes


def event_attributes(event: Event) -> dict[str, str]:
    """The event's context attributes in their canonical string form."""
    attributes = dict(event.extensions)
    attributes.update(
        id=event.id, source=event.source, type=event.type, specversion=event.specversion
    )
    optional = {
        "time": format_time(event.time) if event.time else None,
        "subject": event.subject,
        "datacontenttype": event.datacontenttype,
        "dataschema": event.dataschema,
    }
    attributes.update({name: value for name, value in optional.items() if value is not None})
    return attributes


def completion_routing_key(update: DeliveryUpdate) -> str:
    return f"{COMPLETION_TYPES[update.state]}.{update.subscription}"


def completion_message(update: DeliveryUpdate, *, correlation_id: str | None) -> WireMessage:
    """The completion CloudEvent for a terminal `update`, ready to publish."""
    completion_type = COMPLETION_TYPES[update.state]
    data: dict[str, Any] = {
        "event": _identity(update.attributes),
        "subscription": update.subscription,
        "state": update.state.value,
        "attempts": update.attempts,
        "finished_at": format_timestamp(update.at),
    }
    if update.state is DeliveryState.DEAD_LETTERED:
        data["reason"] = update.reason
        if update.failure is not None:
            data["error"] = {"class": update.failure.error_class, "message": update.failure.message}
    identity = f"{update.source}\0{update.event_id}\0{update.subscription}\0{completion_type}"
    completion = new_event(
        completion_type,
        data,
        source=COMPLETION_SOURCE,
        id=completion_id(identity),
        subject=update.event_id,
        extensions={"subscription": update.subscription},
    )
    return to_wire_message(completion, correlation_id=correlation_id)


def completion_id(identity: str) -> str:
    """`str(uuid.uuid5(_ID_NAMESPACE, identity))`, without building and printing a `UUID`
    object for every completion."""
    digest = hashlib.sha1(_ID_NAMESPACE_BYTES + identity.encode()).hexdigest()  # noqa: S324 - UUIDv5 is SHA-1 by definition; an id, not a secret
    # Version 5 in the 13th hex digit, the RFC 4122 variant in the top bits of the 17th.
    variant = _VARIANT_DIGIT[digest[16]]
    return f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"


_VARIANT_DIGIT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}


def _identity(attributes: Mapping[str, str]) -> dict[str, str]:
    return {name: attributes[name] for name in ("id", "source", "type") if name in attributes}
