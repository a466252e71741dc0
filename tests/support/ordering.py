"""Checking what ordered subscriptions promise: per key, events in publish order."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence


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
