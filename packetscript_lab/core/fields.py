"""Name the header fields of an Ethernet frame, without scapy (it is far too slow for a
per-packet log): which fields a script changed, and a one-line summary of a frame.

The layouts come from the protocol table (:mod:`packetscript_lab.core.protocols`).
"""
from __future__ import annotations

import ipaddress
import struct
from functools import lru_cache

from packetscript_lab.core.netutil import (ETH_HLEN, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
                                           ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, tcp_flag_letters)
from packetscript_lab.core.pcap import eth_for_ip
from packetscript_lab.core.protocols import BY_NAME, PROTOCOLS, Protocol, header_length, ip6_walk, next_protocol


@lru_cache(maxsize=None)
def _static_fields(name: str) -> tuple[tuple[int, int, str], ...]:
    """(first byte, end, name) of the fields at fixed places; fields sharing bytes are one
    entry named "a/b" (``version/ihl``, ``flags/frag_off``)."""
    proto, spans = BY_NAME[name], []
    for f in proto.fields:
        r = f.byte_range
        if r is None:                                # data, options: placed by the packet
            continue
        if spans and r[0] < spans[-1][1]:
            a, b, name = spans[-1]
            spans[-1] = (a, max(b, r[1]), f"{name}/{f.name}")
        else:
            spans.append((r[0], r[1], f.name))
    return tuple(spans)


def _layout(frame: bytes):
    """Yield (start, end, name) for every header field of the frame, layer after layer."""
    proto, start = BY_NAME["packet_eth"], 0
    while True:
        short = proto.short
        hlen = header_length(proto, frame, start)
        if hlen is None or start + hlen > len(frame) or (
                proto.name == "packet_ip" and (frame[start] >> 4 != 4 or hlen < 20)):
            yield start, len(frame), f"{short}.data"
            return
        end = start
        for a, b, name in _static_fields(proto.name):
            yield start + a, start + b, f"{short}.{name}"
            end = start + b
        if hlen > end - start:                       # options, extension headers
            yield end, start + hlen, f"{short}.{'ext' if short == 'ip6' else 'options'}"
        nxt = next_protocol(proto, frame, start)
        if nxt is None:
            yield start + hlen, len(frame), f"{short}.data"
            return
        proto, start = nxt, start + hlen


def changed_fields(before: bytes, after: bytes) -> list[str]:
    """The names of the fields whose bytes differ, in header order (e.g. ``ip.daddr``)."""
    if before == after:
        return []
    n = min(len(before), len(after))
    diff = [i for i in range(n) if before[i] != after[i]]
    if not diff:
        return []
    names = []
    for a, b, name in _layout(before):
        if any(a <= i < b for i in diff):
            names.append(name)
    return names


# The checksums, named as _layout names them (recomputed after every change).
_CHECKSUMS = {f"{p.short}.{f.name}" for p in PROTOCOLS for f in p.fields
              if f.name in ("check", "checksum")}


def field_changes(before: bytes, after: bytes) -> list[str]:
    """The changed fields with their values, as a reader wants them: ``ip.daddr
    10.77.0.2 → 10.77.0.9``. Checksums (recomputed after every change) are named without
    values; payload and options only say how many bytes differ."""
    if before == after:
        return []
    out, sums = [], []
    for a, b, name in _layout(before):
        old, new = before[a:b], after[a:b]
        if old == new:
            continue
        if name in _CHECKSUMS:
            sums.append(name)
        elif name.endswith((".data", ".options", ".ext")):
            differ = sum(x != y for x, y in zip(old, new)) + abs(len(old) - len(new))
            out.append(f"{name}: {differ} bytes")
        else:
            out.append(f"{name} {_value(name, old)} → {_value(name, new)}")
    if len(after) != len(before):
        out.append(f"length {len(before)} → {len(after)} bytes")
    if sums:
        out.append("checksums updated (" + ", ".join(sums) + ")")
    return out


