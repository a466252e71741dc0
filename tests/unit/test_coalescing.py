"""The Coalescer's batching of lookups (the store itself: tests/integration/test_dedup_lookups)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from service.store import Coalescer


class Squares:
    """fetch_many for keys 0..99 (others unknown); each call waits until `release` is set."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, keys: Sequence[int]) -> Mapping[int, int]:
        self.calls.append(list(keys))
        await self.release.wait()
        return {key: key * key for key in keys if key < 100}


async def test_lookups_of_one_turn_share_one_fetch_and_each_gets_its_own_answer() -> None:
    fetch = Squares()
    lookups = Coalescer(fetch, default=-1, max_batch=500, timeout=5)
    answers = await asyncio.gather(*(lookups.get(key) for key in [3, 7, 3, 150, 99]))
    assert answers == [9, 49, 9, -1, 9801]
    assert fetch.calls == [[3, 7, 150, 99]]


async def test_lookups_made_while_a_fetch_runs_go_out_together_in_the_next() -> None:
    fetch = Squares()
    fetch.release.clear()
    lookups = Coalescer(fetch, default=-1, max_batch=3, timeout=5)
    first = asyncio.create_task(lookups.get(1))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(lookups.get(key)) for key in (1, 2, 3, 4, 5)]
    await asyncio.sleep(0.01)
    fetch.release.set()
    assert await asyncio.gather(first, *later) == [1, 1, 4, 9, 16, 25]
    # Key 1 is asked again: the answer in flight may predate the later question.
    assert fetch.calls == [[1], [1, 2, 3], [4, 5]]


async def test_a_caller_that_gives_up_leaves_the_others_their_answer() -> None:
    fetch = Squares()
    fetch.release.clear()
    lookups = Coalescer(fetch, default=-1, max_batch=10, timeout=5)
    impatient = asyncio.create_task(lookups.get(4))
    patient = asyncio.create_task(lookups.get(4))
    await asyncio.sleep(0.01)
    impatient.cancel()
    fetch.release.set()
    assert await patient == 16
    assert impatient.cancelled()


async def test_a_failed_or_slow_fetch_fails_each_of_its_lookups_and_the_next_goes_out() -> None:
    async def broken(_keys: Sequence[int]) -> Mapping[int, int]:
        raise ConnectionError("store away")

    failing = Coalescer(broken, default=-1, max_batch=10, timeout=5)
    answers = await asyncio.gather(*(failing.get(key) for key in (1, 2)), return_exceptions=True)
    assert [type(answer) for answer in answers] == [ConnectionError, ConnectionError]

    fetch = Squares()
    fetch.release.clear()
    slow = Coalescer(fetch, default=-1, max_batch=10, timeout=0.05)
    with pytest.raises(TimeoutError):
        await slow.get(2)
    fetch.release.set()
    assert await slow.get(2) == 4


async def test_close_fails_the_lookups_still_waiting() -> None:
    fetch = Squares()
    fetch.release.clear()
    lookups = Coalescer(fetch, default=-1, max_batch=1, timeout=5)
    waiting = [asyncio.create_task(lookups.get(key)) for key in (1, 2)]
    await asyncio.sleep(0.01)
    await lookups.close()
    answers = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(answer) for answer in answers] == [RuntimeError, RuntimeError]
    with pytest.raises(RuntimeError):
        await lookups.get(3)
