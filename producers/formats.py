"""CloudEvents 1.0 attribute rules and the JSON event format, shared by ingress and consumers.

Attributes are kept as the canonical strings of the CloudEvents type system, the form the
binary-mode bindings carry them in, so one event looks the same whichever way it arrived.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from producers.event import SPECVERSION, OutgoingEvent, format_time

__all__ = [
    "BASE64_PATTERN",
    "INGRESS_SOURCE",
    "InvalidEventError",
    "event_from_json",
    "is_json_content_type",
    "parse_time",
    "plain_event_document",
    "validate_attributes",
    "validate_content_type",
]

REQUIRED = ("id", "source", "specversion", "type")
# The source the ingress gives a plain JSON event that names none.
INGRESS_SOURCE = "/conveyor/ingress"
# One event carries at most this many context attributes; an event is not a header dump.
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_LENGTH = 4096
# All attributes travel in one AMQP header frame, and RabbitMQ closes the whole connection
# when a frame exceeds its frame_max (128 KiB by default): stay well below.
MAX_ATTRIBUTES_BYTES = 32 * 1024
# id, type and datacontenttype become message_id, the routing key and content_type: AMQP
# short strings of at most 255 bytes.
MAX_SHORT_STRING_BYTES = 255
# The spec's own attributes are String, URI, URI-reference or Timestamp: JSON strings in the
# JSON format; only extension attributes may also be Boolean or Integer.
_STRING_ATTRIBUTES = frozenset((*REQUIRED, "datacontenttype", "dataschema", "subject", "time"))
_INT32 = (-(2**31), 2**31 - 1)
# Padded standard base64 and nothing else (b64decode alone also takes surplus padding): the
# pattern the OpenAPI document gives data_base64.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_BASE64 = re.compile(BASE64_PATTERN)
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
# The spec: names are lower-case ASCII letters or digits; 20 characters is a SHOULD we enforce
# loosely (AMQP and HTTP carry longer ones fine), so allow up to 64.
_ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]{1,64}$")
_JSON_SUFFIX = "+json"
_DISALLOWED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class InvalidEventError(ValueError):
    """The input is not a valid CloudEvent; `attribute` names the offending part when known."""

    def __init__(self, detail: str, attribute: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.attribute = attribute


def is_json_content_type(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith(_JSON_SUFFIX)


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (date, time with seconds, and an offset or 'Z')."""
    if not _RFC3339.fullmatch(text):
        raise InvalidEventError("time must be an RFC 3339 timestamp with an offset", "time")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEventError(
            "time must be an RFC 3339 timestamp with an offset", "time"
        ) from None


def validate_content_type(content_type: str | None) -> None:
    if content_type is not None and len(content_type.encode()) > MAX_SHORT_STRING_BYTES:
        raise InvalidEventError(
            f"datacontenttype is longer than {MAX_SHORT_STRING_BYTES} bytes", "datacontenttype"
        )


