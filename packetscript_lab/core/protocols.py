"""The protocol table: every protocol buffer the engine offers, written down once.

Each protocol has its id and name (the script's global), its fields (bit offset, bit
length, how the value reads and writes), which field is its payload, and how it finds the
next layer (a selector field and the values that name the next protocol). The Lua engine
builds its protocol buffers from this table (``packet.lua``, through the configuration
``script.py`` hands it); the field names and summaries of :mod:`packetscript_lab.core.fields`,
the frame layout, and the portability check read it too. Adding a field or a protocol is
one entry here (plus a kind or a locator in ``packet.lua`` if it needs new behaviour).

Field kinds (implemented in ``packet.lua``):

- ``int``: a big-endian unsigned number over whole bytes;
- ``nibble``: 4 bits with a range and the error for values outside it (``limits``);
- ``bitfield``: any run of bits as a number (IPv6 traffic class, flow label);
- ``bits``: ``get(n)``/``set(n[, false])`` on bit ``n`` of a byte (1 = most significant);
- ``frag13``: the 13-bit IPv4 fragment offset;
- ``addr4``/``addr6``: an IPv4 / IPv6 address as a string;
- ``raw``: bytes, set by filling with one value or copying an array in;
- ``data``: bytes, set by copying an array (or string) in from the start;
- ``str``: a NUL-terminated string;
- ``tcp_check``: ``set()`` recomputes the TCP checksum.

``locate`` names a locator in ``packet.lua`` for a field whose place depends on the packet
(after the IP options, the TCP data offset, the TFTP opcode, the IPv6 extension headers).
"""
from __future__ import annotations

from dataclasses import dataclass

from packetscript_lab.core.netutil import (ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP,
                                           IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP)

ANY = "any"          # a payload that converts to any protocol (raw, TCP, UDP)


