"""CloudEvents 1.0 attribute rules and the JSON event format, shared by ingress and consumers.

Attributes are kept as the canonical strings of the CloudEvents type system, the form the
binary-mode bindings carry them in, so one event looks the same whichever way it arrived.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from producers.event import SPECVERSION, OutgoingEvent

__all__ = [
    "MAX_ATTRIBUTES",
    "InvalidEventError",
    "event_from_json",
    "is_json_content_type",
    "parse_time",
    "validate_attributes",
]

REQUIRED = ("id", "source", "specversion", "type")
# One event carries at most this many context attributes; an event is not a header dump.
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_LENGTH = 4096
# The spec: names are lower-case ASCII letters or digits; 20 characters is a SHOULD we enforce
# loosely (AMQP and HTTP carry longer ones fine), so allow up to 64.
_ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]{1,64}$")
_JSON_SUFFIX = "+json"


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
    """Parse an RFC 3339 timestamp; it must carry its offset."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEventError("time must be an RFC 3339 timestamp", "time") from None
    if moment.tzinfo is None:
        raise InvalidEventError("time must carry a UTC offset or 'Z'", "time")
    return moment


def attribute_string(name: str, value: Any) -> str:
    """The canonical string of an attribute value (String, Boolean, Integer in the type system)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise InvalidEventError(f"attribute {name!r} must be a string, boolean or integer", name)


def validate_attributes(attributes: Mapping[str, str]) -> None:
    """Check required attributes, names, lengths and the time format; raise InvalidEventError."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidEventError(f"at most {MAX_ATTRIBUTES} attributes are accepted")
    for name in REQUIRED:
        if not attributes.get(name):
            raise InvalidEventError(f"required attribute {name!r} is missing or empty", name)
    if attributes["specversion"] != SPECVERSION:
        raise InvalidEventError("specversion must be '1.0'", "specversion")
    for name, value in attributes.items():
        if not _ATTRIBUTE_NAME.match(name):
            raise InvalidEventError(
                f"attribute name {name[:64]!r} must be 1-64 lower-case letters or digits", name
            )
        if len(value) > MAX_ATTRIBUTE_LENGTH:
            raise InvalidEventError(
                f"attribute {name!r} is longer than {MAX_ATTRIBUTE_LENGTH} characters", name
            )
    if "time" in attributes:
        parse_time(attributes["time"])


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
            data, data_present = value, True
        elif name == "data_base64":
            data_base64 = value
        elif value is not None:
            attributes[name] = attribute_string(name, value)
    datacontenttype = attributes.pop("datacontenttype", None)
    validate_attributes(attributes)
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
        body = orjson.dumps(data)
    return OutgoingEvent(attributes=attributes, datacontenttype=datacontenttype, data=body)


def _decode_base64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidEventError("data_base64 must be a base64 string", "data_base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEventError("data_base64 is not valid base64", "data_base64") from None
