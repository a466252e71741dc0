"""The AMQP contract: a CloudEvent in binary mode as the CloudEvents RabbitMQ binding writes it.

Every attribute but `datacontenttype` becomes a `ce-`-prefixed string header, `datacontenttype`
becomes the AMQP `content_type`, the body is the event data; `message_id` is the event id and the
routing key the event type. Consumers also read `cloudEvents_`/`cloudEvents:` prefixes and
structured mode, so any AMQP publisher can feed conveyor.
"""

from __future__ import annotations

import time

from producers.event import OutgoingEvent
from producers.first_copy import FIRST_COPY_HEADER
from producers.frames import WireMessage

__all__ = ["CE_HEADER_PREFIX", "TRACEPARENT_HEADER", "to_wire_message"]

CE_HEADER_PREFIX = "ce-"
TRACEPARENT_HEADER = "traceparent"


def to_wire_message(
    event: OutgoingEvent,
    *,
    correlation_id: str | None = None,
    traceparent: str | None = None,
    first_copy_mark: str | None = None,
) -> WireMessage:
    """The event as conveyor's publish pipeline writes it (the same wire form as below), with
    the ingress's first-copy mark when it has one (producers.first_copy)."""
    headers = {CE_HEADER_PREFIX + name: value for name, value in event.attributes.items()}
    if traceparent is not None:
        headers[TRACEPARENT_HEADER] = traceparent
    if first_copy_mark is not None:
        headers[FIRST_COPY_HEADER] = first_copy_mark
    return WireMessage(
        event.data,
        message_id=event.id,
        headers=headers,
        content_type=event.datacontenttype,
        correlation_id=correlation_id,
        app_id="conveyor",
        # When it was published, to the second: what an archive read filters on
        # (service.archive), since a stream places a read by whole chunks only.
        timestamp=int(time.time()),
    )
