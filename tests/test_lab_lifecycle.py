"""Live lab: nothing outlives the lab process, unprivileged operation, clear start errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
        import sys, time
        from packetscript_lab.lab import Lab
        lab = Lab("pair")
        lab.attach("function process_packet(p) return NF_ACCEPT end", host="server")
        print(lab.lab_pid, flush=True)
        time.sleep(60)
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


UNPRIV = textwrap.dedent("""
    import json, os
    from packetscript_lab.lab import Lab
    with Lab("pair") as lab:
        h = lab.attach("function process_packet(p) return NF_DROP end", host="server",
                       match="-p udp --dport 9000")
        hit = lab.udp_stream("client", "server", port=9000, rate=500, duration=0.2)
        miss = lab.udp_stream("client", "server", port=9001, rate=500, duration=0.2)
        print(json.dumps({"uid": os.getuid(), "hit": hit["received"], "miss": miss["received"],
                          "dropped": h.stats()["dropped"]}))
""")


def _as_nobody(code: str, stage: str) -> list[str]:
    """argv running ``code`` as nobody with this venv's Python.

    The interpreter may live under a directory only root can enter (/root/.pyenv); then a
    private mount namespace (this command only) shows that one directory through a tmpfs
    over /root. The host's mounts are not changed.
    """
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
            PYTHON, "-c", code]
    base = os.path.realpath(sys.base_prefix)
    if not base.startswith("/root/"):
        return drop
    top = "/root/" + base.split("/")[2]
    os.makedirs(stage, exist_ok=True)
    script = (f"mount --bind {top} {stage} && mount -t tmpfs -o mode=755 none /root && "
              f"mkdir {top} && mount --bind {stage} {top} && exec \"$@\"")
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *drop]


def test_whole_lab_works_unprivileged(tmp_path):
    require_lab()
    stage = str(tmp_path / "interpreter")
    argv = [PYTHON, "-c", UNPRIV] if os.geteuid() != 0 else _as_nobody(UNPRIV, stage)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": ROOT, "HOME": "/tmp",
           "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", timeout=90)
    finally:
        if os.path.isdir(stage):
            os.rmdir(stage)
    if res.returncode != 0 and "namespaces" in res.stderr and not os.environ.get("CI"):
        pytest.skip(f"unprivileged user namespaces refused here: {res.stderr.strip()[-300:]}")
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["uid"] == 65534
    assert out == {"uid": 65534, "hit": 0, "miss": 100, "dropped": 100}
