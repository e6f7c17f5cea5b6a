"""Network namespaces held by file descriptors, entered per thread.

Python 3.11 has no ``os.setns``/``os.unshare``, so both come from libc through ctypes.
A namespace is created by a short-lived thread that calls ``unshare(CLONE_NEWNET)`` and
keeps ``/proc/thread-self/ns/net`` open: the open descriptor keeps the namespace alive,
and closing it (or the lab process dying) frees it. No ``/run/netns`` bind mount is made,
so nothing about a lab namespace is ever visible on the host's filesystem.

``setns`` changes only the calling thread, so every piece of work that must happen inside
a host (creating sockets, netlink handles, running ``iptables``) runs in a thread that
entered that namespace first: sockets stay bound to the namespace they were created in,
whatever thread uses them later; child processes inherit the forking thread's namespace.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from typing import Any, Callable

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter(fd: int) -> None:
    """Move the calling thread into the network namespace referred to by ``fd``."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")


def _run_in_thread(fn: Callable[[], Any], name: str) -> Any:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class NetNS:
    """One network namespace, owned by the lab process through an open descriptor."""

    def __init__(self, name: str, fd: int):
        self.name = name
        self.fd = fd

    @classmethod
    def create(cls, name: str) -> "NetNS":
        def make() -> int:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

        return cls(name, _run_in_thread(make, f"netns-create-{name}"))

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` in a fresh thread inside this namespace and return its result."""

        def inside() -> Any:
            enter(self.fd)
            return fn(*args, **kwargs)

        return _run_in_thread(inside, f"netns-{self.name}")

    def thread(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> threading.Thread:
        """Start a long-running daemon thread inside this namespace (not joined)."""

        def inside() -> None:
            enter(self.fd)
            fn(*args)

        t = threading.Thread(target=inside, name=name or f"netns-{self.name}", daemon=True)
        t.start()
        return t

    def sh(self, argv: list[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """Run a program inside this namespace (the child inherits the thread's namespace)."""

        def go() -> subprocess.CompletedProcess:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)

        res = self.run(go)
        if check and res.returncode != 0:
            raise OSError(f"{' '.join(argv)} failed in {self.name}: "
                          f"{(res.stderr or res.stdout).strip()}")
        return res

    def write_sysctl(self, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")

        def go() -> None:
            with open(path, "w") as f:
                f.write(value)

        self.run(go)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
