"""Media archive: throughput against a plain boto3 upload, and a worker's memory on big files.

python -m bench.media [--seconds 600] [--count 4] [--repeats 3] [--rss-mb 500] [--skip-rss]

Processes of their own: the sandbox (`python -m devstack.sandbox`, serving generated WAV sized
for each recording's duration), an S3-compatible server (moto's `moto.server`) and Redis.

- Throughput: `Archiver.archive` (download from the sandbox, SHA-256 while streaming, upload
  to S3 (multipart above 8 MiB), verify, database writes) of COUNT recordings of SECONDS each
  (128 kbps: 600 s is 9.6 MB), against boto3's `upload_fileobj` of the same bytes from memory
  (its default transfer settings: multipart with 10 threads), in alternation, REPEATS times;
  MB/s and the ratio per pair. Both verification modes: `checksum` (the default) and `read`.
- Memory: a real worker process (`python -m workers`) archives a 1-hour WAV (57.6 MB) and a
  RSS_MB file, after a warm-up archive; its RSS is sampled every 0.1 s from the job's start.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from bench.common import (API_TOKEN, PROJECT_ID, ROOT, EmbeddedRedis, database, fmt, free_port, log, publish,
                          rss_kb, service_env, wait_http, workdir)

S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1"}
BUCKET = "bench-media"
WAV_BYTES_PER_SECOND = 16000


class Servers:
    """The sandbox and moto, each in a process of its own."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Servers":
        sandbox_port, s3_port = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SIGNALWIRE_PROJECT_ID": PROJECT_ID,
               "SIGNALWIRE_API_TOKEN": API_TOKEN}
        log_file = open(self.tmp / "servers.log", "ab")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "devstack.sandbox", "--port", str(sandbox_port),
                                            "--recording-seconds", "0.01"], cwd=ROOT, env=env,
                                           stdout=log_file, stderr=log_file))
        self.procs.append(subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                            str(s3_port)], cwd=ROOT, env=env, stdout=log_file, stderr=log_file))
        self.sandbox = f"http://127.0.0.1:{sandbox_port}"
        self.s3 = f"http://127.0.0.1:{s3_port}"
        wait_http(self.sandbox + "/_sandbox/state")
        wait_http(self.s3)
        self.s3_env = {**S3_ENV, "AWS_ENDPOINT_URL": self.s3}
        self.client().create_bucket(Bucket=BUCKET)
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def client(self, **config):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"], region_name=S3_ENV["AWS_REGION"],
                            **config)

    def recordings(self, count: int, seconds: int) -> list[str]:
        """`count` completed recordings of `seconds` at the sandbox (its REST API, as a client would)."""
        requests.post(self.sandbox + "/_sandbox/knobs", json={"completed_duration": seconds}, timeout=5)
        auth = (PROJECT_ID, API_TOKEN)
        root = f"{self.sandbox}/api/laml/2010-04-01/Accounts/{PROJECT_ID}"
        sids = [requests.post(f"{root}/Calls/{uuid.uuid4()}/Recordings.json", auth=auth, timeout=5,
                              data={"Trim": "do-not-trim"}).json()["sid"] for _ in range(count)]
        for sid in sids:
            deadline = time.monotonic() + 30
            while requests.get(f"{root}/Recordings/{sid}.json", auth=auth, timeout=5).json()["status"] != "completed":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"recording {sid} did not complete")
                time.sleep(0.05)
        return sids


def _store_completed(store, client, sids: list[str]) -> None:
    for sid in sids:
        store.save_metadata(client.fetch_recording(sid))


# --- throughput ------------------------------------------------------------------------------


def throughput(servers: Servers, db_url: str, seconds: int, count: int, repeats: int) -> dict:
    from service.media.archive import Archiver
    from service.media.storage.s3 import S3Storage
    from service.signalwire.client import SignalWireClient
    from service.store.sql import Store

    os.environ.update(servers.s3_env)
    store = Store(db_url)
    client = SignalWireClient(servers.sandbox, PROJECT_ID, API_TOKEN)
    plain = servers.client()  # boto3 as it comes
    storages = {mode: S3Storage(BUCKET, f"archive-{mode}", verify=mode) for mode in ("checksum", "read")}
    pairs = {mode: [] for mode in storages}
    size = 44 + seconds * WAV_BYTES_PER_SECOND
    try:
        for repeat in range(repeats):
            for mode, storage in storages.items():
                sids = servers.recordings(count, seconds)
                _store_completed(store, client, sids)
                blobs = [client.open_media(sid).read() for sid in sids]  # the same bytes, in memory
                started = time.perf_counter()
                for i, blob in enumerate(blobs):
                    plain.upload_fileobj(io.BytesIO(blob), BUCKET, f"plain/{repeat}/{mode}/{i}.wav")
                baseline = time.perf_counter() - started
                del blobs
                archiver = Archiver(store, client, storage)
                started = time.perf_counter()
                for sid in sids:
                    archiver.archive(sid)
                archived = time.perf_counter() - started
                mb = count * size / 1e6
                pair = {"repeat": repeat, "mb": round(mb, 1), "plain_mb_s": round(mb / baseline, 1),
                        "archive_mb_s": round(mb / archived, 1), "ratio": round(baseline / archived, 3)}
                pairs[mode].append(pair)
                log(f"throughput {mode} #{repeat}: archive {pair['archive_mb_s']} MB/s, plain upload "
                    f"{pair['plain_mb_s']} MB/s, ratio {pair['ratio']}")
    finally:
        store.dispose()
        client.close()
    return {"seconds": seconds, "bytes_each": size, "count": count, "pairs": pairs,
            "median": {mode: {k: statistics.median(p[k] for p in ps) for k in ("archive_mb_s", "plain_mb_s", "ratio")}
                       for mode, ps in pairs.items()}}


