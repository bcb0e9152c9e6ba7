"""`python -m bench.worker_proc simple|fork`: drain the queue in burst mode with the worker class
named, built as workers/__main__.py builds it; prints "RESULT <failed jobs>". bench.worker times
the jobs themselves, from their started_at/ended_at in Redis."""

from __future__ import annotations

import sys

from rq import SimpleWorker, Worker
from rq.registry import FailedJobRegistry

from service.config import load_settings
from service.observability.logs import configure_logging
from service.services import queue_for, redis_connection


def main() -> None:
    cls = {"simple": SimpleWorker, "fork": Worker}[sys.argv[1]]
    settings = load_settings()
    configure_logging(settings.log_level, settings.secrets)
    connection = redis_connection(settings.redis_url, socket_timeout=None)
    queue = queue_for(settings, connection)
    worker = cls([queue], connection=connection, serializer=queue.serializer)
    worker.work(burst=True, logging_level=settings.log_level)
    print(f"RESULT {FailedJobRegistry(queue=queue).count}", flush=True)


if __name__ == "__main__":
    main()
