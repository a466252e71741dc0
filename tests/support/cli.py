"""Driving the `conveyor` client commands in tests: in this process against a running conveyor,
or as the real entry point (`python -m service ...`) in a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.client import run_client
from service.cli.main import build_parser

if TYPE_CHECKING:  # conftest imports support modules: no import cycle at run time
    from tests.conftest import Running

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE_URL = "http://127.0.0.1:9"


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def cli_environ(conveyor: Running | None) -> dict[str, str]:
    """What a shell next to `conveyor` would have set: its URL, broker and namespace."""
    url = str(conveyor.client.make_url("/")) if conveyor else UNREACHABLE_URL
    environ = {"CONVEYOR_URL": url}
    if conveyor is not None:
        environ |= {
            "CONVEYOR_AMQP_URL": conveyor.settings.amqp_url,
            "CONVEYOR_NAMESPACE": conveyor.settings.namespace,
        }
    return environ


async def run_cli(
    conveyor: Running | None, *argv: str, environ: dict[str, str] | None = None
) -> CliResult:
    """A client command in this process (`environ` over what `cli_environ` sets); stdout and
    stderr as it printed them."""
    arguments = build_parser(cli_environ(conveyor) | (environ or {})).parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = await run_client(arguments, out)
    return CliResult(code, out.getvalue(), err.getvalue())


async def run_entry_point(*argv: str, environ: dict[str, str], timeout: float = 30) -> CliResult:
    """`conveyor <argv>` as its own process, with `environ` over this one's."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *argv,
        env={**os.environ, **environ},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:  # it did not stop by itself: not left running
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return CliResult(process.returncode, out.decode(), err.decode())
