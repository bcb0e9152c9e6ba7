"""Operator commands: `python -m service <command>` (also installed as `recording-keeper`).

What a command reports for a person is printed; what it logs (its own lines and its
libraries') goes out as JSON lines like every other process's.
"""

from __future__ import annotations

import logging
import sys

import click

from service.config import ConfigError, load_settings
from service.observability.logs import configure_logging

log = logging.getLogger("service.cli")


def _settings():
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    configure_logging(settings.log_level, settings.secrets, settings.log_format)
    return settings


@click.group()
def main() -> None:
    """Recording keeper operations."""


@main.command()
def migrate() -> None:
    """Apply database migrations (the Procfile's release step)."""
    from service.config import load_database_url, log_options, url_password_forms
    from service.store.sql import Store

    # Only the database is needed here, so migrate without the rest of the configuration.
    try:
        url = load_database_url()
        level, fmt = log_options()
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    configure_logging(level, url_password_forms(url), fmt)
    store = Store(url)
    try:
        store.migrate()
        current, _ = store.revisions()
    finally:
        store.dispose()
    # A log line, not a report: the release step's output is read in the app's log stream.
    log.info("database is up to date (revision %s)", ", ".join(sorted(current)), extra={"revision": sorted(current)})


@main.command()
def doctor() -> None:
    """Check the configuration as deployed: one line per check; exit 1 if any fails."""
    from service.observability.doctor import checks

    try:
        settings = load_settings()
        secrets, fmt = settings.secrets, settings.log_format
    except ConfigError:
        secrets, fmt = (), "json"  # the settings check names the problem
    configure_logging("WARNING", secrets, fmt)  # the report is the output; library chatter is not
    failed = False
    for line in checks():
        click.echo(str(line))
        failed |= line.ok is False
    if failed:
        sys.exit(1)


def _services(settings):
    from service.services import Services

    return Services(settings)


@main.command("sweep")
@click.option("--list-hours", type=click.IntRange(min=0), default=None,
              help="Also list the account's recordings of the last N hours (default SWEEP_LIST_HOURS).")
@click.option("--older-than", "older_than", type=click.IntRange(min=0), default=None,
              help="Fetch recordings unfinished for at least this many seconds (default SWEEP_AFTER).")
def sweep_command(list_hours: int | None, older_than: int | None) -> None:
    """Run one reconciliation sweep now and print its report."""
    from service.pipelines.sweep import sweep

    settings = _settings()
    services = _services(settings)
    try:
        report = sweep(
            services.store,
            services.signalwire,
            services.redis,
            older_than_seconds=settings.sweep_after if older_than is None else older_than,
            list_hours=settings.sweep_list_hours if list_hours is None else list_hours,
        )
    finally:
        _relay_metrics(services)
        services.close()
    click.echo(report.summary())
    for error in report.errors:
        click.echo(f"  error: {error}")
    if report.skipped_locked:
        sys.exit(3)


def _relay_metrics(services) -> None:
    """The command's SignalWire requests, counted in /metrics like a worker's."""
    import redis

    from service.observability.relay import RELAY

    try:
        RELAY.flush(services.redis)
    except redis.RedisError as exc:
        log.warning("could not relay this command's metrics (%s)", type(exc).__name__)


def _failed_jobs(services):
    from rq.job import Job

    registry = services.queue.failed_job_registry
    ids = registry.get_job_ids()
    jobs = Job.fetch_many(ids, connection=services.redis, serializer=services.queue.serializer)
    return [job for job in jobs if job is not None]


def _describe(job) -> dict:
    """What an operator needs about one dead letter."""
    from service.domain.recordings import CallbackEvent

    sid = status = "?"
    try:
        payload = job.args[0]
        if isinstance(payload, dict):
            event = CallbackEvent.from_payload(payload)
            sid, status = event.recording_sid, event.status
    except Exception:
        parts = (job.description or "").split()
        if len(parts) >= 3 and parts[0] == "recording":
            sid, status = parts[1], parts[2]
    configured = len(job.retry_intervals or ())
    attempts = max(configured - (job.retries_left or 0), 0) + 1
    result = job.latest_result()
    exc = (result.exc_string if result is not None else None) or ""
    lines = [line.strip() for line in exc.strip().splitlines() if line.strip()]
    failed_at = job.ended_at or (result.created_at if result is not None else None)
    return {
        "id": job.id,
        "recording_sid": sid,
        "status": status,
        "attempts": attempts,
        "recoveries": int((job.meta or {}).get("recoveries", 0)),
        "error": lines[-1] if lines else "",
        "failed_at": failed_at.isoformat() if failed_at else "",
    }


@main.command()
def failed() -> None:
    """List permanently failed jobs (retries exhausted): the dead letters."""
    settings = _settings()
    services = _services(settings)
    try:
        rows = [_describe(job) for job in _failed_jobs(services)]
    finally:
        services.close()
    if not rows:
        click.echo("no failed jobs")
        return
    for row in rows:
        extra = f" recoveries={row['recoveries']}" if row["recoveries"] else ""
        click.echo(
            f"{row['id']}  recording={row['recording_sid']} status={row['status']} attempts={row['attempts']}"
            f"{extra} failed_at={row['failed_at']}\n    error: {row['error']}"
        )
    click.echo(f"{len(rows)} failed job(s); `replay JOB_ID` or `replay --all` runs them again")


@main.command()
@click.argument("job_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every failed job.")
def replay(job_ids: tuple[str, ...], replay_all: bool) -> None:
    """Requeue failed jobs (RQ's requeue; the callback dedupe does not apply), with fresh retries."""
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job

    if bool(job_ids) == replay_all:
        raise click.UsageError("give JOB_ID(s) or --all")
    settings = _settings()
    services = _services(settings)
    registry = services.queue.failed_job_registry
    problems = 0
    try:
        ids = registry.get_job_ids() if replay_all else list(job_ids)
        for job_id in ids:
            try:
                job = Job.fetch(job_id, connection=services.redis, serializer=services.queue.serializer)
                if job.retry_intervals:
                    job.retries_left = len(job.retry_intervals)  # a replay gets the full retry policy again
                job.meta.pop("recoveries", None)
                registry.requeue(job)
            except (NoSuchJobError, InvalidJobOperation):
                click.echo(f"{job_id}: not a failed job", err=True)
                problems += 1
                continue
            click.echo(f"{job_id}: requeued")
    finally:
        services.close()
    click.echo(f"replayed {len(ids) - problems} job(s)")
    if problems:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
