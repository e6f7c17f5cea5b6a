"""A lab that outlives one command (``packetscript lab up|down|status``).

The lab process is started detached, serving clients on a listening socket in the abstract
Unix namespace (``@packetscript-lab-UID-NAME``). The starting command creates that socket
in the host's network namespace and hands it over, so the lab stays reachable from the
host although it lives in its own namespaces. An abstract socket has no file: when the lab
process ends (``lab down``, kill -9, reboot) nothing is left behind. The lab accepts only
connections from the user that started it (SO_PEERCRED). Scripts attached by a client are
detached when that client disconnects; the network itself stays until ``lab down``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from . import limits
from .client import Lab, child_env, explain_start_failure, lab_command, require_program
from .protocol import LabError


def address(name: str = "default") -> str:
    return f"\0packetscript-lab-{os.getuid()}-{name}"


def is_running(name: str = "default") -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(address(name))
        return True
    except OSError:
        return False
    finally:
        s.close()


def connect(name: str = "default") -> Lab:
    return Lab(_connect=address(name))


def start(name: str = "default", topology="pair", sample_interval: float = 0.5,
          timeout: float = 20.0, ipv6: bool = False) -> dict:
    """Start a detached lab named ``name`` (dual-stack with ``ipv6``); returns its status
    once it answers."""
    import json

    from .description import load
    desc = load(topology)                   # checked whole before anything starts
    topology = json.dumps(load({**desc, "ipv6": True}) if ipv6 else desc)
    if is_running(name):
        raise LabError(f"a lab named {name!r} is already running; `packetscript lab down` ends it")
    argv = lab_command() + ["--iptables", require_program("iptables")]
    slot, extra = limits.for_new_lab()   # the course's limits; the lab process keeps the slot
    argv += extra
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address(name))
        listener.listen(8)
    except OSError:
        listener.close()
        if slot is not None:
            os.close(slot)
        raise
    fd, log_path = tempfile.mkstemp(prefix="packetscript-lab-up-", suffix=".log")
    argv += ["--listen-fd", str(listener.fileno()), "--topology", topology,
             "--interval", str(sample_interval)]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                pass_fds=(listener.fileno(),) + ((slot,) if slot is not None else ()),
                                env=child_env(), start_new_session=True)  # not killed with this terminal
    finally:
        os.close(fd)
        listener.close()  # the lab process holds it now
        if slot is not None:
            os.close(slot)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise LabError(explain_start_failure(Path(log_path).read_text(errors="replace")))
            try:
                with connect(name) as lab:
                    return lab.status()
            except LabError:
                time.sleep(0.1)
        proc.kill()
        raise LabError(f"the lab did not come up within {timeout}s")
    finally:
        os.unlink(log_path)


def stop(name: str = "default", timeout: float = 10.0) -> bool:
    """End the lab named ``name``. False if none was running."""
    if not is_running(name):
        return False
    lab = connect(name)
    try:
        lab._call("shutdown", _timeout=5)
    except LabError:
        pass
    lab._shutdown_process()
    end = time.monotonic() + timeout
    while time.monotonic() < end and is_running(name):
        time.sleep(0.05)
    return True
