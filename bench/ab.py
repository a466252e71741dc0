"""Two checkouts of conveyor, interleaved round after round: did a change make it faster?

    .venv/bin/python -m bench.ab --base /path/to/other/checkout [--items single,batch,consume]
                                 [--rounds 3] [--seconds 5] [--consume-events 10000]
                                 [--base-python /path/to/other/venv/bin/python]

The "head" arm is this checkout, the "base" arm the checkout at `--base` (e.g. a `git worktree`
of the commit before); each conveyor process starts in its arm's tree, with it on PYTHONPATH. Arms
alternate within each round, starting arm rotating, so a noisy neighbour hits both alike.
Prints each arm's median events/s (min-max) and the median of the per-round head/base ratios;
for each item, also the conveyor process's CPU time per event: the work an event costs, apart
from what it waits for. It is no steadier than the rate on a shared machine (the same code in
both arms, 4 rounds: 0.88-1.19 per round), so read both.
`--base-python` runs the base arm's conveyor on another interpreter (a venv of another Python
version, with conveyor's dependencies installed); `--base .` with it compares two Pythons on
the same code. The load generator stays on this one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import contenders
from bench.harness import PYTHON, ROOT, TREE

Measure = Callable[[Path, dict[str, str]], Awaitable[dict[str, Any]]]


def _measures(arguments: argparse.Namespace) -> dict[str, Measure]:
    seconds, connections = arguments.seconds, arguments.connections
    return {
        "single": lambda f, env: contenders.conveyor_ingest(
            f, connections=connections, seconds=seconds, env=env
        ),
        "batch": lambda f, env: contenders.conveyor_ingest(
            f, connections=8, seconds=seconds, batch=100, env=env
        ),
        "consume": lambda f, env: contenders.conveyor_consume(f, arguments.consume_events, env=env),
    }


async def compare(arguments: argparse.Namespace, base: Path) -> None:
    arms = {"head": str(ROOT), "base": str(base)}
    pythons = {"base": arguments.base_python} if arguments.base_python else {}
    measures = _measures(arguments)
    rates: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}  # µs per event, where measured
    with tempfile.TemporaryDirectory(prefix="conveyor-ab-") as folder:
        for number in range(arguments.rounds):
            for item in arguments.items.split(","):
                order = list(arms) if number % 2 == 0 else list(reversed(arms))
                for arm in order:
                    env = {"PYTHONPATH": arms[arm], TREE: arms[arm]}
                    if arm in pythons:
                        env[PYTHON] = pythons[arm]
                    result = await measures[item](Path(folder), env)
                    rate = float(result["events_per_second"])
                    rates.setdefault(item, {}).setdefault(arm, []).append(rate)
                    line = f"round {number + 1} {item} {arm}: {rate:,.0f} events/s"
                    if "cpu_us_per_event" in result:
                        cost = float(result["cpu_us_per_event"])
                        cpu.setdefault(item, {}).setdefault(arm, []).append(cost)
                        line += f", {cost:.0f} µs CPU an event"
                    print(line, flush=True)
    print("\n| item | head | base | head / base (per round) |\n| --- | --- | --- | --- |")
    for item, by_arm in rates.items():
        print(_row(item, by_arm))
    if cpu:
        print("\n| CPU µs an event | head | base | head / base (per round) |")
        print("| --- | --- | --- | --- |")
        for item, by_arm in cpu.items():
            print(_row(item, by_arm))


def _row(item: str, by_arm: dict[str, list[float]]) -> str:
    head, other = by_arm["head"], by_arm["base"]
    ratios = [h / b for h, b in zip(head, other, strict=True)]
    return (
        f"| {item} | {_spread(head)} | {_spread(other)} | {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f}) |"
    )


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the other checkout's root folder")
    parser.add_argument("--items", default="single,batch,consume")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--consume-events", type=int, default=10_000)
    parser.add_argument("--base-python", default=None, help="the base arm's interpreter")
    arguments = parser.parse_args()
    asyncio.run(compare(arguments, Path(arguments.base).resolve()))


if __name__ == "__main__":
    main()
