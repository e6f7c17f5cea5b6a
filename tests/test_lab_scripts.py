"""Live lab: stateful scripts, failing scripts under traffic, hot swap without loss."""
from __future__ import annotations

import threading
import time

import pytest
from labutil import ACCEPT_ALL, pair_lab, wait_until  # noqa: F401

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

# Port knocking: UDP to 7001, 7002, 7003 in order opens port 9000 for that source for
# 1.5 s (nf.get_time() is in milliseconds). Everything else on 9000 is dropped.
KNOCK = """
local seq = {7001, 7002, 7003}
progress = {}
open_until = {}
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return NF_DROP end
  local udp = ip:data(packet_udp)
  if not udp then return NF_ACCEPT end
  local src = ip:saddr():get()
  local port = udp:dport():get()
  local now = nf.get_time()
  if port == 9000 then
    if open_until[src] and now < open_until[src] then return NF_ACCEPT end
    return NF_DROP
  end
  local n = (progress[src] or 0) + 1
  if port == seq[n] then
    progress[src] = n
    if n == #seq then open_until[src] = now + 1500; progress[src] = 0 end
  else
    progress[src] = 0
  end
  return NF_DROP
end
"""


def _knock(lab, ports):
    from scapy.layers.inet import IP, UDP

    lab.send("client", [IP(dst="10.77.0.2") / UDP(sport=4000, dport=p) for p in ports], interval=0.01)


def test_port_knocking_opens_and_closes_over_time(pair_lab):
    lab = pair_lab
    h = lab.attach(KNOCK, host="server", match="-p udp")
    assert lab.udp_stream("client", "server", rate=200, duration=0.1)["received"] == 0
    _knock(lab, [7001, 7003, 7002])  # wrong order: stays closed
    assert lab.udp_stream("client", "server", rate=200, duration=0.1)["received"] == 0
    _knock(lab, [7001, 7002, 7003])
    opened = time.monotonic()
    assert lab.udp_stream("client", "server", rate=200, duration=0.2)["received"] == 40
    # The window is 1.5 s of packet time: probes pass until it closes, then none do.
    wait_until(lambda: lab.udp_stream("client", "server", count=1, duration=0.05)["received"] == 0,
               15, "the knock window to close")
    assert time.monotonic() - opened >= 1.4
    assert lab.udp_stream("client", "server", rate=200, duration=0.1)["received"] == 0
    assert h.stats()["errors"] == 0


LOOP_OR_ERROR = """
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  local udp = ip:data(packet_udp)
  local port = udp:dport():get()
  if port == 9001 then
    while true do end
  elseif port == 9002 then
    local t = nil
    return t.field
  end
  return NF_ACCEPT
end
"""


def test_endless_loop_and_runtime_error_are_counted_and_lab_keeps_running(pair_lab):
    lab = pair_lab
    h = lab.attach(LOOP_OR_ERROR, host="server", match="-p udp", budget=100_000)
    loop = lab.udp_stream("client", "server", port=9001, rate=200, duration=0.25)
    err = lab.udp_stream("client", "server", port=9002, rate=200, duration=0.25)
    ok = lab.udp_stream("client", "server", port=9000, rate=200, duration=0.25)
    assert loop["received"] == 0 and err["received"] == 0  # error verdict: drop
    assert ok["received"] == ok["sent"] == 50
    s = h.stats()
    assert s["errors"] == 100 and s["dropped"] == 100 and s["accepted"] == 50
    assert s["internal_errors"] == 0
    errors = h.errors()
    lines = {e["line"] for e in errors}
    assert 7 in lines and 10 in lines, errors
    assert sum(e["count"] for e in errors) == 100
    assert any(r["error"] for r in h.recent(150))
    assert lab.ping("client", "server", count=1)["received"] == 1
    assert any(ev.get("event") == "script_error" for ev in lab.events)


def test_hot_swap_during_numbered_stream_loses_nothing(pair_lab):
    lab = pair_lab
    h = lab.attach(ACCEPT_ALL, host="server", match="-p udp --dport 9000")
    variants = [ACCEPT_ALL.replace("NF_ACCEPT", f"NF_ACCEPT -- v{i}") for i in range(5)]
    variants.append("hits = 0\nfunction process_packet(p)\n hits = hits + 1\n return XT_CONTINUE\nend")
    swaps = []

    def judged_more(n):
        start = h.stats()["seen"]
        deadline = time.monotonic() + 20
        while h.stats()["seen"] < start + n and time.monotonic() < deadline:
            time.sleep(0.02)

    def swapper():
        judged_more(50)
        for src in variants:                 # each version judges packets before the next
            h.replace(src)
            swaps.append(h.stats()["seen"])
            judged_more(50)

    t = threading.Thread(target=swapper)
    t.start()
    r = lab.udp_stream("client", "server", rate=1000, duration=5)
    t.join()
    assert len(swaps) == len(variants) and swaps[-1] < 5000
    assert r["missing_count"] == 0 and r["duplicates"] == 0 and r["received"] == 5000
    s = h.stats()
    assert s["seen"] == 5000  # every packet judged exactly once
    assert s["accepted"] + s["continued"] == 5000 and s["continued"] > 0
    assert s["queue_drops"] == 0


def test_replace_with_broken_source_keeps_old_script(pair_lab):
    from packetscript_lab import ScriptError

    lab = pair_lab
    h = lab.attach(ACCEPT_ALL, host="server")
    with pytest.raises(ScriptError):
        h.replace("function process_packet(p) return end end")
    assert lab.udp_stream("client", "server", rate=200, duration=0.1)["received"] == 20
