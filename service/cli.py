"""Operator commands: `python -m service <command>` (also installed as `recording-keeper`)."""

from __future__ import annotations

import sys

import click

from service.config import ConfigError, load_settings
from service.logs import configure_logging


def _settings():
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    configure_logging(settings.log_level, settings.secrets)
    return settings


@click.group()
def main() -> None:
    """Recording keeper operations."""


@main.command()
def migrate() -> None:
    """Apply database migrations (the Procfile's release step)."""
    from service.config import default_database_url
    from service.store import Store
    import os

    # Only the database is needed here, so migrate without the rest of the configuration.
    store = Store(os.environ.get("DATABASE_URL") or default_database_url())
    store.migrate()
    store.dispose()
    click.echo("database is up to date")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
