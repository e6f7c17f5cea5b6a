"""IPv6 (beyond PacketScript): packet_ip6 and packet_icmp6, every field read and written,
TCP/UDP over IPv6 with checksums fixed, replay of IPv6 captures. Checked against scapy."""
from __future__ import annotations

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from engine_util import RUNTIMES, udp_frame
from packetscript_lab import Judge, Script, replay
from packetscript_lab.core.fields import changed_fields, field_changes, summary

pytestmark = pytest.mark.parametrize("lua", RUNTIMES)

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
SRC, DST = "fd77:1::1", "fd77:2::abcd:0:0:7"
CHAIN = """
local eth = p:data(packet_eth)
local ip6 = eth and eth:data(packet_ip6)
local tcp = ip6 and ip6:data(packet_tcp)
local udp = ip6 and ip6:data(packet_udp)
local icmp6 = ip6 and ip6:data(packet_icmp6)
"""


def v6(*layers, **ip_kw) -> bytes:
    ip_kw.setdefault("src", SRC)
    ip_kw.setdefault("dst", DST)
    pkt = ETH / IPv6(**ip_kw)
    for layer in layers:
        pkt = pkt / layer
    return bytes(pkt)


def values(frame: bytes, exprs: list[str], lua: str) -> list[str]:
    body = "\n".join(f"print(tostring({e}))" for e in exprs)
    s = Script(f"function process_packet(p)\n{CHAIN}\n{body}\nreturn NF_ACCEPT\nend\n", lua=lua)
    r = s.run(frame)
    assert r.error is None, r.error
    assert not r.modified
    return s.output


def changed(frame: bytes, body: str, lua: str, **kw) -> bytes:
    s = Script(f"function process_packet(p)\n{CHAIN}\n{body}\nreturn NF_ACCEPT\nend\n", lua=lua, **kw)
    r = s.run(frame)
    assert r.error is None, r.error
    return r.data


def rebuilt(frame: bytes, change) -> bytes:
    """scapy's frame after ``change``, with the upper-layer checksum recomputed."""
    pkt = Ether(frame)
    change(pkt)
    for layer in (TCP, UDP, ICMPv6EchoRequest, ICMPv6EchoReply):
        if layer in pkt:
            del pkt[layer].chksum
    return bytes(pkt)


def assert_l4_valid(frame: bytes) -> None:
    pkt = Ether(frame)
    for layer in (TCP, UDP, ICMPv6EchoRequest):
        if layer in pkt:
            have = pkt[layer].chksum
            del pkt[layer].chksum
            assert Ether(bytes(pkt))[layer].chksum == have, f"{layer.__name__} checksum wrong"
            return
    raise AssertionError("no upper layer")


# ------------------------------------------------------------------ fields
def test_ip6_fields_read(lua):
    f = v6(UDP(sport=5353, dport=9000) / Raw(b"hello"), tc=0xB8, fl=0xABCDE, hlim=17)
    ip = Ether(f)[IPv6]
    got = values(f, ["ip6:version():get()", "ip6:traffic_class():get()", "ip6:flow_label():get()",
                     "ip6:payload_len():get()", "ip6:next_header():get()", "ip6:hop_limit():get()",
                     "ip6:saddr():get()", "ip6:daddr():get()", "#ip6:data():get()",
                     "ip6:get_offset()", "ip6:data():get_offset()"], lua)
    assert got == [str(ip.version), str(ip.tc), str(ip.fl), str(ip.plen), str(ip.nh), str(ip.hlim),
                   ip.src, ip.dst, str(len(ip.payload)), "14", "54"]


@pytest.mark.parametrize("field, scapy_name, value", [
    ("traffic_class", "tc", 0x2E), ("flow_label", "fl", 0xFEDCB), ("hop_limit", "hlim", 3),
    ("payload_len", "plen", 999), ("version", "version", 4)])
def test_ip6_int_fields_write(lua, field, scapy_name, value):
    f = v6(UDP(sport=1, dport=2) / Raw(b"x" * 8), tc=0x11, fl=0x54321, hlim=64)
    got = changed(f, f"ip6:{field}():set({value})", lua)
    want = Ether(f)
    setattr(want[IPv6], scapy_name, value)
    assert got[:54] == bytes(want)[:54]
    assert got[54:] == f[54:] or field == "payload_len"


