"""Notification endpoints and their deliveries in SQL: the outbox, the senders' claims, replays.

A delivery is written by `enqueue_event` inside the transaction that stores the change it
tells about, so either both are stored or neither is. Its body is built by that same
statement from the recording row as the transaction leaves it, and the statement returns no
rows, so on PostgreSQL it rides in the store's single-round-trip pipeline. One delivery per
endpoint, recording and event type: running the same write again adds nothing.

Senders claim due deliveries with a lease (next_attempt_at moved past the lease's end, and a
token): a sender killed mid-delivery leaves the claim to expire, and the delivery is due again.
On PostgreSQL concurrent claimers skip each other's rows (FOR UPDATE SKIP LOCKED); SQLite
serialises writers, so its claim, one conditional UPDATE, is already exclusive.
"""

from __future__ import annotations

import dataclasses
import json
import secrets as tokens
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from service.domain.recordings import format_time, parse_time
from service.notify.events import MEDIA_FIELDS, ROTATION_OVERLAP
from service.notify.signing import new_secret
from service.store.models import NotificationDeliveryRow, NotificationEndpointRow, RecordingRow, UTCDateTime

EP = NotificationEndpointRow.__table__
D = NotificationDeliveryRow.__table__
R = RecordingRow.__table__

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED)
# What the API shows of a delivery (never the lease).
DELIVERY_COLUMNS = (D.c.id, D.c.endpoint_id, D.c.event_type, D.c.recording_sid, D.c.status, D.c.attempts,
                    D.c.last_status, D.c.last_error, D.c.last_attempt_at, D.c.next_attempt_at, D.c.created_at,
                    D.c.updated_at)
ENDPOINT_COLUMNS = tuple(c for c in EP.c if c.name != "secrets")

# Something for this process's sender to do: a transaction wrote deliveries (set after its
# commit, so a delivery written by a worker's job leaves at once instead of at the next
# poll), or an attempt finished and its outcome waits to be written.
wake_sender = threading.Event()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def new_message_id() -> str:
    return "msg_" + tokens.token_hex(12)


def events_text(events: Iterable[str] | None) -> str:
    """The `events` column: " a b " (sorted, between spaces); "" subscribes to everything."""
    chosen = sorted(set(events or ()))
    return f" {' '.join(chosen)} " if chosen else ""


def events_list(text: str) -> list[str]:
    return text.split()


def signing_keys(stored: list[dict], now: datetime) -> list[str]:
    """The keys that still sign: the newest first, then any not yet past their expiry."""
    return [s["key"] for s in stored if not s.get("expires_at") or parse_time(s["expires_at"]) > now]


# --- the outbox ----------------------------------------------------------------------------

_ENQUEUE: dict[tuple[str, bool, bool], sa.Executable] = {}


def enqueue_event(conn: Connection, event_type: str, recording_sid: str, *, media: dict | None = None,
                  if_status: str | None = None, now: datetime | None = None) -> None:
    """Write `event_type` about a recording to the outbox of every enabled endpoint that
    subscribes to it, in the caller's transaction (`conn`), after the recording's row is written.

    `media` ({sha256, bytes, content_type}) goes into the body's data (recording.archived).
    `if_status`: only if the stored recording has this status and its metadata (a lagging
    snapshot that did not become the stored state raises nothing).
    """
    if media is not None and set(media) - set(MEDIA_FIELDS):
        # The body stays thin: a media URL (on SignalWire, the URL itself grants access) or
        # anything else must not ride along.
        raise ValueError(f"media may hold only {', '.join(MEDIA_FIELDS)}")
    now = now or _now()
    key = (conn.dialect.name, media is not None, if_status is not None)
    statement = _ENQUEUE.get(key)
    if statement is None:
        statement = _ENQUEUE[key] = _enqueue_statement(*key)
    params = {"msg_id": new_message_id() + "_", "event_type": event_type, "sid": recording_sid,
              "ts": format_time(now), "now": now, "pattern": f"% {event_type} %"}
    if media is not None:
        params["media"] = json.dumps(media)
    if if_status is not None:
        params["if_status"] = if_status
    conn.execute(statement, params)


