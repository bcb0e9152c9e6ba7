#!/usr/bin/env python3
"""Bootstrap for a fresh clone, needing only Python 3.11+:

    python3 dev.py run     # the whole service locally, with a recording going through
    python3 dev.py test    # the full test suite

It keeps a virtualenv in .venv, installed from pyproject.toml (reinstalled when that changes).
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit("Python 3.11 or newer is required")
    stamp = VENV / ".installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and PY.exists():
        return
    if not PY.exists():
        print("* creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("* installing dependencies into .venv", flush=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", f"{ROOT}[test]"], check=True)
    stamp.write_text(digest)


def main() -> int:
    command, *rest = sys.argv[1:] or ["help"]
    if command not in ("run", "test"):
        print(__doc__)
        return 2
    ensure_venv()
    os.chdir(ROOT)
    if command == "run":
        argv = [str(PY), "-m", "service.local", *rest]
    else:
        argv = [str(PY), "-m", "pytest", *rest]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main())
