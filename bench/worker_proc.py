"""`python -m bench.worker_proc simple|fork`: drain the queue in burst mode with the worker class
named, built as workers/__main__.py builds it; prints "RESULT <jobs> <seconds>" (start-up excluded)."""

from __future__ import annotations

import sys
import time

from rq import SimpleWorker, Worker
from rq.registry import FailedJobRegistry

from service.config import load_settings
from service.logs import configure_logging
from service.services import queue_for, redis_connection


def main() -> None:
    cls = {"simple": SimpleWorker, "fork": Worker}[sys.argv[1]]
    settings = load_settings()
    configure_logging(settings.log_level, settings.secrets)
    connection = redis_connection(settings.redis_url, socket_timeout=None)
    queue = queue_for(settings, connection)
    jobs = queue.count
    worker = cls([queue], connection=connection, serializer=queue.serializer)
    t0 = time.perf_counter()
    worker.work(burst=True, logging_level=settings.log_level)
    elapsed = time.perf_counter() - t0
    failed = FailedJobRegistry(queue=queue).count
    print(f"RESULT {jobs} {elapsed:.4f} {failed}", flush=True)


if __name__ == "__main__":
    main()
