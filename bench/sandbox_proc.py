"""`python -m bench.sandbox_proc --count N --out FILE`: a SignalWire sandbox holding N finished
recordings (made by `record_verb` with no callback events, so it only serves metadata).
Writes "sid<TAB>call_sid" lines to FILE, prints "READY <base_url>", serves until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from devstack.sandbox import DEFAULT_API_TOKEN, DEFAULT_PROJECT_ID, DEFAULT_SIGNING_KEY, Sandbox


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sandbox = Sandbox(DEFAULT_PROJECT_ID, DEFAULT_API_TOKEN, DEFAULT_SIGNING_KEY)
    sandbox.recording_seconds = 0.0  # finished at once: metadata is final when fetched
    sandbox.latency = 0.0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with sandbox:
        with open(args.out, "w") as out:
            for i in range(args.count):
                call_sid = f"CA{i // 4:030d}"  # four recordings per call
                # The dead callback URL is never called: no events are requested.
                sid = sandbox.record_verb(call_sid, "http://127.0.0.1:9/x", events=())
                out.write(f"{sid}\t{call_sid}\n")
        print(f"READY {sandbox.base_url}", flush=True)
        stop.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
