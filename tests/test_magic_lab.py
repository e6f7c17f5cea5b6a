"""The %%packetscript magic on the live lab: NFQUEUE, real namespaces, real traffic.

Marked ``lab``. Where namespaces cannot be created the tests skip, except under CI
(CI=true), where that is a failure: CI machines are expected to run the lab.
"""
from __future__ import annotations

import os
import re
import time

import pytest
from IPython.utils.capture import capture_output

import kernel_magic
from labutil import wait_until
from test_magic import ACCEPT_ALL, DROP_UDP, get_shell, summary_of

pytestmark = pytest.mark.lab


@pytest.fixture
def ip(monkeypatch):
    monkeypatch.delenv("PACKETSCRIPT_BACKEND", raising=False)
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)
    with capture_output() as cap:
        shell.run_line_magic("packetscript", "up")
    session = kernel_magic.get_session()
    if session.lab is None:
        reason = f"the lab cannot run here: {session.lab_unavailable}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    assert "10.77.0.2" in cap.stdout
    yield shell
    kernel_magic.unload_ipython_extension(shell)


def traffic_of(cap) -> list[dict]:
    """The 'traffic' lines of the first summary among the outputs as {flow, sent, ...}."""
    for o in cap.outputs:
        text = o.data.get("text/plain", "")
        if not text.startswith("packetscript '"):
            continue
        out = []
        for m in re.finditer(r"traffic (.+?): (.*)", text):
            row = {"flow": m.group(1)}
            row.update((k, int(v)) for k, v in re.findall(r"(\w+) (\d+)\b(?!\.)", m.group(2)))
            out.append(row)
        return out
    raise AssertionError("no summary among the outputs")


def test_live_drop_counts_match_the_traffic(ip):
    with capture_output() as cap:
        ip.run_cell_magic("packetscript", "drop --duration 1 --no-dashboard", DROP_UDP)
    s = summary_of(cap)
    (udp,) = traffic_of(cap)
    assert s["backend"] == "nfqueue"
    assert s["seen"] == udp["sent"] == 100
    assert s["dropped"] == 100 and udp["received"] == 0
    assert s["queue_drops"] == 0 and s["passed_unjudged"] == 0


def test_queues_spread_the_cell_over_queues_and_count_as_one_run(ip):
    with capture_output() as cap:
        ip.run_cell_magic("packetscript", "fan --queues 2 --duration 1 --no-dashboard", DROP_UDP)
    s = summary_of(cap)
    (udp,) = traffic_of(cap)
    assert s["seen"] == s["dropped"] == udp["sent"] == 100 and udp["received"] == 0
    assert s["passed_unjudged"] == 0
    assert kernel_magic.get_session().runs["fan"].handle.info["queues"] == [0, 1]


def test_match_with_leading_dash_and_unmatched_traffic(ip):
    drop_all = "function process_packet(p)\n  return NF_DROP\nend\n"
    with capture_output() as cap:
        ip.run_cell_magic("packetscript",
                          'icmp --match "-p icmp" --duration 1 --no-dashboard --traffic '
                          '"udp client server:9000 rate=20; ping client server rate=5"',
                          drop_all)
    s = summary_of(cap)
    flows = {row["flow"].split()[0]: row for row in traffic_of(cap)}
    assert flows["udp"]["received"] == flows["udp"]["sent"] == 20    # not matched: untouched
    assert flows["ping"]["received"] == 0
    assert s["seen"] == s["dropped"] == flows["ping"]["sent"]


def test_live_rerun_replaces_without_losing_packets(ip):
    traffic = "--traffic 'udp client server:9000 rate=150 count=300'"
    with capture_output():
        ip.run_cell_magic("packetscript", f"swap {traffic}", ACCEPT_ALL)
    run = kernel_magic.get_session().runs["swap"]
    wait_until(lambda: run.handle.stats()["seen"] >= 20, what="the first script to judge packets")
    with capture_output() as cap:
        ip.run_cell_magic("packetscript", f"swap {traffic}", DROP_UDP)
    assert "replaced in place" in cap.stdout
    run.wait_traffic(timeout=15)
    wait_until(lambda: run.handle.stats()["seen"] >= 300, what="every packet to be judged")
    with capture_output() as cap:
        ip.run_line_magic("packetscript", "stop swap")
    s = summary_of(cap)
    (udp,) = traffic_of(cap)
    assert s["seen"] == udp["sent"] == 300
    assert s["accepted"] + s["dropped"] == 300
    assert s["accepted"] == udp["received"] and 0 < s["accepted"] < 300


