"""CloudEvents over HTTP: turning a request's content type, headers and body into events.

Pure functions, no I/O: structured, binary and batch modes of the CloudEvents HTTP binding,
plus plain `application/json` where conveyor fills in id, source, specversion and time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from producers import InvalidEventError, OutgoingEvent
from producers.formats import (
    INGRESS_SOURCE,
    event_from_json,
    is_json_content_type,
    plain_event_document,
    validate_attributes,
    validate_content_type,
)

if TYPE_CHECKING:  # payload_check builds on this module: no import cycle at run time
    from service.http.payload_check import InvalidDataError

__all__ = [
    "BatchTooLargeError",
    "MalformedJsonError",
    "ParsedBatch",
    "ParsedSingle",
    "UnsupportedMediaTypeError",
    "check_header_text",
    "parse_request",
]

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
PLAIN_JSON = "application/json"
ACCEPTED_CONTENT_TYPES = (STRUCTURED, BATCH, PLAIN_JSON, "any type with ce-* headers (binary)")
DEFAULT_SOURCE = INGRESS_SOURCE
_CE_HEADER = "ce-"


class UnsupportedMediaTypeError(ValueError):
    pass


class MalformedJsonError(ValueError):
    pass


class BatchTooLargeError(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"a batch holds at most {limit} events (CONVEYOR_MAX_BATCH_EVENTS)")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class ParsedSingle:
    event: OutgoingEvent


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """One entry per array element, in order: the event, or why that entry is invalid."""

    entries: tuple[OutgoingEvent | InvalidEventError | MalformedJsonError | InvalidDataError, ...]


def parse_request(
    content_type: str | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    max_batch_events: int,
) -> ParsedSingle | ParsedBatch:
    """Events from one request.

    Raise InvalidEventError, MalformedJsonError, UnsupportedMediaTypeError or BatchTooLargeError.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == STRUCTURED:
        return ParsedSingle(_structured(_load(body)))
    if media == BATCH:
        return _parse_batch(_load(body), max_batch_events)
    if "ce-specversion" in headers:
        return ParsedSingle(_parse_binary(content_type, headers, body))
    if media == PLAIN_JSON:
        return ParsedSingle(_parse_plain(_load(body)))
    shown = media or "no Content-Type"
    raise UnsupportedMediaTypeError(
        f"{shown} is not accepted; send one of: {', '.join(ACCEPTED_CONTENT_TYPES)}"
    )


def check_header_text(content_type: str | None, headers: Mapping[str, str]) -> None:
    """Content-Type and ce-* headers are text; raise InvalidEventError for bytes that are not.

    aiohttp keeps header bytes that are not UTF-8 as lone surrogates, which no encoder takes:
    refuse them before anything hashes, validates or stores the values.
    """
    named = [("content-type", "datacontenttype", content_type or "")]
    named += [
        (name, name[len(_CE_HEADER) :], value)
        for name, value in headers.items()
        if name.startswith(_CE_HEADER)
    ]
    for name, attribute, value in named:
        if not _is_utf8(value):
            raise InvalidEventError(f"header {name} is not UTF-8 text", attribute)


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _load(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise MalformedJsonError(f"the body is not valid JSON: {error}") from None


def _parse_batch(document: Any, limit: int) -> ParsedBatch:
    if not isinstance(document, list):
        raise InvalidEventError("a batch must be a JSON array of structured events")
    if len(document) > limit:
        raise BatchTooLargeError(limit)
    entries: list[OutgoingEvent | InvalidEventError | MalformedJsonError] = []
    for element in document:
        try:
            entries.append(_structured(element))
        except (InvalidEventError, MalformedJsonError) as error:
            entries.append(error)
    return ParsedBatch(tuple(entries))


def _parse_binary(
    content_type: str | None, headers: Mapping[str, str], body: bytes
) -> OutgoingEvent:
    # The HTTP binding percent-encodes attribute values in headers (UTF-8); decode them back.
    attributes = {}
    for name, value in headers.items():
        if name.startswith(_CE_HEADER):
            attribute = name[len(_CE_HEADER) :]
            try:
                attributes[attribute] = unquote(value, errors="strict")
            except UnicodeDecodeError:
                # The default would turn the bytes into U+FFFD: a different id than was sent.
                raise InvalidEventError(
                    f"header {name} is not percent-encoded UTF-8", attribute
                ) from None
    attributes.pop("datacontenttype", None)  # Content-Type is the authority in binary mode
    validate_attributes(attributes)
    validate_content_type(content_type)
    event = OutgoingEvent(attributes=attributes, datacontenttype=content_type, data=body)
    return _with_json_data(event, "the body (the event's data)")


def _structured(document: Any) -> OutgoingEvent:
    event = event_from_json(document)
    if isinstance(document, dict) and document.get("data_base64") is not None:
        return _with_json_data(event, "the data in data_base64")
    return event  # `data` was JSON already, and was written back as JSON


def _with_json_data(event: OutgoingEvent, what: str) -> OutgoingEvent:
    """`event`, once its data parses as JSON where its content type says JSON.

    The consumers parse such data before any handler sees it (consumers.decoding) and
    dead-letter what does not parse: refused here instead, while the client can still fix it.
    """
    if event.data and is_json_content_type(event.datacontenttype):
        try:
            orjson.loads(event.data)
        except orjson.JSONDecodeError as error:
            raise MalformedJsonError(
                f"{what} is not valid JSON, yet its content type is "
                f"{event.datacontenttype}: {error}"
            ) from None
    return event


def _parse_plain(document: Any) -> OutgoingEvent:
    return _structured(plain_event_document(document))
