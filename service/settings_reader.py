"""Declaring and reading CONVEYOR_* variables: each kind of value parsed and checked; errors name
the variable and never echo a secret one's value."""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from service.broker.addresses import split_broker_urls
from service.store_url import store_url_problem

__all__ = [
    "LOG_LEVELS",
    "MIN_ADMIN_TOKEN_LENGTH",
    "NAMESPACE_PATTERN",
    "PREFIX",
    "DeclaredSetting",
    "SettingError",
    "UnusableValueError",
    "admin_tokens",
    "amqp_url",
    "api_keys",
    "choice",
    "declared",
    "duration",
    "flag",
    "integer",
    "log_level",
    "namespace",
    "optional",
    "parse_duration",
    "readable_file",
    "setting",
    "store_url",
    "text",
    "toml_file",
]

PREFIX = "CONVEYOR_"
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MIN_ADMIN_TOKEN_LENGTH = 16
_FLAGS = {"1": True, "true": True, "yes": True, "on": True} | {
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Where a Settings field keeps its declaration (dataclasses' per-field metadata).
_DECLARATION = "conveyor.setting"
_T = TypeVar("_T")
_U = TypeVar("_U")
_E = TypeVar("_E", bound=enum.StrEnum)


class SettingError(ValueError):
    """A setting has a value the service cannot use; the message names it and what it accepts."""

    def __init__(self, name: str, accepts: str, got: str | None = None) -> None:
        self.name = name
        self.accepts = accepts
        shown = "" if got is None else f" (got {got!r})"
        super().__init__(f"{name}: expected {accepts}{shown}")


class UnusableValueError(ValueError):
    """A parser's verdict on a value; reading the setting turns it into a SettingError."""

    def __init__(self, accepts: str, got: str | None = None) -> None:
        self.accepts = accepts
        self.got = got
        super().__init__(accepts)


@dataclass(frozen=True, slots=True)
class DeclaredSetting:
    """One CONVEYOR_* variable: what the help output and docs/settings.md show of it, and how
    its value is parsed. A secret one is kept out of repr and out of error messages."""

    name: str  # without the CONVEYOR_ prefix
    default: str  # as the help and docs/settings.md show it
    help: str
    secret: bool
    parse: Callable[[str], object]

    @property
    def variable(self) -> str:
        return PREFIX + self.name

    def read(self, environ: Mapping[str, str]) -> object | None:
        """The parsed value, or None when the variable is unset or blank."""
        raw = environ.get(self.variable)
        if raw is None or raw.strip() == "":
            return None
        try:
            return self.parse(raw.strip())
        except UnusableValueError as refused:
            got = None if self.secret else refused.got
            raise SettingError(self.variable, refused.accepts, got) from None


def setting(
    name: str, parse: Callable[[str], _T], default: str, help_text: str, *, secret: bool = False
) -> _T:
    """A Settings field declared with its variable, parser, default (written as a user would set
    it, and parsed by the same parser), help text, and whether it is secret."""
    declaration = DeclaredSetting(name, default, help_text, secret, parse)
    value: _T = dataclasses.field(
        default=parse(default), repr=not secret, metadata={_DECLARATION: declaration}
    )
    return value


def optional(
    name: str,
    parse: Callable[[str], _T],
    unset: _U,
    shown: str,
    help_text: str,
    *,
    secret: bool = False,
) -> _T | _U:
    """A Settings field whose default is no value (`unset`), shown in the help as `shown`."""
    declaration = DeclaredSetting(name, shown, help_text, secret, parse)
    value: _T | _U = dataclasses.field(
        default=unset, repr=not secret, metadata={_DECLARATION: declaration}
    )
    return value


def declared(fields: tuple[dataclasses.Field[Any], ...]) -> dict[str, DeclaredSetting]:
    """Each field's declaration, by field name; a field declared without one is a bug."""
    return {field.name: field.metadata[_DECLARATION] for field in fields}


def parse_duration(text: str) -> float:
    """Seconds from '250ms', '5s', '1.5m', '2h', '7d' or a bare number of seconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def text(raw: str) -> str:
    return raw


def amqp_url(raw: str) -> str:
    try:
        split_broker_urls(raw)
    except ValueError as error:
        raise UnusableValueError(
            "an amqp:// or amqps:// URL with a host, or several: comma-separated URLs or "
            f"amqp://user:pass@host1,host2:port/vhost ({error})",
        ) from None
    return raw


def store_url(raw: str) -> str:
    problem = store_url_problem(raw)
    if problem is not None:
        raise UnusableValueError(f"sqlite:///<path> or postgresql://... ({problem})")
    return raw


def integer(*, low: int, high: int | None = None) -> Callable[[str], int]:
    bounds = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise UnusableValueError(bounds, raw) from None
        if value < low or (high is not None and value > high):
            raise UnusableValueError(bounds, raw)
        return value

    return parse


def duration(*, allow_zero: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = parse_duration(raw)
        except ValueError:
            accepts = "a duration such as 500ms, 5s, 2m (a bare number is seconds)"
            raise UnusableValueError(accepts, raw) from None
        if value <= 0 and not allow_zero:
            raise UnusableValueError("a duration above zero", raw)
        return value

    return parse


def toml_file(raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise UnusableValueError("the path of a readable TOML file", raw)
    return path


def readable_file(raw: str) -> Path:
    path = Path(raw)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UnusableValueError("the path of a readable file", raw)
    return path


def namespace(raw: str) -> str:
    if not NAMESPACE_PATTERN.fullmatch(raw):
        raise UnusableValueError(
            "1-64 characters of a-z, 0-9, '_' or '-', starting alphanumeric", raw
        )
    return raw


def choice(kind: type[_E]) -> Callable[[str], _E]:
    def parse(raw: str) -> _E:
        try:
            return kind(raw.lower())
        except ValueError:
            accepts = "one of " + ", ".join(member.value for member in kind)
            raise UnusableValueError(accepts, raw) from None

    return parse


def log_level(raw: str) -> str:
    level = raw.lower()
    if level not in LOG_LEVELS:
        raise UnusableValueError("one of " + ", ".join(LOG_LEVELS), level)
    return level


def flag(raw: str) -> bool:
    value = raw.lower()
    if value not in _FLAGS:
        raise UnusableValueError("1 or 0 (true/false, yes/no, on/off)", raw)
    return _FLAGS[value]


def admin_tokens(raw: str) -> tuple[tuple[str, str], ...]:
    tokens: list[tuple[str, str]] = []
    for entry in (part.strip() for part in raw.split(",")):
        # Names hold no ':', tokens may: a token with a ':' is given as name:token.
        who, _, token = entry.partition(":") if ":" in entry else ("admin", "", entry)
        if not _TOKEN_NAME.fullmatch(who) or len(token) < MIN_ADMIN_TOKEN_LENGTH:
            raise UnusableValueError(
                f"a token of at least {MIN_ADMIN_TOKEN_LENGTH} characters, or "
                "comma-separated name:token pairs (names: letters, digits, . _ -)",
            )
        tokens.append((who, token))
    return tuple(tokens)


def api_keys(raw: str) -> frozenset[str]:
    keys = frozenset(key.strip() for key in raw.split(",") if key.strip())
    if not keys:
        raise UnusableValueError("comma-separated non-empty keys")
    return keys
