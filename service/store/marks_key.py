"""The key of first-copy marks (producers.first_copy), kept in the store every process shares."""

from __future__ import annotations

import secrets

from producers.first_copy import KEY_BYTES
from service.store.base import Store
from service.store.sql import Statements

__all__ = ["first_copy_key"]


async def first_copy_key(store: Store) -> bytes:
    """The deployment's key: written by the first process to ask, read by every other."""
    await store.write([(Statements.keep_marks_key, (secrets.token_hex(KEY_BYTES),))])
    rows = await store.query(Statements.select_marks_key)
    return bytes.fromhex(str(rows[0][0]))
