"""consumers.payloads reads `Event[Model]` from a handler's first parameter, and only that."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from consumers import Handler
from consumers.payloads import payload_adapter
from tests.support import typed_handlers
from tests.support.typed_handlers import Refund, Signup


def test_a_pydantic_model_is_read_and_validates_as_that_model() -> None:
    adapter = payload_adapter(typed_handlers.welcome)

    assert adapter is not None
    signup = adapter.validate_python({"email": "ada@example.com"})
    assert signup == Signup(email="ada@example.com")
    with pytest.raises(ValidationError):
        adapter.validate_python({"name": "no email"})


def test_a_dataclass_and_a_typed_dict_are_read_too() -> None:
    refund = payload_adapter(typed_handlers.refund)
    shipment = payload_adapter(typed_handlers.ShipmentNotifier())

    assert refund is not None
    assert refund.validate_python({"order_id": "o-1", "amount_cents": 5}) == Refund("o-1", 5)
    assert shipment is not None
    assert shipment.json_schema()["required"] == ["order_id", "carrier"]


@pytest.mark.parametrize("handler", [typed_handlers.untyped, typed_handlers.anything])
def test_event_without_a_model_or_with_any_declares_nothing(handler: Handler) -> None:
    assert payload_adapter(handler) is None
