"""Correlation ids and claim owners are distinct random UUIDs in the text forms expected."""

from __future__ import annotations

import uuid

from service.http.idempotency import _new_owner
from service.http.ingress import _new_correlation_id


def test_correlation_ids_are_distinct_version_4_uuids_in_text_form() -> None:
    made = [_new_correlation_id() for _ in range(5_000)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text
    # Random past the fixed bits: every hex digit shows up in the first position.
    assert {text[0] for text in made} == set("0123456789abcdef")


def test_claim_owners_are_distinct_128_bit_hex() -> None:
    made = [_new_owner() for _ in range(5_000)]
    assert len(set(made)) == len(made)
    assert all(len(owner) == 32 and int(owner, 16) >= 0 for owner in made)
