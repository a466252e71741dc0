"""Reading a CloudEvent out of any AMQP message that follows the contract.

Binary mode with `ce-` (RabbitMQ binding), `cloudEvents_` or `cloudEvents:` (AMQP binding)
header prefixes, and structured mode (`application/cloudevents+json` body).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from consumers.event import Event
from producers import InvalidEventError
from producers.event import format_time
from producers.formats import (
    MAX_ATTRIBUTE_LENGTH,
    event_from_json,
    is_json_content_type,
    parse_time,
    validate_attributes,
    validate_content_type,
)

__all__ = ["MalformedEventError", "decode_event", "readable_identity"]

_PREFIXES = ("ce-", "cloudevents_", "cloudevents:")
_STRUCTURED = "application/cloudevents+json"
_KNOWN = frozenset(("id", "source", "type", "specversion", "time", "subject", "dataschema"))


class MalformedEventError(ValueError):
    """The message breaks the contract: it is dead-lettered with this reason, never dropped.

    `identity` holds the event's `id` and `source` (and `type`, `specversion` where readable)
    when they can still be read, so its status can say it was dead-lettered; else None.
    """

    def __init__(self, message: str, identity: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.identity = identity


def decode_event(
    headers: Mapping[str, Any] | None,
    content_type: str | None,
    body: bytes,
    *,
    correlation_id: str | None = None,
    redelivered: bool = False,
    attempt: int = 1,
) -> Event:
    try:
        return _decode(
            headers,
            content_type,
            body,
            correlation_id=correlation_id,
            redelivered=redelivered,
            attempt=attempt,
        )
    except MalformedEventError as error:
        if error.identity is None:
            error.identity = readable_identity(headers, content_type, body)
        raise


def _decode(
    headers: Mapping[str, Any] | None,
    content_type: str | None,
    body: bytes,
    *,
    correlation_id: str | None,
    redelivered: bool,
    attempt: int,
) -> Event:
    try:
        if content_type is not None and content_type.lower().startswith(_STRUCTURED):
            structured = event_from_json(_load_json(body, "structured event body"))
            attributes = dict(structured.attributes)
            content_type, body = structured.datacontenttype, structured.data
        else:
            attributes = _binary_attributes(headers or {})
            validate_attributes(attributes)
            validate_content_type(content_type)
    except InvalidEventError as error:
        raise MalformedEventError(error.detail) from None
    data: Any = body or None
    if body and is_json_content_type(content_type):
        data = _load_json(body, "data")
    elif body and content_type is None:
        # No content type: JSON when it parses (the CloudEvents SDKs' default), else bytes.
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(body)
    time = attributes.get("time")
    return Event(
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        specversion=attributes["specversion"],
        time=parse_time(time) if time is not None else None,
        subject=attributes.get("subject"),
        datacontenttype=content_type,
        dataschema=attributes.get("dataschema"),
        data=data,
        extensions={k: v for k, v in attributes.items() if k not in _KNOWN},
        raw_data=body,
        correlation_id=correlation_id,
        redelivered=redelivered,
        attempt=attempt,
    )


def _binary_attributes(headers: Mapping[str, Any]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for key, value in headers.items():
        lowered = key.lower()
        for prefix in _PREFIXES:
            if lowered.startswith(prefix):
                name = lowered[len(prefix) :]
                if name != "datacontenttype":  # content_type is authoritative in binary mode
                    attributes[name] = _header_string(name, value)
                break
    return attributes


def _header_string(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            raise MalformedEventError(f"header for {name!r} is not UTF-8") from None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        # AMQP timestamps (the AMQP binding's `time`) arrive decoded as datetimes.
        return format_time(value if value.tzinfo else value.replace(tzinfo=UTC))
    raise MalformedEventError(f"header for {name!r} has an unsupported type {type(value).__name__}")


def _load_json(body: bytes, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedEventError(f"{what} is not valid JSON") from None


_IDENTITY = ("id", "source")
_ALSO_SHOWN = ("type", "specversion")


def readable_identity(
    headers: Mapping[str, Any] | None, content_type: str | None, body: bytes
) -> dict[str, str] | None:
    """The `id` and `source` of a message that broke the contract, where both can still be read
    as printable strings of at most MAX_ATTRIBUTE_LENGTH characters (plus `type` and
    `specversion`, when they can); None when not: then there is no event to give a status."""
    found: dict[str, Any] = {}
    if content_type is not None and content_type.lower().startswith(_STRUCTURED):
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(body)
            if isinstance(document, dict):
                found = {name: document.get(name) for name in (*_IDENTITY, *_ALSO_SHOWN)}
    else:
        for key, value in (headers or {}).items():
            lowered = key.lower()
            for prefix in _PREFIXES:
                name = lowered[len(prefix) :]
                if lowered.startswith(prefix) and name in (*_IDENTITY, *_ALSO_SHOWN):
                    with contextlib.suppress(MalformedEventError):
                        found[name] = _header_string(name, value)
    readable = {name: value for name, value in found.items() if _readable(value)}
    if not all(name in readable for name in _IDENTITY):
        return None
    return readable


def _readable(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ATTRIBUTE_LENGTH and value.isprintable()
