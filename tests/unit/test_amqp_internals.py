"""The start-up check of the aiormq internals conveyor relies on (producers.amqp_internals)."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import aiormq
import pytest

from producers.amqp_internals import REQUIRED_AIORMQ, InternalsMissingError, check_internals


def _channel_without(name: str, **replaced: Any) -> type:
    """A stand-in for aiormq's Channel: its own members, less `name`, with `replaced` swapped."""
    members = {key: value for key, value in vars(aiormq.Channel).items() if key != name}
    return type("Channel", (), {**members, **replaced})


def test_the_installed_aiormq_has_every_internal_conveyor_uses() -> None:
    check_internals()


@pytest.mark.parametrize("method", ["_on_deliver_frame", "_get_frame", "_confirm_delivery"])
def test_a_missing_channel_method_is_named_with_the_aiormq_needed(method: str) -> None:
    with pytest.raises(InternalsMissingError) as missing:
        check_internals(channel_class=_channel_without(method), installed="9.9.9")

    assert str(missing.value) == (
        f"the installed aiormq 9.9.9 lacks Channel.{method}, which conveyor relies on; "
        f"it needs {REQUIRED_AIORMQ}"
    )


def test_a_method_whose_parameters_changed_is_refused() -> None:
    def _confirm_delivery(self: object, delivery_tag: object) -> None: ...

    stand_in = _channel_without("_confirm_delivery", _confirm_delivery=_confirm_delivery)

    with pytest.raises(
        InternalsMissingError,
        match=(
            r"Channel\._confirm_delivery as a plain function of \(self, delivery_tag, frame\) "
            r"\(found \(self, delivery_tag\)\)"
        ),
    ):
        check_internals(channel_class=stand_in)


def test_a_handler_that_is_no_longer_a_coroutine_is_refused() -> None:
    def _on_deliver_frame(self: object, frame: object) -> None: ...

    stand_in = _channel_without("_on_deliver_frame", _on_deliver_frame=_on_deliver_frame)

    with pytest.raises(
        InternalsMissingError,
        match=r"Channel\._on_deliver_frame as a coroutine function of \(self, frame\)",
    ):
        check_internals(channel_class=stand_in)


def test_a_connection_without_the_last_frame_time_is_refused() -> None:
    class Connection:
        _reader_task: object
        connection_tune: object

        def __init__(self) -> None:
            self._Connection__connection_unblocked = None

    with pytest.raises(InternalsMissingError) as missing:
        check_internals(connection_class=Connection)

    message = str(missing.value)
    assert "Connection._Connection__last_frame_time" in message
    assert "_Connection__connection_unblocked" not in message
    assert f"the installed aiormq {version('aiormq')} lacks" in message
    assert message.endswith(f"it needs {REQUIRED_AIORMQ}")


def test_a_connection_without_its_reader_task_is_refused() -> None:
    members = dict(vars(aiormq.Connection))
    members["__annotations__"] = {
        key: value for key, value in members["__annotations__"].items() if key != "_reader_task"
    }
    stand_in = type("Connection", (), members)

    with pytest.raises(InternalsMissingError, match=r"Connection\._reader_task,"):
        check_internals(connection_class=stand_in)
