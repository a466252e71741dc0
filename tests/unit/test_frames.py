"""producers.frames writes what pamqp reads back: the same properties, headers and body."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pamqp import frame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from producers.frames import WireMessage, body_frames, content_header_frame, publish_method_frame


def _read_all(data: bytes) -> list[object]:
    frames: list[object] = []
    while data:
        consumed, channel, value = frame.unmarshal(data)
        assert channel == 7
        frames.append(value)
        data = data[consumed:]
    return frames


def test_every_property_reads_back_as_written() -> None:
    message = WireMessage(
        b'{"a": 1}',
        message_id="id-1",
        headers={"ce-id": "id-1", "ce-source": "s", "ce-time": "2026-11-28T00:00:00Z", "é": "ü"},
        content_type="application/json",
        content_encoding="gzip",
        correlation_id="corr",
        reply_to="back",
        priority=5,
        timestamp=1_700_000_000,
        type="t",
        app_id="conveyor",
    )
    (header,) = _read_all(content_header_frame(7, message))
    assert isinstance(header, ContentHeader)
    assert header.body_size == len(message.body)
    properties = header.properties
    assert properties.headers == dict(message.headers or {})
    assert properties.content_type == "application/json"
    assert properties.content_encoding == "gzip"
    assert properties.correlation_id == "corr"
    assert properties.reply_to == "back"
    assert properties.priority == 5
    assert properties.timestamp == datetime.fromtimestamp(1_700_000_000, UTC)
    assert properties.message_type == "t"
    assert properties.app_id == "conveyor"
    assert properties.message_id == "id-1"
    assert properties.delivery_mode == 2
    assert properties.expiration is None
    assert properties.user_id is None


def test_absent_properties_stay_absent() -> None:
    (header,) = _read_all(content_header_frame(7, WireMessage(b"", delivery_mode=1)))
    assert isinstance(header, ContentHeader)
    assert header.body_size == 0
    assert header.properties.headers is None
    assert header.properties.message_id is None
    assert header.properties.content_type is None
    assert header.properties.delivery_mode == 1


def test_non_string_header_values_go_through_pamqps_table_encoder() -> None:
    headers = {"x-attempts": 3, "x-error": "boom", "nested": {"k": [1, "two"]}, "d": Decimal("1.5")}
    (header,) = _read_all(content_header_frame(7, WireMessage(b"x", headers=headers)))
    assert isinstance(header, ContentHeader)
    assert header.properties.headers == headers


def test_a_short_string_over_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="255"):
        content_header_frame(7, WireMessage(b"", message_id="x" * 256))
    with pytest.raises(ValueError, match="255"):
        publish_method_frame(7, "ex", "k" * 256, mandatory=True)


def test_bodies_split_at_the_frame_size_and_empty_bodies_send_no_frame() -> None:
    assert body_frames(7, b"", 10) == b""
    parts = _read_all(body_frames(7, b"0123456789abcdefghij!", 10))
    assert [part.value for part in parts if isinstance(part, ContentBody)] == [
        b"0123456789",
        b"abcdefghij",
        b"!",
    ]


def test_the_publish_method_reads_back() -> None:
    (method,) = _read_all(publish_method_frame(7, "ns.events", "order.created", mandatory=True))
    assert isinstance(method, Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory) == (
        "ns.events",
        "order.created",
        True,
    )
