"""Parsing HTTP requests into events: every mode, and what each rejects."""

from __future__ import annotations

import re

import orjson
import pytest

from producers import InvalidEventError, OutgoingEvent
from service.http.cloudevents import (
    BatchTooLargeError,
    MalformedJsonError,
    ParsedBatch,
    ParsedSingle,
    UnsupportedMediaTypeError,
    parse_request,
)

EVENT = {"specversion": "1.0", "id": "1", "source": "/s", "type": "a.b"}


def single(
    content_type: str | None, body: bytes, headers: dict[str, str] | None = None
) -> OutgoingEvent:
    parsed = parse_request(content_type, headers or {}, body, max_batch_events=10)
    assert isinstance(parsed, ParsedSingle)
    return parsed.event


def test_structured_mode_keeps_json_data_and_stringifies_extension_values() -> None:
    event = single(
        "application/cloudevents+json; charset=utf-8",
        orjson.dumps({**EVENT, "data": {"x": 1}, "count": 3, "flag": True}),
    )
    assert event.attributes == {**EVENT, "count": "3", "flag": "true"}
    assert event.datacontenttype == "application/json"
    assert orjson.loads(event.data) == {"x": 1}


def test_structured_mode_with_text_data_keeps_the_text_as_bytes() -> None:
    event = single(
        "application/cloudevents+json",
        orjson.dumps({**EVENT, "datacontenttype": "text/plain", "data": "hi"}),
    )
    assert (event.datacontenttype, event.data) == ("text/plain", b"hi")


def test_structured_mode_rejects_data_and_data_base64_together() -> None:
    with pytest.raises(InvalidEventError) as raised:
        single(
            "application/cloudevents+json",
            orjson.dumps({**EVENT, "data": 1, "data_base64": "aA=="}),
        )
    assert raised.value.attribute == "data_base64"


def test_binary_mode_percent_decodes_and_takes_content_type_from_the_header() -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "%2Fpath%20with%20space",
        "ce-type": "a.b",
        "ce-datacontenttype": "ignored/because-content-type-wins",
    }
    event = single("image/png", b"\x89PNG", headers)
    assert event.attributes["source"] == "/path with space"
    assert "datacontenttype" not in event.attributes
    assert (event.datacontenttype, event.data) == ("image/png", b"\x89PNG")


def test_structured_content_type_wins_over_ce_headers() -> None:
    event = single("application/cloudevents+json", orjson.dumps(EVENT), {"ce-id": "other"})
    assert event.id == "1"


def test_plain_json_fills_the_missing_attributes_but_keeps_the_given_ones() -> None:
    event = single("application/json", orjson.dumps({"type": "t.x", "id": "mine", "data": [1]}))
    assert event.id == "mine"
    assert event.attributes["specversion"] == "1.0"
    assert event.attributes["source"] == "/conveyor/ingress"
    assert event.attributes["time"].endswith("Z")


