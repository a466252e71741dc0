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

from producers.first_copy import KEY_BYTES
from service.cli.main import main as conveyor
from service.store import Claim, ClaimOutcome, ClaimRequest, Store
from service.store.base import ClaimsAndWrite
from service.store.sql import Statements

NULL_STORE = "--null-store"


class NullStore:
    """Remembers nothing: every claim is new, every write is dropped, every query is empty
    (but the first-copy key's, which the ingress needs to start)."""

    serial = False  # the claims keep their own batches, as on PostgreSQL

    async def claim(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        *,
        owner: str,
        lease: float,
    ) -> Claim:
        return Claim(ClaimOutcome.OWNER, first=True)

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        return [Claim(ClaimOutcome.OWNER, first=True) for _ in requests]

    async def claim_and_write(
        self, requests: Sequence[ClaimRequest], writes: Sequence[Any]
    ) -> ClaimsAndWrite:
        return ClaimsAndWrite(await self.claim_many(requests), None)

    async def release(self, scope: str, key: str, owner: str, *, remember: float) -> None:
        return None

    async def write(self, writes: Sequence[Any]) -> None:
        return None

    async def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        if statement == Statements.select_marks_key:
            return [("00" * KEY_BYTES,)]
        return []

    async def purge_expired(self) -> int:
        return 0

    async def count_keys(self) -> dict[str, int]:
        return {}

    async def probe(self) -> str | None:
        return None

    async def close(self) -> None:
        return None


async def open_null_store(_url: str, **_options: Any) -> Store:
    return NullStore()  # mypy checks it against the Store protocol here


def main(arguments: list[str]) -> int:
    if NULL_STORE in arguments:
        arguments.remove(NULL_STORE)
        mock.patch("service.app.open_store", open_null_store).start()
    return conveyor(arguments)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
