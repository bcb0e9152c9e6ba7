"""The dashboard's pages: recordings (filtered, paged), one recording (timeline, audio,
notifications, failed job), failed work with replay, and the system's state.

Everything is read through the store, RQ and the same functions the CLI, /metrics and
`doctor` use (service.pipelines.failed, service.observability.scrape and doctor); no SQL here.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import redis
from flask import current_app, flash, redirect, render_template, request, url_for
from marshmallow import ValidationError

from service.domain.recordings import CALLBACK_EVENTS, LIVE_STATUSES, TERMINAL_STATUSES
from service.media import MEDIA_STATUSES
from service.observability import doctor, scrape
from service.pipelines import failed as failed_work
from service.pipelines.sweep import REPORT_KEY
from service.web.dashboard import bp
from service.web.dashboard.session import safe_next
from service.web.schemas import SID, ListRecordingsSchema

log = logging.getLogger(__name__)
PAGE_SIZE = 50
STATUSES = sorted(LIVE_STATUSES | TERMINAL_STATUSES)
FILTERS = ("status", "call_sid", "media_status", "from", "to")


def _services():
    return current_app.extensions["services"]


# RecordingUrl, uri, subresource_uris, media_url, ... (not "security").
_URL_KEY = re.compile(r"ur[il]s?\d*($|_)", re.IGNORECASE)


def hidden(key: str) -> bool:
    """A field never shown: SignalWire's media URLs and resource URIs grant access by themselves."""
    return _URL_KEY.search(key) is not None


def _visible(value):
    if isinstance(value, dict):
        return {k: _visible(v) for k, v in value.items() if not hidden(str(k))}
    if isinstance(value, list):
        return [_visible(v) for v in value]
    return value


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# --- recordings ---------------------------------------------------------------------------------


def _list_query(args) -> tuple[dict, dict[str, str]]:
    """The form's filters as store.list's arguments, validated by the JSON API's own schema.
    Dates are whole UTC days, `to` included. Returns (query, errors by field)."""
    raw: dict[str, str] = {}
    for name in ("status", "call_sid", "media_status", "cursor"):
        value = (args.get(name) or "").strip()
        if value:
            raw[name] = value
    errors: dict[str, str] = {}
    for name, key, shift in (("from", "created_after", 0), ("to", "created_before", 1)):
        value = (args.get(name) or "").strip()
        if not value:
            continue
        try:
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc) + timedelta(days=shift)
        except ValueError:
            errors[name] = "must be a date, YYYY-MM-DD"
            continue
        raw[key] = day.isoformat()
    raw["limit"] = str(PAGE_SIZE)
    try:
        query = ListRecordingsSchema().load(raw)
    except ValidationError as exc:
        errors.update({k: "; ".join(v) if isinstance(v, list) else str(v) for k, v in exc.messages.items()})
        query = {"limit": PAGE_SIZE}
    return query, errors


@bp.route("/")
@bp.route("/recordings")
def recordings():
    query, errors = _list_query(request.args)
    items, next_cursor = [], None
    if not errors:
        try:
            items, next_cursor = _services().store.list(**query)
        except ValueError as exc:
            errors["cursor"] = str(exc)
    filters = {name: request.args.get(name, "") for name in FILTERS}
    chosen = {k: v for k, v in filters.items() if v}
    next_url = url_for("dashboard.recordings", **chosen, cursor=next_cursor) if next_cursor else None
    return render_template("dashboard/recordings.html", recordings=items, filters=filters, errors=errors,
                           statuses=STATUSES, media_statuses=MEDIA_STATUSES, next_url=next_url,
                           first_url=url_for("dashboard.recordings", **chosen),
                           paged=bool(request.args.get("cursor"))), 422 if errors else 200


def timeline(recording: dict, deliveries: list[dict]) -> list[dict]:
    """Each callback, fetch, archive step and notification attempt the recording went through, by time."""
    steps = [{"at": recording["first_seen_at"], "what": "first seen", "detail": ""}]
    for event in recording["events"]:
        steps.append({"at": event["received_at"], "what": f"callback: {event['status']}", "status": event["status"],
                      "detail": _visible(event.get("params") or {})})
    if recording.get("last_fetched_at"):
        steps.append({"at": recording["last_fetched_at"], "what": "metadata fetched",
                      "status": recording["status"], "detail": f"status {recording['status']}"})
    media = recording.get("media") or {}
    if media.get("archived_at"):
        steps.append({"at": media["archived_at"], "what": "audio archived", "detail": f"{media.get('bytes')} bytes"})
    if media.get("source_deleted_at"):
        steps.append({"at": media["source_deleted_at"], "what": "deleted at SignalWire", "detail": ""})
    for delivery in deliveries:
        if delivery.get("last_attempt_at"):
            steps.append({"at": delivery["last_attempt_at"], "what": f"notification {delivery['event_type']}",
                          "detail": f"{delivery['status']} after {delivery['attempts']} attempt(s)"})
    return sorted(steps, key=lambda step: _when(step["at"]) or datetime.min.replace(tzinfo=timezone.utc))


