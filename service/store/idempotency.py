"""Idempotency keys, kept in the database so every web process (and a restarted one) sees them.

A key moves through four states in the `idempotency_keys` table: claimed (a request holds
its lock and is talking to SignalWire), answered (the lock is cleared and the answer kept),
unsettled (SignalWire did not answer in time: whether it acted is not known, so the key is free
for a retry, which is told when the first attempt was sent), or gone (released after a failure
that left nothing done, or expired). Each step is one
transaction; the primary key (scope, key) makes the first claim win however many requests
race for it, on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

import dataclasses
import secrets
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service.store.models import IdempotencyKeyRow
from service.store.sql import Store

K = IdempotencyKeyRow.__table__

# Stripe's window: a retry within a day gets the first answer.
TTL = timedelta(hours=24)
# A claim older than this belongs to a request that died (a killed process): a retry may take
# it over. Well above the longest a start can take (see SignalWireClient.create_budget).
LEASE = timedelta(seconds=60)


@dataclasses.dataclass(frozen=True)
class Claim:
    """What claim() found. `state`: "new" (the caller owns the key and holds `lock`; `sent_at`
    is set when an earlier attempt's outcome is unknown), "replay" (the first answer: `status`,
    `body`, `headers`), "in_flight" (another request holds it) or "mismatch" (the key was first
    used for another request)."""

    state: str
    lock: str | None = None
    status: int | None = None
    body: dict | None = None
    headers: dict | None = None
    sent_at: datetime | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


class IdempotencyKeys:
    def __init__(self, store: Store, ttl: timedelta = TTL, lease: timedelta = LEASE) -> None:
        self._store = store
        self._ttl = ttl
        self._lease = lease
        insert = postgresql.insert if store.engine.dialect.name == "postgresql" else sqlite.insert
        # RETURNING, not rowcount: psycopg reports no row count for INSERT ... ON CONFLICT here.
        self._insert = insert(K).on_conflict_do_nothing(index_elements=[K.c.scope, K.c.key]).returning(K.c.lock)

    def claim(self, scope: str, key: str, fingerprint: str) -> Claim:
        now = _now()
        lock = secrets.token_hex(16)
        where = (K.c.scope == scope, K.c.key == key)
        with self._store._write() as conn:
            # Expired keys go at write time: starts are rare, and the index makes this cheap.
            conn.execute(sa.delete(K).where(K.c.expires_at < now))
            inserted = conn.execute(self._insert.values(
                scope=scope, key=key, fingerprint=fingerprint, lock=lock, claimed_at=now, expires_at=now + self._ttl))
            if inserted.first() is not None:
                return Claim("new", lock)
            row = conn.execute(sa.select(K).where(*where)).mappings().one()
            if row["fingerprint"] != fingerprint:
                return Claim("mismatch")
            if row["lock"] is None and row["status"] is None:
                # Unsettled: this retry takes it, and is told when the first attempt went out.
                taken = conn.execute(sa.update(K).where(*where, K.c.lock.is_(None), K.c.status.is_(None))
                                     .values(lock=lock, claimed_at=now).returning(K.c.lock)).first()
                sent_at = datetime.fromisoformat(row["body"]["sent_at"])
                return Claim("new", lock, sent_at=sent_at) if taken is not None else Claim("in_flight")
            if row["lock"] is None:
                return Claim("replay", status=row["status"], body=row["body"], headers=row["headers"])
            if row["claimed_at"] > now - self._lease:
                return Claim("in_flight")
            # Its request died mid-flight: take it over, unless another retry just did.
            taken = conn.execute(sa.update(K).where(*where, K.c.lock == row["lock"])
                                 .values(lock=lock, claimed_at=now).returning(K.c.lock)).first()
            return Claim("new", lock) if taken is not None else Claim("in_flight")

    def complete(self, scope: str, key: str, lock: str, status: int, body: dict, headers: dict) -> bool:
        """Keep the answer for replays; False if the claim was lost (its lease ran out)."""
        with self._store._write() as conn:
            done = conn.execute(sa.update(K).where(K.c.scope == scope, K.c.key == key, K.c.lock == lock)
                                .values(lock=None, status=status, body=body, headers=headers).returning(K.c.key))
            return done.first() is not None

    def unsettle(self, scope: str, key: str, lock: str, sent_at: datetime) -> None:
        """SignalWire did not answer in time: free the key for a retry, keeping when the first
        attempt was sent (so the retry can look for a recording that attempt started)."""
        with self._store._write() as conn:
            conn.execute(sa.update(K).where(K.c.scope == scope, K.c.key == key, K.c.lock == lock)
                         .values(lock=None, status=None, body={"sent_at": sent_at.isoformat()}, headers=None))

    def release(self, scope: str, key: str, lock: str) -> None:
        """Forget the key: its request did nothing, and a retry may start afresh."""
        with self._store._write() as conn:
            conn.execute(sa.delete(K).where(K.c.scope == scope, K.c.key == key, K.c.lock == lock))
