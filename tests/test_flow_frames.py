"""Frames that traffic-language flows become on the replay backend (the language: test_flows.py)."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from packetscript_lab.backends import flow_frames
from packetscript_lab.core.flows import TrafficError, parse_traffic
from packetscript_lab.lab.topology import describe


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
    hosts = describe("pair")
    flows = parse_traffic("udp client server:9000 rate=50 size=40; ping client server "
                          "count=2; tcp client server connections=2")
    frames = flow_frames.build_packets(flows, hosts, 1.0)
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
    hosts = describe("router")
    (t, f), = flow_frames.build_packets(parse_traffic("udp client server count=1"), hosts, 1)
    p = Ether(f)
    assert (p[IP].src, p[IP].dst) == ("10.77.1.1", "10.77.2.2")
    assert (p.src, p.dst) == ("02:77:02:00:00:fe", "02:77:02:00:00:02")   # last hop
    (t, f), = flow_frames.build_packets(
        parse_traffic("udp client 10.77.2.100 count=1 to=server"), hosts, 1)
    p = Ether(f)
    assert p[IP].dst == "10.77.2.100" and p.dst == "02:77:01:00:00:fe"     # first hop


def test_unknown_host_and_too_many_packets():
    hosts = describe("pair")
    with pytest.raises(TrafficError, match="no host 'router'"):
        flow_frames.build_packets(parse_traffic("ping client router"), hosts, 1)
    with pytest.raises(TrafficError, match="at most"):
        flow_frames.build_packets(parse_traffic("udp client server rate=20000"), hosts, 3600)


def test_defaults_match_the_live_generators_and_duration_sets_the_count():
    hosts = describe("pair")
    frames = flow_frames.build_packets(parse_traffic(
        "udp client server duration=0.5 sport=5353; ping client server count=1"), hosts, 10)
    pkts = [Ether(f) for _, f in frames]
    udp = [p for p in pkts if UDP in p]
    assert len(udp) == 50                                   # 100/s for duration=0.5, not 10 s
    assert all(len(p[UDP].payload) == 64 and p[UDP].sport == 5353 for p in udp)
    (icmp,) = [p for p in pkts if ICMP in p]
    assert len(icmp[ICMP].payload) == 56                    # as lab.ping sends


def test_pcap_flows_join_generated_ones_and_rate_repaces_them(tmp_path):
    from scapy.utils import wrpcap
    eth = tmp_path / "eth.pcap"
    wrpcap(str(eth), [Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=53)] * 4)
    frames = flow_frames.build_packets(
        parse_traffic(f"pcap {eth} rate=10; udp client server count=1"), describe("pair"), 1)
    assert [t for t, f in frames if UDP in Ether(f) and Ether(f)[UDP].dport == 53] == \
        [0.0, 0.1, 0.2, 0.3]
    raw = tmp_path / "raw.pcap"
    wrpcap(str(raw), [IP(dst="10.77.0.2") / UDP()], linktype=101)
    with pytest.raises(TrafficError, match="raw IP packets.*alone"):
        flow_frames.build_packets(parse_traffic(f"pcap {raw}; udp client server"),
                              describe("pair"), 1)
    frames, raw_ip = flow_frames.capture_frames(parse_traffic(f"pcap {raw}")[0])
    assert raw_ip and len(frames) == 1
