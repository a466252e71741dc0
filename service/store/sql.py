"""The schema and statements, written once with `?` placeholders; PostgreSQL gets `$n`."""

from __future__ import annotations

import re

__all__ = ["SCHEMA", "Statements", "numbered"]

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS conveyor_idempotency (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER,
        body BYTEA,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (scope, key)
    )
    """,
    "CREATE INDEX IF NOT EXISTS conveyor_idempotency_expiry ON conveyor_idempotency (expires_at)",
)


class Statements:
    # One statement claims a new key or takes over an expired one; a live key is left alone
    # (no row changes), which is how the caller learns it does not own the key.
    insert_claim = (
        "INSERT INTO conveyor_idempotency (scope, key, fingerprint, status, body, expires_at) "
        "VALUES (?, ?, ?, NULL, NULL, ?) ON CONFLICT (scope, key) DO UPDATE SET "
        "fingerprint = excluded.fingerprint, status = NULL, body = NULL, "
        "expires_at = excluded.expires_at WHERE conveyor_idempotency.expires_at < ?"
    )
    select_claim = (
        "SELECT fingerprint, status, body FROM conveyor_idempotency WHERE scope = ? AND key = ?"
    )
    complete = "UPDATE conveyor_idempotency SET status = ?, body = ? WHERE scope = ? AND key = ?"
    release = "DELETE FROM conveyor_idempotency WHERE scope = ? AND key = ? AND status IS NULL"
    purge = "DELETE FROM conveyor_idempotency WHERE expires_at < ?"


def numbered(statement: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...`."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _match: f"${next(counter)}", statement)
