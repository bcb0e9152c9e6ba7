"""`python -m devstack.local`: the whole service on one machine with embedded defaults.

No REDIS_URL: a private Redis server. No DATABASE_URL: SQLite under instance/. No SignalWire
credentials: the project's sandbox plays SignalWire over loopback HTTP. It then starts a
recording through the API, waits for the callbacks to be processed and prints what was stored.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import sys
import time
import uuid
from contextlib import ExitStack

import requests

from devstack.redis_server import EmbeddedRedis, free_port
from devstack.stack import Stack
from service.config import INSTANCE_DIR, default_database_url

DEFAULT_PORT = 5000

def choose_port(wanted: int) -> int:
    """`wanted` if it is free on loopback, else the next free one above it (a few tries)."""
    for port in range(wanted, min(wanted + 20, 65536)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def embedded_env(resources: ExitStack, port: int) -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = resources.enter_context(EmbeddedRedis()).url
        print(f"* Redis: embedded server at {env['REDIS_URL']}")
    env.setdefault("DATABASE_URL", default_database_url())
    # Each completed recording's audio is archived under instance/ (a folder, verified by reading back).
    env.setdefault("MEDIA_STORAGE_URL", f"file://{(INSTANCE_DIR / 'media').resolve()}")
    if not (env.get("SIGNALWIRE_PROJECT_ID") and env.get("SIGNALWIRE_API_TOKEN")):
        from devstack import sandbox as sb

        sandbox = resources.enter_context(sb.Sandbox(sb.DEFAULT_PROJECT_ID, sb.DEFAULT_API_TOKEN, sb.DEFAULT_SIGNING_KEY))
        env.update(
            SIGNALWIRE_SPACE=sandbox.base_url,
            SIGNALWIRE_PROJECT_ID=sb.DEFAULT_PROJECT_ID,
            SIGNALWIRE_API_TOKEN=sb.DEFAULT_API_TOKEN,
            SIGNALWIRE_SIGNING_KEY=sb.DEFAULT_SIGNING_KEY,
        )
        print(f"* SignalWire: sandbox at {sandbox.base_url} (no credentials set)")
    env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{port}")
    # For a person reading the log (production writes one JSON object per line).
    env.setdefault("LOG_FORMAT", "console")
    env.setdefault("SERVICE_API_TOKEN", secrets.token_urlsafe(24))
    # So the local run shows the dashboard (signed in to with the API token printed below).
    env.setdefault("SECRET_KEY", secrets.token_urlsafe(32))
    # Notification endpoints on this machine (http://127.0.0.1:...) are what a local run has.
    env.setdefault("NOTIFY_ALLOW_PRIVATE", "true")
    print(f"* Database: {env['DATABASE_URL'].split('@')[-1]}")
    print(f"* Media archive: {env['MEDIA_STORAGE_URL']}")
    return env


def demo(base_url: str, token: str, timeout: float = 30.0) -> dict:
    """Start a recording on a (sandbox) call and wait until it is stored as completed."""
    auth = {"Authorization": f"Bearer {token}"}
    call_sid = str(uuid.uuid4())
    response = requests.post(f"{base_url}/api/calls/{call_sid}/recordings", json={"channels": "dual"},
                             headers=auth, timeout=15)
    print(f"\nPOST /api/calls/{call_sid}/recordings -> {response.status_code}")
    response.raise_for_status()
    location = response.headers["Location"]
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        stored = requests.get(base_url + location, headers=auth, timeout=5).json()
        for event in stored.get("events", []):
            if event["status"] not in seen:
                seen.add(event["status"])
                print(f"  callback received and processed: {event['status']}")
        if stored.get("status") == "completed" and stored.get("last_fetched_at"):
            print(f"  metadata fetched and stored\nGET {location} ->")
            print(json.dumps(stored, indent=2))
            return stored
        time.sleep(0.2)
    raise SystemExit(f"recording at {location} was not stored as completed within {timeout:.0f} s")


def try_it(base_url: str, token: str) -> str:
    auth = shlex.quote(f"Authorization: Bearer {token}")
    return "\n".join([
        "\nTry it (the sandbox plays the call; any call sid works):",
        f"  curl -s -X POST -H {auth} -H 'Content-Type: application/json' -d '{{\"channels\": \"dual\"}}' "
        f"{base_url}/api/calls/$(python3 -c 'import uuid; print(uuid.uuid4())')/recordings",
        f"  curl -s -H {auth} {base_url}/api/recordings",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or DEFAULT_PORT),
                        help=f"web port (default PORT or {DEFAULT_PORT}; the next free one if taken)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--exit-after-demo", action="store_true", help="stop once the demo recording is stored")
    parser.add_argument("--verbose", action="store_true", help="show the processes' logs here, not in instance/")
    args = parser.parse_args(argv)
    port = choose_port(args.port)
    if port != args.port:
        print(f"* Port {args.port} is taken; using {port} instead")
    with ExitStack() as resources:
        env = embedded_env(resources, port)
        log_path = None
        if not args.verbose:
            INSTANCE_DIR.mkdir(parents=True, exist_ok=True)
            log_path = str(INSTANCE_DIR / "local.log")
        stack = Stack(env, port=port, workers=args.workers, log_path=log_path)
        resources.callback(stack.stop)
        stack.start(release=True)
        if log_path:
            print(f"* Logs of the web and worker processes: {log_path}")
        token = env["SERVICE_API_TOKEN"].split(",")[0].strip()  # the first, if several are set
        print(f"* Web: {stack.base_url} (API reference: {stack.base_url}/api/docs)")
        # A local run's own token (or the one SERVICE_API_TOKEN chose): printing it is the point.
        print(f"* API token: {token}")
        if env.get("SECRET_KEY"):
            print(f"* Dashboard: {stack.base_url}/dashboard/ (sign in with the API token)")
        demo(stack.base_url, token)
        print(try_it(stack.base_url, token))
        if args.exit_after_demo:
            return 0
        print("\nService running; press Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
