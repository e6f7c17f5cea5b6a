"""Per-account limits of a course machine: labs per user and packets per second per lab.

Where they come from, strictest last:

1. built-in defaults, which bind ordinary accounts only (root is the course's own account:
   the teacher, CI, benchmarks): ``DEFAULT_MAX_LABS`` labs, no packet-rate limit;
2. the course's limits file, ``/etc/packetscript-lab/limits.json``
   (``{"max_labs": 2, "max_pps": 5000}``), written by the teacher. It binds because a student
   cannot change it: it must be owned by root and writable by root only;
3. the environment: ``PACKETSCRIPT_MAX_LABS`` and ``PACKETSCRIPT_MAX_PPS`` (a hub sets them
   through ``c.Spawner.environment``). A student can change their own environment, so under
   a limits file these can only make a limit stricter, never looser; without one they set it.

``0`` means no limit. How the limits are kept: a lab holds one of the account's numbered
slots, a file under the account's runtime directory locked with flock(2) by the lab process
itself, so a slot is free again however the lab ends (kill -9 included) and nothing needs
cleaning up. The packet rate is kept by the lab process: every packet its traffic commands
send draws from one token bucket per lab (``PacketBudget``), and a command that asks for a
higher rate outright is refused. Both bind everything the lab does; a student who bypasses
the package (their own ``unshare``) is bounded by the machine's per-user controls
(docs/classroom.md, "Limits").
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .protocol import LabError

LIMITS_FILE = Path("/etc/packetscript-lab/limits.json")
DEFAULT_MAX_LABS = 4
ENV_LABS, ENV_PPS = "PACKETSCRIPT_MAX_LABS", "PACKETSCRIPT_MAX_PPS"
_KEYS = {"max_labs": ENV_LABS, "max_pps": ENV_PPS}


class LabLimitError(LabError):
    """A course limit was reached; the message names the limit and how to change it."""


@dataclass(frozen=True)
class Limits:
    max_labs: int      # labs this account may run at once (0: no limit)
    max_pps: int       # packets per second a lab's traffic commands may send (0: no limit)
    source: str        # where they came from, for error messages
    course_file: bool = False   # True when a limits file binds them

    def how_to_change(self, key: str) -> str:
        env = _KEYS[key]
        if self.course_file:
            return f"the course sets it (ask your teacher); {env} can only lower it"
        return f"set {env} (0: no limit), or the course's {LIMITS_FILE}"


def _number(value, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or isinstance(value, bool):
        raise LabError(f"{what} must be a whole number, 0 for no limit, not {value!r}")
    return n


def _stricter(a: int, b: int) -> int:
    if a == 0:
        return b
    if b == 0:
        return a
    return min(a, b)


def read_file(path: Path = LIMITS_FILE) -> dict | None:
    """The course's limits, or None when there is no file. A file that anyone but root can
    write does not bind (a student could have written it): that is an error, not a default."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LabError(f"{path} must be owned by root and writable by root only "
                       f"(chown root: {path}; chmod 644 {path})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"{path} is not a JSON object of limits: {exc}") from None
    if not isinstance(data, dict) or set(data) - set(_KEYS):
        raise LabError(f"{path} must be a JSON object with the keys {', '.join(_KEYS)}, "
                       f"e.g. {{\"max_labs\": 2, \"max_pps\": 5000}}")
    return {k: _number(v, f"{k} in {path}") for k, v in data.items()}


def current(env: dict | None = None, path: Path = LIMITS_FILE, uid: int | None = None) -> Limits:
    env = os.environ if env is None else env
    uid = os.geteuid() if uid is None else uid
    values = {"max_labs": 0 if uid == 0 else DEFAULT_MAX_LABS, "max_pps": 0}
    source = "the defaults"
    course = read_file(path)
    if course is not None:
        values.update(course)
        source = f"the course's limits file {path}"
    for key, name in _KEYS.items():
        raw = env.get(name)
        if raw in (None, ""):
            continue
        n = _number(raw, name)
        values[key] = _stricter(values[key], n) if course is not None else n
        if course is None:
            source = "the environment"
    return Limits(values["max_labs"], values["max_pps"], source, course is not None)


def runtime_dir() -> Path:
    """This account's directory for lab slots: $XDG_RUNTIME_DIR (per-user, made by logind)
    or /tmp/packetscript-lab-UID, private to the account."""
    uid = os.getuid()
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "packetscript-lab" if base and os.path.isdir(base) \
        else Path(f"/tmp/packetscript-lab-{uid}")
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise LabError(f"cannot make the lab slot directory {path}: {exc}") from None
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        # Another account made it first (a shared /tmp): its locks are not ours to trust.
        raise LabError(f"{path} must be a directory owned by this account and private to it "
                       f"(mode 700); remove it, or set XDG_RUNTIME_DIR to a private directory")
    return path


def take_slot(limits: Limits) -> int | None:
    """A locked descriptor holding one of this account's lab slots (give it to the lab
    process, which keeps it for its whole life), or None when labs are not limited.
    Raises LabLimitError when every slot is taken."""
    if not limits.max_labs:
        return None
    folder = runtime_dir()
    for i in range(limits.max_labs):
        fd = os.open(folder / f"slot-{i}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LabError(f"cannot lock the lab slot {folder / f'slot-{i}'}: {exc}") from None
    raise LabLimitError(
        f"this account already runs {limits.max_labs} labs, the most it may run at once "
        f"(max_labs, from {limits.source}; {limits.how_to_change('max_labs')}). Close one first: "
        "lab.close(), `packetscript lab down`, or restart the notebook kernel that holds it")


def labs_running() -> int:
    """How many of this account's slots are held now (by labs running)."""
    folder = runtime_dir()
    n = 0
    for slot in folder.glob("slot-*"):
        fd = os.open(slot, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            n += 1
        finally:
            os.close(fd)
    return n


class PacketBudget:
    """A token bucket for one lab: ``rate`` packets a second, at most ``burst`` at once.
    Every sender of the lab draws from it, so flows sent together share the rate."""

    def __init__(self, rate: int, burst: int | None = None, source: str = "the limits"):
        self.rate = rate
        self.burst = burst or max(1, rate // 10)
        self.source = source
        self._tokens = float(self.burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def check_rate(self, rate: float, what: str) -> None:
        """Refuse outright a command that asks for more than the lab may send."""
        if rate > self.rate:
            raise LabLimitError(
                f"{what} asks for {rate:g} packets/s, but this lab may send at most {self.rate} "
                f"packets/s (max_pps, from {self.source}). Send slower, or raise the limit: "
                f"{ENV_PPS} (0: no limit), or the course's {LIMITS_FILE}")

    def take(self, n: int = 1) -> None:
        """Wait until ``n`` packets may go (in steps of at most ``burst``)."""
        while n > 0:
            step = min(n, self.burst)
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
                self._at = now
                self._tokens -= step          # may go negative: the wait below pays it back
                wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            if wait > 0:
                time.sleep(wait)
            n -= step


def for_new_lab() -> tuple[int | None, list[str]]:
    """What starting a lab needs: a held slot (a descriptor to pass to the lab process, which
    keeps it; None when unlimited) and the lab process's arguments for the packet rate."""
    limits = current()
    slot = take_slot(limits)
    return slot, ["--max-pps", str(limits.max_pps), "--limits-source", limits.source]
