"""Running a command as an ordinary account with a stock environment, as a student meets it.

A stock Debian account's PATH is ``/usr/local/bin:/usr/bin:/bin`` (no sbin) and its
environment has no PYTHONPATH: the command finds the package through the virtual
environment it was installed into. Run as root, the tests create the ordinary account
``psl-student`` once (useradd) and drop to it with setpriv; run as anyone else, they run as
that user.
"""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

from packetscript_lab.lab import programs

STOCK_PATH = "/usr/local/bin:/usr/bin:/bin"
STUDENT = "psl-student"
ROOT = Path(__file__).resolve().parents[1]


def student(name: str = STUDENT) -> pwd.struct_passwd:
    """The ordinary account the tests run as (created on first use when we are root)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid())
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run([programs.find("useradd"), "--create-home", "--shell", "/bin/sh",
                        "--comment", "PacketScript Lab test student", name],
                       check=True, capture_output=True, text=True)
        return pwd.getpwnam(name)


def stock_env(account: pwd.struct_passwd) -> dict[str, str]:
    """What `env -i` plus a login would give the account: no PYTHONPATH, no sbin."""
    return {"PATH": STOCK_PATH, "HOME": account.pw_dir, "USER": account.pw_name,
            "LOGNAME": account.pw_name, "SHELL": account.pw_shell or "/bin/sh",
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def venv_program(name: str) -> str:
    """A console script of the environment running the tests (e.g. ``packetscript``)."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{path} is missing: install the package into this environment " \
        "(pip install -e .), as scripts/bootstrap.sh does"
    return str(path)


def root_only_dirs() -> list[str]:
    """The directories the command needs (the interpreter, the checkout) whose parent other
    accounts cannot enter: e.g. /root/.pyenv, or a checkout in a 0700 `mktemp -d` folder."""
    paths = (sys.base_prefix, sys.prefix, sys.executable, str(ROOT))
    tops = set()
    for path in map(os.path.realpath, paths):
        parts = path.split("/")
        for i in range(2, len(parts)):
            parent = "/".join(parts[:i]) or "/"
            if not os.stat(parent).st_mode & 0o001:      # closed to other accounts
                tops.add("/".join(parts[:i + 1]))
                break
    return sorted(tops)


def command(argv: list[str], stage: Path, name: str = STUDENT) -> list[str]:
    """``argv`` run as the student. When the interpreter or the checkout lives in a folder
    other accounts cannot enter (/root, a 0700 temporary folder), a private mount namespace
    (this command only) shows just those directories; the host's mounts are not changed."""
    if os.geteuid() != 0:
        return argv
    account = student(name)
    drop = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
            "--clear-groups", "--", *argv]
    return with_root_dirs_visible(drop, stage)


def with_root_dirs_visible(argv: list[str], stage: Path, extra_steps=()) -> list[str]:
    """``argv`` in a private mount namespace (this command only) where the directories of
    :func:`root_only_dirs` show through a tmpfs over their closed parents, then ``extra_steps`` run (shell
    commands, e.g. mounting a hidepid /proc); the host's mounts are not changed. ``stage`` holds the
    bind points. ``argv`` itself when there is nothing to mount."""
    tops = root_only_dirs()
    steps = []
    for i, top in enumerate(tops):
        os.makedirs(stage / str(i), exist_ok=True)
        steps.append(f"mount --bind {top} {stage / str(i)}")
    for parent in sorted({os.path.dirname(top) for top in tops}):
        steps.append(f"mount -t tmpfs -o mode=755 none {parent}")
    for i, top in enumerate(tops):
        steps += [f"mkdir -p {top}", f"mount --bind {stage / str(i)} {top}"]
    steps += list(extra_steps)
    if not steps:
        return argv
    return [programs.find("unshare"), "--mount", "--propagation", "private", "--",
            "sh", "-c", " && ".join(steps) + ' && exec "$@"', "sh", *argv]


def run(argv: list[str], stage: Path, timeout: float = 120, name: str = STUDENT,
        env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``argv`` as the student ``name`` with a stock environment (plus ``env``), from
    the student's home."""
    account = student(name)
    return subprocess.run(command(argv, stage, name), capture_output=True, text=True,
                          timeout=timeout, env={**stock_env(account), **(env or {})},
                          cwd=account.pw_dir, **kw)
