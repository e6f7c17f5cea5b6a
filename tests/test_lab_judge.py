"""Live lab: a script that hangs in a C function costs the packet it hung on, never the lab.

The lab runs each attached script in its own watched process (packetscript_lab.judge);
these tests attach hostile scripts to real NFQUEUE traffic in the lab's namespaces.
"""
from __future__ import annotations

import time

import pytest
from labutil import pair_lab, udp_port_script, wait_until  # noqa: F401
from labutil import udp_to_server as _udp

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

HANG = "string.match(string.rep('x', 2000), ('.-'):rep(8) .. 'b')"

HOSTILE = udp_port_script({6666: HANG, 9001: "return NF_DROP"})


def test_packet_that_hangs_in_c_gets_error_verdict_and_next_packets_pass(pair_lab):
    lab = pair_lab
    h = lab.attach(HOSTILE, host="server", match="-p udp")
    lab.send("client", _udp(6666))
    s = wait_until(lambda: (lambda s: s if s["timeouts"] == 1 else None)(h.stats()),
                   what="the time-out to be counted")
    assert s["errors"] == 1 and s["dropped"] == 1 and s["restarts"] >= 1 and s["crashes"] == 0
    # The fresh copy of the script judges what comes next.
    ok = lab.udp_stream("client", "server", port=9000, rate=200, duration=0.25)
    assert ok["received"] == ok["sent"] == 50
    assert lab.udp_stream("client", "server", port=9001, rate=200, duration=0.1)["received"] == 0
    s = h.stats()
    assert s["seen"] == 71 and s["accepted"] == 50 and s["dropped"] == 21 and s["errors"] == 1
    assert s["internal_errors"] == 0 and s["unjudged"] == 0
    (error,) = h.errors()
    assert error["line"] is None and error["count"] == 1
    assert "time limit of 250 ms exceeded on one packet" in error["message"]
    assert any(ev.get("event") == "script_error" and "time limit" in ev["message"] for ev in lab.events)
    assert lab.ping("client", "server", count=1)["received"] == 1


def test_script_that_hangs_on_every_packet_leaves_the_lab_responsive(pair_lab):
    from packetscript_lab import ScriptError

    lab = pair_lab
    h = lab.attach(HOSTILE.replace("if port == 6666 then", "if port ~= 9001 then"), host="server",
                   match="-p udp", time_limit=0.1, batch_time_limit=1.0)
    lab.send("client", _udp(9000, 6), interval=0.01)
    started = time.monotonic()
    assert lab.status()["attached"]            # answers while the script hangs
    assert time.monotonic() - started < 1.0
    s = wait_until(lambda: (lambda s: s if s["seen"] == 6 else None)(h.stats()),
                   what="all six packets to be judged")
    # Every packet's fate is counted: each ran out of time or was not judged for lack of it.
    assert s["dropped"] == 6 and s["errors"] == 6 and s["timeouts"] + s["unjudged"] == 6
    assert s["timeouts"] >= 1 and s["restarts"] >= 1
    # A replacement whose top level hangs is refused; the old script stays attached.
    with pytest.raises(ScriptError, match="top level ran past the time limit"):
        h.replace(HANG + "\n" + HOSTILE)
    h.replace(HOSTILE)
    assert lab.udp_stream("client", "server", port=9000, rate=200, duration=0.1)["received"] == 20
    assert h.stats()["timeouts"] == s["timeouts"]    # counts go on across replace()
