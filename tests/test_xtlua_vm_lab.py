"""The lab inside the xt_LUA VM: ``Lab(backend="xtlua-vm")``.

The first tests need no VM (default suite): the guest's byte bridge between the
virtio-serial port and the lab process, run here over a socket pair with a real program
speaking the lab protocol, and the errors when no build exists. The group `xtlua_vm`
(deselected by default) boots one VM with the router topology and the real module:

    PACKETSCRIPT_XTLUA_PATCHES=/path/to/openwrt/net/xtables-addons/patches \\
        .venv/bin/python -m pytest -m xtlua_vm tests/test_xtlua_vm_lab.py
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path

import pytest

from packetscript_lab.lab import Lab, LabError
from packetscript_lab.lab.protocol import Connection
from packetscript_lab.lab import vmlab
from packetscript_lab.xtlua.vm import labguest

PATCHES = os.environ.get("PACKETSCRIPT_XTLUA_PATCHES")
ROOT = Path(__file__).resolve().parents[1]

# A stand-in lab process: the lab protocol's first event, then each command's arguments
# echoed back. With "--stubborn" it outlives its socket, as a stuck lab process would.
FAKE_LAB = """
import os, signal, socket, sys
from packetscript_lab.lab.protocol import Connection
c = Connection(socket.socket(fileno=int(sys.argv[sys.argv.index("--fd") + 1])))
c.send({"event": "ready", "pid": os.getpid()})
while (m := c.recv()) is not None:
    c.send({"id": m["id"], "ok": m["args"]})
    if m["cmd"] == "close":
        sys.exit(3)
if "--stubborn" in sys.argv:
    signal.pause()          # until the bridge stops it
"""


def run_bridge(tmp_path, *flags):
    """The bridge over a socket pair standing in for the port; returns (host end, result)."""
    prog = tmp_path / "fake_lab.py"
    prog.write_text(FAKE_LAB)
    port, host = socket.socketpair()
    result: dict = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def go():
        result["code"] = labguest.bridge(port.fileno(), [sys.executable, str(prog), *flags],
                                         env, poll=0.05, grace=1.0)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return Connection(host), result, t, port


def test_bridge_carries_the_lab_protocol_both_ways_unchanged(tmp_path):
    conn, result, t, port = run_bridge(tmp_path)
    assert conn.recv()["event"] == "ready"
    big = os.urandom(3 << 20)                    # larger than any one read of the port
    conn.send({"id": 1, "cmd": "send", "args": {"frames": big}})
    conn.send({"id": 2, "cmd": "status", "args": {"n": 2}})
    assert conn.recv() == {"id": 1, "ok": {"frames": big}}
    assert conn.recv() == {"id": 2, "ok": {"n": 2}}
    conn.send({"id": 3, "cmd": "close", "args": {}})
    assert conn.recv() == {"id": 3, "ok": {}}    # the last reply gets out before the end
    t.join(10)
    assert result["code"] == 3                   # the lab process's own exit status
    port.close()


def test_bridge_stops_the_lab_process_when_the_host_hangs_up(tmp_path):
    conn, result, t, port = run_bridge(tmp_path, "--stubborn")
    pid = conn.recv()["pid"]
    conn.send({"id": 1, "cmd": "status", "args": {}})
    assert conn.recv()["id"] == 1
    conn.sock.shutdown(socket.SHUT_WR)           # the host's Lab is gone: the port reads EOF
    t.join(15)
    assert not t.is_alive()
    assert result["code"] == -signal.SIGTERM     # stopped, though it would have lingered
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    conn.close()
    port.close()


def test_vm_lab_without_a_build_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PACKETSCRIPT_CACHE", str(tmp_path))
    with pytest.raises(LabError, match=r"packetscript kernel build --patches DIR"):
        Lab("pair", backend="xtlua-vm")
    assert not list(tmp_path.glob("jobs/*"))     # nothing started, nothing left


def test_kernel_backend_without_module_or_build_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PACKETSCRIPT_CACHE", str(tmp_path))
    monkeypatch.delenv("PACKETSCRIPT_XT_LUA_STANDIN", raising=False)
    monkeypatch.delenv(vmlab.ENV_KERNEL_LAB, raising=False)
    if vmlab.host_has_module():
        assert vmlab.lab_backend_for_kernel() == "namespaces"
        return
    with pytest.raises(vmlab.NoBuild) as err:
        vmlab.lab_backend_for_kernel()
    assert "not loadable on this machine" in str(err.value)
    assert "packetscript kernel build --patches DIR" in str(err.value)
    monkeypatch.setenv(vmlab.ENV_KERNEL_LAB, "host")     # the stand-in's route stays open
    assert vmlab.lab_backend_for_kernel() == "namespaces"
    monkeypatch.setenv(vmlab.ENV_KERNEL_LAB, "sometimes")
    with pytest.raises(LabError, match="choose auto, vm"):
        vmlab.lab_backend_for_kernel()


def test_lab_refuses_an_unknown_backend():
    with pytest.raises(LabError, match="xtlua-vm"):
        Lab("pair", backend="kvm")


def test_magic_kernel_cell_without_module_or_build_says_what_to_run(tmp_path, monkeypatch):
    from IPython.core.error import UsageError

    import kernel_magic
    from test_magic import get_shell
    monkeypatch.setenv("PACKETSCRIPT_CACHE", str(tmp_path))
    monkeypatch.delenv("PACKETSCRIPT_XT_LUA_STANDIN", raising=False)
    monkeypatch.setenv(vmlab.ENV_KERNEL_LAB, "vm")
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)
    try:
        with pytest.raises(UsageError, match=r"packetscript kernel build --patches DIR"):
            shell.run_cell_magic("packetscript", "k --backend kernel",
                                 "function process_packet(p) return NF_ACCEPT end\n")
        assert kernel_magic.get_session().lab is None       # no lab was started
    finally:
        kernel_magic.unload_ipython_extension(shell)


def test_magic_up_vm_without_a_build_says_what_to_run(tmp_path, monkeypatch):
    from IPython.core.error import UsageError

    import kernel_magic
    from test_magic import get_shell
    monkeypatch.setenv("PACKETSCRIPT_CACHE", str(tmp_path))
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)
    try:
        with pytest.raises(UsageError, match=r"packetscript kernel build --patches DIR"):
            shell.run_line_magic("packetscript", "up --vm")
        assert kernel_magic.get_session().lab is None       # no lab was started
        with pytest.raises(UsageError, match=r"\[--vm\]"):
            shell.run_line_magic("packetscript", "up --vm --vm")
    finally:
        kernel_magic.unload_ipython_extension(shell)


# --- in the VM ---------------------------------------------------------------------------------

DNAT_OR_DROP = """\
-- UDP to 10.77.2.100 goes on to the server (10.77.2.2); UDP to port 9001 is dropped.
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  local udp = ip:data(packet_udp)
  if not udp then return XT_CONTINUE end
  if udp:dport():get() == 9001 then return NF_DROP end
  ip:daddr():set("10.77.2.2")
  udp:check():set(0)
  return XT_CONTINUE
