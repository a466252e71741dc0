"""`conveyor check`: a good subscriptions file passes and shows what would be declared; a bad one
fails with exit 2 and one line for each of its problems, all of them. No broker involved."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from service.cli.check import check_command
from tests.support.cli import run_entry_point

HANDLERS = """
from __future__ import annotations

import dataclasses

import pydantic

from consumers import Event


class Signup(pydantic.BaseModel):
    email: str


@dataclasses.dataclass
class Refund:
    cents: int


class NotValidatable:
    pass


async def welcome(event: Event[Signup]) -> None:
    pass


async def refund(event: Event[Refund]) -> None:
    pass


async def plain(event: Event) -> None:
    pass


async def two_arguments(event: Event, extra: int) -> None:
    pass


async def odd_payload(event: Event[NotValidatable]) -> None:
    pass


async def unknown_payload(event: Event[Missing]) -> None:  # noqa: F821
    pass
"""

GOOD = """
[[subscriptions]]
name = "welcome"
events = ["user.signup"]
handler = "{module}:welcome"
validate_at_ingress = true

[[subscriptions]]
name = "refunds"
events = ["order.refunded"]
handler = "{module}:refund"
ordered_by = "subject"
partitions = 2
[subscriptions.retry]
in_process = 2
delays = ["1s", "5s"]

[[subscriptions]]
name = "audit"
events = ["#"]
handler = "{module}:plain"
"""

BAD = """
[[subscriptions]]
name = "one"
events = ["user..signup"]
handler = "{module}:two_arguments"
[subscriptions.retry]
in_process = 0

[[subscriptions]]
name = "two"
events = ["a"]
handler = "{module}:odd_payload"
prefetch = 2
concurrency = 4

[[subscriptions]]
name = "three"
events = ["a"]
handler = "no_such_module_here:handle"
ordered_by = "subject"
partitions = 0

[[subscriptions]]
name = "four"
events = ["a"]
handler = "{module}:plain"
validate_at_ingress = true

[[subscriptions]]
name = "four"
events = ["a"]
handler = "{module}:unknown_payload"
"""


@pytest.fixture
def handlers_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"check_handlers_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _environ(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "subscriptions.toml"
    path.write_text(text)
    return {"CONVEYOR_CONFIG": str(path), "CONVEYOR_NAMESPACE": "checked"}


async def test_a_good_file_passes_and_shows_what_would_be_declared(
    tmp_path: Path, handlers_module: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    environ = _environ(tmp_path, GOOD.format(module=handlers_module))

    assert await check_command(environ, out, err) == 0, err.getvalue()

    printed = out.getvalue()
    assert err.getvalue() == ""
    assert "welcome: user.signup" in printed
    assert "(data: Signup, validated at the ingress)" in printed
    assert "(data: Refund)" in printed
    assert "ordered by subject x2" in printed
    assert "2 in process, then 1s, 5s" in printed
    assert "(untyped data)" in printed
    assert "queue    checked.welcome x-queue-type=quorum" in printed
    assert "binding  checked.events -> checked.audit [#]" in printed


async def test_a_bad_file_fails_with_one_line_per_problem(
    tmp_path: Path, handlers_module: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    environ = _environ(tmp_path, BAD.format(module=handlers_module))

    assert await check_command(environ, out, err) == 2

    lines = err.getvalue().splitlines()
    expected = [
        "subscriptions[0] (one).events as a non-empty list of topic patterns",
        "subscriptions[0] (one).retry.in_process as an integer from 1 to 10",
        "subscriptions[1] (two).concurrency no larger than prefetch (2)",
        "subscriptions[2] (three).handler importable (ModuleNotFoundError",
        "subscriptions[2] (three).partitions as an integer from 1 to",
        "subscriptions[3] (four).validate_at_ingress only with a typed handler",
        "subscriptions[4] (four).handler usable (the annotation of 'event' cannot be resolved",
        "unique subscription names; repeated: four",
    ]
    for part in expected:
        assert [line for line in lines if part in line], (part, lines)
    assert len(lines) == len(expected), lines
    assert all(line.startswith("conveyor check: CONVEYOR_CONFIG: expected ") for line in lines)
    assert out.getvalue() == ""


async def test_signature_and_payload_problems_are_named(
    tmp_path: Path, handlers_module: str
) -> None:
    module = handlers_module
    text = (
        f"[[subscriptions]]\nname = 'a'\nevents = ['a']\nhandler = '{module}:two_arguments'\n"
        f"[[subscriptions]]\nname = 'b'\nevents = ['b']\nhandler = '{module}:odd_payload'\n"
    )
    err = io.StringIO()

    assert await check_command(_environ(tmp_path, text), io.StringIO(), err) == 2

    first, second = err.getvalue().splitlines()
    assert "(a).handler usable (it must take one argument, the event, and require no" in first
    assert "(b).handler usable (pydantic cannot validate" in second
    assert "NotValidatable" in second


async def test_the_command_exits_2_from_its_entry_point(tmp_path: Path) -> None:
    text = "[[subscriptions]]\nname = 'a'\nevents = ['a.']\nhandler = 'examples.handlers:nope'\n"
    result = await run_entry_point("check", environ=_environ(tmp_path, text))
    assert result.code == 2, result
    assert result.err.count("\n") == 2, result.err
    good = await run_entry_point(
        "check", environ={"CONVEYOR_CONFIG": "examples/subscriptions.toml"}
    )
    assert good.code == 0, good.err
    assert "welcome-email: user.signup -> examples.handlers:send_welcome (data: Signup)" in good.out
