"""The `conveyor` command: `serve` runs the service with settings from the environment; the
client commands (`status`, `subscriptions`) ask a running one."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog
from aiohttp import web

from consumers import Subscription
from service.app import build_app
from service.cli_client import add_client_commands, run_client
from service.keys import LIFECYCLE
from service.logs import configure_logging
from service.settings import PREFIX, SETTINGS_HELP, SettingError, Settings, load_settings
from service.subscription_config import load_subscriptions

__all__ = ["build_parser", "main"]

EXIT_BAD_SETTING = 2
# aiohttp's own limits on the request head, named here so they are a decision, not a default.
MAX_REQUEST_HEADERS = 100
MAX_HEADER_FIELD_BYTES = 8190


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    settings = "\n".join(
        f"  {PREFIX}{doc.name:<18} {doc.help} (default: {doc.default})" for doc in SETTINGS_HELP
    )
    commands.add_parser(
        "serve",
        help="run the HTTP ingress and the consumers",
        description="Run conveyor. Every setting comes from the environment:",
        epilog=settings
        + "\n\nA wrong value stops the process with exit code 2 and a line naming the setting.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_commands(commands, environ)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser(os.environ).parse_args(argv)
    if arguments.command != "serve":
        return asyncio.run(run_client(arguments))
    # Handler paths such as "examples.handlers:send_welcome" resolve from the working directory.
    working_directory = str(Path.cwd())
    if working_directory not in sys.path:
        sys.path.insert(0, working_directory)
    try:
        settings = load_settings(os.environ)
        subscriptions = load_subscriptions(settings.config_path) if settings.config_path else ()
    except SettingError as error:
        print(f"conveyor: {error}", file=sys.stderr)  # noqa: T201 - the one line before logging exists
        return EXIT_BAD_SETTING
    configure_logging(settings)
    return asyncio.run(serve(settings, subscriptions))


async def serve(settings: Settings, subscriptions: Sequence[Subscription]) -> int:
    log = structlog.get_logger(component="service")
    app = build_app(settings, subscriptions)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        max_headers=MAX_REQUEST_HEADERS,
        max_field_size=MAX_HEADER_FIELD_BYTES,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "conveyor started",
        role=settings.role.value,
        namespace=settings.namespace,
        listening=[str(name) for name in runner.addresses],
        subscriptions=[subscription.name for subscription in subscriptions],
        amqp_url=settings.amqp_url_redacted,
    )
    await stop.wait()
    log.info("shutting down", drain_delay=settings.drain_delay)
    app[LIFECYCLE].draining = True
    await asyncio.sleep(settings.drain_delay)
    await runner.cleanup()
    log.info("stopped")
    return 0
