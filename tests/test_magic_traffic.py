"""The --traffic language and the frames it generates for the replay backend."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from kernel_magic import traffic
from kernel_magic.hosts import replay_hosts


def test_parse_defaults_and_keys():
    udp, ping, tcp = traffic.parse_traffic(
        "udp client server; ping client server rate=2 count=3; "
        "tcp client 10.77.2.100:8080 connections=1 to=server")
    assert (udp.port, udp.rate, udp.count) == (9000, 100.0, None)
    assert (ping.rate, ping.count, ping.port) == (2.0, 3, None)
    assert (tcp.dst, tcp.port, tcp.connections, tcp.receiver) == ("10.77.2.100", 8080, 1, "server")
    assert udp.packet_count(1.5) == 150 and ping.packet_count(10) == 3


@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("quic client server", "unknown flow kind"),
    ("udp client", "expected 'udp SRC DST'"),
    ("udp client server:99999", "out of range"),
    ("ping client server:80", "no port"),
    ("udp client server size", "key=value"),
    ("udp client server rate=0", "positive"),
    ("udp client server rate=50000", "more than the lab generates"),
    ("udp client 8.8.8.8:53", "not a lab address"),
    ("udp client 192.168.0.1", "not a lab address"),
])
def test_parse_errors(spec, message):
    with pytest.raises(traffic.TrafficError, match=message):
        traffic.parse_traffic(spec)


def checksums_ok(frame: bytes) -> bool:
    """scapy recomputes every length and checksum: the same bytes mean they were right."""
    pkt = Ether(frame)
    del pkt[IP].chksum, pkt[IP].len
    l4 = pkt[IP].payload
    for field in ("chksum", "len"):
        if field in l4.fields:
            delattr(l4, field)
    return bytes(pkt) == frame


def test_generated_frames_are_valid_and_paced():
    hosts = replay_hosts("pair")
    flows = traffic.parse_traffic("udp client server:9000 rate=50 size=40; ping client server "
                                  "count=2; tcp client server connections=2")
    frames = traffic.build_packets(flows, hosts, 1.0)
    times = [t for t, _ in frames]
    assert times == sorted(times)
    pkts = [Ether(f) for _, f in frames]
    udp = [p for p in pkts if UDP in p]
    assert len(udp) == 50 and all(p[UDP].dport == 9000 and len(p[UDP].payload) == 40
                                  for p in udp)
    assert [t for t, f in frames if UDP in Ether(f)][:3] == [0.0, 0.02, 0.04]
    assert sum(ICMP in p for p in pkts) == 2
    assert [str(p[TCP].flags) for p in pkts if TCP in p][:4] == ["S", "A", "PA", "FA"]
    assert all(p[IP].src == "10.77.0.1" and p[IP].dst == "10.77.0.2" for p in pkts)
    assert all(p.src == "02:77:00:00:00:01" and p.dst == "02:77:00:00:00:02" for p in pkts)
    assert all(checksums_ok(f) for _, f in frames)


def test_router_topology_frames_arrive_from_the_router():
    hosts = replay_hosts("router")
    (t, f), = traffic.build_packets(traffic.parse_traffic("udp client server count=1"), hosts, 1)
    p = Ether(f)
    assert (p[IP].src, p[IP].dst) == ("10.77.1.1", "10.77.2.2")
    assert (p.src, p.dst) == ("02:77:02:00:00:fe", "02:77:02:00:00:02")   # last hop
    (t, f), = traffic.build_packets(
        traffic.parse_traffic("udp client 10.77.2.100 count=1 to=server"), hosts, 1)
    p = Ether(f)
    assert p[IP].dst == "10.77.2.100" and p.dst == "02:77:01:00:00:fe"     # first hop


def test_unknown_host_and_too_many_packets():
    hosts = replay_hosts("pair")
    with pytest.raises(traffic.TrafficError, match="no host 'router'"):
        traffic.build_packets(traffic.parse_traffic("ping client router"), hosts, 1)
    with pytest.raises(traffic.TrafficError, match="at most"):
        traffic.build_packets(traffic.parse_traffic("udp client server rate=20000"), hosts, 3600)