def attribute_string(name: str, value: Any) -> str:
    """The canonical string of an attribute value (String, Boolean, Integer in the type system)."""
    if name in _STRING_ATTRIBUTES and not isinstance(value, str):
        raise InvalidEventError(f"attribute {name!r} must be a string", name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 35.0 is the Integer 35 in JSON (and to JSON Schema)
    if isinstance(value, int):
        if not _INT32[0] <= value <= _INT32[1]:
            raise InvalidEventError(f"attribute {name!r} is outside the 32-bit Integer range", name)
        return str(value)
    if isinstance(value, str):
        return value
    raise InvalidEventError(f"attribute {name!r} must be a string, boolean or integer", name)


def validate_attributes(attributes: Mapping[str, str]) -> None:
    """Check required attributes, names, sizes and the time format; raise InvalidEventError."""
    _validate_required(attributes)
    _validate_characters(attributes)
    _validate_sizes(attributes)
    for name in attributes:
        if name not in _KNOWN_GOOD_NAMES and not _ATTRIBUTE_NAME.fullmatch(name):
            raise InvalidEventError(
                f"attribute name {name[:64]!r} must be 1-64 lower-case letters or digits", name
            )
    if "time" in attributes:
        parse_time(attributes["time"])


# The spec's own names pass the name rule; most events carry only these, and every event is
# validated on ingest and again when consumed.
_KNOWN_GOOD_NAMES = frozenset((*_STRING_ATTRIBUTES, "subscription", "partitionkey"))


def _validate_required(attributes: Mapping[str, str]) -> None:
    for name in REQUIRED:
        if not attributes.get(name):
            raise InvalidEventError(f"required attribute {name!r} is missing or empty", name)
    if attributes["specversion"] != SPECVERSION:
        raise InvalidEventError("specversion must be '1.0'", "specversion")


def _validate_characters(attributes: Mapping[str, str]) -> None:
    # The spec's String type excludes control characters and unpaired surrogates; a NUL would
    # also be refused by PostgreSQL when the status is stored. One search over all values (a
    # space between two values keeps their surrogate halves from pairing up), then, on a hit,
    # one per value to name the attribute.
    if not _DISALLOWED.search(" ".join(attributes.values())):
        return
    for name, value in attributes.items():
        if _DISALLOWED.search(value):
            raise InvalidEventError(
                f"attribute {name!r} holds a control character or an unpaired surrogate", name
            )


def _validate_sizes(attributes: Mapping[str, str]) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidEventError(f"at most {MAX_ATTRIBUTES} attributes are accepted")
    for name in ("id", "type"):
        if len(attributes[name].encode()) > MAX_SHORT_STRING_BYTES:
            raise InvalidEventError(f"{name} is longer than {MAX_SHORT_STRING_BYTES} bytes", name)
    total = 0
    for name, value in attributes.items():
        if len(value) > MAX_ATTRIBUTE_LENGTH:
            raise InvalidEventError(
                f"attribute {name!r} is longer than {MAX_ATTRIBUTE_LENGTH} characters", name
            )
        total += len(name) + (len(value) if value.isascii() else len(value.encode()))
    if total > MAX_ATTRIBUTES_BYTES:
        raise InvalidEventError(f"the attributes add up to more than {MAX_ATTRIBUTES_BYTES} bytes")


def event_from_json(document: Any) -> OutgoingEvent:
    """An event from a structured-mode JSON object (already decoded); raise InvalidEventError."""
    if not isinstance(document, dict):
        raise InvalidEventError("a structured event must be a JSON object")
    attributes: dict[str, str] = {}
    data: Any = None
    data_present = False
    data_base64: Any = None
    for name, value in document.items():
        if name == "data":
            data, data_present = value, value is not None
        elif name == "data_base64":
            data_base64 = value
        elif value is not None:
            attributes[name] = attribute_string(name, value)
    datacontenttype = attributes.pop("datacontenttype", None)
    validate_attributes(attributes)
    validate_content_type(datacontenttype)
    if data_present and data_base64 is not None:
        raise InvalidEventError("an event carries data or data_base64, not both", "data_base64")
    if data_base64 is not None:
        body = _decode_base64(data_base64)
        datacontenttype = datacontenttype or "application/octet-stream"
    elif not data_present:
        body = b""
    elif isinstance(data, str) and not is_json_content_type(datacontenttype or "application/json"):
        body = data.encode()
    else:
        # In the JSON format, data with no datacontenttype is JSON (spec: "application/json").
        datacontenttype = datacontenttype or "application/json"
        body = _json_data(data)
    return OutgoingEvent(attributes=attributes, datacontenttype=datacontenttype, data=body)


MAX_DATA_DEPTH = 254  # the deepest JSON data orjson writes


def _json_data(data: Any) -> bytes:
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        # orjson reads 1024 levels of nesting but writes only 254: deeper data parsed fine and
        # cannot be written back, so it is refused here rather than failing later.
        raise InvalidEventError(
            f"data is nested deeper than {MAX_DATA_DEPTH} levels", "data"
        ) from None


def _decode_base64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidEventError("data_base64 must be a base64 string", "data_base64")
    if _BASE64.fullmatch(value) is None:
        raise InvalidEventError("data_base64 is not valid base64", "data_base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEventError("data_base64 is not valid base64", "data_base64") from None


def plain_event_document(document: Any) -> dict[str, Any]:
    """A plain JSON event (at least `type`) with what the ingress fills in where it says
    nothing: a new `id`, `source`, `specversion` and the time now."""
    if not isinstance(document, Mapping):
        raise InvalidEventError("the body must be a JSON object with at least 'type'")
    if "type" not in document:
        raise InvalidEventError("required attribute 'type' is missing", "type")
    filled: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "source": INGRESS_SOURCE,
        "specversion": SPECVERSION,
        "time": format_time(datetime.now(UTC)),
    }
    filled.update(document)
    return filled
