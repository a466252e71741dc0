"""`conveyor serve` checks aiormq's internals before it starts, and the fenced readers find them
on a live link (they read missing internals as "unknown", so a wrong name would hide)."""

from __future__ import annotations

import asyncio
import functools
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest

from producers import amqp_internals
from producers.amqp_internals import REQUIRED_AIORMQ
from service.cli import main as cli_main


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, amqp_url: str) -> list[object]:
    """`conveyor serve`'s settings, with the service itself replaced by a recorder."""
    calls: list[object] = []

    async def serve(*arguments: object, **options: object) -> int:
        calls.append(arguments)
        return 0

    monkeypatch.setattr(cli_main, "serve", serve)
    monkeypatch.setattr(cli_main, "configure_logging", lambda _settings: None)
    monkeypatch.setenv("CONVEYOR_AMQP_URL", amqp_url)
    monkeypatch.setenv("CONVEYOR_HTTP_PORT", "0")
    monkeypatch.setenv("CONVEYOR_STORE_URL", f"sqlite:///{tmp_path}/store.db")
    return calls


def test_serve_refuses_to_start_without_an_internal_naming_the_aiormq_it_needs(
    served: list[object], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    members = {k: v for k, v in vars(aiormq.Channel).items() if k != "_on_deliver_frame"}
    without_hook = type("Channel", (), members)
    monkeypatch.setattr(
        cli_main,
        "check_internals",
        functools.partial(amqp_internals.check_internals, channel_class=without_hook),
    )

    assert cli_main.main(["serve"]) == 2

    output = capsys.readouterr()
    expected = (
        f"conveyor: the installed aiormq {version('aiormq')} lacks Channel._on_deliver_frame, "
        f"which conveyor relies on; it needs {REQUIRED_AIORMQ}"
    )
    assert output.err.splitlines() == [expected]
    assert output.out == ""
    assert served == []


def test_serve_starts_with_the_installed_aiormq(
    served: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main.main(["serve"]) == 0

    assert len(served) == 1
    assert capsys.readouterr().err == ""


async def test_the_fenced_readers_find_the_internals_on_a_live_link(amqp_url: str) -> None:
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        loop = asyncio.get_running_loop()
        last = amqp_internals.last_frame_time(connection)
        assert last is not None
        assert 0 <= loop.time() - last < 60
        assert amqp_internals.running_reader(connection) is not None
        assert amqp_internals.is_blocked(connection) is False
        channel = await connection.channel(publisher_confirms=True)
        underlay: Any = await channel.get_underlay_channel()
        assert connection.transport is not None
        negotiated = connection.transport.connection.connection_tune.frame_max
        assert amqp_internals.channel_frame_max(underlay) == negotiated > 0
    finally:
        await connection.close()
    assert amqp_internals.running_reader(connection) is None
