"""packetscript_lab.testing: the checks a hidden test makes against a student's script, on
the replay backend and live, and the feedback a student reads when one fails."""
from __future__ import annotations

import os

import pytest

from labutil import require_lab
from packetscript_lab import testing as pt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSIGNMENT = os.path.join(ROOT, "examples", "assignment")
R = "router"
ACCEPT_ALL = "function process_packet(p) return NF_ACCEPT end"


def solution(name: str) -> str:
    with open(os.path.join(ASSIGNMENT, f"{name}.lua")) as f:
        return f.read()


def firewall(source):
    return pt.submission(source, name="firewall", host="router", chain="FORWARD", topology=R)


def handshake():
    return [(pt.tcp("client", "server", dport=80, flags="S", topology=R), "accept"),
            (pt.tcp("server", "client", sport=80, dport=41000, flags="SA", topology=R), "accept"),
            (pt.tcp("server", "client", sport=80, dport=41001, flags="S", topology=R), "drop")]


def test_verdicts_pass_for_a_right_script_and_name_the_wrong_packet():
    pt.expect_verdicts(firewall(solution("stateful")), handshake())
    with pytest.raises(pt.ExerciseFailure) as info:
        pt.expect_verdicts(firewall(ACCEPT_ALL), handshake())
    assert str(info.value) == (
        "firewall: 1 of 3 packets got the wrong verdict:\n"
        "  packet 3, TCP 10.77.2.2:80 > 10.77.1.1:41001 [S]: your script returned accept, "
        "expected drop")


def test_feedback_carries_the_scripts_error_with_its_line():
    broken = "function process_packet(p)\n  local x = nil\n  return x.y\nend\n"
    with pytest.raises(pt.ExerciseFailure) as info:
        pt.expect_verdicts(pt.submission(broken, name="fw"), [(pt.udp("client", "server"), "accept")])
    msg = str(info.value)
    assert "packet 1, UDP 10.77.0.1:40000 > 10.77.0.2:9000: your script returned drop, expected accept" in msg
    assert "(it failed: " in msg and "line 3" in msg
    with pytest.raises(pt.ExerciseFailure, match="does not compile"):
        pt.expect_verdicts(pt.submission("function process_packet(p"), [(pt.udp("client", "server"), "accept")])


def test_changes_are_checked_field_by_field():
    nat = pt.submission(solution("nat"), name="nat", host="router", table="mangle",
                        chain="PREROUTING", topology=R)
    pt.expect_changes(nat, pt.udp("client", "10.77.2.100", dport=9000, topology=R), {"ip.dst": "10.77.2.2"})
    pt.expect_changes(nat, pt.udp("client", "10.77.2.100", dport=53, topology=R), {"ip.dst": "10.77.2.100"})
    with pytest.raises(pt.ExerciseFailure, match="ip.dst is 10.77.2.100 after your script, expected "
                       r"10.77.2.2 \(your script left it unchanged\)"):
        pt.expect_changes(pt.submission(ACCEPT_ALL, topology=R),
                          pt.udp("client", "10.77.2.100", topology=R), {"ip.dst": "10.77.2.2"})
    ttl_too = solution("nat").replace('ip:daddr():set("10.77.2.2")',
                                      'ip:daddr():set("10.77.2.2"); ip:ttl():set(3)')
    with pytest.raises(pt.ExerciseFailure, match="also changed ip.ttl, which should stay"):
        pt.expect_changes(pt.submission(ttl_too, topology=R),
                          pt.udp("client", "10.77.2.100", topology=R), {"ip.dst": "10.77.2.2"})


def test_delivery_counts_what_the_receivers_get():
    lim = pt.submission(solution("limiter"), name="limiter")
    # 40 packets in one second: a burst of 5, then 10 a second.
    assert pt.expect_delivery(lim, "udp client server:9000 count=40 rate=40", received=(14, 16)) == \
        {"sent": 40, "received": 14}
    with pytest.raises(pt.ExerciseFailure, match="the receivers got 40 of 40 packets; expected "
                       "between 14 and 16"):
        pt.expect_delivery(pt.submission(ACCEPT_ALL, name="limiter"),
                           "udp client server:9000 count=40 rate=40", received=(14, 16))


def test_live_checks_at_the_cells_hook():
    require_lab()
    pt.expect_verdicts(firewall(solution("stateful")), handshake(), live=True)
    with pytest.raises(pt.ExerciseFailure, match="packet 3, .*returned accept, expected drop"):
        pt.expect_verdicts(firewall(ACCEPT_ALL), handshake(), live=True)
    nat = pt.submission(solution("nat"), host="router", table="mangle", chain="PREROUTING", topology=R)
    pt.expect_changes(nat, pt.udp("client", "10.77.2.100", dport=9000, topology=R),
                      {"ip.dst": "10.77.2.2"}, live=True)
    got = pt.expect_delivery(pt.submission(solution("limiter")), "udp client server:9000 count=40 rate=40",
                             received=(12, 20), live=True)
    assert got["sent"] == 40


def test_cell_reads_the_students_cell(monkeypatch):
    from IPython.utils.capture import capture_output

    import kernel_magic
    from test_magic import get_shell

    monkeypatch.setenv("PACKETSCRIPT_BACKEND", "replay")
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)
    try:
        with pytest.raises(pt.ExerciseFailure, match="no %%packetscript cell named 'limiter' has run"):
            pt.cell("limiter")
        with capture_output():
            shell.run_cell_magic("packetscript", "limiter --backend replay --duration 0.5 --no-dashboard",
                                 solution("limiter"))
        sub = pt.cell("limiter")
        assert sub.source == solution("limiter") and sub.host == "server" and sub.line_offset == 1
        pt.expect_delivery(sub, "udp client server:9000 count=40 rate=40", received=(14, 16))
    finally:
        kernel_magic.unload_ipython_extension(shell)