def _enqueue_statement(dialect: str, with_media: bool, with_status: bool) -> sa.Executable:
    postgres = dialect == "postgresql"

    def text(name: str) -> sa.ColumnElement:
        return sa.cast(sa.bindparam(name, type_=sa.Text), sa.Text)

    # The body's data, from the recording row as this transaction leaves it.
    started_by_us = R.c.started_by_us if postgres else sa.func.json(
        sa.case((R.c.started_by_us, "true"), else_="false"))
    data = ["recording_sid", R.c.sid, "call_sid", R.c.call_sid, "account_sid", R.c.account_sid,
            "status", R.c.status, "duration", R.c.duration, "channels", R.c.channels, "started_by_us", started_by_us]
    if with_media:
        media = sa.cast(text("media"), postgresql.JSONB) if postgres else sa.func.json(text("media"))
        data += ["media", media]
    build = sa.func.jsonb_build_object if postgres else sa.func.json_object
    payload = build("type", text("event_type"), "timestamp", text("ts"), "data", build(*data))

    now = sa.bindparam("now", type_=UTCDateTime())
    conditions = [R.c.sid == sa.bindparam("sid", type_=R.c.sid.type), EP.c.disabled.is_(False),
                  sa.or_(EP.c.events == "", EP.c.events.like(sa.bindparam("pattern", type_=sa.Text)))]
    if with_status:
        conditions += [R.c.status == sa.bindparam("if_status", type_=R.c.status.type), R.c.last_fetched_at.isnot(None)]
    select = sa.select(
        text("msg_id") + EP.c.id, EP.c.id, text("event_type"), R.c.sid, payload, sa.literal(PENDING), sa.literal(0),
        now, now, now,
    ).select_from(EP).join(R, sa.true()).where(*conditions)
    insert = (postgresql.insert if postgres else sqlite.insert)(D).from_select(
        ["id", "endpoint_id", "event_type", "recording_sid", "payload", "status", "attempts", "next_attempt_at",
         "created_at", "updated_at"], select)
    return insert.on_conflict_do_nothing(index_elements=[D.c.endpoint_id, D.c.recording_sid, D.c.event_type])


@dataclasses.dataclass(frozen=True)
class Result:
    """How an attempt at a claimed delivery ended, to be written."""

    claim: "Claim"
    status: str
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    disable_endpoint: str | None = None  # the reason to disable the endpoint (a 410)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A delivery leased to one sender: what it needs to make one attempt."""

    id: str
    endpoint_id: str
    url: str | None  # None: the endpoint is disabled
    keys: tuple[str, ...]
    payload: dict
    attempts: int  # including this one
    lease: str