end
"""
DROP_ALL = "function process_packet(p) return NF_DROP end\n"


def qemu_pids() -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"qemu-system" in (d / "cmdline").read_bytes().split(b"\0")[0]:
                    out.add(int(d.name))
            except OSError:
                pass
    return out


@pytest.fixture(scope="module")
def vm_lab():
    if not PATCHES:
        pytest.fail("set PACKETSCRIPT_XTLUA_PATCHES to OpenWrt's net/xtables-addons/patches")
    from packetscript_lab.xtlua.vm import build
    build(PATCHES, progress=lambda m: None)       # reuses the cached build
    before = qemu_pids()
    lab = Lab("router", backend="xtlua-vm", sample_interval=0.3)
    yield lab, before
    lab.close()


@pytest.mark.xtlua_vm
def test_vm_lab_comes_up_with_the_real_module(vm_lab):
    lab, _ = vm_lab
    info = lab.vm.info()
    assert info["boot_seconds"] and info["ready_seconds"] >= info["boot_seconds"]
    assert info["qemu_rss_mb"] > 0
    status = lab.status()
    assert status["iptables"].endswith("iptables-legacy") and status["topology"] == "router"
    assert lab.ping("client", "server", count=2)["received"] == 2   # forwarded by the router


@pytest.mark.xtlua_vm
def test_vm_lab_kernel_script_judges_generated_traffic(vm_lab):
    lab, _ = vm_lab
    # The match names the address the script rewrites: the packets it readdressed and let
    # continue still count as continued (the counting rule, in the script's own chain,
    # repeats no match).
    h = lab.attach(DNAT_OR_DROP, host="router", table="mangle", chain="PREROUTING",
                   match="-p udp -i eth0 -d 10.77.2.100", name="dnat", backend="kernel")
    assert h.backend == "kernel"
    rules = lab.iptables_save("router")
    assert "packetscript:dnat:0:lua" in rules and "-j LUA" in rules, rules
    passed = lab.udp_stream("client", "10.77.2.100", receiver="server", port=9000, count=12,
                            rate=100)
    dropped = lab.udp_stream("client", "10.77.2.100", receiver="server", port=9001, count=5,
                             rate=100)
    assert passed["received"] == 12 and dropped["received"] == 0
    stats = h.stats()
    assert stats["seen"] == 17
    assert stats["continued"] == passed["received"] and stats["stopped"] == 5

    h.replace(DROP_ALL)
    after = lab.udp_stream("client", "10.77.2.100", receiver="server", port=9000, count=6,
                           rate=100)
    assert after["received"] == 0
    final = h.detach()
    assert final["seen"] == 23 and final["stopped"] == 11      # counts go on across replace
    assert "-j LUA" not in lab.iptables_save("router") and "PSL-" not in lab.iptables_save("router")
    back = lab.udp_stream("client", "server", port=9000, count=4, rate=100)
    assert back["received"] == 4                                # detached: nothing judges


@pytest.mark.xtlua_vm
def test_closing_the_vm_lab_leaves_no_qemu(vm_lab):
    lab, before = vm_lab
    pid = lab.vm.proc.pid
    job = lab.vm.job
    assert pid in qemu_pids()
    lab.close()
    assert lab.vm.proc.poll() is not None
    assert qemu_pids() - before == set()
    assert not job.exists()


@pytest.mark.xtlua_vm
def test_magic_kernel_cell_starts_the_vm_lab_and_runs_in_the_real_module(monkeypatch):
    if not PATCHES:
        pytest.fail("set PACKETSCRIPT_XTLUA_PATCHES to OpenWrt's net/xtables-addons/patches")
    from IPython.utils.capture import capture_output

    import kernel_magic
    from test_magic import DROP_UDP, get_shell, summary_of
    from test_magic_lab import traffic_of
    from packetscript_lab.xtlua.vm import build
    build(PATCHES, progress=lambda m: None)
    for var in ("PACKETSCRIPT_BACKEND", "PACKETSCRIPT_XT_LUA_STANDIN", vmlab.ENV_KERNEL_LAB):
        monkeypatch.delenv(var, raising=False)
    if vmlab.host_has_module():          # this machine has xt_LUA: ask for the VM
        monkeypatch.setenv(vmlab.ENV_KERNEL_LAB, "vm")
    before = qemu_pids()
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)
    try:
        with capture_output() as cap:
            shell.run_cell_magic("packetscript", "k --backend kernel --duration 2 "
                                 "--no-dashboard --traffic 'udp client server count=6'", DROP_UDP)
        assert "runs in a VM with the real xt_LUA" in cap.stdout
        lab = kernel_magic.get_session().lab
        assert lab.backend == "xtlua-vm"
        s = summary_of(cap)
        assert s["backend"] == "kernel" and s["seen"] == 6
        (udp,) = traffic_of(cap)
        assert udp["sent"] == 6 and udp["received"] == 0       # the module dropped them all
        with capture_output():
            shell.run_line_magic("packetscript", "down")
        assert lab.closed and qemu_pids() - before == set()
    finally:
        kernel_magic.unload_ipython_extension(shell)


KILLED_CLIENT = """
import sys, threading
from packetscript_lab.lab import Lab
box = []
t = threading.Thread(target=lambda: box.append(Lab("pair", backend="xtlua-vm")))
t.start(); t.join()            # made in a thread that has ended since
print(box[0].vm.proc.pid, flush=True)
sys.stdin.read()
"""


@pytest.mark.xtlua_vm
def test_killing_the_client_powers_the_vm_off():
    import subprocess
    import time
    if not PATCHES:
        pytest.fail("set PACKETSCRIPT_XTLUA_PATCHES to OpenWrt's net/xtables-addons/patches")
    client = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        pid = int(client.stdout.readline())
        assert pid in qemu_pids()       # still up: its starting thread ended, the client did not
    finally:
        client.kill()                   # kill -9: no close(), no atexit
        client.wait()
    deadline = time.monotonic() + 30
    while pid in qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid not in qemu_pids()


@pytest.mark.xtlua_vm
def test_a_guest_hung_by_the_module_fails_the_labs_calls_instead_of_blocking():
    if not PATCHES:
        pytest.fail("set PACKETSCRIPT_XTLUA_PATCHES to OpenWrt's net/xtables-addons/patches")
    before = qemu_pids()
    # A runtime error in xt_LUA drops the packet and keeps the module's lock: the next
    # packet hangs the guest for good (docs/kernel.md, measured findings).
    failing = "function process_packet(p) local t = nil; return t.x end\n"
    with Lab("pair", backend="xtlua-vm", sample_interval=0.3) as lab:
        lab.attach(failing, name="bad", backend="kernel")
        with pytest.raises(LabError, match=r"sent nothing for \d+ s"):
            lab.udp_stream("client", "server", count=3, rate=50)
        assert lab.closed
    assert qemu_pids() - before == set()


@pytest.mark.xtlua_vm
def test_magic_up_vm_starts_the_lab_in_the_vm(capsys):
    import kernel_magic
    from test_magic import get_shell
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)
    try:
        shell.run_line_magic("packetscript", "up --vm")
        session = kernel_magic.get_session()
        assert session.lab is not None and session.lab.backend == "xtlua-vm"
        out = capsys.readouterr().out
        assert "the lab runs in a VM with the real xt_LUA" in out and "lab is up" in out
        shell.run_line_magic("packetscript", "up --vm")          # already up: the same lab
        assert kernel_magic.get_session().lab is session.lab
        shell.run_line_magic("packetscript", "down")
        assert kernel_magic.get_session().lab is None
    finally:
        kernel_magic.unload_ipython_extension(shell)
