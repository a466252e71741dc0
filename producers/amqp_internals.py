"""Every use of aiormq's internals, in one place, and the start-up check that they exist.

conveyor reaches past aiormq's public API where that API lacks something. Each internal used,
and why:

- `Channel._on_confirm_frame` (replaced, `install_confirm_handler`): aiormq answers a
  `multiple` confirm by scanning every waiting confirmation; the publish pipeline walks each
  delivery tag once instead.
- `Channel._confirm_delivery` (`confirmation_settler`): settles one tag as aiormq does (ack,
  nack, a returned message's marker), called by that replacement.
- `Channel.confirmations`, `Channel.message_id_delivery_tag` (`confirmation_store`,
  `returned_message_tags`): the publish pipeline writes its frames itself, and registers each
  confirmation there, as `Channel.basic_publish` does, so that aiormq settles acks, nacks,
  returns and a closed channel. No public call registers a confirmation without publishing.
- `Channel.write_queue` (`frame_queue`): the pipeline queues many publishes as one frame set.
- `Channel._on_deliver_frame` (replaced, `install_delivery_handler`), `Channel._get_frame`,
  `Channel._on_consumer_done`, `Channel.consumers`: deliveries to hooked consumers become one
  task each, their bodies read from the frames, without aio-pika's two tasks and message copy;
  the others go on as aiormq runs them. aiormq has no public per-delivery hook below aio-pika.
- `Connection._Connection__last_frame_time` (`last_frame_time`): the watchdog cuts a link
  silent past two heartbeats; aiormq keeps when the last frame came only here.
- `Connection._reader_task` (`running_reader`): cancelling it is how aiormq itself drops a
  dead connection, so the robust connection reconnects.
- `Connection._Connection__connection_unblocked` (`is_blocked`): RabbitMQ's
  connection.blocked state (a memory or disk alarm); aiormq exposes no public flag.
- `Connection.connection_tune` (`channel_frame_max`): the frame_max the broker negotiated;
  `Channel.max_content_size` (`body_frame_max`): the body bytes one frame of it carries.

`check_internals` verifies each one against the installed aiormq; `conveyor serve` runs it
before anything starts and refuses to start without them (rather than run without the
watchdog or the blocked check). The functions that the hot paths use return bound methods
and containers, so a call site binds them once per channel, not per message.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol, cast

import aiormq
from aio_pika.abc import AbstractConnection
from aiormq.abc import ConfirmationFrameType, ConsumerCallback, FrameType
from pamqp import commands as spec

__all__ = [
    "REQUIRED_AIORMQ",
    "InternalsMissingError",
    "Reader",
    "body_frame_max",
    "channel_frame_max",
    "check_internals",
    "confirmation_settler",
    "confirmation_store",
    "consumer_callbacks",
    "consumer_done_callback",
    "frame_queue",
    "frame_reader",
    "install_confirm_handler",
    "install_delivery_handler",
    "is_blocked",
    "last_frame_time",
    "returned_message_tags",
    "running_reader",
]

# The aiormq releases whose internals this module was written and tested against.
REQUIRED_AIORMQ = "aiormq>=7.2,<7.3"

_LAST_FRAME = "_Connection__last_frame_time"
_UNBLOCKED = "_Connection__connection_unblocked"

# Methods: name -> (parameters after self, a coroutine function or not).
_CHANNEL_METHODS: dict[str, tuple[tuple[str, ...], bool]] = {
    "_on_confirm_frame": (("frame",), True),
    "_confirm_delivery": (("delivery_tag", "frame"), False),
    "_on_deliver_frame": (("frame",), True),
    "_get_frame": ((), True),
}
# Instance attributes, set in `__init__`.
_CHANNEL_ATTRIBUTES = (
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "consumers",
    "max_content_size",
)
_CONNECTION_ATTRIBUTES = (_LAST_FRAME, _UNBLOCKED)
# Declared on the class (annotations), set once connected.
_CONNECTION_DECLARED = ("_reader_task", "connection_tune")


class InternalsMissingError(RuntimeError):
    """The installed aiormq lacks an internal conveyor relies on."""


class Reader(Protocol):
    """aiormq's reader task (its own TaskWrapper): cancel() and done() like a Task."""

    def done(self) -> bool: ...
    def cancel(self) -> bool: ...


def _installed_aiormq() -> str:
    try:
        return version("aiormq")
    except PackageNotFoundError:  # pragma: no cover - imported above, so installed
        return "unknown"


def _assigned_in_init(cls: type) -> set[str]:
    init = cls.__dict__.get("__init__")
    code = getattr(init, "__code__", None)
    return set(code.co_names) if code is not None else set()