class Notifications:
    """Endpoints and deliveries, on the Store's engine."""

    def __init__(self, store) -> None:
        self.store = store
        self.engine = store.engine
        self._postgres = self.engine.dialect.name == "postgresql"

    # --- endpoints --------------------------------------------------------------------------

    def create_endpoint(self, url: str, events: list[str] | None, description: str = "") -> tuple[dict, str]:
        """The new endpoint and its secret: the only time the secret leaves the store."""
        now = _now()
        secret = new_secret()
        row = {"id": "ep_" + tokens.token_hex(12), "url": url, "events": events_text(events),
               "description": description or "", "disabled": False, "secrets": [{"key": secret, "expires_at": None}],
               "created_at": now, "updated_at": now}
        with self.store._write() as conn:
            conn.execute(sa.insert(EP).values(row))
        return self.get_endpoint(row["id"]), secret

    def list_endpoints(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*ENDPOINT_COLUMNS).order_by(EP.c.created_at, EP.c.id)).mappings()
            return [_endpoint(row) for row in rows]

    def get_endpoint(self, endpoint_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*ENDPOINT_COLUMNS).where(EP.c.id == endpoint_id)).mappings().first()
        return _endpoint(row) if row else None

    def update_endpoint(self, endpoint_id: str, *, url: str | None = None, events: list[str] | None = None,
                        description: str | None = None, disabled: bool | None = None) -> dict | None:
        values: dict[str, Any] = {"updated_at": _now()}
        if url is not None:
            values["url"] = url
        if events is not None:
            values["events"] = events_text(events)
        if description is not None:
            values["description"] = description
        if disabled is not None:
            values["disabled"] = disabled
            values["disabled_reason"] = "disabled through the API" if disabled else None
        with self.store._write() as conn:
            if conn.execute(sa.update(EP).where(EP.c.id == endpoint_id).values(values)).rowcount == 0:
                return None
        return self.get_endpoint(endpoint_id)

    def delete_endpoint(self, endpoint_id: str) -> bool:
        with self.store._write() as conn:
            # Explicitly, not by the foreign key's cascade: SQLite enforces foreign keys only when asked.
            conn.execute(sa.delete(D).where(D.c.endpoint_id == endpoint_id))
            return conn.execute(sa.delete(EP).where(EP.c.id == endpoint_id)).rowcount > 0

    def rotate_secret(self, endpoint_id: str, now: datetime | None = None) -> str | None:
        """A new secret, signing from now on; the ones before it keep signing alongside it for
        ROTATION_OVERLAP (an earlier, shorter expiry stands), expired ones are dropped."""
        now = now or _now()
        secret = new_secret()
        until = now + ROTATION_OVERLAP
        with self.store._write() as conn:
            stored = conn.execute(sa.select(EP.c.secrets).where(EP.c.id == endpoint_id)).scalar_one_or_none()
            if stored is None:
                return None
            kept = []
            for s in stored:
                expires = parse_time(s.get("expires_at")) or until
                if expires > now:
                    kept.append({"key": s["key"], "expires_at": format_time(min(expires, until))})
            conn.execute(sa.update(EP).where(EP.c.id == endpoint_id).values(
                secrets=[{"key": secret, "expires_at": None}, *kept], updated_at=now))
        return secret

    # --- deliveries -------------------------------------------------------------------------

    def list_deliveries(self, endpoint_id: str, *, status: str | None = None, limit: int = 100,
                        cursor: str | None = None) -> tuple[list[dict], str | None]:
        """Newest first, keyset-paged on (created_at, id) like the recordings."""
        from service.store.sql import keyset_page  # (sql imports this module)

        query = sa.select(*DELIVERY_COLUMNS).where(D.c.endpoint_id == endpoint_id)
        if status is not None:
            query = query.where(D.c.status == status)
        page, next_cursor = keyset_page(self.engine, query, D.c.created_at, D.c.id, cursor, limit)
        return [_delivery(row) for row in page], next_cursor

    def deliveries_for_recording(self, recording_sid: str) -> list[dict]:
        """Every delivery about one recording, oldest first, with its endpoint's URL. Read through
        the unique index (endpoint_id, recording_sid, event_type): one probe per endpoint."""
        query = (sa.select(*DELIVERY_COLUMNS, EP.c.url.label("endpoint_url"))
                 .join(EP, EP.c.id == D.c.endpoint_id)
                 .where(D.c.endpoint_id.in_(sa.select(EP.c.id).scalar_subquery()), D.c.recording_sid == recording_sid)
                 .order_by(D.c.created_at, D.c.id))
        with self.engine.connect() as conn:
            return [_delivery(row) for row in conn.execute(query).mappings()]

    def get_delivery(self, delivery_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*DELIVERY_COLUMNS).where(D.c.id == delivery_id)).mappings().first()
        return _delivery(row) if row else None

    def replay(self, delivery_id: str) -> dict | None:
        """Send a delivery again, whatever became of it, with the whole retry schedule again
        (same webhook-id and body)."""
        with self.store._write() as conn:
            changed = conn.execute(_replay(D.c.id == delivery_id)).rowcount
        if changed:
            wake_sender.set()
        return self.get_delivery(delivery_id) if changed else None

    def replay_failed(self, endpoint_id: str, since: datetime) -> int:
        """Replay every failed delivery of an endpoint created at or after `since`."""
        with self.store._write() as conn:
            count = conn.execute(_replay(D.c.endpoint_id == endpoint_id, D.c.status == FAILED,
                                         D.c.created_at >= since)).rowcount
        if count:
            wake_sender.set()
        return count

    def counts(self) -> dict[str, int]:
        """Deliveries by status (and how many pending ones are due now)."""
        with self.engine.connect() as conn:
            out = {status: 0 for status in DELIVERY_STATUSES}
            out.update(conn.execute(sa.select(D.c.status, sa.func.count()).group_by(D.c.status)).all())
            out["due"] = conn.execute(sa.select(sa.func.count()).where(
                D.c.status == PENDING, D.c.next_attempt_at <= _now())).scalar_one()
        return out

    # --- the senders' side -------------------------------------------------------------------

    def claim(self, limit: int, lease_seconds: float, now: datetime | None = None,
              results: Iterable[Result] = ()) -> list[Claim]:
        """Write `results` (attempts that ended), then lease up to `limit` due deliveries to the
        caller for `lease_seconds`, counting their attempt now: if the sender dies, each is due
        again when its lease ends. One transaction for both: a busy sender writes a handful of
        outcomes and takes the next deliveries in one commit, not one commit per delivery."""
        now = now or _now()
        results = list(results)
        lease = tokens.token_hex(8)
        with self.store._write() as conn:
            if results:
                self._write_results(conn, results, now)
            if limit <= 0:
                return []
            claimed = conn.execute(self._claim_statement(limit, lease, lease_seconds, now)).all()
            if not claimed:
                return []
            endpoints = {row.id: row for row in conn.execute(
                sa.select(EP.c.id, EP.c.url, EP.c.disabled, EP.c.secrets)
                .where(EP.c.id.in_({row.endpoint_id for row in claimed})))}
        out = []
        for row in claimed:
            endpoint = endpoints.get(row.endpoint_id)
            live = endpoint is not None and not endpoint.disabled
            out.append(Claim(id=row.id, endpoint_id=row.endpoint_id, url=endpoint.url if live else None,
                             keys=tuple(signing_keys(endpoint.secrets, now)) if live else (),
                             payload=row.payload, attempts=row.attempts, lease=lease))
        return out

    def _claim_statement(self, limit: int, lease: str, lease_seconds: float, now: datetime) -> sa.Update:
        due = (sa.select(D.c.id).where(D.c.status == PENDING, D.c.next_attempt_at <= now)
               .order_by(D.c.next_attempt_at).limit(limit))
        if self._postgres:
            due = due.with_for_update(skip_locked=True)
        return (sa.update(D).where(D.c.id.in_(due.scalar_subquery()))
                .values(lease=lease, attempts=D.c.attempts + 1, last_attempt_at=now, updated_at=now,
                        next_attempt_at=now + timedelta(seconds=lease_seconds))
                .returning(D.c.id, D.c.endpoint_id, D.c.payload, D.c.attempts))

    def finish(self, claim: Claim, *, status: str, last_status: int | None, last_error: str | None,
               next_attempt_at: datetime | None, disable_endpoint: str | None = None) -> bool:
        """Write one attempt's outcome, if the claim is still the caller's (False: its lease ran
        out and another sender has it now)."""
        with self.store._write() as conn:
            return self._write_results(conn, [Result(claim, status, last_status, last_error, next_attempt_at,
                                                     disable_endpoint)], _now()) == 1

    def _write_results(self, conn: Connection, results: list[Result], now: datetime) -> int:
        """Each outcome is written only where its claim still holds the lease (one executemany);
        returns how many were."""
        rows = [{"b_id": r.claim.id, "b_lease": r.claim.lease, "status": r.status, "last_status": r.last_status,
                 "last_error": r.last_error, "next_attempt_at": r.next_attempt_at, "updated_at": now}
                for r in results]
        written = conn.execute(_RESULT, rows).rowcount
        for r in results:
            if r.disable_endpoint:
                # Only if that outcome was written (the lease held): its row now says so.
                conn.execute(sa.update(EP).where(EP.c.id == r.claim.endpoint_id, sa.exists().where(
                    D.c.id == r.claim.id, D.c.status == r.status, D.c.lease.is_(None), D.c.updated_at == now))
                    .values(disabled=True, disabled_reason=r.disable_endpoint, updated_at=now))
        return written


# An attempt's outcome, written where the claim still holds its lease.
_RESULT = (sa.update(D)
           .where(D.c.id == sa.bindparam("b_id", type_=D.c.id.type), D.c.lease == sa.bindparam("b_lease", type_=D.c.lease.type))
           .values(lease=None, **{name: sa.bindparam(name, type_=D.c[name].type)
                                  for name in ("status", "last_status", "last_error", "next_attempt_at", "updated_at")}))


def _replay(*where) -> sa.Update:
    now = _now()
    return (sa.update(D).where(*where)
            .values(status=PENDING, attempts=0, next_attempt_at=now, lease=None, updated_at=now))


def _endpoint(row) -> dict:
    out = {key: format_time(v) if isinstance(v, datetime) else v for key, v in dict(row).items()}
    out["events"] = events_list(out["events"])
    return out


def _delivery(row) -> dict:
    return {key: format_time(v) if isinstance(v, datetime) else v for key, v in dict(row).items()}
