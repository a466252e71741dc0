"""The schema and statements, written once with `?` placeholders; PostgreSQL gets `$n`.

The schema is a list of migrations; `conveyor_schema` holds how many ran, and each start runs
the rest. Statements use only what SQLite (3.24+) and PostgreSQL both understand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = ["EXPIRING_TABLES", "MIGRATIONS", "Statements", "by_statement", "in_chunks", "numbered"]

_T = TypeVar("_T")
_CLAIM_ROW = "(?, ?, ?, ?, NULL, NULL, ?, 0)"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: idempotency keys of requests and of events' CloudEvents identity
    (
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
        (
            "CREATE INDEX IF NOT EXISTS conveyor_idempotency_expiry "
            "ON conveyor_idempotency (expires_at)"
        ),
    ),
    # 2: event statuses, one row per event and one per (event, subscription); claim owners
    (
        # Who holds a claim: a stale owner (its lease ran out, another took over) then cannot
        # overwrite or release the new owner's claim.
        "ALTER TABLE conveyor_idempotency ADD COLUMN owner TEXT",
        """
        CREATE TABLE IF NOT EXISTS conveyor_events (
            event_id TEXT NOT NULL,
            source TEXT NOT NULL,
            attributes TEXT NOT NULL,
            routed TEXT,
            accepted_at DOUBLE PRECISION,
            expires_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (event_id, source)
        )
        """,
        "CREATE INDEX IF NOT EXISTS conveyor_events_expiry ON conveyor_events (expires_at)",
        """
        CREATE TABLE IF NOT EXISTS conveyor_deliveries (
            event_id TEXT NOT NULL,
            source TEXT NOT NULL,
            subscription TEXT NOT NULL,
            state TEXT NOT NULL,
            state_rank INTEGER NOT NULL,
            replays INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            next_attempt_at DOUBLE PRECISION,
            last_error TEXT,
            first_attempt_at DOUBLE PRECISION,
            updated_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION,
            expires_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (event_id, source, subscription)
        )
        """,
        (
            "CREATE INDEX IF NOT EXISTS conveyor_deliveries_expiry "
            "ON conveyor_deliveries (expires_at)"
        ),
    ),
    # 3: a delivery's earlier rounds (before each replay from the DLQ), as comma-separated
    # JSON objects
    ("ALTER TABLE conveyor_deliveries ADD COLUMN history TEXT",),
    # 4: whether a claim took over an earlier claim of its key (expired, or released after an
    # attempt that failed): a copy of its event may be in RabbitMQ already (service.http.
    # idempotency marks only a first claim's publish as the first copy)
    ("ALTER TABLE conveyor_idempotency ADD COLUMN earlier_attempt INTEGER",),
    # 5: delayed events: when one is due, and whether it is still scheduled, due (released to
    # the events exchange) or cancelled
    (
        "ALTER TABLE conveyor_events ADD COLUMN due_at DOUBLE PRECISION",
        "ALTER TABLE conveyor_events ADD COLUMN delay_state TEXT",
    ),
    # 6: the newest tick each schedule fired (service/schedules), so that a start knows which
    # ticks its stop missed; one small row per schedule name, kept
    (
        """
        CREATE TABLE IF NOT EXISTS conveyor_schedule_ticks (
            name TEXT NOT NULL PRIMARY KEY,
            tick DOUBLE PRECISION NOT NULL,
            fired_at DOUBLE PRECISION NOT NULL
        )
        """,
    ),
)

# Every table whose rows carry `expires_at` and are purged once it passed (each has an index
# on it). Each backend deletes them a chunk at a time, in its own dialect.
EXPIRING_TABLES = ("conveyor_idempotency", "conveyor_events", "conveyor_deliveries")


# The round a replay ends, as one JSON object appended to `history`: plain string operations,
# which SQLite and PostgreSQL share (their JSON functions differ). `last_error` is JSON already.
# Past MAX_HISTORY_CHARS (at least 48 rounds of the largest errors) it starts over from the
# round just ended: replays are an operator's, but each one must not grow the row for good.
MAX_HISTORY_CHARS = 65536
_HISTORY_WITH_ROUND_ENDED = (
    f"COALESCE(CASE WHEN length(conveyor_deliveries.history) <= {MAX_HISTORY_CHARS} "
    "THEN conveyor_deliveries.history || ',' END, '') "
    '|| \'{"state":"\' || conveyor_deliveries.state '
    '|| \'","replays":\' || conveyor_deliveries.replays '
    "|| ',\"attempts\":' || conveyor_deliveries.attempts "
    # Whole microseconds: a float's text differs between the two (SQLite keeps 15 digits).
    "|| ',\"at_us\":' || CAST(ROUND(COALESCE(conveyor_deliveries.finished_at, "
    "conveyor_deliveries.updated_at) * 1000000) AS BIGINT) "
    "|| ',\"last_error\":' || COALESCE(conveyor_deliveries.last_error, 'null') || '}'"
)


class Statements:
    create_version = "CREATE TABLE IF NOT EXISTS conveyor_schema (version INTEGER NOT NULL)"
    select_version = "SELECT version FROM conveyor_schema"
    insert_version = "INSERT INTO conveyor_schema (version) VALUES (?)"
    update_version = "UPDATE conveyor_schema SET version = ?"

    # One statement claims a new key or takes over an expired one; a live key is left alone
    # (no row changes), which is how the caller learns it does not own the key.
    # A released claim (no owner, no answer) is taken over at once; its row stays until it
    # expires so that the next claim knows an attempt came before it (`earlier_attempt`).
    insert_claim = (
        "INSERT INTO conveyor_idempotency "
        "(scope, key, fingerprint, owner, status, body, expires_at, earlier_attempt) "
        "VALUES (?, ?, ?, ?, NULL, NULL, ?, 0) ON CONFLICT (scope, key) DO UPDATE SET "
        "fingerprint = excluded.fingerprint, owner = excluded.owner, status = NULL, "
        "body = NULL, expires_at = excluded.expires_at, earlier_attempt = 1 "
        "WHERE conveyor_idempotency.expires_at < ? "
        "OR (conveyor_idempotency.owner IS NULL AND conveyor_idempotency.status IS NULL)"
    )
    # Rows kept per scope (`request`: Idempotency-Key headers; `event`: CloudEvents identities).
    # The readiness probe's own row is no key anyone sent.
    count_keys = (
        "SELECT scope, COUNT(*) FROM conveyor_idempotency "
        "WHERE scope NOT IN ('conveyor-probe', 'conveyor-marks') GROUP BY scope"
    )
    # The key of first-copy marks (producers.first_copy), shared by every process of the
    # store: the first to start writes it, the rest read it. Never expires.
    keep_marks_key = (
        "INSERT INTO conveyor_idempotency (scope, key, fingerprint, owner, status, body, "
        "expires_at) VALUES ('conveyor-marks', 'first-copy', ?, NULL, 0, NULL, 1e300) "
        "ON CONFLICT (scope, key) DO NOTHING"
    )
    select_marks_key = (
        "SELECT fingerprint FROM conveyor_idempotency "
        "WHERE scope = 'conveyor-marks' AND key = 'first-copy'"
    )
    select_claim = (
        "SELECT fingerprint, status, body FROM conveyor_idempotency WHERE scope = ? AND key = ?"
    )
    # The answer is kept for the whole TTL; until then the claim only holds a short lease, so
    # a process that died mid-request does not block the key for a day.
    complete = (
        "UPDATE conveyor_idempotency SET status = ?, body = ?, expires_at = ? "
        "WHERE scope = ? AND key = ? AND owner = ?"
    )

    @staticmethod
    def insert_claims(count: int, *, returning: bool = True) -> str:
        """`insert_claim` for `count` distinct keys; returns the keys claimed (new or taken over),
        or, without `returning`, only how many (the statement's row count: SQLite's batches).

        The keys must be distinct: PostgreSQL refuses to touch one row twice in one statement.
        RETURNING needs SQLite 3.35 or later.
        """
        rows = ", ".join([_CLAIM_ROW] * count)
        statement = Statements.insert_claim.replace(f"VALUES {_CLAIM_ROW}", f"VALUES {rows}")
        return statement + " RETURNING scope, key, earlier_attempt" if returning else statement

    @staticmethod
    def insert_new_claims(count: int) -> str:
        """`count` keys claimed only where no row of theirs exists at all (first claims); the
        statement's row count says how many. Takes `insert_claims`' parameters but the last."""
        rows = ", ".join([_CLAIM_ROW] * count)
        return (
            "INSERT INTO conveyor_idempotency "  # noqa: S608 - only placeholders are interpolated
            "(scope, key, fingerprint, owner, status, body, expires_at, earlier_attempt) "
            f"VALUES {rows} ON CONFLICT (scope, key) DO NOTHING"
        )

    @staticmethod
    def select_claims(count: int) -> str:
        """`select_claim` for `count` keys at once, each row led by its scope and key and
        ending with the claim's owner, expiry and `earlier_attempt`; a key with no row comes
        back with NULLs (its fingerprint, NOT NULL in a row, tells).

        Correlated subqueries through the primary key, one a column, for the reason given at
        `select_succeeded_among`: as a join, PostgreSQL scanned the whole table for each call
        while the table had no statistics, a cost growing with the table.
        """
        keys = ", ".join(["(?, ?)"] * count)
        found = [
            f"(SELECT c.{column} FROM conveyor_idempotency c "  # noqa: S608 - a column name of ours
            f"WHERE c.scope = w.scope AND c.key = w.key) AS {column}"
            for column in (
                "fingerprint",
                "status",
                "body",
                "owner",
                "expires_at",
                "earlier_attempt",
            )
        ]
        return (
            f"WITH wanted (scope, key) AS (VALUES {keys}) "  # noqa: S608 - only placeholders and column names are interpolated
            f"SELECT w.scope, w.key, {', '.join(found)} FROM wanted w"
        )

    # The readiness probe's write: one row of its own scope, its expiry moved on each time, so
    # that the page really changes (SQLite skips writing a row rewritten as it was).
    probe = (
        "INSERT INTO conveyor_idempotency (scope, key, fingerprint, owner, status, body, "
        "expires_at) VALUES ('conveyor-probe', 'readyz', '', NULL, NULL, NULL, ?) "
        "ON CONFLICT (scope, key) DO UPDATE SET expires_at = excluded.expires_at"
    )

    # A released claim keeps its row, without an owner, until the new expiry (the first `?`):
    # the attempt that failed may have reached RabbitMQ, and the key's next claim must know.
    release = (
        "UPDATE conveyor_idempotency SET owner = NULL, expires_at = ? "
        "WHERE scope = ? AND key = ? AND owner = ? AND status IS NULL"
    )

    # The ingress knows where it routed the event and when it accepted it: its row wins.
    accept_event = (
        "INSERT INTO conveyor_events (event_id, source, attributes, routed, accepted_at, "
        "expires_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, source) DO UPDATE SET "
        "attributes = excluded.attributes, routed = excluded.routed, "
        "accepted_at = excluded.accepted_at, expires_at = excluded.expires_at"
    )
    # A consumer only makes sure the event has a row (it may have come straight over AMQP).
    see_event = (
        "INSERT INTO conveyor_events (event_id, source, attributes, routed, accepted_at, "
        "expires_at) VALUES (?, ?, ?, NULL, NULL, ?) ON CONFLICT (event_id, source) DO NOTHING"
    )
    # Keeps the furthest state: a later replay from the DLQ, then more attempts, then a later
    # state for the same attempt. An update that arrives late (another process, a batch
    # behind) never rolls a status back.
    put_delivery = (
        "INSERT INTO conveyor_deliveries (event_id, source, subscription, state, state_rank, "  # noqa: S608 - only a constant expression of ours is interpolated
        "replays, attempts, next_attempt_at, last_error, first_attempt_at, updated_at, "
        "finished_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (event_id, source, subscription) DO UPDATE SET "
        "state = excluded.state, state_rank = excluded.state_rank, "
        "replays = excluded.replays, "
        "attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, "
        # A new round (a replay from the DLQ) starts without an error; the round it ends goes
        # to `history`. Within a round the last error stays until another replaces it.
        "last_error = CASE WHEN excluded.replays > conveyor_deliveries.replays "
        "THEN excluded.last_error "
        "ELSE COALESCE(excluded.last_error, conveyor_deliveries.last_error) END, "
        "history = CASE WHEN excluded.replays > conveyor_deliveries.replays "
        f"THEN {_HISTORY_WITH_ROUND_ENDED} ELSE conveyor_deliveries.history END, "
        "first_attempt_at = COALESCE(conveyor_deliveries.first_attempt_at, "
        "excluded.first_attempt_at), updated_at = excluded.updated_at, "
        "finished_at = excluded.finished_at, expires_at = excluded.expires_at "
        "WHERE excluded.replays > conveyor_deliveries.replays "
        "OR (excluded.replays = conveyor_deliveries.replays "
        "AND (excluded.attempts > conveyor_deliveries.attempts "
        "OR (excluded.attempts = conveyor_deliveries.attempts "
        "AND excluded.state_rank > conveyor_deliveries.state_rank)))"
    )
    select_events = (
        "SELECT event_id, source, attributes, routed, accepted_at, due_at, delay_state "
        "FROM conveyor_events WHERE event_id = ? AND expires_at > ? ORDER BY source LIMIT 20"
    )
    # A delayed event, accepted into the delay chain: no routing yet (it is routed when due).
    schedule_event = (
        "INSERT INTO conveyor_events (event_id, source, attributes, routed, accepted_at, "
        "expires_at, due_at, delay_state) VALUES (?, ?, ?, NULL, ?, ?, ?, 'scheduled') "
        "ON CONFLICT (event_id, source) DO UPDATE SET attributes = excluded.attributes, "
        "routed = NULL, accepted_at = excluded.accepted_at, expires_at = excluded.expires_at, "
        "due_at = excluded.due_at, delay_state = 'scheduled' "
        # A slow write of this very scheduling, after the event came due or was cancelled
        # (`release_event` inserts the row it did not find), must not schedule it again.
        "WHERE conveyor_events.delay_state IS NULL OR conveyor_events.delay_state = 'scheduled' "
        "OR conveyor_events.due_at IS NULL OR conveyor_events.due_at <> excluded.due_at"
    )
    # Cancelling and coming due race for the same row: whichever moves it out of `scheduled`
    # first wins, and `select_delay_state` tells each which one did.
    cancel_event = (
        "UPDATE conveyor_events SET delay_state = 'cancelled' "
        "WHERE event_id = ? AND source = ? AND delay_state = 'scheduled'"
    )
    # Inserts the row when the scheduling's own write has not landed yet (or expired): the
    # event goes out either way, and the late write then finds it due.
    release_event = (
        "INSERT INTO conveyor_events (event_id, source, attributes, routed, accepted_at, "
        "expires_at, due_at, delay_state) VALUES (?, ?, ?, NULL, NULL, ?, ?, 'due') "
        "ON CONFLICT (event_id, source) DO UPDATE SET delay_state = 'due' "
        "WHERE conveyor_events.delay_state = 'scheduled'"
    )
    select_delay_state = "SELECT delay_state FROM conveyor_events WHERE event_id = ? AND source = ?"
    # Only ever moves forward: replicas record the same ticks, in any order.
    record_tick = (
        "INSERT INTO conveyor_schedule_ticks (name, tick, fired_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET tick = excluded.tick, fired_at = excluded.fired_at "
        "WHERE excluded.tick > conveyor_schedule_ticks.tick"
    )
    select_ticks = "SELECT name, tick FROM conveyor_schedule_ticks"
    select_deliveries = (
        "SELECT subscription, state, attempts, next_attempt_at, last_error, first_attempt_at, "
        "updated_at, finished_at, history FROM conveyor_deliveries "
        "WHERE event_id = ? AND source = ? AND expires_at > ? ORDER BY subscription"
    )

    @staticmethod
    def select_succeeded_among(count: int) -> str:
        """Which of `count` (event id, source, subscription) keys succeeded since the last `?`.

        Each listed key is looked up through the primary key by a correlated subquery, which
        neither SQLite nor PostgreSQL turns into a join. As a join, PostgreSQL planned a scan of
        the whole table for each lookup whenever the table had no statistics yet (new, or grown
        since autovacuum last analyzed it): it guessed the `state` and `finished_at` filters
        left one row. Lookups then slowed with every row.
        """
        keys = ", ".join(["(?, ?, ?)"] * count)
        return (
            f"WITH wanted (event_id, source, subscription) AS (VALUES {keys}) "  # noqa: S608 - only placeholders are interpolated
            "SELECT w.event_id, w.source, w.subscription FROM wanted w "
            "WHERE (SELECT d.finished_at FROM conveyor_deliveries d "
            "WHERE d.event_id = w.event_id AND d.source = w.source "
            "AND d.subscription = w.subscription AND d.state = 'succeeded') > ?"
        )


def by_statement(
    writes: Sequence[tuple[str, tuple[Any, ...]]],
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Writes grouped per statement (first-seen order), each group in submission order.

    One executemany per statement instead of one call per write. Safe because only writes of one
    statement touch the same row in an order-sensitive way: the two event-row inserts agree
    whichever runs first (the ingress's wins), and deliveries keep their order within the group.
    """
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for statement, params in writes:
        groups.setdefault(statement, []).append(params)
    return list(groups.items())


def in_chunks(items: Sequence[_T], largest: int) -> list[Sequence[_T]]:
    """`items` cut into chunks whose sizes are powers of two (at most `largest`, itself one).

    Statements whose length follows the chunk's come in a handful of shapes, so they stay in the
    drivers' statement caches instead of one shape per batch size.
    """
    chunks: list[Sequence[_T]] = []
    start = 0
    while start < len(items):
        size = min(largest, 1 << ((len(items) - start).bit_length() - 1))
        chunks.append(items[start : start + size])
        start += size
    return chunks


def numbered(statement: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...`."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _match: f"${next(counter)}", statement)
