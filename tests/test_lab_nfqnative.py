"""Live lab: on LuaJIT the script's own process answers the queue (lab/nfqnative.py).

A hostile script on that path (an endless loop, a process that dies) is caught by the
lab's watchdog; the queue fails open while the script is stuck, and every packet's fate
stays counted.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from labutil import pair_lab, udp_port_script, wait_until  # noqa: F401
from labutil import udp_to_server as _udp

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

ENDLESS = udp_port_script({6666: "while true do end"})
HANG_IN_C = udp_port_script({6666: "string.match(string.rep('x', 3000), ('.-'):rep(12) .. 'b')"})


def _exact(s: dict) -> None:
    assert s["rule_packets"] == s["judged"] + s["passed_unjudged"] + s["queue_drops"] + s["in_flight"], s


def _settled(h):
    """Stats once nothing waits in the queue and the worker saw no packet for a while."""
    last = {}

    def ready():
        nonlocal last
        s = h.stats()
        same = s["seen"] == last.get("seen") and s["rule_packets"] == last.get("rule_packets")
        last = s
        return s if same and s["in_flight"] == 0 else None
    return wait_until(ready, what="the queue to settle")


def test_luajit_scripts_run_on_the_native_worker_others_on_netfilterqueue(pair_lab):
    lab = pair_lab
    native = lab.attach(udp_port_script({6666: "return NF_DROP"}), host="server", match="-p udp --dport 6666",
                        name="native")
    lua51 = lab.attach(udp_port_script({}), host="server", match="-p udp --dport 7000", name="lua51", lua="5.1")
    lab.send("client", _udp(6666, 3) + _udp(7000, 2), interval=0.01)
    s = wait_until(lambda: (lambda s: s if s["seen"] == 3 else None)(native.stats()),
                   what="the native worker to judge three packets")
    assert s["worker"] == "native" and s["dropped"] == 3
    t = wait_until(lambda: (lambda s: s if s["seen"] == 2 else None)(lua51.stats()),
                   what="the 5.1 script to judge two packets")
    assert t["worker"] == "netfilterqueue" and t["accepted"] == 2
    # The recent packets reach the lab from the script's process too.
    from packetscript_lab.core.results import BY_CODE
    assert [p["verdict"] for p in native.recent()] == [BY_CODE[0]] * 3


def test_endless_loop_is_killed_the_queue_fails_open_meanwhile_counts_exact(pair_lab):
    lab = pair_lab
    # budget=0: no step limit, only the wall clock stops the loop. A short queue fills
    # while the script is stuck; what does not fit passes unjudged (fail-open).
    h = lab.attach(ENDLESS, host="server", match="-p udp", budget=0, time_limit=1.0, queue_len=4)
    assert h.stats()["worker"] == "native"
    lab.send("client", _udp(6666))
    stream = lab.udp_stream("client", "server", port=9000, rate=200, duration=0.4)
    # Only the three that fit in the queue behind the stuck packet waited for the restart.
    assert stream["sent"] == 80 and stream["received"] >= 77
    s = wait_until(lambda: (lambda s: s if s["timeouts"] == 1 else None)(h.stats()),
                   what="the time-out to be counted")
    s = _settled(h)
    assert s["timeouts"] == 1 and s["restarts"] >= 1 and s["crashes"] == 0
    assert s["errors"] == 1 and s["dropped"] == 1 and s["accepted"] == s["seen"] - 1
    assert s["passed_unjudged"] > 0 and s["queue_drops"] == 0
    _exact(s)
    assert s["rule_packets"] == 81
    assert "time limit of 1 s exceeded on one packet" in h.errors()[0]["message"]
    # The fresh process judges what comes next.
    assert lab.udp_stream("client", "server", port=9000, rate=200, duration=0.1)["received"] == 20
    s2 = _settled(h)
    # (the short queue may let one through unjudged when this busy machine stalls the worker)
    assert s2["seen"] >= s["seen"] + 15 and s2["accepted"] - s["accepted"] == s2["seen"] - s["seen"]
    assert s2["rule_packets"] == s["rule_packets"] + 20 and s2["timeouts"] == 1
    _exact(s2)


def _serving_process(lab) -> int:
    """The pid of this lab's script process that is running (the hung one), not the idle
    spares."""
    def running():
        root = lab.lab_pid
        for task in Path(f"/proc/{root}/task").iterdir():
            for kid in (task / "children").read_text().split():
                try:
                    cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
                    state = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                except OSError:
                    continue
                if b"packetscript_lab.judge_child" in cmd and state == "R":
                    return int(kid)
    return wait_until(running, what="the stuck script process")


def test_script_process_that_dies_costs_its_packet_and_the_queue_goes_on(pair_lab):
    lab = pair_lab
    h = lab.attach(HANG_IN_C, host="server", match="-p udp", time_limit=20.0, batch_time_limit=30.0)
    lab.send("client", _udp(6666))
    os.kill(_serving_process(lab), signal.SIGKILL)
    s = wait_until(lambda: (lambda s: s if s["crashes"] == 1 else None)(h.stats()),
                   what="the crash to be counted")
    assert s["timeouts"] == 0 and s["errors"] == 1 and s["dropped"] == 1 and s["restarts"] >= 1
    assert "process died on this packet (killed by SIGKILL" in h.errors()[0]["message"]
    started = time.monotonic()
    assert lab.udp_stream("client", "server", port=9000, rate=200, duration=0.1)["received"] == 20
    assert time.monotonic() - started < 10
    s = _settled(h)
    assert s["seen"] == 21 and s["accepted"] == 20 and s["passed_unjudged"] == 0
    _exact(s)


def test_printed_lines_and_errors_reach_the_lab_from_the_native_worker(pair_lab):
    lab = pair_lab
    h = lab.attach("n = 0\nfunction process_packet(p)\n  n = n + 1\n  print('packet ' .. n)\n"
                   "  if n == 2 then error('second') end\n  return NF_ACCEPT\nend",
                   host="server", match="-p udp --dport 9000")
    lab.send("client", _udp(9000, 3), interval=0.01)
    wait_until(lambda: len(h.output()) == 3, what="three printed lines")
    assert h.output() == ["packet 1", "packet 2", "packet 3"]
    s = h.stats()
    assert s["worker"] == "native" and s["seen"] == 3 and s["errors"] == 1 and s["dropped"] == 1
    (error,) = h.errors()
    assert error["line"] == 5 and "second" in error["message"]