def field_value(frame: bytes, name: str):
    """The value of one header field of an Ethernet frame, named as :func:`changed_fields`
    names it (``ip.ttl``, ``udp.dport``): addresses and MACs as text, others as ints.
    None when the frame has no such field."""
    for a, b, n in _layout(frame):
        if n == name:
            raw = frame[a:b]
            if name.endswith("mac") or name.endswith(("saddr", "daddr")):
                return _value(name, raw)
            return int.from_bytes(raw, "big")
    return None


def ip_field(packet: bytes, name: str):
    """:func:`field_value` of an IP packet without its Ethernet header (``ip.id``)."""
    return field_value(eth_for_ip(packet) + packet, name)


def _value(name: str, raw: bytes) -> str:
    if name.endswith("mac"):
        return ":".join(f"{x:02x}" for x in raw)
    if name.endswith(("saddr", "daddr")) and len(raw) in (4, 16):
        return str(ipaddress.ip_address(raw))
    if name.endswith("flags") and name.startswith("tcp"):
        return tcp_flag_letters(raw[0]) or "-"
    return str(int.from_bytes(raw, "big")) if len(raw) <= 4 else raw.hex()


_ICMP_KINDS = {"packet_icmp": {ICMP_ECHO_REPLY: "echo-reply", ICMP_ECHO_REQUEST: "echo-request",
                               3: "unreachable", 11: "time-exceeded"},
               "packet_icmp6": {ICMPV6_ECHO_REQUEST: "echo-request", ICMPV6_ECHO_REPLY: "echo-reply",
                                1: "unreachable", 3: "time-exceeded", 135: "neighbor-solicit",
                                136: "neighbor-advert"}}


def _addresses(proto: Protocol, frame: bytes, start: int) -> tuple[str, str]:
    (a, b), (c, d) = proto.field("saddr").byte_range, proto.field("daddr").byte_range
    src, dst = frame[start + a:start + b], frame[start + c:start + d]
    if proto.name == "packet_ip6":
        return str(ipaddress.IPv6Address(src)), str(ipaddress.IPv6Address(dst))
    return ".".join(map(str, src)), ".".join(map(str, dst))


def summary(frame: bytes) -> str:
    """A one-line description: ``UDP 10.77.0.1:1234 > 10.77.0.2:9000 len 60``."""
    if len(frame) < ETH_HLEN:
        return f"truncated frame, {len(frame)} bytes"
    eth = BY_NAME["packet_eth"]
    ip = next_protocol(eth, frame, 0)
    hlen = ip and header_length(ip, frame, ETH_HLEN)
    if ip is None or hlen is None or len(frame) < ETH_HLEN + max(hlen, 20):
        return f"ethertype 0x{frame[12]:02x}{frame[13]:02x} len {len(frame)}"
    src, dst = _addresses(ip, frame, ETH_HLEN)
    l4 = ETH_HLEN + hlen
    upper = next_protocol(ip, frame, ETH_HLEN)
    v6 = ip.name == "packet_ip6"
    if upper is not None and upper.name in ("packet_tcp", "packet_udp") and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        name = upper.short.upper()
        flags = ""
        if name == "TCP" and len(frame) > l4 + 13:
            bits = frame[l4 + 13]
            flags = " [" + tcp_flag_letters(bits) + "]"
        if v6:
            return f"{name} [{src}]:{sport} > [{dst}]:{dport}{flags} len {len(frame)}"
        return f"{name} {src}:{sport} > {dst}:{dport}{flags} len {len(frame)}"
    if upper is not None and upper.name in _ICMP_KINDS and len(frame) >= l4 + 2:
        kind = _ICMP_KINDS[upper.name].get(frame[l4], f"type {frame[l4]}")
        return f"{upper.short.upper()} {src} > {dst} {kind} len {len(frame)}"
    if v6:
        return f"IP6 {src} > {dst} next header {ip6_walk(frame, ETH_HLEN)[0]} len {len(frame)}"
    return f"IP {src} > {dst} proto {field_value(frame, 'ip.protocol')} len {len(frame)}"
