"""A handler with a typed payload, for the invalid-data faithfulness scenario: it records each
call as the harness's other scenario handlers do."""

from __future__ import annotations

from dataclasses import dataclass

from consumers import Event
from tests.support.harness_handlers import CALLS


@dataclass(frozen=True)
class Signup:
    email: str


async def welcome(event: Event[Signup]) -> None:
    CALLS.append((event.id, event.attempt))
