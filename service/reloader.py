"""`conveyor serve --reload`: for development, a new process whenever the code or the
subscriptions file changes.

The reloader runs `conveyor serve` as a child and watches (watchfiles) the subscriptions file
and the directories of the handler modules. On a change it stops the child as SIGTERM does
(readiness off, the drain delay, running handlers given the shutdown timeout, the rest handed
back to the broker), waits for it to exit, and starts a new one: nothing accepted is lost
across a reload. watchfiles' own `arun_process` is not used because it kills the child after
a fixed few seconds, which would cut handlers short of CONVEYOR_SHUTDOWN_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import watchfiles

from consumers.subscription import Subscription
from service.settings import Settings

__all__ = ["reload_on_change", "watched_paths"]

_log = structlog.get_logger(component="reloader")
_KILL_MARGIN_SECONDS = 10.0


def watched_paths(config: Path | None, subscriptions: Sequence[Subscription]) -> list[Path]:
    """The subscriptions file and each imported handler module's file."""
    paths = [] if config is None else [config.resolve()]
    for subscription in subscriptions:
        module = sys.modules.get(subscription.handler_path.partition(":")[0])
        source = getattr(module, "__file__", None)
        if isinstance(source, str):
            paths.append(Path(source).resolve())
    return sorted(set(paths))


class _SourceFilter(watchfiles.DefaultFilter):
    """Python files beside the handler modules (the helpers they import), and the config."""

    def __init__(self, config: Path | None) -> None:
        super().__init__()
        self._config = None if config is None else str(config.resolve())

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return (path == self._config or path.endswith(".py")) and super().__call__(change, path)


async def reload_on_change(
    settings: Settings, environ: Mapping[str, str], watched: Iterable[Path]
) -> int:
    """Run `conveyor serve` in a child, a new one after each change, until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    changed = asyncio.Event()
    directories = sorted({path.parent for path in watched})
    watcher = asyncio.create_task(_watch(directories, settings.config_path, changed, stop))
    # Past this, a child that does not stop is killed; its unacked deliveries go back.
    grace = settings.drain_delay + 2 * settings.shutdown_timeout + _KILL_MARGIN_SECONDS
    _log.info("reloading on changes", watching=[str(d) for d in directories])
    code = 0
    try:
        while not stop.is_set():
            changed.clear()
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service", "serve", env=dict(environ)
            )
            _log.info("serving", pid=child.pid)
            code = await _run_until_change(child, changed, stop, grace)
            if not stop.is_set() and not changed.is_set():
                # It stopped by itself (a mistake in the new code or file): wait for a fix.
                _log.error("conveyor exited; waiting for a change", exit_code=code)
                await _first(changed.wait(), stop.wait())
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return code


async def _run_until_change(
    child: asyncio.subprocess.Process, changed: asyncio.Event, stop: asyncio.Event, grace: float
) -> int:
    exited = asyncio.ensure_future(child.wait())
    await _first(changed.wait(), stop.wait(), also=exited)
    if child.returncode is not None:
        return child.returncode
    _log.info("stopping conveyor to reload" if changed.is_set() else "stopping", pid=child.pid)
    child.send_signal(signal.SIGTERM)  # it drains as on any SIGTERM
    try:
        return await asyncio.wait_for(asyncio.shield(exited), timeout=grace)
    except TimeoutError:
        _log.error("conveyor did not stop within the grace period; killed", grace_seconds=grace)
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        return await exited


async def _first(*waits: Coroutine[Any, Any, Any], also: asyncio.Future[Any] | None = None) -> None:
    """Wait until the first of `waits` (or `also`, left running) is done; cancel the rest."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(
            [*tasks, *([] if also is None else [also])], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in tasks:
            task.cancel()


async def _watch(
    directories: Sequence[Path], config: Path | None, changed: asyncio.Event, stop: asyncio.Event
) -> None:
    # Not recursive: a handler module in the project root would otherwise watch the whole tree.
    async for changes in watchfiles.awatch(
        *directories, watch_filter=_SourceFilter(config), stop_event=stop, recursive=False
    ):
        _log.info("change seen", paths=sorted({path for _, path in changes}))
        changed.set()
