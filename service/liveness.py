"""Worker liveness in Redis: each worker process declares itself alive every few seconds
(workers.recovery.beat), and the web's /metrics counts the live ones."""

from __future__ import annotations

import redis

# One key per worker process, expiring unless refreshed.
ALIVE_KEY = "recording-keeper:worker-alive:{}"
# The names of the workers that declared themselves alive; counting drops those whose key expired.
WORKERS_KEY = "recording-keeper:workers"

_COUNT_ALIVE = """
local alive = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if redis.call('EXISTS', ARGV[1] .. name) == 1 then
        alive = alive + 1
    else
        redis.call('SREM', KEYS[1], name)
    end
end
return alive
"""


def count_alive(connection: redis.Redis, pipe=None):
    """Live worker processes (in a pipeline: queued there, the count comes with its results)."""
    script = connection.register_script(_COUNT_ALIVE)
    return script(keys=[WORKERS_KEY], args=[ALIVE_KEY.format("")], client=pipe or connection)