def _failed_jobs_of(sid: str, recording: dict) -> tuple[list, str | None]:
    statuses = {event["status"] for event in recording["events"]} | set(CALLBACK_EVENTS)
    try:
        return failed_work.failed_jobs_of(_services().queue, sid, sorted(statuses)), None
    except redis.RedisError as exc:
        return [], f"Redis did not answer ({type(exc).__name__})"


@bp.route("/recordings/<sid>")
def recording(sid: str):
    services = _services()
    try:
        SID(sid)
        found = services.store.get(sid)
    except ValidationError:
        found = None
    if found is None:
        return render_template("dashboard/error.html", status=404,
                               message=f"No recording {sid} is stored."), 404
    deliveries = services.store.notifications.deliveries_for_recording(sid)
    for delivery in deliveries:
        delivery["endpoint_host"] = urlsplit(delivery.pop("endpoint_url") or "").hostname or "?"
    jobs, jobs_error = _failed_jobs_of(sid, found)
    metadata = {k: v for k, v in found.items()
                if k not in ("events", "media", "extra", "requested", "subresource_uris") and not hidden(k)}
    return render_template("dashboard/recording.html", recording=found, metadata=metadata,
                           extra=_visible(found.get("extra") or {}), requested=_visible(found.get("requested") or {}),
                           media=found.get("media"), timeline=timeline(found, deliveries), deliveries=deliveries,
                           jobs=jobs, jobs_error=jobs_error)


# --- failed work --------------------------------------------------------------------------------


@bp.route("/failed")
def failed():
    services = _services()
    jobs, redis_error = [], None
    try:
        jobs = failed_work.failed_jobs(services.queue)
    except redis.RedisError as exc:
        redis_error = f"Redis did not answer ({type(exc).__name__})"
    deliveries = failed_work.failed_deliveries(services.store)
    for delivery in deliveries:
        delivery["endpoint_host"] = urlsplit(delivery.pop("endpoint_url") or "").hostname or "?"
    return render_template("dashboard/failed.html", jobs=jobs, redis_error=redis_error, deliveries=deliveries,
                           inbox=services.store.inbox_set_aside(), kinds=failed_work.KINDS)


def _back():
    return redirect(safe_next(request.form.get("back")) if request.form.get("back") else url_for("dashboard.failed"))


@bp.route("/failed/jobs/<job_id>/replay", methods=["POST"])
def replay_job(job_id: str):
    if failed_work.replay_job(_services().queue, job_id):
        flash(f"Job {job_id} requeued.")
        log.info("dashboard: failed job %s requeued", job_id)
    else:
        flash(f"Job {job_id} is not a failed job (already replayed?).", "error")
    return _back()


@bp.route("/failed/jobs/replay", methods=["POST"])
def replay_jobs():
    kind = request.form.get("kind") or None
    if kind is not None and kind not in failed_work.KINDS:
        return render_template("dashboard/error.html", status=400, message="Unknown kind of job."), 400
    requeued, missing = failed_work.replay_jobs(_services().queue, kind=kind)
    flash(f"{len(requeued)} {kind or ''} job(s) requeued." + (f" {len(missing)} were no longer failed." if missing else ""))
    log.info("dashboard: %d failed %s job(s) requeued", len(requeued), kind or "")
    return _back()


@bp.route("/failed/deliveries/<delivery_id>/replay", methods=["POST"])
def replay_delivery(delivery_id: str):
    if failed_work.replay_delivery(_services().store, delivery_id):
        flash(f"Delivery {delivery_id} is due again.")
    else:
        flash(f"No delivery {delivery_id}.", "error")
    return _back()


@bp.route("/failed/deliveries/replay", methods=["POST"])
def replay_deliveries():
    count = failed_work.replay_failed_deliveries(_services().store)
    flash(f"{count} failed deliveries are due again (enabled endpoints only).")
    return _back()


@bp.route("/failed/inbox/replay", methods=["POST"])
def release_inbox():
    released = _services().store.inbox_release(None)
    flash(f"{len(released)} inbox row(s) handed back to the drain.")
    return _back()


# --- system -------------------------------------------------------------------------------------


@bp.route("/system")
def system():
    services = _services()
    settings = services.settings
    state = scrape.redis_state(services.queue)
    backlog = scrape.database_backlog(services.store)
    last_report = None
    if state is not None:
        try:
            last_report = services.redis.get(REPORT_KEY)
        except redis.RedisError:
            pass
    check_signalwire = request.args.get("check") == "signalwire"
    checks = list(doctor.service_checks(settings, services, signalwire=check_signalwire))
    last_sweep = None
    if state and state["last_sweep"]:
        last_sweep = datetime.fromtimestamp(state["last_sweep"], timezone.utc).isoformat(timespec="seconds")
    return render_template("dashboard/system.html", state=state, backlog=backlog, checks=checks,
                           last_sweep=last_sweep, last_report=last_report.decode() if last_report else None,
                           callback_url=settings.callback_url, checked_signalwire=check_signalwire,
                           sweep_interval=settings.sweep_interval, media=bool(settings.media_storage_url))