def test_batch_keeps_order_and_isolates_bad_entries() -> None:
    body = orjson.dumps([EVENT, {"id": "x"}, {**EVENT, "id": "3"}])
    parsed = parse_request("application/cloudevents-batch+json", {}, body, max_batch_events=10)
    assert isinstance(parsed, ParsedBatch)
    first, second, third = parsed.entries
    assert isinstance(first, OutgoingEvent)
    assert first.id == "1"
    assert isinstance(second, InvalidEventError)
    assert isinstance(third, OutgoingEvent)
    assert third.id == "3"


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        ("application/cloudevents-batch+json", b"{}", InvalidEventError),
        ("application/cloudevents-batch+json", orjson.dumps([EVENT] * 11), BatchTooLargeError),
        ("application/cloudevents+json", b"[1]", InvalidEventError),
        ("application/cloudevents+json", b"\xff\xfe", MalformedJsonError),
        ("application/json", b"[]", InvalidEventError),
        ("text/plain", b"x", UnsupportedMediaTypeError),
        (None, b"x", UnsupportedMediaTypeError),
    ],
)
def test_rejections(content_type: str | None, body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_request(content_type, {}, body, max_batch_events=10)


def test_an_empty_batch_is_valid_and_holds_nothing() -> None:
    parsed = parse_request("application/cloudevents-batch+json", {}, b"[]", max_batch_events=10)
    assert parsed == ParsedBatch(())


@pytest.mark.parametrize(
    ("extra", "attribute"),
    [
        ({"id": "é" * 200}, "id"),  # 400 bytes: longer than an AMQP message_id may be
        ({"type": "t" * 256}, "type"),  # the routing key is a short string too
        ({"datacontenttype": "text/" + "x" * 300}, "datacontenttype"),
        ({"count": 2**31}, "count"),
        ({"time": "20240101T000000Z"}, "time"),
        ({"time": "2024-01-01T00:00Z"}, "time"),
        ({"time": "2024-01-01T00:00:00"}, "time"),
        ({"time": "2024-01-01T00:00:00Z\n"}, "time"),
        ({"abc\n": "x"}, "abc\n"),
        # The type system's String excludes control characters (PostgreSQL refuses NUL, too).
        ({"source": "/a\x00b"}, "source"),
        ({"subject": "line\nbreak"}, "subject"),
        ({"id": "next\x85line"}, "id"),
    ],
)
def test_values_amqp_or_the_type_system_cannot_carry_are_400(
    extra: dict[str, object], attribute: str
) -> None:
    with pytest.raises(InvalidEventError) as raised:
        single("application/cloudevents+json", orjson.dumps({**EVENT, **extra}))
    assert raised.value.attribute == attribute


def test_attributes_that_would_overflow_an_amqp_frame_are_rejected() -> None:
    # 60 attributes of 4000 characters once closed the whole broker connection.
    document = {**EVENT, **{f"ext{n}": "v" * 4000 for n in range(60)}}
    with pytest.raises(InvalidEventError, match="add up to more than"):
        single("application/cloudevents+json", orjson.dumps(document))


def test_null_data_with_data_base64_counts_as_absent_data() -> None:
    event = single(
        "application/cloudevents+json", orjson.dumps({**EVENT, "data": None, "data_base64": "aGk="})
    )
    assert event.data == b"hi"


def test_too_many_attributes_are_rejected() -> None:
    document = {**EVENT, **{f"ext{n}": "v" for n in range(80)}}
    with pytest.raises(InvalidEventError, match="at most 64"):
        single("application/cloudevents+json", orjson.dumps(document))


def test_an_overlong_attribute_value_is_rejected() -> None:
    with pytest.raises(InvalidEventError) as raised:
        single("application/cloudevents+json", orjson.dumps({**EVENT, "subject": "s" * 5000}))
    assert raised.value.attribute == "subject"


BINARY = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "a.b"}


@pytest.mark.parametrize("content_type", ["application/json", "text/json", "application/x+json"])
def test_binary_data_that_says_json_must_parse(content_type: str) -> None:
    with pytest.raises(MalformedJsonError, match=re.escape(f"its content type is {content_type}")):
        single(content_type, b'{"total": 12.5', BINARY)
    # Data that is not said to be JSON, or no data at all, is carried as it is.
    assert single("text/plain", b'{"total": 12.5', BINARY).data == b'{"total": 12.5'
    assert single(content_type, b"", BINARY).data == b""


def test_data_base64_that_says_json_must_parse_and_fails_alone_in_a_batch() -> None:
    bad = {**EVENT, "datacontenttype": "application/json", "data_base64": "/w=="}  # b"\xff"
    fine = {**EVENT, "datacontenttype": "application/json", "data_base64": "e30="}  # b"{}"
    with pytest.raises(MalformedJsonError, match="the data in data_base64 is not valid JSON"):
        single("application/cloudevents+json", orjson.dumps(bad))
    parsed = parse_request(
        "application/cloudevents-batch+json", {}, orjson.dumps([bad, fine]), max_batch_events=10
    )
    assert isinstance(parsed, ParsedBatch)
    failed, accepted = parsed.entries
    assert isinstance(failed, MalformedJsonError)
    assert isinstance(accepted, OutgoingEvent)
    assert accepted.data == b"{}"
