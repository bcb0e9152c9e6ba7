#!/usr/bin/env python3
"""Bootstrap for a fresh clone, needing only Python 3.11+:

    python3 dev.py run     # the whole service locally, with a recording going through
    python3 dev.py test    # the full test suite

It installs uv (pinned, from the package index) into .tools/, then builds .venv from uv.lock
with every dependency group: the same lock a deploy installs from, plus the development stack
and the test tools. It syncs again whenever pyproject.toml or uv.lock change.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
TOOLS = ROOT / ".tools"
UV = TOOLS / "bin" / "uv"
UV_VERSION = "0.13.8"


def uv_env() -> dict[str, str]:
    # This interpreter, never one uv downloads: the lock covers 3.11 and newer.
    return {**os.environ, "UV_PROJECT_ENVIRONMENT": str(VENV), "UV_PYTHON_DOWNLOADS": "never"}


def ensure_uv() -> None:
    if UV.exists() and (TOOLS / f".uv-{UV_VERSION}").exists():
        return
    print(f"* installing uv {UV_VERSION} into .tools", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--root-user-action=ignore", "--upgrade",
                    "--target", str(TOOLS), f"uv=={UV_VERSION}"], check=True)
    (TOOLS / f".uv-{UV_VERSION}").touch()


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit("Python 3.11 or newer is required")
    ensure_uv()
    stamp = VENV / ".synced"
    digest = hashlib.sha256(b"".join((ROOT / n).read_bytes() for n in ("pyproject.toml", "uv.lock"))
                            + UV_VERSION.encode() + sys.executable.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and PY.exists():
        return
    print("* installing dependencies into .venv from uv.lock", flush=True)
    subprocess.run([str(UV), "sync", "--locked", "--quiet", "--python", sys.executable], cwd=ROOT, env=uv_env(),
                   check=True)
    stamp.write_text(digest)


def ensure_chromium() -> None:
    """Debian's Chromium for the dashboard's browser tests, when this user can install it (they
    skip, saying why, where it is missing)."""
    if Path("/usr/bin/chromium").exists() or os.geteuid() != 0 or not Path("/usr/bin/apt-get").exists():
        return
    print("* installing chromium (apt-get) for the dashboard's browser tests", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=True, env=env)
    except subprocess.CalledProcessError as exc:
        print(f"* could not install chromium ({exc}); the browser tests will be skipped", flush=True)


def main() -> int:
    command, *rest = sys.argv[1:] or ["help"]
    if command not in ("run", "test"):
        print(__doc__)
        return 2
    ensure_venv()
    os.chdir(ROOT)
    if command == "run":
        argv = [str(PY), "-m", "devstack.local", *rest]
    else:
        ensure_chromium()
        argv = [str(PY), "-m", "pytest", *rest]
    os.execve(argv[0], argv, {**os.environ, "UV": str(UV)})


if __name__ == "__main__":
    sys.exit(main())
