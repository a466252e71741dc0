"""Bearer keys from CONVEYOR_API_KEYS: what the event API asks of a client when keys are set."""

from __future__ import annotations

import hmac

from aiohttp import web

__all__ = ["ForbiddenError", "UnauthorizedError", "authorize", "authorize_admin"]


class UnauthorizedError(Exception):
    """No credentials, or not in the expected form (401)."""


class ForbiddenError(Exception):
    """Credentials in the right form that grant nothing here (403)."""


def authorize(request: web.Request, keys: frozenset[str]) -> None:
    if not keys:
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    # Compare against every key in constant time so timing does not reveal a partial match.
    matched = False
    # Header bytes that are not UTF-8 arrive as lone surrogates: compare the bytes as sent.
    sent = presented.encode(errors="surrogateescape")
    for key in keys:
        matched |= hmac.compare_digest(sent, key.encode())
    if scheme.lower() != "bearer" or not presented or not matched:
        raise UnauthorizedError(
            "send 'Authorization: Bearer <key>' with a key from CONVEYOR_API_KEYS"
        )


def authorize_admin(request: web.Request, tokens: tuple[tuple[str, str], ...]) -> str:
    """The name of the admin token presented (for the audit log); 401 without one, 403 if wrong."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise UnauthorizedError(
            "send 'Authorization: Bearer <token>' with a token from CONVEYOR_ADMIN_TOKEN"
        )
    # Compare against every token in constant time so timing does not reveal which matched.
    who = None
    sent = presented.encode(errors="surrogateescape")  # as in `authorize`
    for name, token in tokens:
        if hmac.compare_digest(sent, token.encode()):
            who = name
    if who is None:
        raise ForbiddenError("this token is not an admin token (CONVEYOR_ADMIN_TOKEN)")
    return who