def test_ip6_addresses_write_and_fix_udp_checksum(lua):
    f = v6(UDP(sport=1, dport=2) / Raw(b"payload"))
    got = changed(f, 'ip6:saddr():set("fd77::5"); ip6:daddr():set("FD77:0:0:1:2:3:4:5")', lua)
    assert got == rebuilt(f, lambda p: (setattr(p[IPv6], "src", "fd77::5"),
                                        setattr(p[IPv6], "dst", "fd77:0:0:1:2:3:4:5")))
    assert_l4_valid(got)


@pytest.mark.parametrize("text", ["fd77:::1", "fd77::1::2", "1:2:3:4:5:6:7", "12345::1", "g::1", "10.77.0.1"])
def test_ip6_bad_address_is_an_error(lua, text):
    s = Script(f"function process_packet(p)\n{CHAIN}\nip6:daddr():set('{text}')\nreturn NF_ACCEPT\nend\n", lua=lua)
    r = s.run(v6(UDP()))
    assert r.error is not None and "invalid ipv6 addr" in r.error.message


def test_ip6_addresses_print_as_rfc5952(lua):
    for addr in ("::", "::1", "fd77::", "fd77:0:1::", "1:0:0:2:0:0:0:3", "1:0:2:3:4:5:6:7", "fd77:1:2:3:4:5:6:7"):
        f = v6(UDP(), src=addr)
        assert values(f, ["ip6:saddr():get()"], lua) == [Ether(f)[IPv6].src], addr


def test_ip6_next_header_walks_extension_headers(lua):
    f = v6(IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / TCP(sport=7, dport=8) / Raw(b"abc"))
    pkt = Ether(f)
    l4 = len(f) - len(pkt[TCP])
    got = values(f, ["ip6:next_header():get()", "ip6:data():get_offset()", "tcp:sport():get()",
                     "tcp:dport():get()", "tostring(udp)", "#tcp:data():get()"], lua)
    assert got == ["6", str(l4), "7", "8", "false", "3"]


def test_tcp_over_ip6_write_fixes_checksum(lua):
    f = v6(TCP(sport=40000, dport=80, flags="PA", seq=5) / Raw(b"GET /"), fl=7)
    got = changed(f, "tcp:dport():set(8080); tcp:seq():set(6); tcp:data():set('PUT /')", lua)
    assert got == rebuilt(f, lambda p: (setattr(p[TCP], "dport", 8080), setattr(p[TCP], "seq", 6),
                                        setattr(p[Raw], "load", b"PUT /")))
    assert_l4_valid(got)


def test_tcp_check_setter_over_ip6(lua):
    f = v6(TCP(sport=1, dport=2, chksum=0x1234) / Raw(b"data"))
    got = changed(f, "tcp:check():set(0)", lua, fix_checksums=False)
    assert_l4_valid(got)


def test_udp_over_ip6_with_extension_header_fixes_checksum(lua):
    f = v6(IPv6ExtHdrDestOpt() / UDP(sport=53, dport=5353) / Raw(b"dns?"))
    got = changed(f, "udp:sport():set(54)", lua)
    assert got == rebuilt(f, lambda p: setattr(p[UDP], "sport", 54))
    assert_l4_valid(got)


def test_fragment_keeps_its_l4_checksum(lua):
    f = v6(IPv6ExtHdrFragment(m=1, id=9) / UDP(sport=1, dport=2) / Raw(b"part"))
    got = changed(f, "ip6:hop_limit():set(9)", lua)
    assert Ether(got)[IPv6].hlim == 9 and got[-14:] == f[-14:]


def test_icmp6_fields_read_and_write(lua):
    f = v6(ICMPv6EchoRequest(id=0x1234, seq=77, data=b"ping"))
    e = Ether(f)[ICMPv6EchoRequest]
    got = values(f, ["icmp6:type():get()", "icmp6:code():get()", "icmp6:checksum():get()",
                     "icmp6:id():get()", "icmp6:sequence():get()", "#icmp6:data():get()",
                     "tostring(ip6:data(packet_tcp))", "tostring(ip6:data(packet_icmp))"], lua)
    assert got == [str(e.type), str(e.code), str(e.cksum), str(e.id), str(e.seq), "4", "false", "false"]
    got = changed(f, "icmp6:type():set(129); icmp6:sequence():set(78)", lua)
    want = ETH / IPv6(src=SRC, dst=DST) / ICMPv6EchoReply(id=0x1234, seq=78, data=b"ping")
    assert got == bytes(want)


