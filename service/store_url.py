"""What CONVEYOR_STORE_URL may be, checked when the settings load: a URL the store cannot even
parse is a named setting at start, not a traceback once the app opens the store."""

from __future__ import annotations

from yarl import URL

__all__ = ["store_url_problem"]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_MAX_PORT = 65535


def store_url_problem(raw: str) -> str | None:
    """What is wrong with `raw` as a store URL, or None. Never quotes the URL, which may hold a
    PostgreSQL password (yarl's own messages may quote its host part)."""
    scheme = raw.split(":", 1)[0]
    if scheme == "sqlite":
        # The store opens what follows the third slash as a path: there must be one.
        if not raw.startswith(_SQLITE_PREFIX) or not raw.removeprefix(_SQLITE_PREFIX):
            return "sqlite:/// followed by a file path"
        return None
    if scheme not in _POSTGRES_SCHEMES or "://" not in raw:
        return "a sqlite:/// or postgresql:// URL"
    authority = raw.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    after_host = authority.rpartition("@")[2].rpartition("]")[2]  # past an IPv6 literal
    port = after_host.rpartition(":")[2] if ":" in after_host else ""
    if port.isascii() and port.isdigit() and not 0 < int(port) <= _MAX_PORT:
        return f"a port from 1 to {_MAX_PORT}"
    try:
        URL(raw)
    except ValueError:
        return "a URL with one host and a numeric port"
    return None