def _declared(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        names.update(inspect.get_annotations(klass))
    return names


def _channel_problems(channel_class: type) -> list[str]:
    problems = []
    for name, (parameters, is_coroutine) in _CHANNEL_METHODS.items():
        method = getattr(channel_class, name, None)
        if not callable(method):
            problems.append(f"Channel.{name}")
            continue
        found = tuple(inspect.signature(method).parameters)
        if found[1:] != parameters or inspect.iscoroutinefunction(method) != is_coroutine:
            kind = "a coroutine function" if is_coroutine else "a plain function"
            expected = ", ".join(("self", *parameters))
            problems.append(
                f"Channel.{name} as {kind} of ({expected}) (found ({', '.join(found)}))"
            )
    done = inspect.getattr_static(channel_class, "_on_consumer_done", None)
    if not isinstance(done, staticmethod):
        problems.append("Channel._on_consumer_done (a staticmethod)")
    assigned = _assigned_in_init(channel_class)
    problems.extend(f"Channel.{name}" for name in _CHANNEL_ATTRIBUTES if name not in assigned)
    return problems


def _connection_problems(connection_class: type) -> list[str]:
    assigned = _assigned_in_init(connection_class)
    declared = _declared(connection_class)
    problems = [f"Connection.{name}" for name in _CONNECTION_ATTRIBUTES if name not in assigned]
    problems.extend(f"Connection.{name}" for name in _CONNECTION_DECLARED if name not in declared)
    return problems


def check_internals(
    channel_class: type = aiormq.Channel,
    connection_class: type = aiormq.Connection,
    installed: str | None = None,
) -> None:
    """Raise InternalsMissingError, naming the aiormq this needs, when an internal is gone."""
    problems = _channel_problems(channel_class) + _connection_problems(connection_class)
    if problems:
        raise InternalsMissingError(
            f"the installed aiormq {installed or _installed_aiormq()} lacks "
            f"{', '.join(problems)}, which conveyor relies on; it needs {REQUIRED_AIORMQ}"
        )


# Publishing (producers.pipeline).


def channel_frame_max(channel: aiormq.Channel) -> int:
    """The largest frame the broker takes on `channel`'s connection (0: no limit)."""
    return channel.connection.connection_tune.frame_max


def body_frame_max(channel: aiormq.Channel) -> int:
    """The most body bytes one frame on `channel` carries (frame_max less the frame's overhead)."""
    return channel.max_content_size


def install_confirm_handler(
    channel: aiormq.Channel, handler: Callable[[ConfirmationFrameType], Awaitable[None]]
) -> None:
    """Have `handler` take every basic.ack and basic.nack of `channel`."""
    channel._on_confirm_frame = handler  # type: ignore[method-assign,assignment]  # noqa: SLF001 - see the module docstring


def confirmation_settler(
    channel: aiormq.Channel,
) -> Callable[[int | None, ConfirmationFrameType], None]:
    """aiormq's settling of one delivery tag's confirmation by a confirm frame."""
    return channel._confirm_delivery  # noqa: SLF001 - see the module docstring


def confirmation_store(channel: aiormq.Channel) -> MutableMapping[int, Any]:
    """Delivery tag -> confirmation future (or aiormq's `Returning` marker) of `channel`."""
    return cast("MutableMapping[int, Any]", channel.confirmations)


def returned_message_tags(channel: aiormq.Channel) -> dict[str, int]:
    """Message id -> delivery tag: how aiormq finds a returned message's confirmation."""
    return channel.message_id_delivery_tag


def frame_queue(channel: aiormq.Channel) -> asyncio.Queue[Any]:
    """The connection's write queue, which `channel` puts its frames in."""
    return channel.write_queue


# Consuming (consumers.delivery).


def install_delivery_handler(
    channel: aiormq.Channel, handler: Callable[[spec.Basic.Deliver], Awaitable[None]]
) -> None:
    """Have `handler` take every basic.deliver of `channel` (its content frames follow)."""
    channel._on_deliver_frame = handler  # type: ignore[method-assign,assignment]  # noqa: SLF001 - see the module docstring


def frame_reader(channel: aiormq.Channel) -> Callable[[], Awaitable[FrameType]]:
    """The next frame of `channel` (after a basic.deliver: its content header)."""
    return channel._get_frame  # noqa: SLF001 - see the module docstring


def consumer_callbacks(channel: aiormq.Channel) -> Mapping[str, ConsumerCallback]:
    """Consumer tag -> the callback aiormq runs for its deliveries on `channel`."""
    return channel.consumers


def consumer_done_callback(channel: aiormq.Channel) -> Callable[[asyncio.Task[Any]], None]:
    """What aiormq adds to each consumer callback's task: logs its failure."""
    return channel._on_consumer_done  # noqa: SLF001 - see the module docstring


# The connection (service.broker).


def _underlay(connection: AbstractConnection) -> object:
    return getattr(connection.transport, "connection", None)


def last_frame_time(connection: AbstractConnection) -> float | None:
    """The loop time the current underlying connection last received a frame (None: unknown)."""
    last = getattr(_underlay(connection), _LAST_FRAME, None)
    return last if isinstance(last, float) else None


def running_reader(connection: AbstractConnection) -> Reader | None:
    """The current underlying connection's frame reader, while it runs."""
    reader = getattr(_underlay(connection), "_reader_task", None)
    if reader is None or reader.done():
        return None
    return cast("Reader", reader)


def is_blocked(connection: AbstractConnection) -> bool:
    """True while RabbitMQ blocks the current underlying connection (connection.blocked)."""
    unblocked = getattr(_underlay(connection), _UNBLOCKED, None)
    return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()
