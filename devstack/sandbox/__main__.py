"""Run the sandbox standalone: `python -m devstack.sandbox --port 8123`.

Credentials come from SIGNALWIRE_PROJECT_ID, SIGNALWIRE_API_TOKEN and SIGNALWIRE_SIGNING_KEY,
defaulting to the sandbox values in devstack.sandbox (never meant for a real space).
Knobs can be changed at runtime with `POST /_sandbox/knobs` (JSON); counts are at `GET /_sandbox/state`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from devstack.sandbox import DEFAULT_API_TOKEN, DEFAULT_PROJECT_ID, DEFAULT_SIGNING_KEY, Sandbox


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--recording-seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sandbox = Sandbox(
        os.environ.get("SIGNALWIRE_PROJECT_ID") or DEFAULT_PROJECT_ID,
        os.environ.get("SIGNALWIRE_API_TOKEN") or DEFAULT_API_TOKEN,
        os.environ.get("SIGNALWIRE_SIGNING_KEY") or DEFAULT_SIGNING_KEY,
        host=args.host,
        port=args.port,
    )
    if args.recording_seconds is not None:
        sandbox.recording_seconds = args.recording_seconds
    if args.seed is not None:
        sandbox.seed = args.seed
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with sandbox:
        logging.getLogger("devstack.sandbox").info(
            "sandbox listening on %s (project %s)", sandbox.base_url, sandbox.project_id
        )
        stop.wait()


if __name__ == "__main__":
    main()
