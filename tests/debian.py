"""Debian packages a test needs (SLURM, Chromium): found on the machine, or installed with
apt-get when we are root; otherwise :class:`Unavailable` says why, and the test skips on it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence


class Unavailable(RuntimeError):
    """The packages are missing and cannot be installed here; the message says why."""


def which(name: str) -> str | None:
    """``shutil.which`` that also looks in the sbin directories (not on every PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def ensure_debian(packages: Sequence[str], binaries: Sequence[str], what: str,
                  timeout: float = 900) -> None:
    """Install ``packages`` with apt-get if any of ``binaries`` is missing.

    Raises :class:`Unavailable` when they are missing and cannot be installed (not root, no
    apt-get, apt-get failed).  Runs ``apt-get update`` only when a plain install fails (empty
    package lists).
    """
    missing = [b for b in binaries if which(b) is None]
    if not missing:
        return
    wanted = "apt-get install -y " + " ".join(packages)
    if os.geteuid() != 0:
        raise Unavailable(f"{what} is not installed ({', '.join(missing)} missing) and we are "
                          f"not root to install it; run `{wanted}` as root")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{what} is not installed ({', '.join(missing)} missing) and there "
                          f"is no apt-get; install {' '.join(packages)} by hand")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)

    out = run(install)
    if out.returncode != 0:
        run(["apt-get", "update", "-q"])
        out = run(install)
    if out.returncode != 0:
        raise Unavailable(f"`{' '.join(install)}` failed:\n{(out.stdout + out.stderr)[-2000:]}")
    missing = [b for b in binaries if which(b) is None]
    if missing:
        raise Unavailable(f"installed {' '.join(packages)} but {', '.join(missing)} missing")
