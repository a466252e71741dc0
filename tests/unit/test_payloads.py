"""Reading a handler's typed payload and describing data that does not validate (pure logic)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, cast

import pydantic
import pytest

from consumers import Event
from consumers.dead_letter import MAX_MESSAGE_CHARS
from consumers.payloads import (
    HandlerSignatureError,
    describe_invalid_data,
    invalid_data_errors,
    payload_adapter,
    validate_data,
)


class Signup(pydantic.BaseModel):
    email: str


class Wide(pydantic.BaseModel):
    fields: dict[str, int]


class Stamped(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)

    at: datetime


@dataclasses.dataclass
class Refund:
    cents: int


async def typed(event: Event[Signup]) -> None:
    del event


async def bare(event: Event) -> None:
    del event


async def any_data(event: Event[Any]) -> None:
    del event


async def unannotated(event) -> None:  # type: ignore[no-untyped-def] # noqa: ANN001 - the case under test
    del event


async def as_object(event: object) -> None:
    del event


async def two(event: Event, other: int) -> None:
    del event, other


async def with_optional(event: Event[Refund], *, other: int = 1) -> None:
    del event, other


class TypedObject:
    async def __call__(self, event: Event[Refund]) -> None:
        del event


def test_only_a_named_data_type_gets_an_adapter() -> None:
    adapter = payload_adapter(typed)
    assert adapter is not None
    assert adapter.validate_python({"email": "a@b.c"}) == Signup(email="a@b.c")
    for untyped in (bare, any_data, unannotated, as_object):
        assert payload_adapter(untyped) is None, untyped
    for refund in (with_optional, TypedObject()):
        found = payload_adapter(refund)
        assert found is not None
        assert found.validate_python({"cents": "5"}) == Refund(cents=5)


def test_a_handler_that_cannot_take_one_event_is_refused() -> None:
    with pytest.raises(HandlerSignatureError, match="one argument, the event"):
        payload_adapter(cast("Any", two))


def test_errors_name_fields_never_inputs_and_stay_bounded() -> None:
    adapter = pydantic.TypeAdapter(Wide)
    document = {"fields": {f"field{n:03}": "secret-value" * 10 for n in range(40)}}
    with pytest.raises(pydantic.ValidationError) as caught:
        adapter.validate_python(document)
    errors = invalid_data_errors(caught.value)
    assert len(errors) == 10
    first = {"path": "data.fields.field000", "message": "Input should be a valid integer"}
    assert errors[0]["path"] == first["path"]
    assert errors[0]["message"].startswith(first["message"])
    text = describe_invalid_data(caught.value)
    assert len(text) <= MAX_MESSAGE_CHARS
    assert "secret-value" not in text


def test_json_data_is_validated_in_json_mode() -> None:
    adapter = pydantic.TypeAdapter(Stamped)
    raw = b'{"at": "2026-01-01T00:00:00Z"}'
    parsed = {"at": "2026-01-01T00:00:00Z"}
    # A strict model takes an ISO string for a datetime in JSON, not from Python values.
    with pytest.raises(pydantic.ValidationError):
        adapter.validate_python(parsed)
    assert validate_data(adapter, parsed, raw).at == datetime(2026, 1, 1, tzinfo=UTC)
    # Data that was not JSON (bytes) is validated as the bytes.
    with pytest.raises(pydantic.ValidationError):
        validate_data(adapter, b"not json", b"not json")