def test_ip4_chain_gives_false_on_ip6_and_back(lua):
    f6 = v6(UDP())
    assert values(f6, ["tostring(eth:data(packet_ip))", "tostring(ip6 ~= false)"], lua) == ["false", "true"]
    assert values(udp_frame(), ["tostring(eth:data(packet_ip6))"], lua) == ["false"]


def test_truncated_ip6_header_is_an_error(lua):
    f = v6(UDP())[:40]
    s = Script(f"function process_packet(p)\n{CHAIN}\nreturn NF_ACCEPT\nend\n".replace(
        "local tcp", "print(ip6 and ip6:hop_limit():get())\nlocal tcp"), lua=lua)
    r = s.run(f)
    assert r.error is not None and ("40 bytes" in r.error.message or "beyond the end" in r.error.message)


# ------------------------------------------------------------------ replay, run_ip, names
DNAT6 = """
function process_packet(p)
  local ip6 = p:data(packet_eth):data(packet_ip6)
  if not ip6 then return NF_ACCEPT end
  ip6:daddr():set("fd77:2::2")
  return NF_ACCEPT
end
"""


@pytest.mark.parametrize("raw_ip", [False, True], ids=["ethernet", "raw-ip"])
def test_replay_of_an_ipv6_capture(lua, tmp_path, raw_ip):
    pkts = [ETH / IPv6(src=SRC, dst=DST) / UDP(sport=1000 + i, dport=9000) / Raw(b"x" * i) for i in range(5)]
    pkts += [ETH / IPv6(src=SRC, dst=DST) / TCP(sport=2000, dport=80) / Raw(b"y")]
    if raw_ip:
        pkts = [p[IPv6] for p in pkts]
    path = tmp_path / "v6.pcap"
    wrpcap(str(path), pkts)
    result = replay(Script(DNAT6, lua=lua), str(path))
    assert result.packets == 6 and result.modified == 6 and result.errors == 0
    for out in result.output:
        pkt = Ether(out) if not raw_ip else IPv6(out)
        assert pkt[IPv6].dst == "fd77:2::2"
        layer = TCP if TCP in pkt else UDP
        have = pkt[layer].chksum
        del pkt[layer].chksum
        assert (Ether if not raw_ip else IPv6)(bytes(pkt))[layer].chksum == have


def test_run_ip_presents_ipv6_behind_an_ipv6_ethernet_header(lua):
    packet = bytes(IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(b"z"))
    r = Script(DNAT6, lua=lua).run_ip(packet)
    assert r.modified and not r.eth_modified and IPv6(r.data).dst == "fd77:2::2"
    with Judge(DNAT6, lua=lua) as watched:          # the watched engine does the same
        r = watched.run_ip(packet)
    assert r.modified and not r.eth_modified and IPv6(r.data).dst == "fd77:2::2"


def test_changed_fields_and_summary_name_ipv6(lua):
    f = v6(IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2) / Raw(b"q"))
    got = changed(f, 'ip6:daddr():set("fd77::9")', lua)
    assert changed_fields(f, got) == ["ip6.daddr", "udp.check"]
    assert summary(f) == f"UDP [{SRC}]:1 > [{DST}]:2 len {len(f)}"
    assert field_changes(f, got) == [f"ip6.daddr {DST} → fd77::9", "checksums updated (udp.check)"]


def test_replay_of_a_source_runs_ipv6_in_the_watched_engine(lua, tmp_path):
    pkts = [IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(b"w")] * 3
    path = tmp_path / "v6raw.pcap"
    wrpcap(str(path), pkts)
    result = replay(DNAT6, str(path), lua=lua)
    assert (result.packets, result.modified, result.errors) == (3, 3, 0)
    assert all(IPv6(out).dst == "fd77:2::2" for out in result.output)
