"""Live lab: topology, drop, DNAT and XT_CONTINUE on real traffic through NFQUEUE."""
from __future__ import annotations

import pytest
from labutil import CONTINUE_ALL, DNAT_TO_SERVER, DROP_9000, pair_lab, router_lab  # noqa: F401

from packetscript_lab import ScriptError

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]


def test_pair_topology_reaches_only_lab_hosts(pair_lab):
    lab = pair_lab
    assert lab.hosts["client"].ip == "10.77.0.1" and lab.hosts["server"].ip == "10.77.0.2"
    assert lab.hosts["server"].mac == "02:77:00:00:00:02"
    r = lab.ping("client", "server", count=3, interval=0.05)
    assert r["received"] == 3 and len(r["rtt_ms"]) == 3
    # No default route: nothing outside the lab is reachable.
    with pytest.raises(Exception, match="unreachable"):
        lab.ping("client", "10.99.0.1", count=1, timeout=0.3)
    echo = lab.tcp_echo("client", "server", connections=2, payload=b"x" * 1000)
    assert echo["ok"] == 2


def test_router_topology_forwards(router_lab):
    lab = router_lab
    assert set(lab.hosts) == {"client", "router", "server"}
    assert lab.ping("client", "server", count=2, interval=0.05)["received"] == 2
    r = lab.udp_stream("client", "server", rate=500, duration=0.2)
    assert r["received"] == r["sent"] == 100


def test_drop_script_drops_exactly_matched_traffic(pair_lab):
    lab = pair_lab
    h = lab.attach(DROP_9000, host="server", chain="INPUT", match="-p udp --dport 9000")
    hit = lab.udp_stream("client", "server", port=9000, rate=500, duration=0.4)
    miss = lab.udp_stream("client", "server", port=9001, rate=500, duration=0.4)
    assert hit["received"] == 0 and hit["missing_count"] == hit["sent"] == 200
    assert miss["received"] == miss["sent"] == 200
    s = h.stats()
    assert s["seen"] == s["dropped"] == 200
    assert s["accepted"] == s["errors"] == s["queue_drops"] == 0
    assert {e["verdict"] for e in h.recent(10)} == {"drop"}
    assert lab.ping("client", "server", count=1)["received"] == 1  # ICMP untouched
    assert h.series() and h.series()[-1]["dropped"] <= 200
    h.detach()
    assert "NFQUEUE" not in lab.iptables_save("server")
    assert lab.udp_stream("client", "server", port=9000, rate=500, duration=0.2)["received"] == 100


def test_dnat_on_router_rewrites_destination_with_valid_checksums(router_lab):
    from scapy.layers.inet import IP, UDP

    lab = router_lab
    h = lab.attach(DNAT_TO_SERVER, host="router", table="mangle", chain="POSTROUTING",
                   match="-p udp -d 10.77.2.100")
    cap = lab.capture("server", bpf="udp port 9000", timeout=2.0, count=100, wait=False)
    r = lab.udp_stream("client", "10.77.2.100", port=9000, rate=500, duration=0.2, receiver="server")
    assert r["received"] == r["sent"] == 100
    pkts = cap.packets()
    assert len(pkts) == 100
    for p in pkts:
        assert p[IP].dst == "10.77.2.2" and p[IP].src == "10.77.1.1"
        again = IP(bytes(p[IP]))
        del again.chksum
        del again[UDP].chksum
        rebuilt = IP(bytes(again))
        assert (p[IP].chksum, p[UDP].chksum) == (rebuilt.chksum, rebuilt[UDP].chksum)
    s = h.stats()
    assert s["seen"] == s["continued"] == s["modified"] == 100
    changed = h.recent(1)[0]["changed"]
    assert "ip.daddr" in changed


