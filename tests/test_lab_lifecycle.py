"""Live lab: nothing outlives the lab process, clear start errors (unprivileged operation:
test_stock_account.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from labutil import DNAT_TO_SERVER, PYTHON, host_network_snapshot, pid_alive, require_lab

from packetscript_lab.lab import Lab, LabError
from packetscript_lab.lab.client import explain_start_failure

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]
ROOT = str(Path(__file__).resolve().parents[1])


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("victim", ["lab", "wrapper"])
def test_kill9_leaves_host_exactly_as_before(victim):
    require_lab()
    before = host_network_snapshot()
    lab = Lab("router")
    try:
        lab.attach(DNAT_TO_SERVER, host="router", table="mangle", chain="POSTROUTING",
                   match="-p udp -d 10.77.2.100")
        lab.iptables("server", "-A INPUT -p tcp --dport 1 -j DROP")
        assert lab.udp_stream("client", "10.77.2.100", rate=500, duration=0.1,
                              receiver="server")["received"] == 50
        inner, wrapper = lab.lab_pid, lab.pid
        assert inner and wrapper and inner != wrapper
        os.kill(inner if victim == "lab" else wrapper, signal.SIGKILL)
        assert _wait_gone(inner) and _wait_gone(wrapper)
        with pytest.raises(LabError):
            lab.ping("client", "server", count=1)
    finally:
        lab.close()
    assert host_network_snapshot() == before


def test_notebook_process_death_ends_the_lab():
    require_lab()
    before = host_network_snapshot()
    code = textwrap.dedent("""
        import signal
        from packetscript_lab.lab import Lab
        lab = Lab("pair")
        lab.attach("function process_packet(p) return NF_ACCEPT end", host="server")
        print(lab.lab_pid, flush=True)
        signal.pause()          # until the test kills this process
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    client = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        inner = int(client.stdout.readline())
        assert pid_alive(inner)
        client.kill()
        client.wait(10)
        assert _wait_gone(inner), "the lab process outlived its notebook"
    finally:
        if client.poll() is None:
            client.kill()
    assert host_network_snapshot() == before


def test_close_is_idempotent_and_calls_after_close_fail():
    require_lab()
    lab = Lab("pair")
    inner = lab.lab_pid
    lab.close()
    lab.close()
    assert _wait_gone(inner)
    with pytest.raises(LabError, match="closed"):
        lab.status()


def test_missing_unshare_explains_and_points_to_replay(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LabError, match="replay"):
        Lab("pair")


def test_namespace_refusal_message():
    msg = explain_start_failure("unshare: unshare failed: Operation not permitted")
    assert "namespaces" in msg and "packetscript replay" in msg
