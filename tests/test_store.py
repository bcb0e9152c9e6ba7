"""Store tests; each runs on SQLite and on PostgreSQL (the `database_url` fixture)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from service.store.models import TERMINAL_RANK, UNFINISHED, Base, RecordingRow
from service.domain.recordings import _RANK, CallbackEvent, Recording, is_terminal, status_rank
from service.store.sql import MIGRATIONS_DIR, Store, database_url as normalise_url, decode_cursor, encode_cursor

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))


def full_recording(sid: str = "rec-1", **changes) -> Recording:
    values = dict(
        sid=sid,
        account_sid="acc-1",
        api_version="2010-04-01",
        call_sid="call-1",
        conference_sid="conf-1",
        channels=2,
        # Not UTC on purpose: the store must hand back the same instant in UTC.
        date_created=datetime(2026, 3, 1, 14, 0, 5, 123456, tzinfo=PLUS2),
        date_updated=datetime(2026, 3, 1, 12, 1, 0, tzinfo=UTC),
        start_time=datetime(2026, 3, 1, 11, 59, 0, tzinfo=UTC),
        end_time=datetime(2026, 3, 1, 12, 0, 59, tzinfo=UTC),
        duration=119,
        price="-0.0025",
        price_unit="USD",
        source="StartCallRecordingApi",
        status="completed",
        error_code="16101",
        uri=f"/api/laml/2010-04-01/Accounts/acc-1/Recordings/{sid}.json",
        subresource_uris={"transcriptions": f"/api/laml/2010-04-01/Accounts/acc-1/Recordings/{sid}/Transcriptions.json"},
        track="both",
        trim="do-not-trim",
        extra={"channel": "2", "encryption_details": None, "nested": {"list": [1, "two", None]}},
    )
    values.update(changes)
    return Recording(**values)


def event(sid: str, status: str, **changes) -> CallbackEvent:
    values = dict(
        recording_sid=sid,
        account_sid="acc-1",
        status=status,
        call_sid="call-1",
        duration=7,
        channels=1,
        source="RecordVerb",
        track="inbound",
        params={"RecordingSid": sid, "RecordingStatus": status, "AccountSid": "acc-1"},
    )
    values.update(changes)
    return CallbackEvent(**values)


def rows(store: Store, table: str) -> list[tuple]:
    with store.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT * FROM {table}")).all()


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- schema ----------------------------------------------------------------------------


def test_migrations_apply_from_empty_and_match_the_models(database_url):
    store = Store(database_url)
    try:
        assert sa.inspect(store.engine).get_table_names() == []
        store.migrate()
        store.migrate()  # already at head: a no-op, as the release step may run it again
        inspector = sa.inspect(store.engine)
        assert {"recordings", "recording_events", "inbox", "idempotency_keys", "alembic_version"} <= set(
            inspector.get_table_names())
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("recordings")}
        assert indexes["ix_recordings_created"] == ["created_at", "sid"]
        assert indexes["ix_recordings_call_created"] == ["call_sid", "created_at", "sid"]
        assert indexes["ix_recordings_status_created"] == ["status", "created_at", "sid"]
        with store.engine.connect() as conn:
            head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == head
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
        store.ping()
    finally:
        store.dispose()


def test_terminal_statuses_are_exactly_the_high_ranks():
    # The partial index and unfinished() rely on "terminal" == status_rank >= TERMINAL_RANK.
    for status in [*_RANK, "some-new-status", None]:
        assert is_terminal(status) == (status_rank(status) >= TERMINAL_RANK), status


# --- URLs ------------------------------------------------------------------------------


def test_url_forms(database_url, tmp_path):
    if database_url.startswith("postgresql://"):
        heroku_style = "postgres://" + database_url.removeprefix("postgresql://")
        store = Store(heroku_style)
        try:
            assert store.engine.dialect.driver == "psycopg"
            store.migrate()  # the search_path option in the query string was honoured
            with store.engine.connect() as conn:
                schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
            assert schema.startswith("t_") and schema in database_url
            store.ping()
        finally:
            store.dispose()
    else:
        path = tmp_path / "missing" / "dir" / "db.sqlite3"
        store = Store(f"sqlite:///{path}")
        try:
            store.ping()
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() > 0
        finally:
            store.dispose()
        assert path.exists()
    assert normalise_url("postgres://u@h/db?options=-csearch_path%3Dx").render_as_string() == (
        "postgresql+psycopg://u@h/db?options=-csearch_path%3Dx"
    )
    assert normalise_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"


def test_pool_settings_bound_the_connections_a_burst_opens(database_url, store):
    """DATABASE_POOL_SIZE and DATABASE_MAX_OVERFLOW reach the engine a process builds: a burst of
    8 threads gets 3 connections at once, and 2 stay open after it."""
    from service.config import load_settings
    from service.services import Services

    postgres = database_url.startswith("postgresql://")
    name = f"pool-{uuid.uuid4().hex[:8]}"
    url = f"{database_url}&application_name={name}" if postgres else database_url
    env = {"SIGNALWIRE_SPACE": "example.signalwire.com", "SIGNALWIRE_PROJECT_ID": "p", "SIGNALWIRE_API_TOKEN": "t",
           "SIGNALWIRE_SIGNING_KEY": "k", "PUBLIC_BASE_URL": "https://r.example.com",
           "SERVICE_API_TOKEN": "t" * 16, "REDIS_URL": "redis://127.0.0.1:9", "DATABASE_URL": url,
           "DATABASE_POOL_SIZE": "2", "DATABASE_MAX_OVERFLOW": "1"}
    services = Services(load_settings(env))
    engine = services.store.engine

    def server_connections() -> int:
        # Counted by PostgreSQL itself; on SQLite, by the pool.
        if not postgres:
            return engine.pool.checkedout()
        with store.engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                                {"name": name}).scalar_one()

    def hold() -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            time.sleep(0.3)

    threads = [threading.Thread(target=hold) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        peak = 0
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, server_connections())
            time.sleep(0.02)
        for thread in threads:
            thread.join()
        assert peak == 3
        if postgres:
            assert server_connections() == 2  # the pool keeps 2; the overflow one was closed
    finally:
        services.close()


def test_ping_fails_on_a_dead_database(database_url, tmp_path):
    if database_url.startswith("postgresql://"):
        dead = Store("postgresql://postgres@127.0.0.1:1/test")
    else:
        (tmp_path / "not-a-db").write_bytes(b"garbage" * 1000)
        dead = Store(f"sqlite:///{tmp_path / 'not-a-db'}")
    try:
        with pytest.raises(sa.exc.DBAPIError):
            dead.ping()
    finally:
        dead.dispose()


# --- writes ----------------------------------------------------------------------------


def test_save_started_round_trips_every_field(store):
    recording = full_recording(status="in-progress")
    requested = {"RecordingChannels": "dual", "RecordingStatusCallbackEvent": "in-progress completed absent"}
    store.save_started(recording, requested)

    got = store.get("rec-1")
    expected = recording.to_dict()
    assert {k: got[k] for k in expected} == expected
    assert got["date_created"] == "2026-03-01T12:00:05.123456+00:00"  # UTC, microseconds kept
    assert got["price"] == "-0.0025"
    assert got["requested"] == requested
    assert got["started_by_us"] is True
    assert got["created_at"] == got["date_created"]
    assert got["last_fetched_at"] is None
    assert got["attempts"] == 0 and got["last_error"] is None
    assert got["events"] == []
    assert "status_rank" not in got
    for name in ("first_seen_at", "updated_at"):
        assert parse(got[name]).utcoffset() == timedelta(0)


def test_save_metadata_round_trips_and_keeps_what_we_asked_for(store):
    store.save_started(full_recording(status="in-progress", duration=None, price=None), {"Trim": "do-not-trim"})
    store.note_attempt("rec-1", "HTTP 503")
    first_seen = store.get("rec-1")["first_seen_at"]

    fetched = full_recording(extra={"encryption_details": None, "new_key": [1, 2]})
    store.save_metadata(fetched)

    got = store.get("rec-1")
    expected = fetched.to_dict()
    assert {k: got[k] for k in expected} == expected
    assert got["requested"] == {"Trim": "do-not-trim"} and got["started_by_us"] is True
    assert got["last_fetched_at"] is not None and got["last_error"] is None
    assert got["attempts"] == 1
    assert got["first_seen_at"] == first_seen


def test_metadata_first_creates_a_recording_not_started_by_us(store):
    store.save_metadata(full_recording(sid="rec-2", date_created=None, extra={}))
    got = store.get("rec-2")
    assert got["status"] == "completed"
    assert got["started_by_us"] is False and got["requested"] is None
    assert got["extra"] == {}
    assert got["created_at"] == got["first_seen_at"]  # no date_created: first sighting sorts it
    assert len(rows(store, "recordings")) == 1


def test_record_event_is_idempotent(store):
    received = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    first = event("rec-1", "completed", received_at=received)
    store.record_event(first)
    store.record_event(event("rec-1", "completed", received_at=received + timedelta(seconds=30)))
    assert len(rows(store, "recording_events")) == 1
    assert len(rows(store, "recordings")) == 1
    got = store.get("rec-1")
    assert got["events"] == [
        {"status": "completed", "params": first.params, "received_at": "2026-03-01T12:00:00+00:00"}
    ]


def test_record_event_is_one_transaction(store):
    # The event and its metadata commit together or not at all: a metadata write that fails in
    # the client (a value JSON cannot hold) or in the database (JSONB refuses \u0000; SQLite
    # takes it) leaves no history row behind for the retry to skip.
    failures = [full_recording(extra={"unserialisable": object()})]
    if store.engine.dialect.name == "postgresql":
        failures.append(full_recording(extra={"nul": "a\x00b"}))
    for metadata in failures:
        with pytest.raises((sa.exc.StatementError, TypeError)):
            store.record_event(event("rec-1", "completed"), metadata=metadata)
        assert rows(store, "recording_events") == [] and rows(store, "recordings") == []
    store.record_event(event("rec-1", "completed"), metadata=full_recording())
    assert len(rows(store, "recording_events")) == 1 and store.get("rec-1")["price_unit"] == "USD"


def test_callback_for_a_recording_we_did_not_start_creates_it(store):
    received = datetime(2026, 3, 1, 9, 30, tzinfo=PLUS2)
    ev = event("rec-9", "in-progress", conference_sid="conf-9", received_at=received, start_time=T0)
    store.record_event(ev)
    got = store.get("rec-9")
    assert got["status"] == "in-progress"
    assert (got["account_sid"], got["call_sid"], got["conference_sid"]) == ("acc-1", "call-1", "conf-9")
    assert (got["channels"], got["duration"], got["source"], got["track"]) == (1, 7, "RecordVerb", "inbound")
    assert got["start_time"] == "2026-03-01T12:00:00+00:00"
    assert got["started_by_us"] is False and got["requested"] is None
    assert got["first_seen_at"] == got["created_at"] == "2026-03-01T07:30:00+00:00"
    assert got["date_created"] is None


def test_callback_before_save_started_still_marks_it_ours(store):
    # The in-progress callback can be handled before the API request that started it returns.
    store.record_event(event("rec-1", "in-progress", received_at=T0))
    store.save_started(full_recording(status="in-progress", duration=None), {"Trim": "trim-silence"})
    got = store.get("rec-1")
    assert got["started_by_us"] is True and got["requested"] == {"Trim": "trim-silence"}
    assert got["first_seen_at"] == "2026-03-01T12:00:00+00:00"  # the first sighting stays
    assert got["created_at"] == got["date_created"] == "2026-03-01T12:00:05.123456+00:00"
    assert got["duration"] == 7  # the callback's value; the API had none
    assert len(got["events"]) == 1 and len(rows(store, "recordings")) == 1


def test_status_never_goes_backwards(store):
    store.record_event(event("rec-1", "completed", duration=42))
    store.record_event(event("rec-1", "in-progress", duration=0))  # history keeps it
    got = store.get("rec-1")
    assert got["status"] == "completed" and got["duration"] == 42
    assert [e["status"] for e in got["events"]] == ["completed", "in-progress"]

    # Lagging metadata: does not downgrade, does not overwrite, only fills gaps, and is not
    # the metadata of the stored status (the sweep fetches again).
    store.save_metadata(full_recording(status="in-progress", duration=3, price_unit="USD"))
    got = store.get("rec-1")
    assert got["status"] == "completed" and got["duration"] == 42
    assert got["price_unit"] == "USD"
    assert got["last_fetched_at"] is None

    # Same rank refreshes; a higher one advances.
    store.save_metadata(full_recording(status="completed", duration=41))
    assert store.get("rec-1")["duration"] == 41 and store.get("rec-1")["last_fetched_at"] is not None
    store.save_metadata(full_recording(status="deleted"))
    store.record_event(event("rec-1", "absent"))
    assert store.get("rec-1")["status"] == "deleted"


def test_the_first_terminal_callback_stays_until_metadata_says_otherwise(store):
    store.record_event(event("rec-1", "completed", duration=94))
    store.record_event(event("rec-1", "absent", duration=0))  # late or stray: history keeps it
    got = store.get("rec-1")
    assert (got["status"], got["duration"]) == ("completed", 94)
    assert [e["status"] for e in got["events"]] == ["completed", "absent"]
    store.save_metadata(full_recording(status="absent", duration=0))  # the API decides
    assert (store.get("rec-1")["status"], store.get("rec-1")["duration"]) == ("absent", 0)
    # Live statuses of one rank still follow each other.
    store.record_event(event("rec-2", "paused"))
    store.record_event(event("rec-2", "resumed"))
    assert store.get("rec-2")["status"] == "resumed"


def test_values_the_columns_cannot_hold_are_stored_as_null(store):
    # Accepted by the lenient callback schema; on PostgreSQL they failed every retry of the job.
    long_text = "x" * 65
    store.record_event(event("rec-1", "completed", duration=3_000_000_000, channels=-2**40, track=long_text,
                             source=long_text, conference_sid=long_text, params={"RecordingTrack": long_text}))
    got = store.get("rec-1")
    assert (got["duration"], got["channels"], got["track"], got["source"], got["conference_sid"]) == (None,) * 5
    assert got["events"][0]["params"]["RecordingTrack"] == long_text  # kept as it came
    store.save_metadata(full_recording(duration=2**31, price_unit="X" * 17, status="completed", api_version="v" * 33))
    got = store.get("rec-1")
    assert (got["duration"], got["price_unit"], got["api_version"]) == (None, None, None)
    assert got["status"] == "completed" and got["last_fetched_at"] is not None
    store.save_metadata(full_recording(duration=2**31 - 1))
    assert store.get("rec-1")["duration"] == 2**31 - 1  # the largest that fits is kept


def test_note_attempt(store):
    store.note_attempt("missing", "boom")
    assert rows(store, "recordings") == []
    store.record_event(event("rec-1", "completed"))
    store.note_attempt("rec-1", "timeout")
    store.note_attempt("rec-1", "HTTP 500")
    got = store.get("rec-1")
    assert (got["attempts"], got["last_error"]) == (2, "HTTP 500")
    store.note_attempt("rec-1", None)
    got = store.get("rec-1")
    assert (got["attempts"], got["last_error"]) == (3, None)


def test_a_404_is_final_for_an_absent_recording_only(store):
    later = datetime.now(timezone.utc) + timedelta(days=1)
    store.record_event(event("rec-absent", "absent"))
    store.record_event(event("rec-completed", "completed"))
    for sid in ("rec-absent", "rec-completed"):
        store.note_attempt(sid, "not found (status=404)", not_found=True)
    absent, completed = store.get("rec-absent"), store.get("rec-completed")
    assert absent["status"] == "absent" and absent["last_fetched_at"] and absent["attempts"] == 1
    assert completed["last_fetched_at"] is None and completed["attempts"] == 1  # metadata may lag
    assert store.unfinished(older_than=later) == ["rec-completed"]


def test_concurrent_writers_end_with_one_row_and_the_highest_status(store):
    sids = [f"race-{n}" for n in range(4)]
    statuses = ["in-progress", "completed", "in-progress", "processing", "completed"]
    threads_count = 6
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            barrier.wait()
            for sid in sids:
                ops = [("event", s) for s in statuses] + [("meta", s) for s in statuses]
                rnd.shuffle(ops)
                for kind, status in ops:
                    if kind == "event":
                        store.record_event(event(sid, status))
                    else:
                        store.save_metadata(full_recording(sid=sid, status=status))
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(rows(store, "recordings")) == len(sids)
    assert len(rows(store, "recording_events")) == len(sids) * len(set(statuses))
    for sid in sids:
        assert store.get(sid)["status"] == "completed"


# --- reads -----------------------------------------------------------------------------


def test_get_unknown_is_none(store):
    assert store.get("nope") is None


def test_events_are_ordered_by_arrival(store):
    store.record_event(event("rec-1", "completed", received_at=T0 + timedelta(seconds=5)))
    store.record_event(event("rec-1", "in-progress", received_at=T0))
    store.record_event(event("rec-1", "absent", received_at=T0 + timedelta(seconds=5)))  # tie: by id
    assert [e["status"] for e in store.get("rec-1")["events"]] == ["in-progress", "completed", "absent"]


@pytest.fixture
def listed(store):
    """30 recordings a minute apart, on 3 calls, with 2 statuses; two pairs share a time."""
    recordings = []
    for n in range(30):
        created = T0 + timedelta(minutes=n if n not in (11, 21) else n - 1)
        recording = full_recording(
            sid=f"rec-{n:02d}",
            call_sid=f"call-{n % 3}",
            status="completed" if n % 2 else "in-progress",
            date_created=created,
        )
        store.save_metadata(recording)
        recordings.append(recording)
    # Newest first, ties broken by sid descending.
    recordings.sort(key=lambda r: (r.date_created, r.sid), reverse=True)
    return store, recordings


def walk(store: Store, **filters) -> tuple[list[str], int]:
    seen, pages, cursor = [], 0, None
    while True:
        items, cursor = store.list(cursor=cursor, **filters)
        pages += 1
        seen += [item["sid"] for item in items]
        if cursor is None:
            return seen, pages


def test_list_newest_first_and_cursor_paging(listed):
    store, recordings = listed
    expected = [r.sid for r in recordings]

    items, cursor = store.list()
    assert [i["sid"] for i in items] == expected and cursor is None
    assert "events" not in items[0] and "status_rank" not in items[0]
    assert items[0]["created_at"] == "2026-03-01T12:29:00+00:00"

    seen, pages = walk(store, limit=4)
    assert seen == expected  # no duplicates, no gaps, same order
    assert pages == 8

    # A page that ends exactly at the last row says so (no empty extra page).
    items, cursor = store.list(limit=30)
    assert len(items) == 30 and cursor is None
    items, cursor = store.list(limit=29)
    assert len(items) == 29 and cursor is not None
    items, cursor = store.list(limit=29, cursor=cursor)
    assert [i["sid"] for i in items] == expected[29:] and cursor is None


def test_list_filters(listed):
    store, recordings = listed
    seen, _ = walk(store, call_sid="call-1", limit=3)
    assert seen == [r.sid for r in recordings if r.call_sid == "call-1"]

    seen, _ = walk(store, status="completed", limit=5)
    assert seen == [r.sid for r in recordings if r.status == "completed"]

    after, before = T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)
    seen, _ = walk(store, created_after=after.astimezone(PLUS2), created_before=before, limit=4)
    assert seen == [r.sid for r in recordings if after <= r.date_created < before]
    assert "rec-10" in seen and "rec-11" in seen and "rec-20" not in seen

    seen, _ = walk(store, call_sid="call-2", status="completed", created_after=after)
    assert seen == [r.sid for r in recordings if r.call_sid == "call-2" and r.status == "completed" and r.date_created >= after]
    assert store.list(call_sid="call-404") == ([], None)


def test_list_rejects_bad_cursor_and_limit(listed):
    store, _ = listed
    for bad in ["", "%%%", "bm90LWpzb24", encode_cursor(T0, "x")[:-3], "WyJ4IiwieSJd", "WzEsMl0"]:
        with pytest.raises(ValueError):
            store.list(cursor=bad)
    with pytest.raises(ValueError):
        store.list(limit=0)
    cursor = encode_cursor(T0 + timedelta(minutes=5), "rec-05")
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_cursor(cursor) == (T0 + timedelta(minutes=5), "rec-05")
    items, _ = store.list(cursor=cursor)
    assert [i["sid"] for i in items] == ["rec-04", "rec-03", "rec-02", "rec-01", "rec-00"]


def test_unfinished(store):
    now = datetime.now(UTC)
    old = now - timedelta(days=1)
    threshold = now + timedelta(hours=1)  # everything saved "now" counts as old enough
    future = now + timedelta(hours=2)

    store.record_event(event("a-live", "in-progress", received_at=old))
    store.record_event(event("b-done", "completed", received_at=old))
    store.record_event(event("c-too-new", "in-progress", received_at=future))
    store.record_event(event("d-absent", "absent", received_at=old - timedelta(hours=1)))
    store.save_metadata(full_recording(sid="e-no-status", status=None))
    # Started by us, terminal by metadata though its terminal callback never came: that is final.
    store.save_started(full_recording(sid="f-ours-no-callback", status="completed"), {})
    store.save_started(full_recording(sid="g-ours-done", status="in-progress"), {})
    store.record_event(event("g-ours-done", "completed"))
    store.save_started(full_recording(sid="h-ours-live", status="stopped"), {})

    # Terminal with its metadata: final.
    store.record_event(event("i-done-fetched", "completed", received_at=old), metadata=full_recording("i-done-fetched"))
    # Terminal, but the API still lagged when fetched: fetched again.
    store.record_event(event("j-done-lagging", "completed", received_at=old),
                       metadata=full_recording("j-done-lagging", status="in-progress"))

    found = store.unfinished(older_than=threshold)
    # b, d, f and g are terminal with no metadata fetched for that status (their jobs' fetches
    # failed, or none was made): the sweep fetches them.
    assert set(found) == {"a-live", "b-done", "d-absent", "e-no-status", "f-ours-no-callback", "g-ours-done",
                          "h-ours-live", "j-done-lagging"}
    assert found[0] == "a-live"  # the least recently written first
    assert store.unfinished(older_than=threshold, limit=2) == found[:2]
    assert store.unfinished(older_than=old - timedelta(days=1)) == []

    # One the API keeps reporting unfinished moves to the back once fetched, so recordings
    # like it cannot hog the limit sweep after sweep.
    store.save_metadata(full_recording("a-live", status="in-progress"))
    assert store.unfinished(older_than=threshold)[-1] == "a-live"
    # One that keeps failing moves behind every one tried less.
    store.note_attempt("d-absent", "sweep: HTTP 404")
    store.save_metadata(full_recording("b-done", status="in-progress"))  # written later, tried less
    assert store.unfinished(older_than=threshold)[-2:] == ["b-done", "d-absent"]

    # Once the metadata of its status is stored, a terminal recording leaves the sweep.
    store.save_metadata(full_recording("b-done"))
    assert "b-done" not in store.unfinished(older_than=threshold)


def test_the_sweep_query_can_use_its_partial_index(store):
    query = str(sa.select(RecordingRow.sid).where(UNFINISHED, RecordingRow.first_seen_at < sa.bindparam("t"))
                .compile(store.engine, compile_kwargs={"literal_binds": False}))
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = conn.exec_driver_sql("EXPLAIN " + query.replace("%(t)s", "now()")).scalars().all()
        else:
            plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + query.replace("?", "'2100-01-01'"))]
    assert any("ix_recordings_unfinished" in line for line in plan), plan


# --- inbox -----------------------------------------------------------------------------


def test_inbox_put_take_delete(store):
    assert store.inbox_take() == []
    payloads = [event(f"rec-{n}", "completed", received_at=T0).to_payload() for n in range(5)]
    ids = [store.inbox_put(p) for p in payloads]
    assert len(set(ids)) == 5

    taken = store.inbox_take(limit=3)
    assert taken == list(zip(ids[:3], payloads[:3]))  # oldest first, JSON intact
    assert CallbackEvent.from_payload(taken[0][1]) == event("rec-0", "completed", received_at=T0)
    assert store.inbox_take(limit=3) == taken  # taking does not remove

    store.inbox_delete([i for i, _ in taken])
    store.inbox_delete([])
    assert store.inbox_take() == list(zip(ids[3:], payloads[3:]))
    store.inbox_delete(ids)
    assert store.inbox_take() == []


def test_inbox_take_pages_on_after_an_id(store):
    ids = [store.inbox_put({"n": n}) for n in range(5)]
    assert [row_id for row_id, _ in store.inbox_take(limit=2, after_id=ids[1])] == ids[2:4]
    assert store.inbox_take(limit=2, after_id=ids[-1]) == []


def test_inbox_rows_that_keep_failing_are_set_aside_and_can_be_released(store):
    bad, good = store.inbox_put({"bad": 1}), store.inbox_put({"good": 1})
    assert not store.inbox_failed(bad, "TypeError: first", set_aside_after=2)
    assert [row_id for row_id, _ in store.inbox_take()] == [bad, good]  # still taken
    assert store.inbox_set_aside() == []
    assert store.inbox_failed(bad, "TypeError: second", set_aside_after=2)  # this try set it aside
    assert [row_id for row_id, _ in store.inbox_take()] == [good]
    assert not store.inbox_failed(bad, "TypeError: again", set_aside_after=2)  # already aside: unchanged

    [aside] = store.inbox_set_aside()
    assert (aside["id"], aside["attempts"], aside["last_error"]) == (bad, 2, "TypeError: second")
    assert parse(aside["created_at"]) <= parse(aside["set_aside_at"])

    assert store.inbox_release([good, bad]) == [bad]  # only rows set aside
    assert [row_id for row_id, _ in store.inbox_take()] == [bad, good] and store.inbox_set_aside() == []
    assert not store.inbox_failed(bad, "TypeError: after release", set_aside_after=2)  # tries start over
    store.inbox_failed(bad, "TypeError: after release", set_aside_after=2)
    assert store.inbox_release() == [bad]