# --- worker memory ---------------------------------------------------------------------------


def worker_rss(servers: Servers, db_url: str, tmp: Path, rss_mb: int) -> list[dict]:
    from service.media.pipeline import enqueue_archive
    from service.services import queue_for, redis_connection
    from service.signalwire.client import SignalWireClient
    from service.store.sql import Store
    from service.config import load_settings

    results = []
    with EmbeddedRedis() as redis_server:
        env = service_env(redis_server.url, db_url, servers.sandbox, free_port(), **servers.s3_env,
                          MEDIA_STORAGE_URL=f"s3://{BUCKET}/rss", SWEEP_INTERVAL=0)
        settings = load_settings(env)
        log_file = open(tmp / "worker.log", "ab")
        worker = subprocess.Popen([sys.executable, "-m", "workers"], cwd=ROOT, env=env, stdout=log_file,
                                  stderr=log_file)
        store = Store(db_url)
        client = SignalWireClient(servers.sandbox, PROJECT_ID, API_TOKEN)
        queue = queue_for(settings, redis_connection(settings.redis_url))
        try:
            sizes = [("warm-up, 20 MB", 1250), ("1-hour WAV", 3600), (f"{rss_mb} MB", rss_mb * 1_000_000 // WAV_BYTES_PER_SECOND)]
            for label, seconds in sizes:
                sid, = servers.recordings(1, seconds)
                _store_completed(store, client, [sid])
                time.sleep(1.0)  # idle: whatever the last job left has settled
                before = rss_kb(worker.pid)
                samples = []
                started = time.monotonic()
                enqueue_archive(queue, store, sid)
                while (store.get(sid)["media"] or {}).get("status") != "archived":
                    if worker.poll() is not None or time.monotonic() - started > 900:
                        raise RuntimeError(f"worker exited or timed out archiving {label}")
                    samples.append(rss_kb(worker.pid))
                    time.sleep(0.1)
                media = store.get(sid)["media"]
                row = {"file": label, "mb": round(media["bytes"] / 1e6, 1), "seconds": round(time.monotonic() - started, 1),
                       "rss_before_mb": round(before / 1024, 1), "rss_peak_mb": round(max(samples) / 1024, 1),
                       "rss_end_mb": round(rss_kb(worker.pid) / 1024, 1),
                       "growth_mb": round((max(samples) - before) / 1024, 1), "samples": len(samples)}
                results.append(row)
                log(f"rss {label}: {row}")
        finally:
            worker.terminate()
            try:
                worker.wait(90)  # RQ's command-channel thread can take up to a minute to stop
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            store.dispose()
            client.close()
    return results


def table(result: dict) -> str:
    lines = ["| media benchmark | measured | baseline in the same run | ratio |", "| --- | --- | --- | --- |"]
    t = result.get("throughput")
    if t:
        for mode, m in t["median"].items():
            lines.append(f"| archive {t['count']} x {t['bytes_each'] / 1e6:.1f} MB WAV, verify={mode} | "
                         f"{fmt(m['archive_mb_s'])} MB/s | boto3 upload_fileobj from memory {fmt(m['plain_mb_s'])} MB/s | "
                         f"{m['ratio']:.2f}x |")
    for row in result.get("rss", []):
        lines.append(f"| worker RSS archiving {row['file']} ({row['mb']} MB, {row['seconds']} s) | "
                     f"{row['rss_before_mb']} → peak {row['rss_peak_mb']} MB (+{row['growth_mb']} MB) | | |")
    return "\n".join(lines)


def run(seconds: int = 600, count: int = 4, repeats: int = 3, rss_mb: int = 500, skip_rss: bool = False) -> dict:
    result: dict = {}
    with workdir() as tmp, Servers(tmp) as servers, database("sqlite", tmp) as db_url:
        result["throughput"] = throughput(servers, db_url, seconds, count, repeats)
        if not skip_rss:
            result["rss"] = worker_rss(servers, db_url, tmp, rss_mb)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.media", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=600, help="each recording's duration (600 s: 9.6 MB of WAV)")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rss-mb", type=int, default=500)
    p.add_argument("--skip-rss", action="store_true")
    a = p.parse_args(argv)
    result = run(a.seconds, a.count, a.repeats, a.rss_mb, a.skip_rss)
    publish("media", result, table(result))


if __name__ == "__main__":
    main()
