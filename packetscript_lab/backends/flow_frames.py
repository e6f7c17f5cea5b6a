"""Packets of traffic-language flows for the replay backend (the notebook's replay runs,
``%packetscript send``, graded exercises).

The language itself (parsing, defaults, driving a live lab) is
:mod:`packetscript_lab.core.flows`; here the same flows are made into Ethernet frames with
the lab's addresses (host descriptions of :mod:`packetscript_lab.lab.topology`),
time-stamped at the flow's rate, as the receiving host's hook sees them.
"""
from __future__ import annotations

import dataclasses

from packetscript_lab.core import frames, pcap
from packetscript_lab.core.flows import Flow, TrafficError, check_hosts, check_load, is_address
from packetscript_lab.core.netutil import (IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
                                           IPPROTO_UDP, TCP_FLAGS)
from packetscript_lab.lab.topology import link_macs

MAX_PACKETS = 1_000_000     # of a capture read whole into memory


def build_packets(flows: list[Flow], hosts: dict, seconds: float) -> list[tuple[float, bytes]]:
    """(time offset, Ethernet frame) pairs for ``flows`` over ``seconds``, sorted by time."""
    check_hosts(flows, hosts)
    check_load(flows, seconds)
    out: list[tuple[float, bytes]] = []
    for flow in flows:
        if flow.kind == "pcap":
            out.extend(_capture_frames(flow))
            continue
        src = hosts[flow.src]
        if is_address(flow.dst):
            # an address nobody owns: the frame as it leaves the source towards its first hop
            # (a source without interfaces sends to the default header's destination MAC)
            dst = _Addr(flow.dst, src.interfaces[0].peer_mac if getattr(src, "interfaces", None)
                        else pcap.DEFAULT_ETH_HEADER[:6], ip6=flow.dst)
        else:
            dst = hosts[flow.dst]
        if flow.ip == 6:
            for host in (src, dst):
                if getattr(host, "ip6", None) is None:
                    raise TrafficError(f"{flow}: {getattr(host, 'name', host.ip)} has no IPv6 "
                                       "address; start the lab dual-stack (%packetscript up --ipv6)")
        out.extend(_flow_packets(flow, src, dst, seconds))
    out.sort(key=lambda pair: pair[0])
    return out


def read_capture(path: str) -> tuple[list[tuple[float, bytes]], bool]:
    """(time offset, bytes) pairs of a capture and whether packets start at the IP header.

    Read with the one checked reader (core.pcap: no dissection, and a corrupt record is an
    error, never a skipped packet); :class:`~packetscript_lab.core.pcap.CaptureError` if it
    cannot be replayed.
    """
    linktype, packets = pcap.read_packets(path, most=MAX_PACKETS)
    if not packets:
        raise pcap.CaptureError(f"{path}: the file holds no packets")
    kind = pcap.link(linktype).kind
    if kind not in ("ethernet", "raw"):
        raise pcap.CaptureError(f"{path}: link type {linktype} is neither Ethernet nor raw IP")
    return packets, kind == "raw"


def capture_frames(flow: Flow) -> tuple[list[tuple[float, bytes]], bool]:
    """A pcap flow's packets and whether they start at the IP header; ``rate=`` re-paces them."""
    try:
        packets, raw_ip = read_capture(flow.path)
    except pcap.CaptureError as exc:
        raise TrafficError(str(exc)) from None
    if flow.rate:
        packets = [(i / flow.rate, data) for i, (_, data) in enumerate(packets)]
    return packets, raw_ip


def _capture_frames(flow: Flow) -> list[tuple[float, bytes]]:
    packets, raw_ip = capture_frames(flow)
    if raw_ip:
        raise TrafficError(f"{flow.path} holds raw IP packets, which the replay backend plays "
                           "only on their own: give that pcap flow alone (or as --pcap)")
    return packets


@dataclasses.dataclass
class _Addr:
    ip: str
    mac: str | bytes
    interfaces: tuple = ()
    ip6: str | None = None


def _flow_packets(flow: Flow, src, dst, seconds: float):
    smac, dmac = link_macs(src, dst)
    sip, dip = (src.ip6, dst.ip6) if flow.ip == 6 else (src.ip, dst.ip)

    def l2(proto, l4, ident):
        if flow.ip == 6:
            return frames.frame6(smac, dmac, sip, dip,
                                 IPPROTO_ICMPV6 if proto == IPPROTO_ICMP else proto, l4)
        return frames.frame(smac, dmac, sip, dip, proto, l4, ident=ident)

    if flow.kind == "udp":
        gap = 1.0 / flow.rate
        for i in range(flow.packet_count(seconds)):
            payload = f"seq={i:08d} ".encode().ljust(flow.payload_size(), b".")
            sport = flow.sport or 40000 + i % 1000
            seg = frames.udp(sip, dip, sport, flow.port, payload)
            yield i * gap, l2(IPPROTO_UDP, seg, i)
    elif flow.kind == "ping":
        gap = 1.0 / flow.rate
        payload = b"packetscript-lab".ljust(flow.payload_size(), b".")[:flow.payload_size()]
        for i in range(flow.packet_count(seconds)):
            echo = frames.icmp6_echo(sip, dip, 0x5053, i & 0xFFFF, payload) if flow.ip == 6 \
                else frames.icmp_echo(0x5053, i & 0xFFFF, payload)
            yield i * gap, l2(IPPROTO_ICMP, echo, i)
    else:  # tcp: what the server sees of short client connections
        payload = flow.tcp_payload()
        f = TCP_FLAGS
        t, ident = 0.0, 0
        for c in range(flow.connections):
            sport, seq = 41000 + c, 1000 * (c + 1)
            for flags, data, s in ((f["S"], b"", seq), (f["A"], b"", seq + 1),
                                   (f["P"] | f["A"], payload, seq + 1),
                                   (f["F"] | f["A"], b"", seq + 1 + len(payload))):
                ack = 0 if flags == f["S"] else 5000
                yield t, l2(IPPROTO_TCP, frames.tcp(sip, dip, sport, flow.port, s, ack, flags, data),
                            ident)
                t += 0.01
                ident += 1
            t += 0.2
