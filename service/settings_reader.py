"""Reading CONVEYOR_* variables: each kind of value parsed and checked; errors name the variable."""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from service.broker.addresses import split_broker_urls
from service.store_url import store_url_problem

__all__ = [
    "LOG_LEVELS",
    "MIN_ADMIN_TOKEN_LENGTH",
    "NAMESPACE_PATTERN",
    "PREFIX",
    "Reader",
    "SettingError",
    "parse_duration",
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
_E = TypeVar("_E", bound=enum.StrEnum)


class SettingError(ValueError):
    """A setting has a value the service cannot use; the message names it and what it accepts."""

    def __init__(self, name: str, accepts: str, got: str | None = None) -> None:
        self.name = name
        self.accepts = accepts
        shown = "" if got is None else f" (got {got!r})"
        super().__init__(f"{name}: expected {accepts}{shown}")


def parse_duration(text: str) -> float:
    """Seconds from '250ms', '5s', '1.5m', '2h', '7d' or a bare number of seconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(PREFIX + name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def amqp_url(self, name: str, default: str) -> str:
        raw = self._raw(name) or default
        try:
            split_broker_urls(raw)
        except ValueError as error:
            # Never echo the value: it may hold the broker password.
            raise SettingError(
                PREFIX + name,
                "an amqp:// or amqps:// URL with a host, or several: comma-separated URLs or "
                f"amqp://user:pass@host1,host2:port/vhost ({error})",
            ) from None
        return raw

    def store_url(self, name: str, default: str) -> str:
        raw = self._raw(name) or default
        problem = store_url_problem(raw)
        if problem is not None:  # never echo the value: a PostgreSQL URL may hold a password
            raise SettingError(PREFIX + name, f"sqlite:///<path> or postgresql://... ({problem})")
        return raw

    def integer(self, name: str, default: int, *, low: int, high: int | None = None) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        bounds = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        try:
            value = int(raw)
        except ValueError:
            raise SettingError(PREFIX + name, bounds, raw) from None
        if value < low or (high is not None and value > high):
            raise SettingError(PREFIX + name, bounds, raw)
        return value

    def duration(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        accepts = "a duration such as 500ms, 5s, 2m (a bare number is seconds)"
        try:
            value = parse_duration(raw)
        except ValueError:
            raise SettingError(PREFIX + name, accepts, raw) from None
        if value <= 0 and not allow_zero:
            raise SettingError(PREFIX + name, "a duration above zero", raw)
        return value

    def path(self, name: str) -> Path | None:
        raw = self._raw(name)
        if raw is None:
            return None
        path = Path(raw)
        if not path.is_file():
            raise SettingError(PREFIX + name, "the path of a readable TOML file", raw)
        return path

    def readable_file(self, name: str) -> Path | None:
        raw = self._raw(name)
        if raw is None:
            return None
        path = Path(raw)
        if not path.is_file() or not os.access(path, os.R_OK):
            raise SettingError(PREFIX + name, "the path of a readable file", raw)
        return path

    def namespace(self, name: str, default: str) -> str:
        raw = self._raw(name) or default
        if not NAMESPACE_PATTERN.fullmatch(raw):
            raise SettingError(
                PREFIX + name, "1-64 characters of a-z, 0-9, '_' or '-', starting alphanumeric", raw
            )
        return raw

    def choice(self, name: str, kind: type[_E], default: _E) -> _E:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return kind(raw.lower())
        except ValueError:
            accepts = "one of " + ", ".join(member.value for member in kind)
            raise SettingError(PREFIX + name, accepts, raw) from None

    def level(self, name: str, default: str) -> str:
        raw = (self._raw(name) or default).lower()
        if raw not in LOG_LEVELS:
            raise SettingError(PREFIX + name, "one of " + ", ".join(LOG_LEVELS), raw)
        return raw

    def flag(self, name: str, *, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value not in _FLAGS:
            raise SettingError(PREFIX + name, "1 or 0 (true/false, yes/no, on/off)", raw)
        return _FLAGS[value]

    def admin_tokens(self, name: str) -> tuple[tuple[str, str], ...]:
        raw = self._raw(name)
        if raw is None:
            return ()
        tokens: list[tuple[str, str]] = []
        for entry in (part.strip() for part in raw.split(",")):
            # Names hold no ':', tokens may: a token with a ':' is given as name:token.
            who, _, token = entry.partition(":") if ":" in entry else ("admin", "", entry)
            if not _TOKEN_NAME.fullmatch(who) or len(token) < MIN_ADMIN_TOKEN_LENGTH:
                raise SettingError(
                    PREFIX + name,
                    f"a token of at least {MIN_ADMIN_TOKEN_LENGTH} characters, or "
                    "comma-separated name:token pairs (names: letters, digits, . _ -)",
                )
            tokens.append((who, token))
        return tuple(tokens)

    def keys(self, name: str) -> frozenset[str]:
        raw = self._raw(name)
        if raw is None:
            return frozenset()
        keys = frozenset(key.strip() for key in raw.split(",") if key.strip())
        if not keys:
            raise SettingError(PREFIX + name, "comma-separated non-empty keys")
        return keys
