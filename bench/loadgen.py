"""Fallback load generator when wrk is absent: keep-alive HTTP/1.1 POSTs of pre-signed bodies
from asyncio connections spread over two processes. Same output fields as post_bodies.lua.
(wrk is preferred: `apt-get update && apt-get install -y wrk`; this one is slower, so its
figures are lower bounds for the server.)"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time


def _requests(lines: list[tuple[str, str]], host: str, port: int) -> list[bytes]:
    out = []
    for sig, body in lines:
        b = body.encode()
        out.append(
            (f"POST /webhooks/recording-status HTTP/1.1\r\nHost: {host}:{port}\r\n"
             f"Content-Type: application/x-www-form-urlencoded\r\nX-SignalWire-Signature: {sig}\r\n"
             f"Content-Length: {len(b)}\r\n\r\n").encode() + b
        )
    return out


async def _conn(host, port, reqs, start, step, stop_at, lat, errs):
    i = start
    reader = writer = None
    while time.monotonic() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            t0 = time.perf_counter()
            writer.write(reqs[i % len(reqs)])
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status >= 400:
                errs["status"] += 1
            i += step
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            errs["read"] += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def _proc(host, port, reqs, offset, nprocs, conns, duration, q):
    async def main():
        lat: list[float] = []
        errs = {"status": 0, "read": 0}
        stop_at = time.monotonic() + duration
        step = nprocs * conns
        await asyncio.gather(*[
            _conn(host, port, reqs, offset + k * nprocs, step, stop_at, lat, errs) for k in range(conns)
        ])
        q.put((lat, errs))

    asyncio.run(main())


def run(host: str, port: int, lines: list[tuple[str, str]], connections: int, duration: float, procs: int = 2) -> dict:
    reqs = _requests(lines, host, port)
    q: mp.Queue = mp.Queue()
    per = max(1, connections // procs)
    ps = [mp.Process(target=_proc, args=(host, port, reqs, k, procs, per, duration, q)) for k in range(procs)]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    lat: list[float] = []
    errs = {"status": 0, "read": 0}
    for _ in ps:
        l, e = q.get(timeout=duration + 60)
        lat += l
        for k in errs:
            errs[k] += e[k]
    for p in ps:
        p.join(10)
    elapsed = time.monotonic() - t0
    lat.sort()

    def p(x):
        return int(lat[min(len(lat) - 1, int(len(lat) * x / 100))] * 1e6) if lat else 0

    return {"requests": len(lat), "duration_us": int(min(elapsed, duration) * 1e6), "connect": 0,
            "read": errs["read"], "write": 0, "status": errs["status"], "timeout": 0,
            "p50_us": p(50), "p90_us": p(90), "p99_us": p(99), "max_us": p(100)}
