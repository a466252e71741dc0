"""Reading events out of AMQP messages from any publisher that follows the contract."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from consumers.decoding import MalformedEventError, decode_event

REQUIRED = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "a.b"}


def test_binary_mode_parses_json_data_and_splits_extensions() -> None:
    event = decode_event(
        {**REQUIRED, "ce-subject": "sub", "ce-tenant": "acme", "traceparent": "x"},
        "application/json",
        b'{"k": [1, 2]}',
    )
    assert (event.id, event.source, event.type, event.subject) == ("1", "/s", "a.b", "sub")
    assert event.data == {"k": [1, 2]}
    assert event.extensions == {"tenant": "acme"}


def test_header_prefixes_are_case_insensitive_and_values_may_be_bytes_ints_or_bools() -> None:
    event = decode_event(
        {
            "CloudEvents_specversion": b"1.0",
            "cloudEvents:id": "7",
            "cloudevents_source": "/s",
            "cloudEvents:type": "t",
            "cloudEvents:count": 3,
            "cloudEvents:flag": False,
            "cloudEvents:time": datetime(2026, 1, 1, tzinfo=UTC),
        },
        "application/octet-stream",
        b"\x00\x01",
    )
    assert event.extensions == {"count": "3", "flag": "false"}
    assert event.time == datetime(2026, 1, 1, tzinfo=UTC)
    assert event.data == b"\x00\x01"


def test_structured_mode_message() -> None:
    body = orjson.dumps(
        {"specversion": "1.0", "id": "s", "source": "/s", "type": "t", "data": {"a": 1}}
    )
    event = decode_event({}, "application/cloudevents+json", body)
    assert (event.id, event.data, event.datacontenttype) == ("s", {"a": 1}, "application/json")


def test_no_content_type_parses_json_when_it_can_and_keeps_bytes_otherwise() -> None:
    assert decode_event(REQUIRED, None, b'{"a": 1}').data == {"a": 1}
    assert decode_event(REQUIRED, None, b"not json").data == b"not json"
    assert decode_event(REQUIRED, "application/json", b"").data is None


@pytest.mark.parametrize(
    ("headers", "content_type", "body"),
    [
        ({k: v for k, v in REQUIRED.items() if k != "ce-id"}, "application/json", b"{}"),
        ({**REQUIRED, "ce-specversion": "0.3"}, "application/json", b"{}"),
        (REQUIRED, "application/json", b"{oops"),
        ({**REQUIRED, "ce-time": "yesterday"}, None, b""),
        ({**REQUIRED, "ce-id": b"\xff"}, None, b""),
        ({}, "application/cloudevents+json", b"[]"),
        ({}, "application/cloudevents+json", b"nope"),
        ({**REQUIRED, "ce-x": [1]}, None, b""),
    ],
)
def test_contract_breaches_are_malformed(
    headers: dict[str, object], content_type: str | None, body: bytes
) -> None:
    with pytest.raises(MalformedEventError):
        decode_event(headers, content_type, body)


@pytest.mark.parametrize("depth", [255, 300, 1023])
def test_structured_data_nested_deeper_than_json_can_be_written_is_malformed(depth: int) -> None:
    # orjson reads 1024 levels but writes 254; the TypeError used to escape and leave the
    # delivery unsettled.
    body = b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": '
    body += b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(MalformedEventError, match="nested deeper than 254 levels"):
        decode_event({}, "application/cloudevents+json", body)


def test_structured_data_254_levels_deep_is_an_event() -> None:
    body = b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": '
    body += b"[" * 254 + b"]" * 254 + b"}"
    event = decode_event({}, "application/cloudevents+json", body)
    assert event.raw_data.count(b"[") == 254


@pytest.mark.parametrize(
    ("headers", "content_type", "body", "identity"),
    [
        # The data breaks the contract; the attributes are all there.
        (REQUIRED, "application/json", b'{"total": 12.5', {"id": "1", "source": "/s"}),
        # No type: still an id and a source to give a status to.
        ({"cloudEvents:id": b"7", "ce-source": "/s"}, "text/plain", b"x", {"id": "7"}),
        (
            None,
            "application/cloudevents+json",
            orjson.dumps({"id": "9", "source": "/s", "type": 5}),
            {"id": "9"},
        ),
    ],
)
def test_a_malformed_event_carries_its_identity_where_it_can_be_read(
    headers: dict[str, object] | None, content_type: str, body: bytes, identity: dict[str, str]
) -> None:
    with pytest.raises(MalformedEventError) as raised:
        decode_event(headers, content_type, body)
    found = raised.value.identity
    assert found is not None
    assert {name: found[name] for name in identity} == identity
    assert found["source"] == "/s"


@pytest.mark.parametrize(
    ("headers", "content_type", "body"),
    [
        ({**REQUIRED, "ce-id": ""}, "application/json", b"{}"),  # empty id
        ({"ce-specversion": "1.0", "ce-source": "/s", "ce-type": "t"}, None, b""),  # no id
        ({**REQUIRED, "ce-source": b"\xff"}, None, b""),  # a source that is not text
        ({**REQUIRED, "ce-id": "a\nb"}, None, b""),  # a control character
        (None, "application/cloudevents+json", b'{"id": "1", "source": "/s"'),  # cut short
        (None, "application/cloudevents+json", b'{"id": 1, "source": "/s"}'),  # not a string
    ],
)
def test_a_malformed_event_without_a_readable_id_and_source_has_no_identity(
    headers: dict[str, object] | None, content_type: str | None, body: bytes
) -> None:
    with pytest.raises(MalformedEventError) as raised:
        decode_event(headers, content_type, body)
    assert raised.value.identity is None
