"""When the ingress gives freed memory back: after a large burst, not after every request."""

from __future__ import annotations

from service.http.admission import Admission, OverloadedError
from service.http.memory import TRIM_AFTER_REFUSALS, MemoryReturn


class CountingTrim:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def _settled(memory: MemoryReturn) -> None:
    running = memory._running
    if running is not None:
        await running


async def test_a_trim_follows_a_large_burst_once_its_bytes_are_released() -> None:
    trim = CountingTrim()
    memory = MemoryReturn(trim, after_bytes=100)
    admission = Admission(8, 1000, on_bytes=memory.note, on_quiet=memory.quiet)
    with admission.admit() as small:
        await small.reserve(50)
    await _settled(memory)
    assert trim.calls == 0  # too small a burst to be worth it
    with admission.admit() as first, admission.admit() as second:
        await first.reserve(60)
        await second.reserve(60)
        await _settled(memory)
        assert trim.calls == 0  # not while bytes are held
    await _settled(memory)
    assert trim.calls == 1


async def test_a_trim_follows_many_refusals_once_the_last_request_ends() -> None:
    trim = CountingTrim()
    memory = MemoryReturn(trim, after_bytes=10**9)
    admission = Admission(1, 1000, on_bytes=memory.note, on_quiet=memory.quiet)
    with admission.admit():
        for _ in range(TRIM_AFTER_REFUSALS):
            try:
                with admission.admit():
                    pass
            except OverloadedError:
                pass
    await _settled(memory)
    assert trim.calls == 1
    with admission.admit():
        pass
    await _settled(memory)
    assert trim.calls == 1  # nothing refused since


def test_without_glibc_nothing_is_trimmed() -> None:
    memory = MemoryReturn(None, after_bytes=1)
    memory.note(10)
    memory.note(0)
    memory.quiet(TRIM_AFTER_REFUSALS)
    assert memory.trims == 0
