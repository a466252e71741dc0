"""Where conveyor spends its time under the benchmark's load: py-spy on the conveyor process.

    .venv/bin/python -m bench.profile single|batch|consume [--seconds 15] [--svg out.svg]

`single` and `batch` profile the ingress (role `ingress`) under bench/load.py's load (64
connections of single events, or 8 of batches of 100); `consume` profiles a worker draining
`--events` pre-filled events. Prints the functions most often on the stack (inclusive share of
samples) and most often on top (self share). Needs py-spy (`pip install py-spy`) and the right
to trace the child (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.contenders import fill, start_conveyor
from bench.harness import Child, declare_namespace, delete_namespace, new_namespace, wait_ready

TOP = 30
SAMPLING_RATE = 100  # samples/s: enough for shares of a few %, little overhead


async def record(child: Child, seconds: float, raw: Path, svg: Path | None) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    common = ["--pid", str(child.pid), "--duration", f"{seconds:.0f}", "--rate", str(SAMPLING_RATE)]
    runs = [[py_spy, "record", *common, "--format", "raw", "--output", str(raw), "--nonblocking"]]
    if svg is not None:
        runs.append([py_spy, "record", *common, "--output", str(svg), "--nonblocking"])
    processes = [
        await asyncio.create_subprocess_exec(*run, stdout=asyncio.subprocess.DEVNULL)
        for run in runs
    ]
    for process in processes:
        await process.wait()


# Self time by where the code on top lives: a first cut at "what does the time go to".
BUCKETS = (
    ("store (aiosqlite, asyncpg, service/store, idempotency, status)",
     ("aiosqlite/", "asyncpg/", "service/store/", "service/http/idempotency.py",
      "service/http/status_book.py", "consumers/status.py", "sqlite3/")),
    ("AMQP client (aio_pika, aiormq, pamqp)", ("aio_pika/", "aiormq/", "pamqp/")),
    ("HTTP (aiohttp, multidict, yarl)", ("aiohttp/", "multidict/", "yarl/")),
    ("logging (structlog, logging)", ("structlog/", "logging/")),
    ("metrics (prometheus_client, service/metrics)", ("prometheus_client/", "service/metrics")),
    ("socket writes and reads (asyncio transports)", ("asyncio/selector_events.py",)),
    ("event loop and tasks (asyncio)", ("asyncio/",)),
    ("conveyor ingest (service/)", ("service/",)),
    ("conveyor producers", ("producers/",)),
    ("conveyor consumers", ("consumers/",)),
    ("uuid", ("uuid.py",)),
)  # fmt: skip
IDLE = ("EpollSelector.select", "select (selectors.py)")


def summarise(raw: Path) -> str:
    """Shares of the event loop's busy samples, from py-spy's collapsed stacks: by function on
    the stack (inclusive), on top (self) and by bucket; other threads (aiosqlite's) apart."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    busy = idle = other = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        if not any(frame.startswith("BaseEventLoop._run_once") for frame in frames):
            other += count
            continue
        if frames[-1].startswith(IDLE):
            idle += count
            continue
        busy += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
        buckets[_bucket(frames[-1])] += count
    total = busy + idle
    lines = [
        (
            f"event loop: {busy} busy samples, {idle} idle ({busy / max(total, 1):.0%} busy); "
            f"other threads (aiosqlite's worker): {other} samples "
            f"({other / max(total, 1):.0%} of the loop's wall-clock)"
        ),
        "shares below are of the loop's busy samples",
        "",
        "self time by bucket:",
    ]
    lines += [f"{n / busy:6.1%}  {name}" for name, n in buckets.most_common()]
    lines += ["", "inclusive (on the stack):"]
    lines += [f"{n / busy:6.1%}  {frame}" for frame, n in inclusive.most_common(TOP)]
    lines += ["", "self (on top):"]
    lines += [f"{n / busy:6.1%}  {frame}" for frame, n in own.most_common(TOP)]
    return "\n".join(lines)


def _bucket(frame: str) -> str:
    for name, markers in BUCKETS:
        if any(marker in frame for marker in markers):
            return name
    return "other"


def _short(frame: str) -> str:
    # "function (/long/path/site-packages/package/module.py:123)" -> "function (package/module.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3", "/wt-", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


async def profile(
    kind: str, seconds: float, events: int, svg: Path | None, raw: Path | None
) -> str:
    with tempfile.TemporaryDirectory(prefix="conveyor-profile-") as name:
        folder = Path(name)
        namespace = new_namespace()
        raw = raw or folder / "profile.txt"
        try:
            if kind == "consume":
                await declare_namespace(namespace)
                await fill(namespace, events)
                child, _ = await start_conveyor(folder, namespace, "worker")
                try:
                    await record(child, seconds, raw, svg)
                finally:
                    await child.stop()
            else:
                child, base = await start_conveyor(folder, namespace, "ingress")
                try:
                    await wait_ready(child, f"{base}/readyz")
                    batch = ["--connections", "8", "--batch", "100"] if kind == "batch" else []
                    load = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "bench.load", f"{base}/v1/events",
                        "--seconds", f"{seconds + 2:.0f}", *batch,
                        stdout=asyncio.subprocess.DEVNULL,
                    )  # fmt: skip
                    await asyncio.sleep(1.5)  # warm-up
                    await record(child, seconds, raw, svg)
                    with contextlib.suppress(ProcessLookupError):
                        load.terminate()
                    await load.wait()
                finally:
                    await child.stop()
        finally:
            await delete_namespace(namespace)
        return summarise(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("single", "batch", "consume"))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--events", type=int, default=10_000, help="backlog for consume")
    parser.add_argument("--svg", type=Path, default=None, help="also write a flame graph")
    parser.add_argument("--raw", type=Path, default=None, help="keep the collapsed stacks")
    arguments = parser.parse_args()
    summary = profile(
        arguments.kind, arguments.seconds, arguments.events, arguments.svg, arguments.raw
    )
    print(asyncio.run(summary))


if __name__ == "__main__":
    main()
