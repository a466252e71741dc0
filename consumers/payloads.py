"""What a handler says its event data is: `async def handle(event: Event[Signup])`.

The model is read once from the handler's first parameter annotation, through pydantic's
`TypeAdapter`, so a pydantic model, a dataclass and a `TypedDict` all work alike.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic import TypeAdapter

from consumers.event import Event, Handler

__all__ = ["payload_adapter"]


def payload_adapter(handler: Handler) -> TypeAdapter[Any] | None:
    """The adapter for the handler's `Event[Model]`; None for `Event`, `Event[Any]` or none."""
    model = _declared_data_type(handler)
    if model is None or model is Any:
        return None
    return TypeAdapter(model)


def _declared_data_type(handler: Handler) -> Any:
    # A handler object (such as the built-in webhook) declares its event on `__call__`.
    function = handler if inspect.isroutine(handler) else type(handler).__call__
    parameters = [
        parameter
        for parameter in inspect.signature(function).parameters.values()
        if parameter.name not in ("self", "cls")
    ]
    if not parameters:
        return None
    try:
        hints = typing.get_type_hints(function)
    except (NameError, TypeError):  # an annotation that does not resolve declares nothing here
        return None
    annotation = hints.get(parameters[0].name)
    if typing.get_origin(annotation) is not Event:
        return None
    (model,) = typing.get_args(annotation)
    return model
