"""The messages of the AsyncAPI document: a CloudEvent as conveyor writes it on AMQP, the same
event in a retry tier or a dead-letter queue with conveyor's failure headers, and the completion
events, each with its headers and payload as JSON Schema.

The header names come from the modules that write them (producers.wire, consumers.dead_letter,
consumers.completions), so the document cannot name a header conveyor does not use.
"""

from __future__ import annotations

from typing import Any

from consumers import dead_letter
from consumers.completions import COMPLETION_SOURCE, COMPLETION_TYPES
from consumers.dead_letter import DeadLetterReason
from consumers.status import DeliveryState
from producers.wire import CE_HEADER_PREFIX, TRACEPARENT_HEADER

__all__ = [
    "CLOUD_EVENT_HEADERS",
    "COMPLETION_PAYLOAD",
    "EVENT_MESSAGE",
    "FAILURE_HEADERS",
    "completion_message",
    "dead_letter_message",
    "event_message",
    "retry_message",
]

EVENT_MESSAGE = "event"
_STRING = {"type": "string"}
_REQUIRED_ATTRIBUTES = ("id", "source", "type", "specversion")
_ATTRIBUTES = {
    "id": "The event id; with `ce-source` it identifies the event (deduplication, status).",
    "source": "Where the event comes from (a URI reference).",
    "type": "The event type; also the routing key on the events exchange.",
    "specversion": "The CloudEvents version: `1.0`.",
    "time": "When the event happened (RFC 3339).",
    "subject": "What the event is about, within its source.",
    "dataschema": "A URI of the schema `data` adheres to.",
}

CLOUD_EVENT_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": (
        "A CloudEvent in binary mode as the CloudEvents AMQP binding writes it: each context "
        f"attribute but `datacontenttype` is a string header named `{CE_HEADER_PREFIX}<attribute>`"
        " (extensions too), `datacontenttype` is the AMQP `content_type` property, the body is "
        "the data. conveyor also reads the `cloudEvents_` and `cloudEvents:` prefixes and "
        "structured mode (`content_type` `application/cloudevents+json`)."
    ),
    "required": [CE_HEADER_PREFIX + name for name in _REQUIRED_ATTRIBUTES],
    "properties": {
        **{
            CE_HEADER_PREFIX + name: {**_STRING, "description": description}
            for name, description in _ATTRIBUTES.items()
        },
        CE_HEADER_PREFIX + "specversion": {
            "const": "1.0",
            "description": _ATTRIBUTES["specversion"],
        },
        TRACEPARENT_HEADER: {
            **_STRING,
            "description": "W3C trace context of the publish, continued by the handler's span.",
        },
    },
    "additionalProperties": True,
}

FAILURE_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "What conveyor adds to a message it moves to a retry tier or a dead-letter "
    "queue, beside RabbitMQ's own `x-death`.",
    "required": [dead_letter.ATTEMPTS, dead_letter.ERROR_CLASS, dead_letter.ERROR_MESSAGE],
    "properties": {
        dead_letter.ATTEMPTS: {"type": "integer", "minimum": 0, "description": "Handler attempts."},
        dead_letter.RETRIES: {
            "type": "integer",
            "minimum": 0,
            "description": "Passes through the retry tiers so far.",
        },
        dead_letter.REPLAYS: {
            "type": "integer",
            "minimum": 0,
            "description": "Times an operator sent the event back from the dead-letter queue.",
        },
        dead_letter.ERROR_CLASS: {**_STRING, "description": "The last failure's exception class."},
        dead_letter.ERROR_MESSAGE: {
            **_STRING,
            "maxLength": dead_letter.MAX_MESSAGE_CHARS,
            "description": "The last failure's message.",
        },
        dead_letter.ERROR_TRACEBACK: {
            **_STRING,
            "maxLength": dead_letter.MAX_TRACEBACK_CHARS,
            "description": "The tail of the last failure's traceback.",
        },
        dead_letter.FIRST_FAILURE: {**_STRING, "format": "date-time"},
        dead_letter.LAST_FAILURE: {**_STRING, "format": "date-time"},
        dead_letter.ORIGINAL_EXCHANGE: {**_STRING, "description": "Where it was published."},
        dead_letter.ORIGINAL_ROUTING_KEY: {**_STRING, "description": "Its routing key then."},
    },
}

