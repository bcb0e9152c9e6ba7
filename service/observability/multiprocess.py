"""prometheus_client's multiprocess mode under gunicorn: each worker process writes its counts
to files in one directory, and /metrics sums them.

The directory must be named in PROMETHEUS_MULTIPROC_DIR before anything imports
prometheus_client, which decides at import how it keeps values: gunicorn's master does that
when it loads service/gunicorn_conf.py, and the worker processes inherit it. This module does
not import prometheus_client itself until a worker has died.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"


_made: set[str] = set()


def prepare() -> str:
    """The directory: the one the environment names (made if missing), else a new one. A
    configuration reload keeps the one already chosen."""
    path = os.environ.get(ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="recording-keeper-metrics-")
        _made.add(path)
    os.makedirs(path, exist_ok=True)
    os.environ[ENV] = path
    return path


def empty(path: str) -> None:
    """At start: counts left by an earlier run must not be added to this one's."""
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def remove(path: str) -> None:
    """At exit: a directory made here goes with the process that made it."""
    if path in _made:
        shutil.rmtree(path, ignore_errors=True)


def process_dead(pid: int) -> None:
    """A worker process exited: its live gauges go (its counters' files stay, and keep counting
    in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
