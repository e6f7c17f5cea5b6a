"""Every backend's runs are run handles (packetscript_lab.runs.RunHandle), read alike.

Real runs: a script on a live lab hook through NFQUEUE, the same through the kernel
backend (the xt_LUA stand-in, tests/test_kernel_backend.py), and a replay run over frames.
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from labutil import pair_lab, standin_pair_lab, wait_until  # noqa: F401  (fixtures)
from packetscript_lab.backends.replay_run import ReplayRun
from packetscript_lab.judge import Judge
from packetscript_lab.runs import RunHandle

SPEAKS = """\
local n = 0
function process_packet(p)
  n = n + 1
  if n == 1 then print("first packet") end
  if n == 2 then error("second packet") end
  return NF_ACCEPT
end
"""
DROPS = "function process_packet(p) return NF_DROP end\n"
RECENT_KEYS = {"t", "summary", "verdict", "changed", "changes", "error"}


def check_reading(h, *, speaks: bool) -> dict:
    """What every handle answers while it runs; returns its stats."""
    assert isinstance(h, RunHandle) and h.name == "h"
    stats = h.stats()
    assert stats["seen"] >= 3 and stats["bytes"] > 0
    assert all("t" in s and "seen" in s for s in h.series())
    recent = h.recent(limit=2)
    errors = h.errors()
    if speaks:
        assert len(recent) == 2 and set(recent[-1]) == RECENT_KEYS
        assert recent[-1]["verdict"] == "accept" and "UDP" in recent[-1]["summary"]
        assert [(e["line"], e["count"]) for e in errors] == [(5, 1)]
        assert "second packet" in errors[0]["message"]
        assert h.output() == ["first packet"]
    else:           # the kernel module hands no packets, errors or printed lines back
        assert recent == [] and errors == [] and h.output() == []
    return stats


def check_replace_and_detach(h, before: dict, more, *, speaks: bool) -> None:
    h.replace(DROPS)
    more()
    if speaks:
        wait_until(lambda: h.stats()["dropped"] >= 3, what="the new script's drops")
    final = h.detach()
    assert final["seen"] > before["seen"]
    if speaks:
        assert final["dropped"] > 0
        assert h.errors()[0]["line"] == 5      # the replaced script's errors stay
        assert h.output() == ["first packet"]
    assert h.detach() == final                 # a second detach changes nothing


def check_live(lab, h, *, speaks: bool) -> None:
    """A live run through the same checks: 5 packets read back, then 3 more after replace."""
    lab.udp_stream("client", "server", count=5, rate=200)
    wait_until(lambda: h.stats()["seen"] >= 5 and h.series(), what="5 packets and a sample")
    stats = check_reading(h, speaks=speaks)
    check_replace_and_detach(h, stats, lambda: lab.udp_stream("client", "server", count=3, rate=200),
                             speaks=speaks)


@pytest.mark.lab
def test_a_live_nfqueue_run_is_a_run_handle(pair_lab):
    h = pair_lab.attach(SPEAKS, name="h", on_error="accept")
    assert h.backend == "nfqueue"
    check_live(pair_lab, h, speaks=True)


@pytest.mark.lab
def test_a_kernel_module_run_is_a_run_handle(standin_pair_lab):
    h = standin_pair_lab.attach(SPEAKS, name="h", backend="kernel")
    assert h.backend == "kernel"
    check_live(standin_pair_lab, h, speaks=False)


def frames(n: int):
    eth = Ether(src="02:77:00:00:00:01", dst="02:77:00:00:00:02")
    return [(i * 0.001, bytes(eth / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=9000)))
            for i in range(n)]


def test_a_replay_run_is_a_run_handle():
    h = ReplayRun("h", Judge(SPEAKS, name="h", on_error="accept"), frames(5), pace="fast")
    try:
        assert h.backend == "replay"
        assert h.played_all.wait(15)
        stats = check_reading(h, speaks=True)
        check_replace_and_detach(h, stats, lambda: h.inject(frames(3)), speaks=True)
    finally:
        h.detach()
