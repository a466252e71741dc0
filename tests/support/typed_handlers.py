"""Handlers that declare what their event data is (`Event[Model]`), for the payload schema
tests; importable by path from a subscriptions file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic reads typing.TypedDict only from 3.12

from consumers import Event
from tests.support.recorder import Recorder


class Address(BaseModel):
    city: str
    postcode: str = Field(pattern=r"^[0-9A-Z -]{3,10}$")


class Signup(BaseModel):
    email: str
    name: str | None = None
    address: Address | None = None


@dataclass
class Refund:
    order_id: str
    amount_cents: int


class Shipment(TypedDict):
    order_id: str
    carrier: str


async def welcome(event: Event[Signup]) -> None:
    del event


async def refund(event: Event[Refund]) -> None:
    del event


async def untyped(event: Event) -> None:
    del event


async def anything(event: Event[Any]) -> None:
    del event


async def opaque(event: Event[Callable[[], None]]) -> None:
    """Data pydantic can validate (any callable) but not describe in JSON Schema."""
    del event


class ShipmentNotifier:
    """A handler object: it declares its event on `__call__`."""

    async def __call__(self, event: Event[Shipment]) -> None:
        del event


class SignupRecorder(Recorder):
    """Records like Recorder, and declares its data a `Signup`."""

    async def __call__(self, event: Event[Signup]) -> None:
        await super().__call__(event)
