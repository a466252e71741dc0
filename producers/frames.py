"""AMQP 0-9-1 publish frames, written directly for the properties conveyor sends.

pamqp builds a `Basic.Properties` object, validates every field and encodes each through a
generic table writer, a large share of a publish's cost in Python. conveyor's own messages carry
short strings and string headers, which take a few `struct.pack` calls. Any header value that
is not a string (the counters and tracebacks of a retry or dead-letter copy) goes through
pamqp's table encoder, so the wire format is pamqp's in every case; the unit tests decode what
is written here with pamqp.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pamqp import encode, frame
from pamqp.commands import Basic

__all__ = ["WireMessage", "body_frames", "content_header_frame", "publish_method_frame"]

_FRAME_METHOD, _FRAME_HEADER, _FRAME_BODY = 1, 2, 3
_FRAME_END = b"\xce"
_BASIC_CLASS = 60
_FRAME_HEAD = struct.Struct(">BHI")
_HEADER_PREFIX = struct.Struct(">HHQH")  # class, weight, body size, property flags
_U32 = struct.Struct(">I")
_SHORT_STRING_MAX = 255
_U64 = struct.Struct(">Q")
# Property flag bits, AMQP 0-9-1 section 4.2.6 / pamqp's Basic.Properties order.
_CONTENT_TYPE = 1 << 15
_CONTENT_ENCODING = 1 << 14
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_PRIORITY = 1 << 11
_CORRELATION_ID = 1 << 10
_REPLY_TO = 1 << 9
_MESSAGE_ID = 1 << 7
_TIMESTAMP = 1 << 6
_TYPE = 1 << 5
_APP_ID = 1 << 3


@dataclass(
    slots=True
)  # not frozen: a frozen __init__ sets each of 12 fields through object.__setattr__
class WireMessage:
    """One message to publish: its body and the basic properties conveyor writes. Treat it as
    immutable once built."""

    body: bytes
    message_id: str | None = None
    headers: Mapping[str, Any] | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    timestamp: int | None = None  # seconds since the epoch
    type: str | None = None
    app_id: str | None = None
    delivery_mode: int = 2  # persistent


def _short(value: str) -> bytes:
    encoded = value.encode()
    if len(encoded) > _SHORT_STRING_MAX:
        raise ValueError(f"an AMQP short string holds at most 255 bytes, not {len(encoded)}")
    return bytes((len(encoded),)) + encoded


@functools.lru_cache(maxsize=256)
def _key_prefix(key: str) -> bytes:
    """A header name and the long-string type tag: the same few names on every message."""
    return _short(key) + b"S"


def _table(headers: Mapping[str, Any]) -> bytes:
    parts: list[bytes] = []
    for key, value in headers.items():
        if type(value) is not str:
            # Counters, timestamps, nested tables: pamqp's encoder knows every field type.
            return encode.field_table(dict(headers))
        encoded = value.encode()
        parts.append(_key_prefix(key))
        parts.append(_U32.pack(len(encoded)))
        parts.append(encoded)
    payload = b"".join(parts)
    return _U32.pack(len(payload)) + payload


def content_header_frame(channel: int, message: WireMessage) -> bytes:  # noqa: C901 - one branch per property, in the flags' order
    """The content header frame (type 2) announcing `message`'s body and properties."""
    flags = _DELIVERY_MODE
    fields: list[bytes] = []
    if message.content_type is not None:
        flags |= _CONTENT_TYPE
        fields.append(_short(message.content_type))
    if message.content_encoding is not None:
        flags |= _CONTENT_ENCODING
        fields.append(_short(message.content_encoding))
    if message.headers:
        flags |= _HEADERS
        fields.append(_table(message.headers))
    fields.append(bytes((message.delivery_mode,)))
    if message.priority is not None:
        flags |= _PRIORITY
        fields.append(bytes((message.priority,)))
    if message.correlation_id is not None:
        flags |= _CORRELATION_ID
        fields.append(_short(message.correlation_id))
    if message.reply_to is not None:
        flags |= _REPLY_TO
        fields.append(_short(message.reply_to))
    if message.message_id is not None:
        flags |= _MESSAGE_ID
        fields.append(_short(message.message_id))
    if message.timestamp is not None:
        flags |= _TIMESTAMP
        fields.append(_U64.pack(message.timestamp))
    if message.type is not None:
        flags |= _TYPE
        fields.append(_short(message.type))
    if message.app_id is not None:
        flags |= _APP_ID
        fields.append(_short(message.app_id))
    payload = _HEADER_PREFIX.pack(_BASIC_CLASS, 0, len(message.body), flags) + b"".join(fields)
    return _FRAME_HEAD.pack(_FRAME_HEADER, channel, len(payload)) + payload + _FRAME_END


def body_frames(channel: int, body: bytes, max_size: int) -> bytes:
    """The body in content body frames (type 3) of at most `max_size` bytes each."""
    if not body:
        return b""  # a zero-size body has no body frame (AMQP 0-9-1, 4.2.6.2)
    if len(body) <= max_size:
        return _FRAME_HEAD.pack(_FRAME_BODY, channel, len(body)) + body + _FRAME_END
    return b"".join(
        _FRAME_HEAD.pack(_FRAME_BODY, channel, len(part)) + part + _FRAME_END
        for part in (body[start : start + max_size] for start in range(0, len(body), max_size))
    )


def publish_method_frame(
    channel: int, exchange: str, routing_key: str, *, mandatory: bool
) -> bytes:
    """The basic.publish method frame; pamqp writes it (callers cache it per destination)."""
    if len(routing_key.encode()) > _SHORT_STRING_MAX:
        raise ValueError("a routing key holds at most 255 bytes")
    return frame.marshal(
        Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory), channel
    )
