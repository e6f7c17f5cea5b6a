"""Name the header fields of an Ethernet frame, without scapy (it is far too slow for a
per-packet log): which fields a script changed, and a one-line summary of a frame."""
from __future__ import annotations

import struct

# (first byte, last byte + 1, name) inside each header.
_ETH = ((0, 6, "dmac"), (6, 12, "smac"), (12, 14, "type"))
_IP = ((0, 1, "version/ihl"), (1, 2, "tos"), (2, 4, "tot_len"), (4, 6, "id"),
       (6, 8, "flags/frag_off"), (8, 9, "ttl"), (9, 10, "protocol"), (10, 12, "check"),
       (12, 16, "saddr"), (16, 20, "daddr"))
_TCP = ((0, 2, "sport"), (2, 4, "dport"), (4, 8, "seq"), (8, 12, "ack"),
        (12, 13, "data_off"), (13, 14, "flags"), (14, 16, "window_size"), (16, 18, "check"),
        (18, 20, "urgent"))
_UDP = ((0, 2, "sport"), (2, 4, "dport"), (4, 6, "length"), (6, 8, "check"))
_ICMP = ((0, 1, "type"), (1, 2, "code"), (2, 4, "checksum"), (4, 6, "id"), (6, 8, "sequence"))
_L4 = {6: ("tcp", _TCP), 17: ("udp", _UDP), 1: ("icmp", _ICMP)}


def _layout(frame: bytes):
    """Yield (start, end, name) for every header field of an Ethernet/IPv4 frame."""
    for a, b, name in _ETH:
        yield a, b, "eth." + name
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
        yield 14, len(frame), "eth.data"
        return
    ihl = (frame[14] & 15) * 4
    for a, b, name in _IP:
        yield 14 + a, 14 + b, "ip." + name
    if ihl > 20:
        yield 34, 14 + ihl, "ip.options"
    l4 = 14 + ihl
    proto_name, fields = _L4.get(frame[23], ("ip", ()))
    end = l4
    for a, b, name in fields:
        yield l4 + a, l4 + b, f"{proto_name}.{name}"
        end = l4 + b
    if proto_name == "tcp" and len(frame) > l4 + 12:
        hdr = (frame[l4 + 12] >> 4) * 4
        if hdr > 20:
            yield l4 + 20, l4 + hdr, "tcp.options"
        end = max(end, l4 + hdr)
    yield end, len(frame), f"{proto_name}.data"


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


_CHECKSUMS = {"ip.check", "tcp.check", "udp.check", "icmp.checksum"}


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
        elif name.endswith((".data", ".options")):
            differ = sum(x != y for x, y in zip(old, new)) + abs(len(old) - len(new))
            out.append(f"{name}: {differ} bytes")
        else:
            out.append(f"{name} {_value(name, old)} → {_value(name, new)}")
    if len(after) != len(before):
        out.append(f"length {len(before)} → {len(after)} bytes")
    if sums:
        out.append("checksums updated (" + ", ".join(sums) + ")")
    return out


def _value(name: str, raw: bytes) -> str:
    if name.endswith("mac"):
        return ":".join(f"{x:02x}" for x in raw)
    if name.endswith(("saddr", "daddr")) and len(raw) == 4:
        return ".".join(map(str, raw))
    if name.endswith("flags") and name.startswith("tcp"):
        return "".join(c for c, m in zip("FSRPAU", (1, 2, 4, 8, 16, 32)) if raw[0] & m) or "-"
    return str(int.from_bytes(raw, "big")) if len(raw) <= 4 else raw.hex()


def summary(frame: bytes) -> str:
    """A one-line description: ``UDP 10.77.0.1:1234 > 10.77.0.2:9000 len 60``."""
    if len(frame) < 14:
        return f"truncated frame, {len(frame)} bytes"
    if frame[12:14] != b"\x08\x00" or len(frame) < 34:
        return f"ethertype 0x{frame[12]:02x}{frame[13]:02x} len {len(frame)}"
    ihl = (frame[14] & 15) * 4
    src, dst = ".".join(map(str, frame[26:30])), ".".join(map(str, frame[30:34]))
    proto, l4 = frame[23], 14 + ihl
    if proto in (6, 17) and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        name = "TCP" if proto == 6 else "UDP"
        flags = ""
        if proto == 6 and len(frame) > l4 + 13:
            bits = frame[l4 + 13]
            flags = " [" + "".join(c for c, m in zip("FSRPAU", (1, 2, 4, 8, 16, 32)) if bits & m) + "]"
        return f"{name} {src}:{sport} > {dst}:{dport}{flags} len {len(frame)}"
    if proto == 1 and len(frame) >= l4 + 2:
        kind = {0: "echo-reply", 8: "echo-request", 3: "unreachable", 11: "time-exceeded"}.get(
            frame[l4], f"type {frame[l4]}")
        return f"ICMP {src} > {dst} {kind} len {len(frame)}"
    return f"IP {src} > {dst} proto {proto} len {len(frame)}"
