"""The store: recordings, their callback history and the callback inbox, in SQL.

Works on PostgreSQL (psycopg 3) and SQLite. Every write that can race (callbacks handled by
several workers, a metadata fetch crossing a late callback) is a single upsert or a single
conditional UPDATE, so the database, not Python, decides, and a status never moves backwards.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import secrets
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from service.store.models import (MEDIA_UNARCHIVED, TERMINAL_RANK, UNFINISHED, InboxRow, RecordingEventRow,
                                  RecordingRow, UTCDateTime)
from service.domain.recordings import CallbackEvent, Recording, format_time, status_rank
from service.notify.events import ARCHIVED, STARTED, terminal_event
from service.store import notifications
from service.media.verified import VerifiedCopy

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
# A pooled connection idle longer than this is pinged before use (see _ping_after_idle).
PING_AFTER_IDLE_S = 1.0

R = RecordingRow.__table__
E = RecordingEventRow.__table__
INBOX = InboxRow.__table__

# Store.backlog(): inbox rows and unfinished recordings, in one statement.
BACKLOG = sa.select(
    sa.select(sa.func.count()).select_from(INBOX).scalar_subquery(),
    sa.select(sa.func.count()).select_from(R).where(UNFINISHED).scalar_subquery(),
)
# Recording fields that map 1:1 onto columns (everything but the primary key).
METADATA_FIELDS = tuple(f.name for f in dataclasses.fields(Recording) if f.name != "sid")
# What get()/list() return: every column but the internal status_rank, with the media_*
# columns under "media" (see _public).
PUBLIC_COLUMNS = tuple(c for c in R.c if c.name != "status_rank")
MEDIA_COLUMNS = {c.name: c.name.removeprefix("media_") for c in R.c if c.name.startswith("media_")}
# Fields a callback carries that also describe the recording.
EVENT_FIELDS = ("account_sid", "call_sid", "conference_sid", "channels", "duration", "source", "track", "start_time")
# What the recordings columns can hold, for _fit().
_TEXT_LIMITS = {c.name: c.type.length for c in R.c if isinstance(c.type, sa.String) and c.type.length}
_INT32 = {c.name for c in R.c if type(c.type) is sa.Integer}


def _fit(values: dict, names) -> None:
    """A value its column cannot hold (too long, beyond 32 bits) becomes NULL.

    PostgreSQL would fail the whole write, on every retry, and the callback would be lost to
    the dead letters; the raw parameters in its history row keep the value as it came.
    """
    for name in names:
        value = values.get(name)
        if isinstance(value, str) and len(value) > _TEXT_LIMITS.get(name, len(value)):
            values[name] = None
        elif isinstance(value, int) and name in _INT32 and not -2**31 <= value < 2**31:
            values[name] = None


def _ping_after_idle(engine: sa.Engine, seconds: float) -> None:
    """SQLAlchemy's pool_pre_ping, for connections idle over `seconds` only.

    A busy worker takes its connection back within milliseconds: pinging it first was one
    round trip to the database in every job. A connection that has sat in the pool (when a
    database restart or an idle-connection reaper is likely to have closed it) is still
    checked, and replaced if dead, before anything uses it. One that dies within the window
    fails its statement like one that dies just after a ping; SQLAlchemy then replaces the
    pool's connections and the job's retry finds a new one.
    """
    dialect = engine.dialect

    @sa.event.listens_for(engine, "checkin")
    def _idle_since(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection, record, proxy) -> None:
        idle_since = record.info.get("idle_since")  # none: a connection made for this checkout
        if idle_since is None or time.monotonic() - idle_since <= seconds:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            # The pool replaces this connection and checks out again.
            raise sa.exc.DisconnectionError(f"pooled connection failed its ping: {type(exc).__name__}") from exc


def _now() -> datetime:
    return datetime.now(timezone.utc)


def database_url(url: str) -> sa.URL:
    """Heroku's postgres:// and plain postgresql:// select psycopg 3; the query string is kept."""
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


