"""Fault-injection helpers: a TCP proxy that can cut a database off, a paced signed-callback
sender, and the size of a run (FAULT_SCALE=full for the full-size figures in the README)."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from service.signalwire.signatures import compute_signature

FULL = os.environ.get("FAULT_SCALE") == "full"
RESULTS = Path(os.environ.get("FAULT_RESULTS", Path(__file__).resolve().parent.parent / "bench" / "results"))


def scaled(full: int, ci: int) -> int:
    return full if FULL else ci


def report(name: str, **counts) -> None:
    """Print the figures of a fault test and keep them for the README table."""
    line = f"[fault] {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items())
    print(line)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "faults.jsonl", "a") as out:
        out.write(json.dumps({"test": name, "full": FULL, **counts}) + "\n")


class TcpProxy:
    """127.0.0.1:<port> → upstream. `down()` refuses and drops every connection; `up()` restores.

    `stall_next(after_replies)` makes the next connection go half-open once upstream has
    answered that many times, as a failover leaves a client's connection: the upstream side
    is closed, while the client side stays open and silent (what it sends goes nowhere, and
    neither an answer nor a close ever comes)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._stalled: set[socket.socket] = set()  # client sides kept open, never read or closed
        self._stall_next: int | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._listen()

    def _listen(self) -> None:
        self._listener.listen(128)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if listener is not self._listener:
                # Accepted by a listener that down() closed while this thread was blocked in
                # accept(): refuse it, or one connection would slip through the outage.
                client.close()
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                # As PgBouncer does: with Nagle's algorithm, each statement of a pipelined
                # transaction that the proxy forwards waits for a delayed ACK (40 ms).
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.update((client, server))
                stall_after, self._stall_next = self._stall_next, None
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, stall_after), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, stall_after: int | None = None) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if stall_after is not None:
                    stall_after -= 1
                    if stall_after <= 0:
                        with self._lock:
                            self._stalled.add(dst)
                        src.shutdown(socket.SHUT_RDWR)  # the other pump stops too, leaving dst open
        except OSError:
            pass
        finally:
            with self._lock:
                ends = [s for s in (src, dst) if s not in self._stalled]
                self._conns.difference_update(ends)
            for s in ends:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stall_next(self, after_replies: int = 1) -> None:
        with self._lock:
            self._stall_next = after_replies

    def down(self) -> None:
        listener, self._listener = self._listener, None
        listener.close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def up(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listen()

    def close(self) -> None:
        self.down()
        with self._lock:
            stalled, self._stalled = list(self._stalled), set()
        for s in stalled:
            s.close()


def callback_forms(project_id: str, recordings: list[dict], base_url: str, statuses=("in-progress", "completed")):
    """Signed-callback material for recordings served by the sandbox (one per status)."""
    forms = []
    for rec in recordings:
        for status in statuses:
            forms.append({
                "AccountSid": project_id, "CallSid": rec["call_sid"], "RecordingSid": rec["sid"],
                "RecordingUrl": f"{base_url}/api/laml/2010-04-01/Accounts/{project_id}/Recordings/{rec['sid']}",
                "RecordingStatus": status, "RecordingDuration": str(rec.get("duration") or 0),
                "RecordingChannels": str(rec.get("channels") or 1), "RecordingSource": rec.get("source") or "RecordVerb",
            })
    return forms


def send_callbacks(url: str, key: str, forms: list[dict], *, copies: int = 1, threads: int = 16,
                   shuffle_seed: int | None = 7, timeout: float = 10.0) -> dict[int, int]:
    """POST every form `copies` times, shuffled, concurrently; returns {status code: count}."""
    batch = [form for form in forms for _ in range(copies)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(batch)
    counts: dict[int, int] = {}
    lock = threading.Lock()
    local = threading.local()

    def send(form: dict) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        signature = compute_signature(key, url, form)
        try:
            code = session.post(url, data=form, headers={"X-SignalWire-Signature": signature}, timeout=timeout).status_code
        except requests.RequestException:
            code = 0
        with lock:
            counts[code] = counts.get(code, 0) + 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, batch))
    return counts
