"""Property-based: whatever bytes arrive, the engine gives a verdict (or a Lua error),
never a crash, and the packet keeps its length."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.tftp import TFTP, TFTP_DATA, TFTP_RRQ
from scapy.packet import Raw

from engine_util import assert_checksums_valid, tcp_frame
from packetscript_lab import Script
from packetscript_lab.examples import dnat

# Touches every field of every protocol, reading and writing, each inside pcall so that
# one failing access does not hide the others.
TOUCH_ALL = r"""
local function try(f, ...) local ok = pcall(f, ...) return ok end
local function rw(seg, name, v)
  try(function() local f = seg[name](seg); local x = f:get(); if v ~= nil then f:set(v) else f:set(x) end end)
  try(function() return seg[name](seg):to_bytes() end)
  try(function() return tostring(seg[name](seg)) end)
end
function process_packet(p)
  local eth, ip, tcp, udp, icmp, tftp, opt
  try(function() eth = p:data(packet_eth) end)
  try(function() ip = p:data(packet_ip) end)
  try(function() ip = eth:data(packet_ip) or ip end)
  rw(p, "data")
  try(function() p:raw(3, 7):set(p:raw(1, 7):to_bytes()) end)
  if eth then for _, n in ipairs {"dmac", "smac", "type", "data"} do rw(eth, n) end end
  if ip then
    for _, n in ipairs {"version", "ihl", "tos", "tot_len", "id", "frag_off", "ttl",
                        "protocol", "check", "saddr", "daddr", "data"} do rw(ip, n) end
    try(function() ip:flags():set(2, not ip:flags():get(2)) end)
    try(function() ip:daddr():set("10.77.8.7") end)
    try(function() tcp = ip:data(packet_tcp) end)
    try(function() udp = ip:data(packet_udp) end)
    try(function() icmp = ip:data(packet_icmp) end)
  end
  if tcp then
    for _, n in ipairs {"sport", "dport", "seq", "ack", "data_off", "reserved", "window_size",
                        "check", "urgent", "options", "data"} do rw(tcp, n) end
    try(function() tcp:flags():set(7, false) end)
    try(function() tcp:seq():set(tcp:seq():get() + 1) end)
    try(function() opt = tcp:options(packet_tcp_opt) end)
    if opt then for _, n in ipairs {"MSS", "WS", "SACK", "TSVAL", "TSER"} do rw(opt, n) end end
  end
  if udp then
    for _, n in ipairs {"sport", "dport", "length", "check", "data"} do rw(udp, n) end
    try(function() tftp = udp:data(packet_tftp) end)
    if tftp then
      for _, n in ipairs {"opcode", "filename", "mode", "block_nr", "data"} do rw(tftp, n) end
    end
  end
  if icmp then
    for _, n in ipairs {"type", "code", "checksum", "id", "sequence"} do rw(icmp, n, 0) end
  end
  return NF_ACCEPT
