"""A handler with a typed payload, for the invalid-data faithfulness scenario.

Its annotation is set at import, through `Any`, so that mypy accepts it before `Event` takes a
type parameter; importing this module fails until it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from consumers import Event
from tests.support.harness_handlers import CALLS


@dataclass(frozen=True)
class Signup:
    email: str


async def welcome(event: Event) -> None:
    CALLS.append((event.id, event.attempt))


welcome.__annotations__["event"] = cast("Any", Event)[Signup]
