"""Messages whose own headers nearly fill one AMQP frame: no copy with more headers fits one."""

from __future__ import annotations

from typing import Any

import aio_pika
from pamqp import frame
from pamqp.header import ContentHeader

# What the message leaves free of the broker's frame_max: less than any header conveyor adds.
ROOM_BYTES = 16
PADDING_HEADER = "x-junk"


async def negotiated_frame_max(amqp_url: str) -> int:
    """The frame_max the broker gives a connection (RabbitMQ's default is 131072)."""
    async with await aio_pika.connect(amqp_url) as connection:
        assert connection.transport is not None
        return connection.transport.connection.connection_tune.frame_max


def frame_filling(
    frame_max: int, body: bytes, headers: dict[str, Any], **properties: Any
) -> aio_pika.Message:
    """A message whose content header frame is ROOM_BYTES short of `frame_max`: `headers`, and
    a padding header that takes up the rest."""

    def message(padding: int) -> aio_pika.Message:
        padded = {**headers, PADDING_HEADER: "j" * padding}
        return aio_pika.Message(body, headers=padded, **properties)

    bare = len(frame.marshal(ContentHeader(0, len(body), message(0).properties), 1))
    filled = message(frame_max - ROOM_BYTES - bare)
    assert len(frame.marshal(ContentHeader(0, len(body), filled.properties), 1)) == (
        frame_max - ROOM_BYTES
    )
    return filled
