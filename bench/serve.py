"""`conveyor` as the benchmark runs it: the real CLI, optionally with a store that remembers
nothing, to show what the store costs.

    python -m bench.serve [--null-store] serve [--workers N]

Settings come from the environment (CONVEYOR_*), as for `conveyor serve`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any
from unittest import mock

from service.cli.main import main as conveyor
from service.store import Claim, ClaimOutcome, ClaimRequest

NULL_STORE = "--null-store"


class NullStore:
    """Remembers nothing: every claim is new, every write is dropped, every query is empty."""

    async def claim(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        *,
        owner: str,
        lease: float,
    ) -> Claim:
        return Claim(ClaimOutcome.OWNER)

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        return [Claim(ClaimOutcome.OWNER) for _ in requests]

    async def release(self, scope: str, key: str, owner: str) -> None:
        return None

    async def write(self, writes: Sequence[Any]) -> None:
        return None

    async def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        return []

    async def purge_expired(self) -> int:
        return 0

    async def close(self) -> None:
        return None


async def open_null_store(_url: str) -> NullStore:
    return NullStore()


def main(arguments: list[str]) -> int:
    if NULL_STORE in arguments:
        arguments.remove(NULL_STORE)
        mock.patch("service.app.open_store", open_null_store).start()
    return conveyor(arguments)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