@dataclass(frozen=True)
class Field:
    name: str
    bit_offset: int
    bit_length: int                      # 0: to the end of the segment
    kind: str = "raw"
    locate: str | None = None            # a locator in packet.lua, when the place varies
    limits: tuple[int, int, str] | None = None   # nibble: low, high, error message
    as_protocol: str | None = None       # field(TYPE) gives this protocol (tcp options)

    @property
    def byte_range(self) -> tuple[int, int] | None:
        """(first byte, last byte + 1) that hold the field's bits by the table's offsets
        (a locator may place it elsewhere), or None for a field that runs to the end."""
        if self.bit_length == 0:
            return None
        first = self.bit_offset // 8
        return first, -(-(self.bit_offset + self.bit_length) // 8)


@dataclass(frozen=True)
class Protocol:
    id: int
    name: str                            # the script's global, e.g. "packet_ip"
    fields: tuple[Field, ...]
    payload: str | None = None           # the field that converts with field(TYPE)
    next_by: str | None = None           # the field whose value names the next protocol
    next: dict | str | None = None       # value -> protocol name, or ANY
    header: tuple[int, bool, int] | int | None = None   # header length: fixed, or
    #                                    (byte, high nibble?, times) read from the header
    xt_lua: bool = True                  # offered by the xt_LUA kernel module

    @property
    def short(self) -> str:
        return self.name[len("packet_"):]

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


F = Field
_INT, _DATA = "int", "data"

PROTOCOLS: tuple[Protocol, ...] = (
    Protocol(0, "packet_raw", (F("data", 0, 0),), payload="data", next=ANY),
    Protocol(1, "packet_eth",
             (F("dmac", 0, 48), F("smac", 48, 48), F("type", 96, 16), F("data", 112, 0)),
             payload="data", next_by="type",
             next={ETH_P_IP: "packet_ip", ETH_P_IPV6: "packet_ip6"}, header=ETH_HLEN),
    Protocol(2, "packet_ip", (
        F("version", 0, 4, "nibble", limits=(0, 15, "version number invalid")),
        F("ihl", 4, 4, "nibble", limits=(5, 15, "ip header length invalid")),
        F("tos", 8, 8, _INT), F("tot_len", 16, 16, _INT), F("id", 32, 16, _INT),
        F("flags", 48, 3, "bits"), F("frag_off", 51, 13, "frag13", locate="ip_frag_off"),
        F("ttl", 64, 8, _INT), F("protocol", 72, 8, _INT), F("check", 80, 16, _INT),
        F("saddr", 96, 32, "addr4"), F("daddr", 128, 32, "addr4"),
        F("data", 160, 0, _DATA, locate="ip_data")),
        payload="data", next_by="protocol",
        next={IPPROTO_ICMP: "packet_icmp", IPPROTO_TCP: "packet_tcp", IPPROTO_UDP: "packet_udp"},
        header=(0, False, 4)),
    Protocol(3, "packet_icmp", (
        F("type", 0, 8), F("code", 8, 8), F("checksum", 16, 16), F("id", 32, 16),
        F("sequence", 48, 16)), header=8),
    Protocol(4, "packet_tcp", (
        F("sport", 0, 16, _INT), F("dport", 16, 16, _INT), F("seq", 32, 32, _INT),
        F("ack", 64, 32, _INT),
        F("data_off", 96, 4, "nibble", limits=(0, 15, "data offset must be 0..15")),
        F("reserved", 100, 4, "nibble", limits=(0, 15, "reserved bits must be 0..15")),
        F("flags", 104, 8, "bits"), F("window_size", 112, 16, _INT),
        F("check", 128, 16, "tcp_check"), F("urgent", 144, 16),
        F("options", 160, 0, _DATA, locate="tcp_options", as_protocol="packet_tcp_opt"),
        F("data", 160, 0, _DATA, locate="tcp_data")),
        payload="data", next=ANY, header=(12, True, 4)),
    Protocol(5, "packet_tcp_opt", tuple(
        F(name, 0, bits, _INT, locate="tcp_option")
        for name, bits in (("MSS", 16), ("WS", 8), ("SACK", 16), ("TSVAL", 32), ("TSER", 32)))),
    Protocol(6, "packet_udp", (
        F("sport", 0, 16, _INT), F("dport", 16, 16, _INT), F("length", 32, 16, _INT),
        F("check", 48, 16, _INT), F("data", 64, 0)),
        payload="data", next=ANY, header=8),
    Protocol(7, "packet_tftp", (
        F("opcode", 0, 16, _INT), F("filename", 16, 0, "str", locate="tftp"),
        F("mode", 16, 0, "str", locate="tftp"), F("block_nr", 16, 16, _INT, locate="tftp"),
        F("data", 32, 0, locate="tftp"))),
    # Beyond PacketScript: IPv6. Ids from 16 on, so that dynamic protocols keep the ids
    # 8.. they have in the module.
    Protocol(16, "packet_ip6", (
        F("version", 0, 4, "nibble", limits=(0, 15, "version number invalid")),
        F("traffic_class", 4, 8, "bitfield"), F("flow_label", 12, 20, "bitfield"),
        F("payload_len", 32, 16, _INT),
        F("next_header", 48, 8, _INT, locate="ip6_next_header"),
        F("hop_limit", 56, 8, _INT),
        F("saddr", 64, 128, "addr6"), F("daddr", 192, 128, "addr6"),
        F("data", 320, 0, _DATA, locate="ip6_data")),
        payload="data", next_by="next_header",
        next={IPPROTO_TCP: "packet_tcp", IPPROTO_UDP: "packet_udp",
              IPPROTO_ICMPV6: "packet_icmp6"}, header=40, xt_lua=False),
    Protocol(17, "packet_icmp6", (
        F("type", 0, 8, _INT), F("code", 8, 8, _INT), F("checksum", 16, 16, _INT),
        F("id", 32, 16, _INT), F("sequence", 48, 16, _INT), F("data", 64, 0, _DATA)),
        header=8, xt_lua=False),
)

BY_NAME = {p.name: p for p in PROTOCOLS}
BY_ID = {p.id: p for p in PROTOCOLS}
FIRST_DYNAMIC_ID, MAX_DYNAMIC_ID = 8, 15     # the module's dynamic-protocol ids

# IPv6 extension headers the IPv6 walk steps over (RFC 8200 §4): next header -> how its
# length is counted, (units, added, fixed): fixed + (length byte + added) * units bytes.
IP6_EXTENSIONS = {0: (8, 1, 0), 43: (8, 1, 0), 60: (8, 1, 0), 44: (0, 0, 8), 51: (4, 2, 0)}
IP6_FRAGMENT = 44


def ip6_walk(data: bytes, start: int = 0) -> tuple[int, int]:
    """(the last next-header value, the offset where its payload starts) for the IPv6
    header at ``start``, stepping over extension headers that lie inside ``data``."""
    nh, off = data[start + 6], start + 40
    while nh in IP6_EXTENSIONS and off + 2 <= len(data):
        units, added, fixed = IP6_EXTENSIONS[nh]
        size = fixed + (data[off + 1] + added) * units
        if off + size > len(data):
            break
        nh, off = data[off], off + size
    return nh, off


def header_length(proto: Protocol, data: bytes, start: int) -> int | None:
    """The length of ``proto``'s header at ``start`` in ``data``, None if unknown or cut."""
    rule = proto.header
    if rule is None:
        return None
    if proto.name == "packet_ip6":
        return ip6_walk(data, start)[1] - start if len(data) >= start + 40 else None
    if isinstance(rule, int):
        return rule
    byte, high, times = rule
    if len(data) <= start + byte:
        return None
    b = data[start + byte]
    return ((b >> 4) if high else (b & 15)) * times


def next_protocol(proto: Protocol, data: bytes, start: int) -> Protocol | None:
    """The protocol of the payload of ``proto``'s header at ``start``, by its selector."""
    if not isinstance(proto.next, dict):
        return None
    if proto.name == "packet_ip6":
        if len(data) < start + 40:
            return None
        value = ip6_walk(data, start)[0]
    else:
        first, end = proto.field(proto.next_by).byte_range
        if len(data) < start + end:
            return None
        value = int.from_bytes(data[start + first:start + end], "big")
    name = proto.next.get(value)
    return BY_NAME[name] if name else None


# ------------------------------------------------------------------ for the Lua engine
def _lua(v) -> str:
    """A Lua literal: numbers, strings, lists, records (str keys), maps (int keys)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{" + ", ".join((f"{k} = " if isinstance(k, str) else f"[{k}] = ") + _lua(x)
                               for k, x in v.items()) + "}"
    if isinstance(v, (tuple, list)):
        return "{" + ", ".join(_lua(x) for x in v) + "}"
    raise TypeError(f"no Lua form for {v!r}")


def _lua_entry(p: Protocol) -> dict:
    fields = []
    for f in p.fields:
        entry = {"name": f.name, "bit_offset": f.bit_offset, "bit_length": f.bit_length, "kind": f.kind}
        if f.locate:
            entry["locate"] = f.locate
        if f.limits:
            entry["limits"] = list(f.limits)
        if f.as_protocol:
            entry["as"] = BY_NAME[f.as_protocol].id
        fields.append(entry)
    entry = {"id": p.id, "name": p.name, "fields": fields}
    if p.payload:
        entry["payload"] = p.payload
    if p.next == ANY:
        entry["next_any"] = True
    elif p.next:
        entry["next_by"] = p.next_by
        entry["next"] = {k: BY_NAME[v].id for k, v in p.next.items()}
    return entry


def lua_source() -> str:
    """The table as a Lua chunk, for packet.lua (script.py hands it over in its configuration)."""
    return "return " + _lua({"first_dynamic": FIRST_DYNAMIC_ID, "max_dynamic": MAX_DYNAMIC_ID,
                             "ip6_extensions": {k: list(v) for k, v in IP6_EXTENSIONS.items()},
                             "ip6_fragment": IP6_FRAGMENT,
                             "protocols": [_lua_entry(p) for p in PROTOCOLS]}) + "\n"
