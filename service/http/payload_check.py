"""The ingress-side check of typed payloads, opt-in per subscription (`validate_at_ingress`).

A subscription's model is what its handler takes, not a contract for every publisher, so the
ingress checks an event's data only against subscriptions that ask for it and whose patterns
match the event's type. Data one of them would dead-letter as invalid-data is answered 422
`invalid-data` with the errors, and nothing is published.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import orjson
import pydantic

from consumers.payloads import invalid_data_errors, validate_data
from consumers.subscription import Subscription
from producers import OutgoingEvent
from producers.formats import is_json_content_type
from service.broker.routing import topic_matches
from service.http.cloudevents import ParsedBatch, ParsedSingle

__all__ = ["InvalidDataError", "PayloadCheck"]


class InvalidDataError(ValueError):
    """The event's data does not validate against a subscription that validates at the ingress."""

    def __init__(self, subscription: str, errors: list[dict[str, str]]) -> None:
        shown = "; ".join(f"{error['path']}: {error['message']}" for error in errors)
        super().__init__(
            f"the event's data does not validate against what subscription {subscription!r} "
            f"takes (validate_at_ingress): {shown}"
        )
        self.subscription = subscription
        self.errors = errors


class PayloadCheck:
    """Checks parsed events against every subscription with `validate_at_ingress`."""

    def __init__(self, subscriptions: Sequence[Subscription]) -> None:
        self._checked = [
            (subscription.name, subscription.events, subscription.payload)
            for subscription in subscriptions
            if subscription.validate_at_ingress and subscription.payload is not None
        ]

    def __call__(self, parsed: ParsedSingle | ParsedBatch) -> ParsedSingle | ParsedBatch:
        """The request's events, a batch's invalid entries replaced by their InvalidDataError;
        raises InvalidDataError for a single event."""
        if not self._checked:
            return parsed
        if isinstance(parsed, ParsedSingle):
            error = self.check(parsed.event)
            if error is not None:
                raise error
            return parsed
        return ParsedBatch(
            tuple(
                (self.check(entry) or entry) if isinstance(entry, OutgoingEvent) else entry
                for entry in parsed.entries
            )
        )

    def check(self, event: OutgoingEvent) -> InvalidDataError | None:
        data: Any = None
        for name, patterns, adapter in self._checked:
            if not any(topic_matches(pattern, event.type) for pattern in patterns):
                continue
            if data is None:
                data = _as_consumed(event)
            try:
                validate_data(adapter, data, event.data)
            except pydantic.ValidationError as error:
                return InvalidDataError(name, invalid_data_errors(error))
        return None


def _as_consumed(event: OutgoingEvent) -> Any:
    """The data as consumers.decoding will hand it to the validation stage."""
    body = event.data
    if not body:
        return None
    if is_json_content_type(event.datacontenttype):
        return orjson.loads(body)  # the parser checked it is JSON
    if event.datacontenttype is None:
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(body)
    return body
