"""Finding the programs the lab runs (unshare, iptables, ...) on a stock account.

An ordinary Debian account's PATH is ``/usr/local/bin:/usr/bin:/bin``: iptables and ip live
in /usr/sbin, which it does not list, although they work there without privileges inside
the lab's user namespace. So the lab looks in the sbin directories itself, after PATH, and
when a program is really missing says in one line which one and which package brings it.
"""
from __future__ import annotations

import os
import shutil

from .errors import LabError

SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

# program -> the Debian package that installs it
PACKAGES = {
    "unshare": "util-linux",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "iptables-legacy": "iptables",
    "iptables-legacy-save": "iptables",
    "iptables-nft": "iptables",
    "iptables-nft-save": "iptables",
    "ip": "iproute2",
    "tc": "iproute2",
    "modinfo": "kmod",
}


def search_path(path: str | None = None) -> str:
    """``path`` (default: this process's PATH) with the sbin directories appended."""
    dirs = [d for d in (os.environ.get("PATH", "") if path is None else path).split(os.pathsep) if d]
    return os.pathsep.join(dirs + [d for d in SBIN_DIRS if d not in dirs])


class ProgramMissing(LabError):
    """A program the lab runs is not installed."""


def find(program: str) -> str:
    """The absolute path of ``program`` (a name or a path), or ProgramMissing in one line."""
    found = shutil.which(program, path=search_path())
    if found is not None:
        return found
    package = PACKAGES.get(os.path.basename(program))
    where = f"the Debian package {package!r} brings it: apt-get install {package}" if package \
        else "install it or give its full path"
    raise ProgramMissing(f"the program {program!r} is not installed (looked in PATH and "
                         f"{', '.join(SBIN_DIRS)}); {where}")