def test_live_runtime_error_names_the_cell_line(ip):
    body = "function process_packet(p)\n\n  return p.nothing.here\nend\n"
    with capture_output() as cap:
        ip.run_cell_magic("packetscript", "err --duration 0.5 --no-dashboard "
                                          "--traffic 'udp client server count=5'", body)
    s = summary_of(cap)
    assert s["errors"] == 5 and s["dropped"] == 5
    text = "\n".join(o.data.get("text/plain", "") for o in cap.outputs)
    assert "cell line 4" in text and "return p.nothing.here" in text


def test_kernel_backend_without_the_module_is_a_usage_error(ip):
    from IPython.core.error import UsageError
    with pytest.raises(UsageError, match="xt_LUA"):
        ip.run_cell_magic("packetscript", "k --backend kernel", ACCEPT_ALL)


def test_send_reaches_a_running_live_script(ip):
    with capture_output():
        ip.run_cell_magic("packetscript", "sink", DROP_UDP)      # open-ended, no traffic
    run = kernel_magic.get_session().runs["sink"]
    with capture_output() as cap:
        ip.run_line_magic("packetscript", "send udp client server:9000 count=7")
    assert "sent 7 packets" in cap.stdout
    deadline = time.time() + 5
    while run.view()["stats"].get("seen", 0) < 7 and time.time() < deadline:
        time.sleep(0.1)
    stats = run.view()["stats"]
    assert stats["seen"] == stats["dropped"] == 7
    with capture_output():
        ip.run_line_magic("packetscript", "stop sink")


def test_live_pcap_is_sent_from_the_client(ip, tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    pkts = [Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=9000) / b"pcap"
            for _ in range(12)]
    wrpcap(str(tmp_path / "c.pcap"), pkts)
    with capture_output() as cap:
        ip.run_cell_magic("packetscript", f"p --pcap {tmp_path / 'c.pcap'} --duration 1 "
                                          "--no-dashboard", DROP_UDP)
    s = summary_of(cap)
    assert s["backend"] == "nfqueue" and s["seen"] == s["dropped"] == 12
    (row,) = traffic_of(cap)
    assert row["sent"] == 12


def test_unknown_traffic_host_is_refused_before_attaching(ip):
    from IPython.core.error import UsageError
    with pytest.raises(UsageError, match="no host 'router'"):
        ip.run_cell_magic("packetscript", "r --duration 1 --traffic 'ping client router'",
                          ACCEPT_ALL)
    assert "r" not in kernel_magic.get_session().runs
    assert kernel_magic.get_session().lab.attached == {}


def test_down_ends_live_runs_with_their_summary(ip):
    with capture_output():
        ip.run_cell_magic("packetscript", "bye --traffic 'udp client server count=10 rate=100'",
                          ACCEPT_ALL)
    run = kernel_magic.get_session().runs["bye"]
    run.wait_traffic(timeout=10)
    wait_until(lambda: run.handle.stats()["seen"] >= 10, what="the script to see all 10 packets")
    with capture_output() as cap:
        ip.run_line_magic("packetscript", "down")
    assert "lab is down" in cap.stdout
    s = summary_of(cap)
    assert s["seen"] == s["accepted"] == 10
    assert not run.active and run.end_reason == "lab shut down"


def test_live_pcap_run_ends_when_the_capture_is_sent(ip, tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    path = tmp_path / "ten.pcap"
    wrpcap(str(path), [Ether() / IP(src="10.77.0.1", dst="10.77.0.2") /
                       UDP(sport=40000, dport=9000) / b"x" for _ in range(10)])
    with capture_output() as cap:                # no --duration: the capture's end ends it
        ip.run_cell_magic("packetscript", f"sent --pcap {path} --no-dashboard", DROP_UDP)
    s = summary_of(cap)
    assert (s["backend"], s["seen"], s["dropped"]) == ("nfqueue", 10, 10)
    run = kernel_magic.get_session().runs["sent"]
    assert not run.active and run.end_reason == "capture sent to the end"