_REASON = {
    **_STRING,
    "enum": [reason.value for reason in DeadLetterReason],
    "description": "Why it was dead-lettered.",
}

COMPLETION_PAYLOAD: dict[str, Any] = {
    "type": "object",
    "required": ["event", "subscription", "state", "attempts", "finished_at"],
    "properties": {
        "event": {
            "type": "object",
            "description": "The event this completion is about.",
            "required": ["id", "source", "type"],
            "properties": dict.fromkeys(("id", "source", "type"), _STRING),
        },
        "subscription": _STRING,
        "state": {
            **_STRING,
            "enum": [DeliveryState.SUCCEEDED.value, DeliveryState.DEAD_LETTERED.value],
        },
        "attempts": {"type": "integer", "minimum": 0},
        "finished_at": {**_STRING, "format": "date-time"},
        "reason": _REASON,
        "error": {
            "type": "object",
            "properties": {"class": _STRING, "message": _STRING},
        },
    },
}


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def event_message(name: str, payload: dict[str, Any], *, summary: str) -> dict[str, Any]:
    """An event as published and delivered: CloudEvents headers, the data as payload."""
    return {
        "name": name,
        "title": "CloudEvent",
        "summary": summary,
        "contentType": "application/json",
        "headers": _schema_ref("CloudEventHeaders"),
        "payload": payload,
    }


def retry_message() -> dict[str, Any]:
    return {
        "name": "retry",
        "title": "An event waiting for its next attempt",
        "summary": "The event as it was delivered, with conveyor's failure headers.",
        "headers": {"allOf": [_schema_ref("CloudEventHeaders"), _schema_ref("FailureHeaders")]},
        "payload": {},
    }


def dead_letter_message() -> dict[str, Any]:
    dead = {
        "type": "object",
        "properties": {dead_letter.REASON: _REASON},
        "description": f"`{dead_letter.REASON}` is missing only when RabbitMQ dead-lettered the "
        "message itself (the delivery limit, or a message no copy of which could be made): "
        "then `x-death` says why.",
    }
    return {
        "name": "deadLetter",
        "title": "A dead-lettered event",
        "summary": "The event as it was delivered (data that did not decode too), with why it "
        "failed.",
        "headers": {
            "allOf": [_schema_ref("CloudEventHeaders"), _schema_ref("FailureHeaders"), dead]
        },
        "payload": {},
    }


def completion_message(state: DeliveryState) -> dict[str, Any]:
    completion_type = COMPLETION_TYPES[state]
    headers = {
        "allOf": [
            _schema_ref("CloudEventHeaders"),
            {
                "type": "object",
                "required": [f"{CE_HEADER_PREFIX}subject", f"{CE_HEADER_PREFIX}subscription"],
                "properties": {
                    f"{CE_HEADER_PREFIX}type": {"const": completion_type},
                    f"{CE_HEADER_PREFIX}source": {"const": COMPLETION_SOURCE},
                    f"{CE_HEADER_PREFIX}subject": {
                        **_STRING,
                        "description": "The id of the event this completion is about.",
                    },
                    f"{CE_HEADER_PREFIX}subscription": _STRING,
                },
            },
        ]
    }
    return {
        "name": completion_type,
        "title": f"Completion: {state.value}",
        "summary": "Published (with confirm) before the delivery is acked: at least once, "
        "with an id derived from the outcome, so a repeat carries the same id.",
        "contentType": "application/json",
        "headers": headers,
        "payload": _schema_ref("Completion"),
    }
