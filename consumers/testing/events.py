"""What `TestConveyor.send` takes: what `POST /v1/events` takes, turned into the event to publish.

A plain event (at least `type`; `id`, `source`, `specversion` and `time` are filled in as the
ingress fills them) or a full CloudEvent in the JSON format (`data` or `data_base64`), or an
`OutgoingEvent` as `producers.new_event` makes it. The attribute rules are the producers' own
(producers.formats), so what the ingress refuses is refused here, with the same
`InvalidEventError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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

__all__ = ["INGRESS_SOURCE", "SendableEvent", "event_to_publish"]

# The `source` the ingress gives a plain event without one (a unit test keeps the two equal).

SendableEvent = Mapping[str, Any] | OutgoingEvent


def event_to_publish(event: SendableEvent) -> OutgoingEvent:
    """The event as the ingress would publish it; raises InvalidEventError as it would refuse it."""
    if isinstance(event, OutgoingEvent):
        validate_attributes(event.attributes)  # `new_event` fills them in but does not check
        validate_content_type(event.datacontenttype)
        return event
    filled = plain_event_document(event)
    # Through JSON, as a request body would come: what cannot be written as JSON is refused.
    try:
        document = orjson.loads(orjson.dumps(filled))
    except TypeError as error:
        raise InvalidEventError(f"the event is not JSON: {error}") from None
    published = event_from_json(document)
    if document.get("data_base64") is not None and is_json_content_type(published.datacontenttype):
        try:
            orjson.loads(published.data)
        except orjson.JSONDecodeError as error:
            raise InvalidEventError(
                f"the data in data_base64 is not valid JSON, yet its content type is "
                f"{published.datacontenttype}: {error}",
                "data_base64",
            ) from None
    return published
