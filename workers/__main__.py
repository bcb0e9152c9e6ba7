"""`python -m workers`: the Procfile's worker process.

An RQ worker with its scheduler (so that retries fire) on the project's queue. It runs jobs
in-process (SimpleWorker): no fork per job, so connection pools stay warm and safe to use;
a crashed worker's jobs are recovered at start-up (see workers.recovery).
"""

from __future__ import annotations

import logging
import sys

from rq import SimpleWorker

from service.config import ConfigError, load_settings
from service.logs import configure_logging
from service.services import queue_for, redis_connection

log = logging.getLogger("workers")


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.secrets)
    # Blocking dequeues need a socket timeout longer than the poll; RQ raises ours as needed.
    connection = redis_connection(settings.redis_url, socket_timeout=None)
    queue = queue_for(settings, connection)
    worker = SimpleWorker([queue], connection=connection, serializer=queue.serializer)
    log.info("worker %s listening on queue %r", worker.name, queue.name)
    worker.work(with_scheduler=True, logging_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
