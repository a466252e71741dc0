"""Bearer keys from CONVEYOR_API_KEYS: what the event API asks of a client when keys are set."""

from __future__ import annotations

import hmac

from aiohttp import web

__all__ = ["UnauthorizedError", "authorize"]


class UnauthorizedError(Exception):
    pass


def authorize(request: web.Request, keys: frozenset[str]) -> None:
    if not keys:
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    # Compare against every key in constant time so timing does not reveal a partial match.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    if scheme.lower() != "bearer" or not presented or not matched:
        raise UnauthorizedError(
            "send 'Authorization: Bearer <key>' with a key from CONVEYOR_API_KEYS"
        )
