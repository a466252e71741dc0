"""The `conveyor` command: `serve` runs the service with settings from the environment; the
client commands (`status`, `subscriptions`, `schedules`, ...) ask a running one."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import aiormq.exceptions
import orjson
import structlog
from aiohttp import web

from consumers.subscription import Subscription
from producers.amqp_internals import InternalsMissingError, check_internals
from producers.delay import levels_for
from producers.topology import Topology
from service.app import build_app
from service.app_keys import LIFECYCLE
from service.archive.stream import archive_spec
from service.broker.topology_plan import apply_topology, plan_topology, render_topology
from service.cli.asyncapi import add_asyncapi_command, asyncapi_command
from service.cli.check import check_command
from service.cli.client import (
    EXIT_ANSWERED_ERROR,
    EXIT_UNREACHABLE,
    add_client_commands,
    run_client,
)
from service.observability.logs import configure_logging
from service.observability.tracing import Tracing, build_tracing
from service.reloader import reload_on_change, watched_paths
from service.schedules import Schedule, load_schedules
from service.settings import (
    DECLARED_SETTINGS,
    PREFIX,
    EventLoop,
    Role,
    SettingError,
    Settings,
    load_settings,
)
from service.subscription_config import load_subscriptions
from service.supervisor import REUSE_PORT_FLAG, supervise

__all__ = ["build_parser", "main", "serve_command", "topology_command"]

EXIT_BAD_SETTING = 2
# aiohttp's own limits on the request head, named here so they are a decision, not a default.
MAX_REQUEST_HEADERS = 100
MAX_HEADER_FIELD_BYTES = 8190


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    settings = "\n".join(
        f"  {PREFIX}{declared.name:<18} {declared.help} (default: {declared.default})"
        for declared in DECLARED_SETTINGS
    )
    serve_parser = commands.add_parser(
        "serve",
        help="run the HTTP ingress and the consumers",
        description="Run conveyor. Every setting comes from the environment:",
        epilog=settings
        + "\n\nA wrong value stops the process with exit code 2 and a line naming the setting.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_parser.add_argument(
        "--role",
        choices=[role.value for role in Role],
        help="which halves to run: ingress (HTTP -> RabbitMQ), worker (consumers and handlers) "
        f"or all; overrides {PREFIX}ROLE. Any number of replicas of each may run against one "
        "broker (cluster) and a shared PostgreSQL store.",
    )
    serve_parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=f"N processes sharing the HTTP port (overrides {PREFIX}WORKERS)",
    )
    serve_parser.add_argument(
        "--reload",
        action="store_true",
        help="for development: restart when a handler module or the subscriptions file "
        "changes, draining as on SIGTERM (one process: not with --workers)",
    )
    # Set by the supervisor on the processes it starts: bind the port with SO_REUSEPORT.
    serve_parser.add_argument(REUSE_PORT_FLAG, action="store_true", help=argparse.SUPPRESS)
    topology = commands.add_parser(
        "topology",
        help="print the exchanges, queues and bindings conveyor declares",
        description="Print what conveyor declares for CONVEYOR_NAMESPACE and CONVEYOR_CONFIG "
        "(the same settings as serve); --apply declares it on CONVEYOR_AMQP_URL.",
    )
    topology.add_argument("--apply", action="store_true", help="declare it on the broker")
    topology.add_argument("--json", action="store_true", help="print JSON")
    add_asyncapi_command(commands)
    commands.add_parser(
        "check",
        help="check the settings and the subscriptions file without a broker (for CI)",
        description="Load the settings and CONVEYOR_CONFIG, import every handler, check its "
        "signature and typed payload, the patterns, retry policies and ordering settings, and "
        "print what would be declared. Exit 0 when all is well, 2 with one line per problem.",
    )
    add_client_commands(commands, environ)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser(os.environ).parse_args(argv)
    if arguments.command not in ("serve", "topology", "asyncapi", "check"):
        return asyncio.run(run_client(arguments))
    # Handler paths such as "examples.handlers:send_welcome" resolve from the working directory.
    working_directory = str(Path.cwd())
    if working_directory not in sys.path:
        sys.path.insert(0, working_directory)
    if arguments.command == "check":
        return asyncio.run(check_command(os.environ))
    # Flags override their settings; the environment carries them on to supervised processes.
    environ = dict(os.environ)
    if arguments.command == "serve" and arguments.workers is not None:
        environ[f"{PREFIX}WORKERS"] = str(arguments.workers)
    if arguments.command == "serve" and arguments.role is not None:
        environ[f"{PREFIX}ROLE"] = arguments.role
    try:
        settings = load_settings(environ)
        subscriptions = (
            load_subscriptions(settings.config_path, environ) if settings.config_path else ()
        )
        schedules = load_schedules(settings.config_path) if settings.config_path else ()
        tracing = build_tracing(settings) if arguments.command == "serve" else None
        if arguments.command == "serve":
            # Before anything starts: without these the watchdog and the blocked check would
            # silently do nothing.
            check_internals()
    except (SettingError, InternalsMissingError) as error:
        print(f"conveyor: {error}", file=sys.stderr)  # noqa: T201 - the one line before logging exists
        return EXIT_BAD_SETTING
    if arguments.command == "topology":
        return asyncio.run(topology_command(settings, subscriptions, arguments))
    if arguments.command == "asyncapi":
        return asyncapi_command(settings, subscriptions)
    return serve_command(
        arguments, settings, subscriptions, tracing, environ=environ, schedules=schedules
    )


def serve_command(
    arguments: argparse.Namespace,
    settings: Settings,
    subscriptions: Sequence[Subscription],
    tracing: Tracing | None,
    *,
    environ: Mapping[str, str],
    schedules: Sequence[Schedule] = (),
) -> int:
    """`conveyor serve`: one process, a supervisor of --workers N, or a reloader (--reload)."""
    if arguments.reload and (arguments.workers is not None or settings.workers > 1):
        refusal = f"conveyor: --reload runs one process: not with --workers or {PREFIX}WORKERS > 1"
        print(refusal, file=sys.stderr)  # noqa: T201 - the one line before logging exists
        return EXIT_BAD_SETTING
    configure_logging(settings)
    if arguments.reload:
        watched = watched_paths(settings.config_path, subscriptions)
        return run_on_loop(reload_on_change(settings, environ, watched), settings.event_loop)
    if settings.workers > 1 and not arguments.reuse_port:
        return run_on_loop(supervise(settings, environ), settings.event_loop)
    return run_on_loop(
        serve(
            settings, subscriptions, tracing, reuse_port=arguments.reuse_port, schedules=schedules
        ),
        settings.event_loop,
    )


def run_on_loop(main: Coroutine[Any, Any, int], event_loop: EventLoop) -> int:
    """Run `main` on asyncio's own loop, or on uvloop when CONVEYOR_EVENT_LOOP asks for it."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop is EventLoop.UVLOOP:
        import uvloop  # noqa: PLC0415 - optional (the uvloop extra); load_settings checked it

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def topology_command(
    settings: Settings,
    subscriptions: Sequence[Subscription],
    arguments: argparse.Namespace,
    out: TextIO = sys.stdout,
) -> int:
    topology = Topology(settings.namespace)
    delay_levels = levels_for(settings.max_delay)
    archive = archive_spec(settings)
    entities = await plan_topology(
        topology, subscriptions, delay_levels=delay_levels, archive=archive
    )
    if arguments.json:
        out.write(orjson.dumps(entities, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(render_topology(entities))
    if arguments.apply:
        try:
            await apply_topology(
                settings.amqp_addresses,
                topology,
                subscriptions,
                archive=archive,
                ssl_context=settings.amqp_tls_context(),
                delay_levels=delay_levels,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as error:
            # The broker answered: something with this name exists with other arguments.
            problem = f"conveyor: RabbitMQ refused a declaration: {error}"
            print(problem, file=sys.stderr)  # noqa: T201 - a CLI reports on stderr
            return EXIT_ANSWERED_ERROR
        except (OSError, aiormq.exceptions.AMQPError) as error:
            problem = f"conveyor: could not declare on {settings.amqp_url_redacted}: {error}"
            print(problem, file=sys.stderr)  # noqa: T201 - a CLI reports on stderr
            return EXIT_UNREACHABLE
        # On stderr: stdout stays the plan alone (JSON with --json).
        print(f"declared on {settings.amqp_url_redacted}", file=sys.stderr)  # noqa: T201 - a CLI
    return 0


async def serve(
    settings: Settings,
    subscriptions: Sequence[Subscription],
    tracing: Tracing | None = None,
    *,
    reuse_port: bool = False,
    schedules: Sequence[Schedule] = (),
) -> int:
    log = structlog.get_logger(component="service")
    app = build_app(settings, subscriptions, tracing=tracing, schedules=schedules)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        max_headers=MAX_REQUEST_HEADERS,
        max_field_size=MAX_HEADER_FIELD_BYTES,
        # aiohttp's only timer on an unfinished head: from the connection (or the last answer)
        # until a complete head, and on an idle keep-alive connection. The body has its own.
        keepalive_timeout=settings.http_read_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_port=reuse_port)
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
        schedules=[schedule.name for schedule in schedules],
        amqp_url=settings.amqp_url_redacted,
        event_loop=type(loop).__module__.split(".")[0],
    )
    await stop.wait()
    log.info("shutting down", drain_delay=settings.drain_delay)
    app[LIFECYCLE].draining = True
    await asyncio.sleep(settings.drain_delay)
    await runner.cleanup()
    log.info("stopped")
    return 0
