"""The store's readiness check: one probe at a time however often /readyz is asked, each
caller waiting a bounded time. The probe is a stand-in that hangs until told: what is tested is
the check's own logic; the backends' probes meet real faults in test_store_faults.py."""

from __future__ import annotations

import asyncio

from service.store import StoreCheck, describe


class HangingProbe:
    def __init__(self) -> None:
        self.calls = 0
        self.answer = asyncio.Event()
        self.problem: str | None = None

    async def __call__(self) -> str | None:
        self.calls += 1
        await self.answer.wait()
        return self.problem


async def test_polls_while_the_store_hangs_share_one_probe_and_each_ends_in_time() -> None:
    probe = HangingProbe()
    check = StoreCheck(probe, timeout=0.05)
    answers = await asyncio.gather(*(check.problem() for _ in range(5)))
    assert answers == ["no answer within 0.05 s"] * 5
    assert await check.problem() == "no answer within 0.05 s"
    assert probe.calls == 1  # the hanging one was waited for again, not asked anew

    probe.answer.set()
    assert await check.problem() is None  # the same probe, answered at last
    probe.problem = "the disk is full"
    assert await check.problem() == "the disk is full"  # a new probe once that one is done
    assert probe.calls == 2  # the first, then one more
    await check.close()


async def test_a_probe_that_raises_is_the_answer_with_its_message() -> None:
    async def broken() -> str | None:
        raise TimeoutError  # no message of its own

    check = StoreCheck(broken, timeout=1.0)
    assert await check.problem() == "TimeoutError"
    assert describe(RuntimeError("locked")) == "locked"
    await check.close()
