"""Periodic chores every worker process runs next to its RQ work loop, in daemon threads:

- liveness beat (every `alive_ttl / 4` s): see workers.recovery; its own thread, so no slow
  chore can make a live worker look dead;
- inbox drain (every INBOX_DRAIN_INTERVAL s): callbacks the web kept in the database while
  Redis was down are moved into RQ;
- crash recovery (every RECOVERY_INTERVAL s): jobs of dead workers and jobs stuck in RQ's
  intermediate queue run again;
- reconciliation sweep (every SWEEP_INTERVAL s, 0 = off): one per interval across all
  workers (a Redis key claims the slot), in its own thread because it can take minutes;
- notifications (service.notify.sender): the outbox's due deliveries, sent from threads of
  their own as soon as a write in this process adds some, or every NOTIFY_POLL_INTERVAL s;
- metrics relay (every second, and once more at stop): what this process counted goes to
  Redis, where the web's /metrics reads it (service.observability.relay).

Errors are logged and the chore tries again at its next tick; nothing here can stop the
worker. `stop()` ends the threads within about a second (the sweep thread finishes the
request it is in; it is a daemon, so it never holds up the process exit).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Callable

import redis

from service.config import Settings
from service.notify.addresses import ALLOW_PRIVATE_WARNING
from service.notify.deliver import HttpDeliverer
from service.notify.sender import Sender, lease_for
from service.observability.relay import RELAY
from service.pipelines.ingest import Ingest
from service.services import Services
from service.pipelines.sweep import sweep
from service.store import notifications
from workers import recovery

log = logging.getLogger(__name__)

SWEEP_SLOT_KEY = "recording-keeper:sweep:next"
RELAY_INTERVAL = 1.0


class _Periodic(threading.Thread):
    def __init__(self, name: str, interval: float, task: Callable[[], object], stop: threading.Event,
                 first_delay: float = 0.0):
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.task = task
        self.stop_event = stop
        self.first_delay = first_delay
        self.runs = 0

    def run(self) -> None:
        if self.first_delay and self.stop_event.wait(self.first_delay):
            return
        while not self.stop_event.is_set():
            try:
                self.task()
            except Exception as exc:  # never let a chore kill the worker
                log.warning("housekeeping %s failed: %s: %s", self.name, type(exc).__name__, exc,
                            exc_info=not isinstance(exc, redis.RedisError))
            self.runs += 1
            if self.stop_event.wait(self.interval):
                return


class Housekeeping:
    def __init__(self, settings: Settings, worker_name: str, services: Services | None = None):
        self.settings = settings
        self.worker_name = worker_name
        # Own connections (short Redis timeouts), separate from the work loop's.
        self.services = services or Services(settings)
        self._stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self._ingest: Ingest | None = None
        self.deliverer: HttpDeliverer | None = None

    # --- the chores ------------------------------------------------------------------------

    def beat(self) -> None:
        recovery.beat(self.services.redis, self.worker_name, self.settings.worker_alive_ttl)

    def drain_inbox(self) -> int:
        if self._ingest is None:
            self._ingest = Ingest(self.services.queue, self.services.store, self.settings.dedupe_ttl)
        moved = self._ingest.drain_inbox()
        if moved:
            log.info("moved %d callbacks from the database inbox into the queue", moved)
        return moved

    def relay_metrics(self) -> int:
        return RELAY.flush(self.services.redis)

    def recover(self) -> recovery.RecoveryReport:
        return recovery.recover(self.services.queue)

    def sweep_if_due(self):
        """Sweeps when this worker claims the current interval's slot (one sweep per interval
        across all workers; the sweep's own lock also keeps them from overlapping)."""
        interval = self.settings.sweep_interval
        s = self.services
        if not s.redis.set(SWEEP_SLOT_KEY, self.worker_name, nx=True, ex=interval):
            return None
        report = sweep(s.store, s.signalwire, s.redis, older_than_seconds=self.settings.sweep_after,
                       list_hours=self.settings.sweep_list_hours, lock_ttl=max(60, interval),
                       archive=s.enqueue_archive if self.settings.media_storage_url else None)
        if report.rate_limited and report.retry_after:
            # The next sweep waits as long as SignalWire asked, even past the next slot.
            wait = math.ceil(report.retry_after)
            if s.redis.ttl(SWEEP_SLOT_KEY) < wait:
                s.redis.set(SWEEP_SLOT_KEY, self.worker_name, ex=wait)
        return report

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Housekeeping":
        s = self.settings
        if s.notify_allow_private:
            log.warning(ALLOW_PRIVATE_WARNING)
        beat_every = max(0.5, s.worker_alive_ttl / 4)
        try:
            self.beat()  # alive before the first job can start
        except redis.RedisError as exc:
            log.warning("first liveness beat failed (%s); retrying in the background", type(exc).__name__)
        self.threads = [
            _Periodic("alive", beat_every, self.beat, self._stop, first_delay=beat_every),
            _Periodic("inbox", s.inbox_drain_interval, self.drain_inbox, self._stop),
            _Periodic("recovery", s.recovery_interval, self.recover, self._stop),
            _Periodic("metrics", RELAY_INTERVAL, self.relay_metrics, self._stop, first_delay=RELAY_INTERVAL),
        ]
        if s.sweep_interval > 0:
            # Tick often and let the Redis slot decide; the first sweep waits a little so a
            # fleet restart does not sweep before the workers are up.
            self.threads.append(
                _Periodic("sweep", min(30, s.sweep_interval), self.sweep_if_due, self._stop, first_delay=5)
            )
        self.deliverer = HttpDeliverer(allow_private=s.notify_allow_private, timeout=s.notify_timeout,
                                       pool_size=s.notify_concurrency)
        sender = Sender(self.services.store.notifications, self.deliverer, schedule=s.notify_retry_schedule,
                        concurrency=s.notify_concurrency, poll_interval=s.notify_poll_interval,
                        lease_seconds=lease_for(s.notify_timeout))
        self.threads.append(threading.Thread(target=sender.run, args=(self._stop,), name="notify", daemon=True))
        for thread in self.threads:
            thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        notifications.wake_sender.set()  # the sender stops now, not at its next poll
        for thread in self.threads:
            thread.join(timeout if thread.name != "sweep" else 0.1)
        # The sender wrote what ended within a second; a delivery still in flight dies with the
        # process, and its lease runs out before another worker sends it again.
        if self.deliverer is not None:
            self.deliverer.close()
        try:
            self.relay_metrics()  # the last jobs' counts
        except redis.RedisError as exc:
            log.warning("could not relay the last metrics (%s)", type(exc).__name__)
        try:
            recovery.forget(self.services.redis, self.worker_name)
        except redis.RedisError:
            pass
        try:
            self.services.close()
        except Exception:  # closing pools at exit: nothing useful to do about a failure
            pass
