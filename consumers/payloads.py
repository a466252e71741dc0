"""Typed payloads: what a handler says its data is, read once, and the data checked against it.

A handler declares `async def send_welcome(event: Event[Signup]) -> None`; `Signup` may be
anything pydantic's `TypeAdapter` takes (a pydantic model, a dataclass, a `TypedDict`, ...).
`payload_adapter` reads that annotation once, when the subscription is built; the pipeline's
`ValidatePayload` stage (consumers.stages) validates each delivery's `data` with it and hands
the handler the validated value. `Event`, `Event[Any]` or no annotation: the data as parsed.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pydantic

from consumers.dead_letter import MAX_MESSAGE_CHARS
from consumers.event import Event, Handler

__all__ = [
    "INVALID_DATA_ERROR",
    "HandlerSignatureError",
    "describe_invalid_data",
    "invalid_data_errors",
    "payload_adapter",
    "validate_data",
]

INVALID_DATA_ERROR = "InvalidDataError"  # the error class a DLQ entry and a status name
MAX_ERRORS_SHOWN = 10


class HandlerSignatureError(ValueError):
    """The handler cannot be called with one event, or its event annotation cannot be used."""


def payload_adapter(handler: Handler) -> pydantic.TypeAdapter[Any] | None:
    """The adapter that validates the data of `handler`'s events; None for an untyped handler.

    Raises HandlerSignatureError when the handler does not take exactly one event argument,
    when its annotation cannot be resolved, or when pydantic cannot build a validator for it.
    """
    parameter = _event_parameter(handler)
    written = parameter.annotation
    if written is inspect.Parameter.empty or (isinstance(written, str) and "[" not in written):
        return None  # nothing to resolve: no data type is named
    # A handler object's annotations are its __call__'s.
    annotated = handler if inspect.isroutine(handler) else type(handler).__call__
    try:
        hints = typing.get_type_hints(annotated)
    except Exception as error:  # noqa: BLE001 - an annotation can fail to resolve in any way
        detail = f"{type(error).__name__}: {error}"
        message = f"the annotation of {parameter.name!r} cannot be resolved ({detail})"
        raise HandlerSignatureError(message) from None
    annotation = hints.get(parameter.name, Any)
    if typing.get_origin(annotation) is not Event:
        return None  # Event, Any, object: the data as parsed
    (data_type,) = typing.get_args(annotation)
    if data_type is Any:
        return None
    try:
        return pydantic.TypeAdapter(data_type)
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError) as error:
        message = f"pydantic cannot validate {data_type!r}: {str(error).splitlines()[0]}"
        raise HandlerSignatureError(message) from None


def _event_parameter(handler: Handler) -> inspect.Parameter:
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError) as error:
        raise HandlerSignatureError(f"its signature cannot be read ({error})") from None
    parameters = list(signature.parameters.values())
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required_rest = [
        p
        for p in parameters[1:]
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    takes_any = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    if takes_any and not positional:
        return inspect.Parameter("event", inspect.Parameter.POSITIONAL_ONLY)
    if not positional or required_rest:
        raise HandlerSignatureError("it must take one argument, the event, and require no other")
    return positional[0]


def validate_data(adapter: pydantic.TypeAdapter[Any], data: Any, raw_data: bytes) -> Any:
    """`data` validated; raises pydantic.ValidationError. Data parsed from JSON (`raw_data`
    non-empty and `data` not those bytes) is validated from the JSON: pydantic's JSON mode is
    what the data's types mean there (a strict model takes an ISO string for a datetime)."""
    if raw_data and not isinstance(data, bytes):
        return adapter.validate_json(raw_data)
    return adapter.validate_python(data)


def invalid_data_errors(error: pydantic.ValidationError) -> list[dict[str, str]]:
    """The first MAX_ERRORS_SHOWN errors as a field path under `data` and a message, never the
    input (it may hold what must not reach a log or a dead-letter header)."""
    errors = error.errors(include_url=False, include_context=False, include_input=False)
    return [
        {"path": ".".join(str(part) for part in ("data", *detail["loc"])), "message": detail["msg"]}
        for detail in errors[:MAX_ERRORS_SHOWN]
    ]


def describe_invalid_data(error: pydantic.ValidationError) -> str:
    """Each error's field path and message, never the input; bounded for a header and a status."""
    lines = [f"{shown['path']}: {shown['message']}" for shown in invalid_data_errors(error)]
    if error.error_count() > MAX_ERRORS_SHOWN:
        lines.append(f"... and {error.error_count() - MAX_ERRORS_SHOWN} more")
    text = "; ".join(lines)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text