end
"""

DNAT = dnat()

_SCRIPTS = {}


def script(name, lua):
    key = (name, lua)
    if key not in _SCRIPTS:
        _SCRIPTS[key] = Script({"touch": TOUCH_ALL, "dnat": DNAT}[name], lua=lua, budget=200_000)
    return _SCRIPTS[key]


def _real_frames():
    return [
        tcp_frame(b"data", options=[("MSS", 1460), ("WScale", 3), ("SAckOK", b""),
                                    ("Timestamp", (1, 2))], flags="S"),
        tcp_frame(b""),
        bytes(Ether() / IP(options=b"\x01\x01\x01\x00") / UDP(dport=69) / TFTP()
              / TFTP_RRQ(filename=b"f.txt", mode=b"octet")),
        bytes(Ether() / IP() / UDP(dport=69) / TFTP() / TFTP_DATA(block=3) / Raw(b"abc")),
        bytes(Ether() / IP() / ICMP() / Raw(b"ping")),
        bytes(Ether() / IP(flags="MF", frag=10) / Raw(b"fragment")),
        bytes(Ether() / ARP()),
    ]


REAL = _real_frames()
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _check(s, frame):
    errors_before = s.error_count
    r = s.run(frame)
    assert r.verdict in ("accept", "drop", "continue")
    assert isinstance(r.data, bytes) and len(r.data) == len(frame)
    if r.error is not None:
        assert r.verdict == "drop" and r.data == frame and not r.modified
        assert s.error_count == errors_before + 1
        assert isinstance(r.error.message, str) and r.error.message
    assert r.modified == (r.data != frame)
    return r


def _mutations():
    """Real frames: truncated, or with some bytes overwritten (header lengths broken)."""
    return st.tuples(st.sampled_from(range(len(REAL))), st.integers(0, 100),
                     st.lists(st.tuples(st.integers(0, 99), st.integers(0, 255)), max_size=6))


def _mutate(i, cut, writes):
    f = bytearray(REAL[i])
    for pos, val in writes:
        if pos < len(f):
            f[pos] = val
    return bytes(f[:cut])


@pytest.mark.parametrize("lua", ["luajit", "5.1", "5.4"])
@pytest.mark.parametrize("name", ["touch", "dnat"])
@SETTINGS
@given(data=st.binary(max_size=120))
def test_random_bytes_never_crash(lua, name, data):
    _check(script(name, lua), data)


@pytest.mark.parametrize("lua", ["luajit", "5.1", "5.4"])
@pytest.mark.parametrize("name", ["touch", "dnat"])
@SETTINGS
@given(m=_mutations())
def test_mangled_real_frames_never_crash(lua, name, m):
    frame = _mutate(*m)
    r = _check(script(name, lua), frame)
    if name == "dnat" and r.verdict == "continue" and len(frame) >= 34:
        assert frame[12:14] == b"\x08\x00"


@pytest.mark.parametrize("lua", ["luajit", "5.4"])
@SETTINGS
@given(i=st.sampled_from(range(len(REAL))))
def test_touch_all_on_intact_frames(lua, i):
    frame = REAL[i]
    r = _check(script("touch", lua), frame)
    assert r.error is None and r.modified
    if IP in Ether(frame):
        assert_checksums_valid(r.data, ("IP",))


@SETTINGS
@given(src=st.ip_addresses(v=4), dst=st.ip_addresses(v=4), ttl=st.integers(1, 255),
       proto=st.sampled_from(["tcp", "udp", "icmp"]), payload=st.binary(max_size=40),
       new=st.ip_addresses(v=4))
def test_checksums_valid_after_address_rewrite(src, dst, ttl, proto, payload, new):
    l4 = {"tcp": TCP(sport=1, dport=2), "udp": UDP(sport=1, dport=2), "icmp": ICMP()}[proto]
    frame = bytes(Ether() / IP(src=str(src), dst=str(dst), ttl=ttl) / l4 / Raw(payload))
    s = Script("function process_packet(p) local ip = p:data(packet_eth):data(packet_ip)\n"
               " ip:saddr():set(ip:daddr():get()); ip:daddr():set('%s')\n"
               " ip:ttl():set(ip:ttl():get() - 1)\n"
               " return NF_ACCEPT end" % new)
    r = s.run(frame)
    pkt = Ether(r.data)
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl) == (str(dst), str(new), ttl - 1)
    assert len(r.data) == len(frame)
    assert_checksums_valid(r.data, ("IP", proto.upper()))


_REWRITE = ("function process_packet(p) local ip = p:data(packet_eth):data(packet_ip)\n"
            " if ip then ip:daddr():set('10.9.9.9') else p:raw(0, 1):set(7) end\n"
            " return XT_CONTINUE end")
_REWRITERS = {}


@settings(SETTINGS, max_examples=400)
@given(ihl=st.sampled_from([5, 5, 5, 4, 6, 15]), proto=st.sampled_from([6, 17, 1, 47]),
       tot=st.one_of(st.none(), st.none(), st.integers(0, 200)), frag=st.sampled_from([0, 0, 0, 0x2000, 1, 0x4000]),
       body=st.one_of(st.binary(max_size=19), st.binary(min_size=20, max_size=140)), udp_len=st.one_of(st.none(), st.integers(0, 150)),
       no_udp_sum=st.booleans(), cut=st.one_of(st.just(0), st.integers(0, 200)))
def test_checksum_fix_is_the_same_on_luajit_and_54(ihl, proto, tot, frag, body, udp_len, no_udp_sum, cut):
    """LuaJIT fixes IPv4 checksums through 16- and 32-bit loads; Lua 5.4 byte by byte: the
    same frame comes out of both, whatever its lengths, options, fragment bits or UDP checksum."""
    import struct
    for lua in ("luajit", "5.4"):
        if lua not in _REWRITERS:
            _REWRITERS[lua] = Script(_REWRITE, lua=lua)
    if proto == 17 and len(body) >= 8:
        if udp_len is not None:
            body = body[:4] + struct.pack("!H", udp_len) + body[6:]
        if no_udp_sum:
            body = body[:6] + b"\0\0" + body[8:]
    header = bytes([0x40 | ihl, 0]) + struct.pack("!HHHBBH", 20 + len(body) if tot is None else tot,
                                                   1, frag, 64, proto, 0xbeef) + bytes(range(1, 9))
    frame = (b"\x02" * 12 + b"\x08\x00" + header + body)[:max(14, len(header) + len(body) + 14 - cut)]
    jit, lua54 = _REWRITERS["luajit"].run(frame), _REWRITERS["5.4"].run(frame)
    assert (jit.verdict, jit.data, jit.error) == (lua54.verdict, lua54.data, lua54.error)
