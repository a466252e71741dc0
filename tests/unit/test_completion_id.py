"""consumers.completions.completion_id: the same ids as uuid.uuid5, so repeats keep their id."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from consumers.completions import _ID_NAMESPACE, completion_id


@given(st.text())
def test_completion_ids_are_uuid5_in_the_completion_namespace(identity: str) -> None:
    assert completion_id(identity) == str(uuid.uuid5(_ID_NAMESPACE, identity))


def test_a_known_completion_id_is_unchanged() -> None:
    identity = "/orders\x00e-1\x00billing\x00conveyor.event.succeeded"
    assert completion_id(identity) == str(uuid.uuid5(_ID_NAMESPACE, identity))
    assert uuid.UUID(completion_id(identity)).version == 5
