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


def _checked_settings():
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc))


def _settings():
    settings = _checked_settings()
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


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
def web(gunicorn_args: tuple[str, ...]) -> None:
    """Run the web process (the Procfile's web line): gunicorn serving the app with
    service/gunicorn_conf.py, once the configuration is checked. Extra arguments go to gunicorn."""
    # Before anything imports prometheus_client (it decides on import where counts go).
    from service.observability import multiprocess

    multiprocess.prepare()
    # Checked before gunicorn is imported: gunicorn parses WEB_CONCURRENCY on import with a
    # bare int(), and a bad value would end in its traceback instead of this message.
    _checked_settings()
    from gunicorn.app.wsgiapp import run

    sys.argv = ["gunicorn", "service:create_app()", "-c", "python:service.gunicorn_conf", *gunicorn_args]
    run(prog="gunicorn")


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="Write it to this file (docs/openapi.json is the committed copy) instead of printing it.")
def openapi(output: str | None) -> None:
    """Print the API's OpenAPI document (no configuration needed)."""
    from service import openapi_document

    text = openapi_document()
    if output is None:
        click.echo(text, nl=False)
        return
    with open(output, "w", encoding="utf-8") as file:
        file.write(text)
    click.echo(f"wrote {output}")


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
            archive=services.enqueue_archive if settings.media_storage_url else None,
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


@main.command()
def failed() -> None:
    """List permanently failed jobs (the dead letters), then the inbox rows set aside."""
    from service.pipelines.failed import failed_jobs

    settings = _settings()
    services = _services(settings)
    try:
        rows = [job.as_dict() for job in failed_jobs(services.queue)]
        set_aside = services.store.inbox_set_aside()
    finally:
        services.close()
    if not rows:
        click.echo("no failed jobs")
    for row in rows:
        extra = f" recoveries={row['recoveries']}" if row["recoveries"] else ""
        click.echo(
            f"{row['id']}  recording={row['recording_sid']} status={row['status']} attempts={row['attempts']}"
            f"{extra} failed_at={row['failed_at']}\n    error: {row['error']}"
        )
    if rows:
        click.echo(f"{len(rows)} failed job(s); `replay JOB_ID` or `replay --all` runs them again")
    for row in set_aside:
        click.echo(
            f"inbox row {row['id']}  received_at={row['created_at']} tries={row['attempts']} "
            f"set_aside_at={row['set_aside_at']}\n    error: {row['last_error']}"
        )
    if set_aside:
        click.echo(f"{len(set_aside)} inbox row(s) set aside, callbacks kept while Redis was down that could not be "
                   "read; `replay --inbox ROW_ID` or `replay --inbox --all` hands them to the drain again")


@main.command()
@click.argument("job_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every failed job (or set-aside inbox row).")
@click.option("--inbox", is_flag=True, help="The ids are inbox rows set aside: the drain tries them again.")
def replay(job_ids: tuple[str, ...], replay_all: bool, inbox: bool) -> None:
    """Requeue failed jobs (RQ's requeue; the callback dedupe does not apply), with fresh retries;
    with --inbox, hand inbox rows set aside back to the drain."""
    from service.pipelines.failed import replay_jobs

    if bool(job_ids) == replay_all:
        raise click.UsageError("give JOB_ID(s) or --all")
    if inbox:
        _release_inbox(None if replay_all else job_ids)
        return
    settings = _settings()
    services = _services(settings)
    try:
        requeued, missing = replay_jobs(services.queue, None if replay_all else list(job_ids))
    finally:
        services.close()
    for job_id in missing:
        click.echo(f"{job_id}: not a failed job", err=True)
    for job_id in requeued:
        click.echo(f"{job_id}: requeued")
    click.echo(f"replayed {len(requeued)} job(s)")
    if missing:
        sys.exit(1)


def _release_inbox(row_ids: tuple[str, ...] | None) -> None:
    if row_ids is not None and not all(row_id.isdigit() for row_id in row_ids):
        raise click.UsageError("inbox row ids are numbers")
    wanted = None if row_ids is None else [int(row_id) for row_id in row_ids]
    services = _services(_settings())
    try:
        released = services.store.inbox_release(wanted)
    finally:
        services.close()
    for row_id in released:
        click.echo(f"inbox row {row_id}: handed to the drain again")
    missing = sorted(set(wanted or ()) - set(released))
    for row_id in missing:
        click.echo(f"inbox row {row_id}: not set aside", err=True)
    click.echo(f"released {len(released)} inbox row(s)")
    if missing:
        sys.exit(1)


@main.group()
def deliveries() -> None:
    """Notification deliveries: send failed ones again (the database is all they need)."""


def _database_store():
    from service.config import load_database_url
    from service.store.sql import Store

    try:
        return Store(load_database_url())
    except ConfigError as exc:
        raise click.ClickException(str(exc))


@deliveries.command("replay")
@click.argument("delivery_ids", nargs=-1, required=True)
def replay_deliveries(delivery_ids: tuple[str, ...]) -> None:
    """Send deliveries again (same webhook-id and body, the whole retry schedule)."""
    from service.pipelines.failed import replay_delivery

    store = _database_store()
    missing = 0
    try:
        for delivery_id in delivery_ids:
            if not replay_delivery(store, delivery_id):
                click.echo(f"{delivery_id}: no such delivery", err=True)
                missing += 1
            else:
                click.echo(f"{delivery_id}: due again")
    finally:
        store.dispose()
    if missing:
        sys.exit(1)


@deliveries.command("replay-failed")
@click.argument("endpoint_id")
@click.option("--since", required=True, type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S",
                                                                     "%Y-%m-%d"]),
              help="Replay failed deliveries created at or after this time (UTC unless it has an offset).")
def replay_failed_deliveries(endpoint_id: str, since) -> None:
    """Send every failed delivery of an endpoint created since a time again."""
    from datetime import timezone

    since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    from service.pipelines.failed import replay_failed_deliveries

    store = _database_store()
    try:
        count = replay_failed_deliveries(store, endpoint_id, since)
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc.args[0]))
    finally:
        store.dispose()
    click.echo(f"replayed {count} failed deliveries of {endpoint_id}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
