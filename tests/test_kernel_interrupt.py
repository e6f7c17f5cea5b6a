"""Interrupting a real Jupyter kernel during a ``--duration`` run ends that run (its summary
is written) and nothing else: the lab process, its rules and the other attached scripts stay.
Killing the kernel (kill -9) still takes the lab down with it.

jupyter_client interrupts by sending SIGINT to the kernel's whole process group; the lab
process runs in a session of its own, so only the kernel sees it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager
from labutil import pid_alive, require_lab, wait_until

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]


class Kernel:
    """A real "PacketScript Lab" kernel and a client that reads what each cell shows."""

    def __init__(self, km: KernelManager):
        self.km = km
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def submit(self, code: str) -> str:
        return self.kc.execute(code)

    def outputs(self, msg_id: str, timeout: float = 60, until=None) -> tuple[str, list[str]]:
        """Read the cell's messages until it is idle (or until ``until(msg)`` is true, then
        return early with status "running"); returns its status and its texts."""
        texts: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"the cell did not finish within {timeout}s; it showed {texts}"
            msg = self.kc.get_iopub_msg(timeout=left)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                texts.append(content["text"])
            elif kind in ("display_data", "execute_result", "update_display_data"):
                texts.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                texts.append("\n".join(content["traceback"]))
            if until is not None and until(msg):
                return "running", texts
            if kind == "status" and content["execution_state"] == "idle":
                break
        while True:
            reply = self.kc.get_shell_msg(timeout=max(1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]["status"], texts

    def run(self, code: str, timeout: float = 60) -> str:
        status, texts = self.outputs(self.submit(code), timeout)
        text = "\n".join(texts)
        assert status == "ok", text
        return text

    def value(self, expr: str):
        return json.loads(self.run(f"import json, os, kernel_magic\nprint(json.dumps({expr}))"))


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    require_lab()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "kernel_magic", "install", "--prefix", str(tmp_path)],
                   check=True, env=env, capture_output=True)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("PACKETSCRIPT_BACKEND", raising=False)
    km = KernelManager(kernel_name="packetscript-lab")
    km.start_kernel(cwd=str(tmp_path))
    try:
        yield Kernel(km)
    finally:
        km.shutdown_kernel(now=True)


OTHER = "%%packetscript other --match '-p udp --dport 9001'\n" \
        "function process_packet(p)\n  return NF_ACCEPT\nend"
VICTIM = "%%packetscript victim --duration 30 --traffic 'udp client server:9000 rate=50'\n" \
         "function process_packet(p)\n  return NF_DROP\nend"


def dashboard_shown(msg) -> bool:
    """The cell's dashboard is on the page (a widget view displayed): the run is starting."""
    data = msg["content"].get("data", {})
    return msg["msg_type"] in ("display_data", "update_display_data") and \
        "application/vnd.jupyter.widget-view+json" in data


def updated_after_shown():
    """The dashboard is shown, then updated: the run is under way."""
    shown = []

    def check(msg) -> bool:
        if dashboard_shown(msg):
            shown.append(msg)
        return bool(shown) and msg["msg_type"] == "comm_msg" and \
            msg["content"].get("data", {}).get("method") == "update"
    return check


@pytest.mark.parametrize("moment", ["as the dashboard appears", "while it runs"])
def test_interrupt_ends_the_run_and_keeps_the_lab(kernel, moment):
    kernel.run(OTHER)
    lab_pid = kernel.value("kernel_magic.get_session().lab.lab_pid")
    wrapper_pid = kernel.value("kernel_magic.get_session().lab.pid")
    kernel_pid = kernel.value("os.getpid()")
    assert pid_alive(lab_pid)

    # The blocking cell, interrupted as it starts or once it is being updated: either way
    # the run ends now with its summary, and the cell does not fail.
    msg_id = kernel.submit(VICTIM)
    ticking = dashboard_shown if moment == "as the dashboard appears" else updated_after_shown()
    status, _ = kernel.outputs(msg_id, timeout=60, until=ticking)
    assert status == "running"
    interrupted_at = time.monotonic()
    kernel.km.interrupt_kernel()
    status, texts = kernel.outputs(msg_id, timeout=60)
    text = "\n".join(texts)
    assert status == "ok", text
    assert time.monotonic() - interrupted_at < 20          # ended now, not after --duration
    summary = next(t for t in texts if t.startswith("packetscript 'victim'"))
    assert "run ended: interrupted" in summary
    assert "Traceback" not in text and "closed" not in text and "detach failed" not in text

    # The same lab goes on: status works, no new lab, the other script still judges.
    status_text = kernel.run("%packetscript status")
    assert status_text.startswith("lab is up"), status_text
    assert "other" in status_text and "running" in status_text
    assert kernel.value("kernel_magic.get_session().lab.lab_pid") == lab_pid
    kernel.run("%packetscript send udp client server:9001 count=5")
    wait_until(lambda: kernel.value("kernel_magic.get_session().runs['other'].handle.stats()['seen']")
          == 5, 20, "the other script did not judge the 5 datagrams")
    again = kernel.run(VICTIM.replace("--duration 30", "--duration 1"))
    assert "building a new lab" not in again
    assert "packetscript 'victim'" in again and "seen 0" not in again

    # kill -9 of the kernel still ends the lab: it sees its client's socket close.
    os.kill(kernel_pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(lab_pid) and not pid_alive(wrapper_pid), 20,
          "the lab process outlived its killed kernel")
