"""Fixtures and helpers for the live-lab tests (real namespaces, iptables and NFQUEUE).

Import the fixtures into a test module (``from labutil import pair_lab, router_lab``).
When the machine cannot create the lab's namespaces the tests are skipped with the reason,
except under CI (``CI`` set), where they fail: CI must run them.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from packetscript_lab.lab import Lab
from packetscript_lab.examples import dnat
from packetscript_lab.lab import programs
from packetscript_lab.lab.client import lab_command

_probe: str | None = None


def lab_unavailable_reason() -> str | None:
    """None when a lab can be started here, else why not (probed once)."""
    global _probe
    if _probe is None:
        try:
            argv = lab_command()[:-3] + ["true"]  # the same unshare flags, a trivial program
            res = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            _probe = "" if res.returncode == 0 else (res.stderr.strip() or f"exit {res.returncode}")
        except Exception as exc:  # missing unshare, ...
            _probe = str(exc)
        for tool in ("iptables", "ip"):
            if not _probe:
                try:
                    programs.find(tool)
                except programs.ProgramMissing as exc:
                    _probe = str(exc)
    return _probe or None


def require_lab() -> None:
    reason = lab_unavailable_reason()
    if reason:
        msg = f"cannot create lab namespaces here: {reason}"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI is set: lab tests must run)")
        pytest.skip(msg)


@pytest.fixture
def pair_lab():
    require_lab()
    with Lab("pair", sample_interval=0.2) as lab:
        yield lab


@pytest.fixture
def standin_pair_lab(monkeypatch):
    """A pair lab whose lab process sees the stand-in for the xt_LUA module (the env var is
    read there; packetscript_lab.xtlua.standin)."""
    require_lab()
    monkeypatch.setenv("PACKETSCRIPT_XT_LUA_STANDIN", "1")
    with Lab("pair", sample_interval=0.2) as lab:
        yield lab


@pytest.fixture
def router_lab():
    require_lab()
    with Lab("router", sample_interval=0.2) as lab:
        yield lab


def host_network_snapshot() -> dict[str, str]:
    """The host's namespaces, links and rules, without counters or timestamps."""
    def run(argv):
        try:
            argv = [programs.find(argv[0]), *argv[1:]]
        except programs.ProgramMissing:
            return ""
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout

    def rules(text):
        lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
        return "\n".join(re.sub(r"\[\d+:\d+\]", "", ln) for ln in lines)

    links = run(["ip", "-o", "link"])
    return {
        "netns": run(["ip", "-all", "netns"]),
        "links": "\n".join(sorted(ln.split(":")[1].strip() for ln in links.splitlines() if ":" in ln)),
        "iptables": rules(run(["iptables-save"])),
        "iptables-legacy": rules(run(["iptables-legacy-save"])),
    }


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


PYTHON = sys.executable
CHECKOUT = str(Path(__file__).resolve().parents[1])


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """``python -m packetscript_lab ARGS`` from this checkout."""
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    return subprocess.run([PYTHON, "-m", "packetscript_lab", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)

DROP_9000 = """
function process_packet(p)
  return NF_DROP
end
"""

ACCEPT_ALL = """
function process_packet(p)
  return NF_ACCEPT
end
"""

CONTINUE_ALL = """
function process_packet(p)
  return XT_CONTINUE
end
"""

DNAT_TO_SERVER = dnat("10.77.2.2")


def wait_until(condition, timeout: float = 15.0, what: str = "condition"):
    """condition()'s first true value, polled until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def udp_port_script(actions: dict) -> str:
    """A script that runs ``actions[port]`` (Lua) for UDP to that port and accepts the rest:
    a hostile action reaches only the packets a test sends to its port."""
    ports = "".join(f"  if port == {port} then {action} end\n" for port, action in actions.items())
    return ("\nfunction process_packet(p)\n  local ip = p:data(packet_eth):data(packet_ip)\n"
            "  local udp = ip and ip:data(packet_udp)\n  local port = udp and udp:dport():get()\n"
            f"{ports}  return NF_ACCEPT\nend\n")


def udp_to_server(port: int, n: int = 1) -> list:
    """n UDP packets from the pair lab's client to the server's ``port``."""
    from scapy.layers.inet import IP, UDP
    return [IP(dst="10.77.0.2") / UDP(sport=4000, dport=port) for _ in range(n)]


def slow_script(loops: int = 20000) -> str:
    """A deliberately slow script (a legal busy loop, well under the step budget): behind a
    short queue, a burst overflows it."""
    return f"""
local n = 0
function process_packet(p)
  for i = 1, {loops} do n = n + i % 7 end
  return NF_ACCEPT
end
"""


SLOW = slow_script()

# Where every packet of a queue rule went (docs/lab.md, Statistics).
PARTS = ("judged", "passed_unjudged", "queue_drops", "in_flight")


def settled(h, deadline: float = 30.0) -> dict:
    """Stats once nothing waits in the queue and the worker's count stands still."""
    end = time.monotonic() + deadline
    last = None
    while True:
        s = h.stats()
        if s["in_flight"] == 0 and last is not None and s["judged"] == last["judged"]:
            return s
        if time.monotonic() > end:
            raise AssertionError(f"the queue did not settle within {deadline}s: {s}")
        last = s
        time.sleep(0.1)


def assert_accounted(s: dict, expected: int) -> None:
    assert s["rule_packets"] == expected, s
    assert sum(s[k] for k in PARTS) == s["rule_packets"], s