@contextmanager
def temporary_schema(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL schema on `server_url` (a libpq URL), dropped afterwards. Yields
    `server_url` with its search_path set to it: how tests and benchmarks share one server."""
    import psycopg

    schema = f"{prefix}_{secrets.token_hex(5)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        parts = urlsplit(server_url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
        query.append(("options", f"-csearch_path={schema}"))
        yield urlunsplit(parts._replace(query=urlencode(query)))
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


class Store:
    def __init__(self, url: str, ping_after_idle: float = PING_AFTER_IDLE_S, *, pool_size: int | None = None,
                 max_overflow: int | None = None, **engine_kwargs: Any) -> None:
        """`pool_size` connections are kept, up to `max_overflow` more opened in a burst (None:
        SQLAlchemy's 5 and 10). An in-memory SQLite database has one connection per thread."""
        self.url = database_url(url)
        connect_args = engine_kwargs.setdefault("connect_args", {})
        backend = self.url.get_backend_name()
        in_memory = backend == "sqlite" and self.url.database in (None, "", ":memory:")
        if not in_memory:
            pool = {"pool_size": pool_size, "max_overflow": max_overflow}
            engine_kwargs.update({k: v for k, v in pool.items() if v is not None})
        if backend == "sqlite":
            if not in_memory:
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
            # Pooled connections are handed between threads, one user at a time.
            connect_args.setdefault("check_same_thread", False)
        elif backend == "postgresql" and "connect_timeout" not in self.url.query:
            connect_args.setdefault("connect_timeout", 5)  # ping() and startup fail fast
        self.engine = sa.create_engine(self.url, **engine_kwargs)
        _ping_after_idle(self.engine, ping_after_idle)
        if backend == "sqlite":
            _sqlite_setup(self.engine)
        self._postgres = self.engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self._postgres else sqlite.insert
        self._upserts: dict[tuple[str, ...], tuple[sa.Insert, sa.Update]] = {}
        self._sql = self._event_statements()

    # --- lifecycle ---------------------------------------------------------------------

    def migrate(self) -> None:
        """Alembic `upgrade head` (the release step)."""
        from alembic import command

        config = _alembic_config()
        with self._write() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def revisions(self) -> tuple[set[str], set[str]]:
        """(the database's migration revisions, the code's head revisions): equal once migrated."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        heads = set(ScriptDirectory.from_config(_alembic_config()).get_heads())
        with self.engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads()), heads

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()

    @functools.cached_property
    def notifications(self) -> notifications.Notifications:
        """Notification endpoints and deliveries (service.store.notifications)."""
        return notifications.Notifications(self)

    @contextmanager
    def _write(self, pipelined: bool = False) -> Iterator[Connection]:
        """One write transaction (on SQLite it takes the write lock up front, see below).

        `pipelined`: on PostgreSQL, BEGIN, the statements and COMMIT go to the server in one
        round trip (psycopg's pipeline mode); a worker's job is mostly waiting on round trips.
        Statements run so must not return rows: SQLAlchemy sees no result before the COMMIT.
        """
        with self.engine.connect() as conn:
            conn.execution_options(store_write=True)
            pipeline = conn.connection.driver_connection.pipeline() if pipelined and self._postgres else nullcontext()
            with pipeline, conn.begin():
                yield conn

    # --- writes ------------------------------------------------------------------------

    def save_started(self, recording: Recording, requested: dict) -> None:
        """Our API started this recording: keep what we asked for."""
        with self._write(pipelined=True) as conn:
            self._upsert(conn, recording, started_by_us=True, requested=requested)
            notifications.enqueue_event(conn, STARTED, recording.sid)
        notifications.wake_sender.set()  # after the commit: the sender would not see it before

    def save_metadata(self, recording: Recording) -> None:
        """Metadata fetched from the REST API."""
        with self._write(pipelined=True) as conn:
            self._upsert(conn, recording, last_fetched_at=_now(), last_error=None)
            notify = self._notify_outcome(conn, recording)
        if notify:
            notifications.wake_sender.set()  # after the commit: the sender would not see it before

    def record_event(self, event: CallbackEvent, metadata: Recording | None = None) -> None:
        """Store a status callback, and with it the metadata fetched for it, in one transaction.

        A repeated callback adds no history and changes nothing but the metadata."""
        now = _now()
        # One set of values for the history row and the recording's; each statement takes its own.
        values = {name: getattr(event, name) for name in EVENT_FIELDS}
        values.update(recording_sid=event.recording_sid, status=event.status, params=dict(event.params),
                      received_at=event.received_at, sid=event.recording_sid, status_rank=status_rank(event.status),
                      created_at=event.received_at, first_seen_at=event.received_at, updated_at=now)
        _fit(values, EVENT_FIELDS)
        notify = False
        with self._write(pipelined=True) as conn:
            if self._postgres:
                conn.execute(self._sql["record"], values)
            elif conn.execute(self._sql["insert_event"], values).first() is not None:
                conn.execute(self._sql["advance"], values)
            if metadata is not None:
                self._upsert(conn, metadata, last_fetched_at=now, last_error=None)
                notify = self._notify_outcome(conn, metadata)
        if notify:
            notifications.wake_sender.set()

    def _notify_outcome(self, conn: Connection, metadata: Recording) -> bool:
        """Metadata stored at a terminal status tells the endpoints (once per recording and
        event: a repeated write adds nothing), if the stored row now holds that status."""
        event_type = terminal_event(metadata.status)
        if event_type is None:
            return False
        notifications.enqueue_event(conn, event_type, metadata.sid, if_status=metadata.status)
        return True

    def _upsert(self, conn: Connection, recording: Recording, **own: Any) -> None:
        now = _now()
        values = {name: getattr(recording, name) for name in METADATA_FIELDS}
        _fit(values, METADATA_FIELDS)
        values.update(own, sid=recording.sid, status_rank=status_rank(recording.status),
                      created_at=recording.date_created or now, first_seen_at=now, updated_at=now)
        upsert, fill_gaps = self._upsert_statements(tuple(sorted(own)))
        conn.execute(upsert, values)
        # Changes a row only where the upsert did not: an older snapshot than the stored one
        # (the API lagging behind a callback) only fills gaps. The upsert has locked the row,
        # so nothing moves in between; neither needs the other's result, so both can be pipelined.
        conn.execute(fill_gaps, {f"b_{k}": v for k, v in values.items()})

    def _upsert_statements(self, own: tuple[str, ...]) -> tuple[sa.Insert, sa.Update]:
        # Built once per set of extra columns and executed with parameters: building these
        # cost a worker more CPU than executing them. Two short statements rather than one
        # with a CASE per column: that one was over psycopg's 4 KB statement cache limit.
        if own in self._upserts:
            return self._upserts[own]
        columns = (*METADATA_FIELDS, *own, "sid", "status_rank", "created_at", "first_seen_at", "updated_at")
        stmt = self._insert(R).values({name: sa.bindparam(name, type_=R.c[name].type) for name in columns})
        new = stmt.excluded
        # A snapshot at least as advanced as the stored one wins where it has values. SET
        # and WHERE see the old row under its lock, so this is decided atomically.
        update = {name: sa.func.coalesce(new[name], R.c[name]) for name in (*METADATA_FIELDS, "status_rank")}
        update["created_at"] = sa.func.coalesce(new.date_created, R.c.date_created, R.c.created_at)
        update["updated_at"] = new.updated_at
        update.update({name: new[name] for name in own})
        upsert = stmt.on_conflict_do_update(
            index_elements=[R.c.sid], set_=update, where=new.status_rank >= R.c.status_rank,
        )

        def bound(name: str) -> sa.BindParameter:
            return sa.bindparam(f"b_{name}", type_=R.c[name].type)

        fill = {name: sa.func.coalesce(R.c[name], bound(name)) for name in (*METADATA_FIELDS, "status_rank")}
        fill["created_at"] = sa.func.coalesce(R.c.date_created, bound("date_created"), R.c.created_at)
        fill["updated_at"] = bound("updated_at")
        # A lagging snapshot is not the metadata of the stored status: last_fetched_at stays
        # unset, so the sweep fetches it again (see unfinished()).
        fill.update({name: bound(name) for name in own if name not in ("last_fetched_at", "last_error")})
        # After the upsert the stored rank is above the snapshot's exactly when the upsert
        # left the row alone (status_rank is never NULL).
        fill_gaps = sa.update(R).where(R.c.sid == bound("sid"), R.c.status_rank > bound("status_rank")).values(fill)
        self._upserts[own] = (upsert, fill_gaps)
        return self._upserts[own]

    def _event_statements(self) -> dict[str, sa.Executable]:
        def bind(*names: str) -> dict[str, sa.BindParameter]:
            return {name: sa.bindparam(name, type_=R.c[name].type) for name in names}

        seen = ("sid", *EVENT_FIELDS, "status", "status_rank", "created_at", "first_seen_at", "updated_at")
        insert_event = (
            self._insert(E)
            .values({name: sa.bindparam(name, type_=E.c[name].type)
                     for name in ("recording_sid", "status", "params", "received_at")})
            .on_conflict_do_nothing(index_elements=[E.c.recording_sid, E.c.status])
            .returning(E.c.id)
        )

        def advance(insert: sa.Insert) -> sa.Insert:
            # A new event creates its recording or moves its status forward. Conditional, so
            # concurrent workers cannot move the status backwards, and the first terminal
            # status stays (only a metadata fetch, the source of truth, replaces it); the
            # event's fields fill in what it carries, None keeps what is stored. A status that
            # moves forward has no metadata fetched yet: last_fetched_at is cleared.
            new = insert.excluded
            return insert.on_conflict_do_update(
                index_elements=[R.c.sid],
                set_={"status": new.status, "status_rank": new.status_rank, "updated_at": new.updated_at,
                      "last_fetched_at": sa.case((new.status_rank > R.c.status_rank, sa.null()),
                                                 else_=R.c.last_fetched_at),
                      **{name: sa.func.coalesce(new[name], R.c[name]) for name in EVENT_FIELDS}},
                where=sa.or_(R.c.status_rank < new.status_rank,
                             sa.and_(R.c.status_rank == new.status_rank, new.status_rank < TERMINAL_RANK)),
            )

        statements = {"insert_event": insert_event, "advance": advance(self._insert(R).values(bind(*seen)))}
        if self._postgres:
            # Both in one statement, returning no rows (so it can be pipelined): the recording
            # is advanced only when the event's insert returned a row. (SQLite has no INSERT
            # inside WITH.)
            event = insert_event.cte("event")
            source = sa.select(*bind(*seen).values()).select_from(event)
            statements["record"] = advance(postgresql.insert(R).from_select(seen, source, include_defaults=False))
        return statements

    def note_attempt(self, sid: str, error: str | None, *, not_found: bool = False) -> None:
        """A failed fetch: counted, its error kept. `not_found` (the API answered 404) is final
        for a recording whose status is `absent`: SignalWire received no audio and may never
        create a resource, so last_fetched_at records that the API was asked and answered, and
        the sweep leaves it (see unfinished()). Decided in SQL, on the stored status."""
        now = _now()
        values = {"attempts": R.c.attempts + 1, "last_error": error, "updated_at": now}
        if not_found:
            values["last_fetched_at"] = sa.case((R.c.status == "absent", sa.literal(now, UTCDateTime())),
                                                else_=R.c.last_fetched_at)
        with self._write(pipelined=True) as conn:
            conn.execute(sa.update(R).where(R.c.sid == sid).values(values))

    # --- reads -------------------------------------------------------------------------

    def get(self, sid: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*PUBLIC_COLUMNS).where(R.c.sid == sid)).mappings().first()
            if row is None:
                return None
            events = conn.execute(
                sa.select(E.c.status, E.c.params, E.c.received_at)
                .where(E.c.recording_sid == sid)
                .order_by(E.c.received_at, E.c.id)
            ).mappings()
            out = _public(row)
            out["events"] = [_json_ready(event) for event in events]
        return out

    def list(
        self,
        *,
        call_sid: str | None = None,
        status: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        cursor: str | None = None,
        limit: int = 100,
        media_status: str | None = None,
    ) -> tuple[list[dict], str | None]:
        """Newest first; created_after is inclusive, created_before exclusive.

        Keyset paging on (created_at, sid), which the indexes cover, so every page costs
        the same however deep it is: no OFFSET and no COUNT.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = sa.select(*PUBLIC_COLUMNS)
        if call_sid is not None:
            query = query.where(R.c.call_sid == call_sid)
        if status is not None:
            query = query.where(R.c.status == status)
        if media_status is not None:
            query = query.where(R.c.media_status == media_status)
        if created_after is not None:
            query = query.where(R.c.created_at >= created_after)
        if created_before is not None:
            query = query.where(R.c.created_at < created_before)
        page, next_cursor = keyset_page(self.engine, query, R.c.created_at, R.c.sid, cursor, limit)
        return [_public(row) for row in page], next_cursor

    def unfinished(self, *, older_than: datetime, limit: int = 500) -> list[str]:
        """Recordings for the reconciliation sweep, first seen before `older_than`: those whose
        status is not terminal (or unknown), and those whose status has no metadata fetched
        for it (the job's fetches all failed, or the API still lagged behind the callback).
        The least tried first, then the least recently written, so neither recordings that
        keep failing (a 404 for good) nor ones the API keeps reporting unfinished can crowd
        out the others: each sweep's writes move what it handled to the back.

        A terminal recording with its metadata is final and never swept again. The condition
        is the partial index ix_recordings_unfinished's, which keeps that index small.
        """
        query = (
            sa.select(R.c.sid)
            .where(UNFINISHED, R.c.first_seen_at < older_than)
            .order_by(R.c.attempts, R.c.updated_at, R.c.sid)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def backlog(self) -> tuple[int, int]:
        """(inbox rows, unfinished recordings), for /metrics, in one round trip. Both counts
        read small indexes however many recordings there are: the inbox holds only what Redis
        could not take, and the unfinished count reads the partial index
        ix_recordings_unfinished (its condition is this query's)."""
        with self.engine.connect() as conn:
            inbox, unfinished = conn.execute(BACKLOG).one()
        return int(inbox), int(unfinished)

    # --- the media archive (service.media) ------------------------------------------------

    def archive_state(self, sid: str) -> dict | None:
        """What archiving one recording needs to know about it (None: no such recording)."""
        columns = (R.c.sid, R.c.status, R.c.account_sid, R.c.date_created, R.c.created_at, R.c.end_time,
                   R.c.date_updated, R.c.duration, *(R.c[name] for name in MEDIA_COLUMNS))
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*columns).where(R.c.sid == sid)).mappings().first()
        return None if row is None else dict(row)

    def media_queued(self, sid: str) -> None:
        """Queued for archiving: `pending`, unless a verified copy already exists."""
        self._media_update(sid, R.c.media_status.is_distinct_from("archived"), media_status="pending")

    def media_failed(self, sid: str, error: str, *, final: bool) -> None:
        """One attempt failed: counted, with its error; `failed` once no retry is left."""
        self._media_update(sid, R.c.media_status.is_distinct_from("archived"), media_error=error[:2000],
                           media_status="failed" if final else "pending", media_attempts=R.c.media_attempts + 1)

    def media_archived(self, sid: str, *, key: str, size: int, sha256: str, content_type: str) -> None:
        """The copy was read back and matched the download: the recording is archived, and the
        `recording.archived` notification is written in the same transaction. The first
        verification stands: a second run of the job (a worker presumed dead) changes nothing."""
        content_type = content_type[:64]
        with self._write() as conn:
            changed = conn.execute(
                sa.update(R).where(R.c.sid == sid, R.c.media_status.is_distinct_from("archived")).values(
                    media_status="archived", media_key=key, media_bytes=size, media_sha256=sha256,
                    media_content_type=content_type, media_archived_at=_now(), media_error=None, updated_at=_now()))
            archived = bool(changed.rowcount)
            if archived:
                notifications.enqueue_event(conn, ARCHIVED, sid,
                                            media={"sha256": sha256, "bytes": size, "content_type": content_type})
        if archived:
            notifications.wake_sender.set()  # after the commit: the sender would not see it before

    def media_source_deleted(self, sid: str) -> None:
        self._media_update(sid, R.c.media_status == "archived", media_source_deleted_at=_now())

    def verified_copy(self, sid: str) -> VerifiedCopy | None:
        """The proof a deletion at SignalWire needs, read fresh: the recording's verified copy."""
        query = sa.select(R.c.media_key, R.c.media_bytes, R.c.media_sha256, R.c.media_content_type,
                          R.c.media_archived_at).where(R.c.sid == sid, R.c.media_status == "archived")
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or not (row.media_key and row.media_sha256 and row.media_bytes is not None):
            return None
        return VerifiedCopy(sid, row.media_key, row.media_bytes, row.media_sha256, row.media_content_type or "",
                            row.media_archived_at)

    def unarchived(self, *, older_than: datetime, limit: int = 100) -> list[str]:
        """Completed recordings, first seen before `older_than`, whose media has no archived copy
        (never queued, queued and lost, or failed): the least tried first. Served by the partial
        index ix_recordings_media_unarchived, which holds only those rows."""
        query = (
            sa.select(R.c.sid)
            .where(MEDIA_UNARCHIVED, R.c.first_seen_at < older_than)
            .order_by(R.c.media_attempts, R.c.first_seen_at, R.c.sid)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def _media_update(self, sid: str, condition, **values: Any) -> None:
        with self._write() as conn:
            conn.execute(sa.update(R).where(R.c.sid == sid, condition).values(**values, updated_at=_now()))

    # --- inbox: callbacks parked here while Redis is down --------------------------------

    def inbox_put(self, payload: dict) -> int:
        with self._write() as conn:
            result = conn.execute(sa.insert(INBOX).values(payload=payload, created_at=_now()))
            return int(result.inserted_primary_key[0])

    def inbox_take(self, limit: int = 100, after_id: int | None = None) -> list[tuple[int, dict]]:
        """Oldest first (after `after_id`, to page on), without removing them: delete after
        handling. Rows set aside are skipped. Two takers may get the same items; handling is
        idempotent (record_event), so that only costs a repeat."""
        query = sa.select(INBOX.c.id, INBOX.c.payload).where(INBOX.c.set_aside_at.is_(None))
        if after_id is not None:
            query = query.where(INBOX.c.id > after_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(INBOX.c.id).limit(limit))
            return [(int(row_id), payload) for row_id, payload in rows]

    def inbox_failed(self, row_id: int, error: str, set_aside_after: int) -> bool:
        """A row that could not be handled: the try is counted and the error kept; at
        `set_aside_after` tries the row is set aside (kept, no longer taken). True when this
        try set it aside."""
        now = sa.literal(_now(), UTCDateTime())
        with self._write() as conn:
            set_aside = conn.execute(
                sa.update(INBOX)
                .where(INBOX.c.id == row_id, INBOX.c.set_aside_at.is_(None))
                .values(attempts=INBOX.c.attempts + 1, last_error=error,
                        set_aside_at=sa.case((INBOX.c.attempts + 1 >= set_aside_after, now), else_=sa.null()))
                .returning(INBOX.c.set_aside_at)
            ).scalar()
        return set_aside is not None

    def inbox_set_aside(self) -> list[dict]:
        """Rows set aside, oldest first: what an operator needs to see about each."""
        query = (sa.select(INBOX.c.id, INBOX.c.created_at, INBOX.c.attempts, INBOX.c.last_error, INBOX.c.set_aside_at)
                 .where(INBOX.c.set_aside_at.is_not(None)).order_by(INBOX.c.id))
        with self.engine.connect() as conn:
            return [_json_ready(row) for row in conn.execute(query).mappings()]

    def inbox_release(self, ids: list[int] | None = None) -> list[int]:
        """Rows set aside go back to the drain, with their tries reset (all of them when `ids`
        is None). Returns the ids released."""
        query = sa.update(INBOX).where(INBOX.c.set_aside_at.is_not(None))
        if ids is not None:
            query = query.where(INBOX.c.id.in_(list(ids)))
        with self._write() as conn:
            released = conn.execute(query.values(set_aside_at=None, attempts=0).returning(INBOX.c.id)).scalars()
            return sorted(int(row_id) for row_id in released)

    def inbox_delete(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._write() as conn:
            conn.execute(sa.delete(INBOX).where(INBOX.c.id.in_(list(ids))))


# --- helpers ---------------------------------------------------------------------------


def _alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    return config


def _json_ready(row: Any) -> dict:
    return {key: format_time(value) if isinstance(value, datetime) else value for key, value in dict(row).items()}


def keyset_page(engine: sa.Engine, query: sa.Select, created: sa.Column, key: sa.Column, cursor: str | None,
                limit: int) -> tuple[list, str | None]:
    """One page of `query`, newest first on (created, key), after `cursor`; and the next page's
    cursor (None on the last page). A malformed cursor raises ValueError."""
    if cursor is not None:
        after_time, after_key = decode_cursor(cursor)
        query = query.where(sa.tuple_(created, key)
                            < sa.tuple_(sa.literal(after_time, UTCDateTime()), sa.literal(after_key, key.type)))
    query = query.order_by(created.desc(), key.desc()).limit(limit + 1)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1][created.name], page[-1][key.name]) if len(rows) > limit else None
    return page, next_cursor


def _public(row: Any) -> dict:
    """A recording as get() and list() show it: the media_* columns under "media" (None until
    the recording is queued for archiving)."""
    out = _json_ready(row)
    media = {name: out.pop(column) for column, name in MEDIA_COLUMNS.items()}
    out["media"] = media if media["status"] is not None else None
    return out


def encode_cursor(created_at: datetime, sid: str) -> str:
    raw = json.dumps([format_time(created_at), sid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of encode_cursor; any malformed input raises ValueError."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, sid = json.loads(raw)
        if not isinstance(created_at, str) or not isinstance(sid, str) or "\x00" in sid:
            raise ValueError  # (PostgreSQL text cannot hold NUL: it would fail the query)
        when = datetime.fromisoformat(created_at)
        if when.tzinfo is None:
            raise ValueError
        return when.astimezone(timezone.utc), sid
    except (ValueError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        raise ValueError("malformed cursor") from exc


def _sqlite_setup(engine: sa.Engine) -> None:
    """WAL and a busy timeout, so a web process and several workers can share one file."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite would
        # otherwise open its own deferred transactions lazily).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock at BEGIN: a deferred transaction that reads and then
        # writes gets SQLITE_BUSY immediately (no busy wait) when another writer got in first.
        mode = "IMMEDIATE" if conn.get_execution_options().get("store_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")
