"""Builds the long-lived connections (Redis, the RQ queue, the store, the SignalWire client)
from Settings, once per process. The web app binds them with `init_app`; workers use them
directly. Nothing here imports Flask.
"""

from __future__ import annotations

import functools

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue
from rq.serializers import JSONSerializer

from service.config import Settings
from service.media.storage import Storage, open_storage
from service.signalwire.client import SignalWireClient, space_base_url
from service.store.idempotency import IdempotencyKeys
from service.store.sql import Store


def redis_connection(url: str, *, socket_timeout: float | None = 2.0) -> redis.Redis:
    # redis-py retries 10 times with backoff by default: a webhook would hang while Redis
    # is down instead of falling back to the inbox. One quick retry, short timeouts.
    options = dict(
        socket_connect_timeout=1.0,
        socket_timeout=socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        health_check_interval=30,
    )
    if url.startswith("rediss://"):
        # Heroku Redis presents a self-signed certificate.
        options["ssl_cert_reqs"] = None
    return redis.Redis.from_url(url, **options)


def queue_for(settings: Settings, connection: redis.Redis) -> Queue:
    # JSON, not pickle: nothing read back from Redis can run code in a worker.
    return Queue(settings.queue_name, connection=connection, serializer=JSONSerializer, default_timeout=120)


class Services:
    """The process's connections, created lazily and shared."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @functools.cached_property
    def redis(self) -> redis.Redis:
        return redis_connection(self.settings.redis_url)

    @functools.cached_property
    def queue(self) -> Queue:
        return queue_for(self.settings, self.redis)

    @functools.cached_property
    def store(self) -> Store:
        return Store(self.settings.database_url, pool_size=self.settings.database_pool_size,
                     max_overflow=self.settings.database_max_overflow)

    @functools.cached_property
    def idempotency(self) -> IdempotencyKeys:
        return IdempotencyKeys(self.store)

    @functools.cached_property
    def signalwire(self) -> SignalWireClient:
        return SignalWireClient(
            space_base_url(self.settings.signalwire_space),
            self.settings.signalwire_project_id,
            self.settings.signalwire_api_token,
        )

    @functools.cached_property
    def storage(self) -> Storage | None:
        """The media archive's storage; None when archiving is off (no MEDIA_STORAGE_URL)."""
        url = self.settings.media_storage_url
        return open_storage(url, self.settings.media_verify) if url else None

    def enqueue_archive(self, sid: str) -> bool:
        from service.media.pipeline import enqueue_archive

        return enqueue_archive(self.queue, self.store, sid)

    def close(self) -> None:
        for name in ("redis", "store", "signalwire", "storage"):
            obj = self.__dict__.pop(name, None)
            if obj is None:
                continue
            close = getattr(obj, "close", None) or getattr(obj, "dispose", None)
            close()
        self.__dict__.pop("queue", None)
        self.__dict__.pop("idempotency", None)