def test_continue_goes_on_to_next_rule(pair_lab):
    lab = pair_lab
    h = lab.attach(CONTINUE_ALL, host="server", chain="INPUT", match="-p udp --dport 9000")
    # Nothing after the queue rule: the chain policy (ACCEPT) decides.
    assert lab.udp_stream("client", "server", rate=500, duration=0.2)["received"] == 100
    lab.iptables("server", "-A INPUT -p udp --dport 9000 -j DROP")
    r = lab.udp_stream("client", "server", rate=500, duration=0.2)
    assert r["received"] == 0
    s = h.stats()
    assert s["continued"] == s["seen"] == 200  # judged once each, not re-queued
    assert lab.udp_stream("client", "server", port=9001, rate=500, duration=0.1)["received"] == 50


def test_compile_error_raised_in_client_with_line(pair_lab):
    with pytest.raises(ScriptError) as ei:
        pair_lab.attach("function process_packet(p)\n  return (\nend\n", host="server")
    assert ei.value.line in (2, 3)
    assert pair_lab.attached == {}
    assert "NFQUEUE" not in pair_lab.iptables_save("server")


def test_bad_hook_is_a_lab_error(pair_lab):
    from packetscript_lab.lab import LabError

    with pytest.raises(LabError, match="POSTROUTING"):
        pair_lab.attach(DROP_9000, host="server", table="filter", chain="POSTROUTING")
    with pytest.raises(LabError, match="no host"):
        pair_lab.attach(DROP_9000, host="router")


def test_two_scripts_on_different_hooks(router_lab):
    lab = router_lab
    a = lab.attach(CONTINUE_ALL, host="router", table="mangle", chain="PREROUTING",
                   match="-p udp", name="pre")
    b = lab.attach(DNAT_TO_SERVER, host="router", table="mangle", chain="POSTROUTING",
                   match="-p udp -d 10.77.2.100", name="post")
    r = lab.udp_stream("client", "10.77.2.100", rate=500, duration=0.2, receiver="server")
    assert r["received"] == 100
    assert a.stats()["continued"] == 100 and b.stats()["modified"] == 100
    assert set(lab.attached) == {"pre", "post"}
    assert {v["queue"] for v in lab.status()["attached"].values()} == {0, 1}


def test_replay_pcap_refuses_a_corrupt_capture(pair_lab, tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    from packetscript_lab.lab import LabError

    path = tmp_path / "sparse.pcap"
    wrpcap(str(path), [Ether() / IP(dst="10.77.0.2") / UDP(dport=9000)] * 2)
    assert pair_lab.replay_pcap("client", str(path)) == 2
    with open(path, "r+b") as f:
        f.truncate(1 << 30)
    with pytest.raises(LabError, match="corrupt capture at packet 3"):
        pair_lab.replay_pcap("client", str(path))


@pytest.mark.parametrize("linktype", [101, 276])
def test_replay_pcap_sends_every_ip_link_type_of_the_capture_table(pair_lab, tmp_path, linktype):
    """Raw-IP and cooked captures (read with core.pcap's table) reach the server's hook."""
    from labutil import wait_until
    from scapy.layers.inet import IP, UDP

    from packetscript_lab.core import pcap
    from packetscript_lab.lab import LabError

    lt = pcap.link(linktype)
    packets = [bytes(IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=9123) / b"x")] * 3
    header = bytearray(lt.header)
    if lt.proto_at is not None:
        header[lt.proto_at:lt.proto_at + 2] = b"\x08\x00"
    path = tmp_path / "ip.pcap"
    pcap.write_pcap(path, linktype, [(bytes(header) + p, 1.0) for p in packets])
    h = pair_lab.attach(CONTINUE_ALL, host="server", chain="INPUT", match="-p udp --dport 9123")
    assert pair_lab.replay_pcap("client", str(path)) == 3
    wait_until(lambda: h.stats()["seen"] == 3, what="the three packets at the server's hook")
    six = tmp_path / "six.pcap"
    pcap.write_pcap(six, 229, [(b"\x60" + bytes(39), 1.0)])
    with pytest.raises(LabError, match="packet 1 is not IPv4"):
        pair_lab.replay_pcap("client", str(six))
