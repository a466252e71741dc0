"""`conveyor serve --workers N`: N processes share the HTTP port, under one supervisor.

One asyncio process publishes from one core. With SO_REUSEPORT the kernel spreads incoming
connections over every process bound to the port, so N processes use N cores without a proxy in
front. The supervisor only starts the processes, passes SIGTERM/SIGINT on (each drains as a
single process would), restarts one that dies, and exits when they all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping

import structlog

from service.settings import PREFIX, Settings

__all__ = ["REUSE_PORT_FLAG", "supervise"]

_log = structlog.get_logger(component="supervisor")
REUSE_PORT_FLAG = "--reuse-port"
RESTART_PAUSE_SECONDS = 1.0
# A process that dies this soon after starting is failing to start, not crashing once.
EARLY_EXIT_SECONDS = 5.0
MAX_RESTART_PAUSE_SECONDS = 30.0
_KILL_MARGIN_SECONDS = 10.0


async def supervise(settings: Settings, environ: Mapping[str, str]) -> int:
    """Run `settings.workers` single processes on one port until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The children read the same settings, but run one process each.
    child_environ = {**environ, f"{PREFIX}WORKERS": "1"}
    slots = [
        asyncio.create_task(_keep_running(index, child_environ, stop), name=f"worker-{index}")
        for index in range(settings.workers)
    ]
    _log.info("supervising", workers=settings.workers, port=settings.http_port)
    await stop.wait()
    # Each child drains on its own: readiness, drain delay, handlers' shutdown timeout.
    grace = settings.drain_delay + 2 * settings.shutdown_timeout + _KILL_MARGIN_SECONDS
    codes = await asyncio.gather(*(_stopped(slot, grace) for slot in slots))
    _log.info("all workers stopped", exit_codes=codes)
    return 0 if all(code == 0 for code in codes) else 1


async def _keep_running(index: int, environ: Mapping[str, str], stop: asyncio.Event) -> int:
    """Start worker `index`, restart it whenever it dies before `stop`; its last exit code."""
    pause = RESTART_PAUSE_SECONDS
    while True:
        started = asyncio.get_running_loop().time()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "serve", REUSE_PORT_FLAG, env=dict(environ)
        )
        _log.info("worker started", worker=index, pid=process.pid)
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            stopping.cancel()
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            try:
                return await asyncio.shield(exited)
            except asyncio.CancelledError:
                # The grace period ran out: the child is killed, its deliveries go back.
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await exited
                raise
        stopping.cancel()
        lived = asyncio.get_running_loop().time() - started
        pause = (
            min(pause * 2, MAX_RESTART_PAUSE_SECONDS)
            if lived < EARLY_EXIT_SECONDS
            else RESTART_PAUSE_SECONDS
        )
        _log.error(
            "worker exited; restarting it",
            worker=index,
            exit_code=process.returncode,
            restart_in=pause,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=pause)
        if stop.is_set():
            return process.returncode or 0


async def _stopped(slot: asyncio.Task[int], grace: float) -> int:
    try:
        return await asyncio.wait_for(slot, timeout=grace)
    except TimeoutError:
        _log.error("worker did not stop within the grace period; killed", grace_seconds=grace)
        return -int(signal.SIGKILL)
