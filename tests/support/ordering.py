"""Ordered subscriptions in tests: a keyed recorder, a keyed backlog, what the promise allows."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

from consumers import Event, Handler, PermanentError
from consumers.ordering import Ordering
from consumers.retry import RetryPolicy
from consumers.subscription import Subscription
from tests.conftest import Running, subscription


def order_violations(seen: Mapping[str, Sequence[int]], count: int) -> list[str]:
    """What breaks the promise, per key, for events numbered 0..count-1 in publish order.

    Allowed: a repeat of a suffix (a worker killed mid-key: whatever it had not acked comes
    again, from some earlier event on, in order). Not allowed: a gap, a missing event, or any
    other step back.
    """
    problems = []
    for key, indices in seen.items():
        runs: list[list[int]] = []
        for index in indices:
            if runs and index == runs[-1][-1] + 1:
                runs[-1].append(index)
            else:
                runs.append([index])
        if not runs or runs[0][0] != 0:
            problems.append(f"{key}: does not start at event 0: {list(indices)[:5]}")
            continue
        for before, after in itertools.pairwise(runs):
            # A repeat starts at or before the event after the last one seen, never past it.
            if after[0] > before[-1]:
                problems.append(f"{key}: jumps from {before[-1]} to {after[0]}")
        if sorted(set(indices)) != list(range(count)):
            missing = sorted(set(range(count)) - set(indices))
            problems.append(f"{key}: missing {missing[:10]}")
        if runs[-1][-1] != count - 1:
            problems.append(f"{key}: ends at {runs[-1][-1]}, not {count - 1}")
    return problems


def repeats(seen: Mapping[str, Sequence[int]]) -> int:
    """How many times some key went back to an earlier event (each a repeated suffix)."""
    return sum(
        sum(1 for a, b in itertools.pairwise(indices) if b <= a) for indices in seen.values()
    )


class KeyedRecorder:
    """Notes (key, index) as each attempt starts; random delays; can be told to fail."""

    def __init__(self, *, max_sleep: float = 0.01) -> None:
        self.started: list[tuple[str, int]] = []
        self.handled: dict[str, list[int]] = defaultdict(list)
        self.running: dict[str, int] = defaultdict(int)
        self.overlaps = 0
        self.max_sleep = max_sleep
        self.fail_once: set[tuple[str, int]] = set()
        self.fail_always: set[tuple[str, int]] = set()

    async def __call__(self, event: Event) -> None:
        key = event.extensions["partitionkey"]
        index = int(event.data["index"])
        self.started.append((key, index))
        self.running[key] += 1
        if self.running[key] > 1:
            self.overlaps += 1
        try:
            # Random delays, to shuffle keys against each other; not cryptography.
            await asyncio.sleep(random.uniform(0, self.max_sleep))  # noqa: S311
            if (key, index) in self.fail_always:
                raise PermanentError(f"{key} {index} refused")
            if (key, index) in self.fail_once:
                self.fail_once.discard((key, index))
                raise RuntimeError(f"{key} {index} failed once")
            self.handled[key].append(index)
        finally:
            self.running[key] -= 1


def ordered(
    name: str, handler: Handler, *, retry: RetryPolicy, partitions: int = 4
) -> Subscription:
    plain = subscription(name, ("order.*",), handler, prefetch=16, concurrency=8, retry=retry)
    return dataclasses.replace(plain, ordering=Ordering("partitionkey", partitions))


async def publish_keys(
    running: Running, keys: int, per_key: int, prefix: str = "k", first: int = 0
) -> None:
    """Per key one after another (publish order), keys side by side; numbered from `first`."""

    async def one_key(key: str) -> None:
        for index in range(first, first + per_key):
            document = {
                "specversion": "1.0",
                "id": f"{key}-{index}",
                "source": "/ordered",
                "type": "order.step",
                "partitionkey": key,
                "datacontenttype": "application/json",
                "data": {"index": index},
            }
            response = await running.post(document, "application/cloudevents+json")
            assert response.status == 202, await response.text()

    await asyncio.gather(*(one_key(f"{prefix}{number}") for number in range(keys)))
