"""Every field of every protocol buffer, read and written, checked against scapy."""
from __future__ import annotations

import struct
from socket import inet_aton

import pytest
from scapy.utils import checksum
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.l2 import Ether
from scapy.layers.tftp import TFTP, TFTP_ACK, TFTP_DATA, TFTP_RRQ, TFTP_WRQ
from scapy.packet import Raw

from engine_util import (RUNTIMES, assert_checksums_valid, checksum_report, expected, hexs, icmp_frame,
                         lua_values, run, tcp_frame, udp_frame)

pytestmark = pytest.mark.parametrize("lua", RUNTIMES)

OPTS = [("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""),
        ("Timestamp", (123456789, 987654321))]


# ------------------------------------------------------------------ raw
def test_raw_data_read_and_fill(lua):
    f = udp_frame()
    assert lua_values(f, ["hex(p:data():get())", "p:data():get_size()"], lua=lua) == [
        hexs(f), str(len(f))]
    r, _ = run("p:data():set(0xab)", f, lua=lua)
    assert r.data == b"\xab" * len(f) and r.modified


def test_raw_segment_set_with_byte_array(lua):
    f = udp_frame()
    # copy the source MAC over the destination MAC, through raw segments
    r, _ = run("p:raw(0, 6):set(p:raw(6, 6):to_bytes())", f, lua=lua)
    assert r.data == f[6:12] + f[6:]


# ------------------------------------------------------------------ ethernet
def test_eth_fields_read(lua):
    f = udp_frame()
    e = Ether(f)
    vals = lua_values(f, ["hex(eth:dmac():get())", "hex(eth:smac():get())",
                          "hex(eth:type():get())", "hex(eth:data():get())"], lua=lua)
    assert vals == [e.dst.replace(":", " "), e.src.replace(":", " "),
                    f"{e.type >> 8:02x} {e.type & 255:02x}", hexs(bytes(e.payload))]


def test_eth_fields_write(lua):
    f = udp_frame()
    r, _ = run("eth:dmac():set(0xff); eth:smac():set(eth:dmac():to_bytes())", f, lua=lua)
    e = Ether(r.data)
    assert e.dst == "ff:ff:ff:ff:ff:ff" and e.src == "ff:ff:ff:ff:ff:ff"
    assert r.data[12:] == f[12:]
    r, _ = run("eth:type():set(0x86)", f, lua=lua)
    assert Ether(r.data).type == 0x8686 and r.data[14:] == f[14:]


def test_eth_data_fill(lua):
    f = udp_frame()
    r, _ = run("eth:data():set(0)", f, lua=lua)
    assert r.data == f[:14] + bytes(len(f) - 14)


# ------------------------------------------------------------------ ip
def test_ip_fields_read(lua):
    f = bytes(Ether() / IP(src="10.77.1.4", dst="10.77.2.77", tos=0xb8, id=0xbeef, ttl=3,
                           flags="DF", frag=0) / UDP(sport=1, dport=2) / Raw(b"x" * 11))
    ip = Ether(f)[IP]
    exprs = ["ip:version():get()", "ip:ihl():get()", "ip:tos():get()", "ip:tot_len():get()",
             "ip:id():get()", "ip:flags():get(1)", "ip:flags():get(2)", "ip:flags():get(3)",
             "ip:frag_off():get()", "ip:ttl():get()", "ip:protocol():get()", "ip:check():get()",
             "ip:saddr():get()", "ip:daddr():get()", "hex(ip:data():get())"]
    assert lua_values(f, exprs, lua=lua) == [
        str(ip.version), str(ip.ihl), str(ip.tos), str(ip.len), str(ip.id),
        str(bool(ip.flags.evil)).lower(), str(bool(ip.flags.DF)).lower(),
        str(bool(ip.flags.MF)).lower(), str(ip.frag), str(ip.ttl), str(ip.proto),
        str(ip.chksum), ip.src, ip.dst, hexs(bytes(ip.payload))]


def test_ip_fragment_fields_read(lua):
    f = bytes(Ether() / IP(flags="MF+evil", frag=1234, proto=17) / Raw(b"z" * 16))
    ip = Ether(f)[IP]
    assert lua_values(f, ["ip:flags():get(1)", "ip:flags():get(3)", "ip:frag_off():get()"],
                      lua=lua) == ["true", "true", str(ip.frag)]


@pytest.mark.parametrize("stmt,change", [
    ("ip:tos():set(0x28)", lambda p: setattr(p[IP], "tos", 0x28)),
    ("ip:id():set(0x0102)", lambda p: setattr(p[IP], "id", 0x0102)),
    ("ip:ttl():set(1)", lambda p: setattr(p[IP], "ttl", 1)),
    ("ip:ttl():set(ip:ttl():get() - 1)", lambda p: setattr(p[IP], "ttl", p[IP].ttl - 1)),
    ("ip:saddr():set('10.77.3.9')", lambda p: setattr(p[IP], "src", "10.77.3.9")),
    ("ip:daddr():set('10.77.3.200')", lambda p: setattr(p[IP], "dst", "10.77.3.200")),
    ("ip:flags():set(2)", lambda p: setattr(p[IP], "flags", p[IP].flags | 2)),
    ("ip:check():set(0)", lambda p: None),             # fixed up again
])
def test_ip_int_fields_write_tcp(lua, stmt, change):
    f = tcp_frame()
    r, _ = run(stmt, f, lua=lua)
    assert r.data == expected(f, change)
    assert_checksums_valid(r.data, ("IP", "TCP"))


def test_ip_flags_clear(lua):
    f = bytes(Ether() / IP(flags="DF+evil") / UDP() / Raw(b"abc"))
    r, _ = run("ip:flags():set(2, false); ip:flags():set(1, false); ip:flags():set(3)", f, lua=lua)
    assert str(Ether(r.data)[IP].flags) == "MF"
    assert r.data == expected(f, lambda p: setattr(p[IP], "flags", "MF"))


def test_ip_frag_off_write(lua):
    f = udp_frame(b"0123456789abcdef", flags="DF")
    r, _ = run("ip:frag_off():set(185)", f, lua=lua)
    ip = Ether(r.data)[IP]
    assert ip.frag == 185 and ip.flags == "DF"
    # a fragment keeps its L4 checksum; only the IP header checksum is recomputed
    def change(p):
        p[IP].frag = 185
        del p[IP].chksum
    assert r.data == bytes(_apply(f, change))
    assert r.data[34 + 6:34 + 8] == f[34 + 6:34 + 8]


def _apply(frame, change):
    p = Ether(frame)
    change(p)
    return p


def test_ip_protocol_write(lua):
    f = udp_frame()
    r, _ = run("ip:protocol():set(47)", f, lua=lua)
    assert Ether(r.data)[IP].proto == 47
    assert_checksums_valid(r.data, ("IP",))


def test_ip_tot_len_write(lua):
    f = udp_frame(b"A" * 20)
    r, _ = run("ip:tot_len():set(ip:tot_len():get() - 4)", f, lua=lua, fix_checksums=False)
    assert Ether(r.data)[IP].len == Ether(f)[IP].len - 4
    assert r.data[:16] == f[:16] and r.data[18:] == f[18:]


def test_ip_version_and_ihl_write(lua):
    f = udp_frame()
    r, _ = run("ip:version():set(6)", f, lua=lua, fix_checksums=False)
    assert r.data[14] >> 4 == 6 and r.data[14] & 15 == 5 and r.data[15:] == f[15:]
    opt = bytes(Ether() / IP(options=[IPOption_NOP()] * 4) / UDP() / Raw(b"abc"))
    assert lua_values(opt, ["ip:ihl():get()"], lua=lua) == [str(Ether(opt)[IP].ihl)]
    r, _ = run("ip:ihl():set(5)", opt, lua=lua, fix_checksums=False)
    assert Ether(r.data)[IP].ihl == 5 and r.data[14] >> 4 == 4 and r.data[15:] == opt[15:]
    for bad in ("ip:ihl():set(4)", "ip:ihl():set(16)", "ip:version():set(16)"):
        r, s = run(bad, f, lua=lua, expect_error=True)
        assert r.error and ("invalid" in r.error.message), bad
        assert r.data == f


def test_ip_check_write_without_fixup(lua):
    f = tcp_frame()
    r, _ = run("ip:check():set(0x1234)", f, lua=lua, fix_checksums=False)
    assert Ether(r.data)[IP].chksum == 0x1234
    assert r.data[:24] == f[:24] and r.data[26:] == f[26:]


def test_ip_data_follows_ihl_and_tot_len(lua):
    # IP options (ihl 7) and Ethernet padding after tot_len
    f = bytes(Ether() / IP(options=[IPOption_RR(routers=["10.77.3.4"])]) / ICMP() / Raw(b"pp"))
    f = f + b"\xee" * (60 - len(f))
    ip = Ether(f)[IP]
    payload = bytes(ip)[ip.ihl * 4:ip.len]
    assert lua_values(f, ["hex(ip:data():get())", "ip:data():get_offset()", "ip:data():get_size()"],
                      lua=lua) == [hexs(payload), str(14 + ip.ihl * 4), str(len(payload))]
    # payload conversion goes to the right place too
    assert lua_values(f, ["icmp:get_offset()", "hex(icmp:type():get())"], lua=lua) == [
        str(14 + ip.ihl * 4), f"{ip[ICMP].type:02x}"]


def test_ip_data_write(lua):
    f = udp_frame(b"abcdefgh")
    # overwrite the UDP ports through ip:data() with a string and with a byte array
    r, _ = run("ip:data():set('\\0\\1\\0\\2')", f, lua=lua)
    assert r.data == expected(f, lambda p: (setattr(p[UDP], "sport", 1), setattr(p[UDP], "dport", 2)))
    r, _ = run("local a = ip:data():get(); a[0], a[1] = 0, 7; ip:data():set(a)", f, lua=lua)
    assert r.data == expected(f, lambda p: setattr(p[UDP], "sport", 7))
    r, _ = run("ip:data():set(ip:data():get()); ip:data():set(ip:to_bytes())", f,
               lua=lua, expect_error=True)
    assert r.error and "too big" in r.error.message and r.data == f


# ------------------------------------------------------------------ icmp
def test_icmp_fields_read(lua):
    f = icmp_frame(type=8, code=0, id=0x0a0b, seq=0x0c0d)
    i = Ether(f)[ICMP]
    vals = lua_values(f, ["hex(icmp:type():get())", "hex(icmp:code():get())",
                          "hex(icmp:checksum():get())", "hex(icmp:id():get())",
                          "hex(icmp:sequence():get())"], lua=lua)
    assert vals == [f"{i.type:02x}", f"{i.code:02x}", hexs(i.chksum.to_bytes(2, "big")),
                    hexs(i.id.to_bytes(2, "big")), hexs(i.seq.to_bytes(2, "big"))]


@pytest.mark.parametrize("stmt,change", [
    ("icmp:type():set(0)", lambda p: setattr(p[ICMP], "type", 0)),
    ("icmp:code():set(3)", lambda p: setattr(p[ICMP], "code", 3)),
    ("icmp:id():set(0x11)", lambda p: setattr(p[ICMP], "id", 0x1111)),
    ("icmp:sequence():set(2)", lambda p: setattr(p[ICMP], "seq", 0x0202)),
    ("icmp:checksum():set(0)", lambda p: None),
])
def test_icmp_fields_write(lua, stmt, change):
    f = icmp_frame()
    r, _ = run(stmt, f, lua=lua)
    assert r.data == expected(f, change)
    assert_checksums_valid(r.data, ("IP", "ICMP"))


def test_icmp_checksum_write_without_fixup(lua):
    f = icmp_frame()
    r, _ = run("icmp:checksum():set(0)", f, lua=lua, fix_checksums=False)
    assert Ether(r.data)[ICMP].chksum == 0 and r.data[:36] == f[:36] and r.data[38:] == f[38:]


def test_icmp_has_no_data_field(lua):
    r, _ = run("icmp:data()", icmp_frame(), lua=lua, expect_error=True)
    assert r.error is not None and r.verdict == "drop"


# ------------------------------------------------------------------ tcp
def test_tcp_fields_read(lua):
    f = tcp_frame(b"payload!", options=OPTS, flags="SEC", urgptr=0x0102, reserved=3)
    t = Ether(f)[TCP]
    hdr = bytes(t)[:t.dataofs * 4]
    exprs = ["tcp:sport():get()", "tcp:dport():get()", "tcp:seq():get()", "tcp:ack():get()",
             "tcp:data_off():get()", "tcp:reserved():get()",
             *[f"tcp:flags():get({n})" for n in range(1, 9)],
             "tcp:window_size():get()", "tcp:check():get()", "hex(tcp:urgent():get())",
             "hex(tcp:options():get())", "hex(tcp:data():get())"]
    fl = int(t.flags)
    assert lua_values(f, exprs, lua=lua) == [
        str(t.sport), str(t.dport), str(t.seq), str(t.ack), str(t.dataofs),
        str(hdr[12] & 15), *[str(bool(fl & (0x80 >> (n - 1)))).lower() for n in range(1, 9)],
        str(t.window), str(t.chksum), hexs(t.urgptr.to_bytes(2, "big")),
        hexs(hdr[20:]), hexs(bytes(t.payload))]


def test_tcp_large_seq_read(lua):
    f = tcp_frame(seq=0xFFFFFFFE, ack=0x80000001)
    t = Ether(f)[TCP]
    assert lua_values(f, ["tcp:seq():get()", "tcp:ack():get()"], lua=lua) == [str(t.seq), str(t.ack)]


@pytest.mark.parametrize("stmt,change", [
    ("tcp:sport():set(1)", lambda p: setattr(p[TCP], "sport", 1)),
    ("tcp:dport():set(65535)", lambda p: setattr(p[TCP], "dport", 65535)),
    ("tcp:dport():set(65536 + 8080)", lambda p: setattr(p[TCP], "dport", 8080)),  # truncated
    ("tcp:seq():set(tcp:seq():get() + 1000)", lambda p: setattr(p[TCP], "seq", p[TCP].seq + 1000)),
    ("tcp:ack():set(4294967295)", lambda p: setattr(p[TCP], "ack", 4294967295)),
    # the low nibble of byte 12: scapy's 3 reserved bits, then the NS flag
    ("tcp:reserved():set(1)", lambda p: setattr(p[TCP], "flags", int(p[TCP].flags) | 0x100)),
    ("tcp:reserved():set(4)", lambda p: setattr(p[TCP], "reserved", 2)),
    ("tcp:flags():set(7)", lambda p: setattr(p[TCP], "flags", p[TCP].flags | 0x02)),
    ("tcp:flags():set(5, false)", lambda p: setattr(p[TCP], "flags", int(p[TCP].flags) & ~0x08)),
    ("tcp:window_size():set(512)", lambda p: setattr(p[TCP], "window", 512)),
    ("tcp:urgent():set(0)", lambda p: setattr(p[TCP], "urgptr", 0)),
    ("tcp:check():set(0)", lambda p: None),
])
def test_tcp_fields_write(lua, stmt, change):
    f = tcp_frame(urgptr=0x0303)
    r, _ = run(stmt, f, lua=lua)
    assert r.data == expected(f, change)
    assert_checksums_valid(r.data, ("IP", "TCP"))


def test_tcp_data_off_write(lua):
    f = tcp_frame(b"A" * 8, options=[("MSS", 1460), ("NOP", None), ("NOP", None),
                                     ("NOP", None), ("NOP", None)])
    r, _ = run("tcp:data_off():set(6)", f, lua=lua, fix_checksums=False)
    t = Ether(r.data)[TCP]
    assert t.dataofs == 6 and r.data[:46] == f[:46] and r.data[47:] == f[47:]
    # the options/data split follows the new data offset
    r, s = run("tcp:data_off():set(6); print(tcp:options():get_size(), tcp:data():get_size())",
               f, lua=lua)
    assert s.output == ["4\t" + str(len(f) - 14 - 20 - 24)]


def test_tcp_check_set_recomputes_without_fixup(lua):
    f = tcp_frame()
    # corrupt the checksum, then let tcp:check():set() compute it (whatever argument)
    r, _ = run("p:raw(tcp:check():get_offset(), 2):set(0x55); tcp:check():set(12345)", f,
               lua=lua, fix_checksums=False)
    assert r.data == f
    r, _ = run("tcp:sport():set(1); tcp:check():set(0)", f, lua=lua, fix_checksums=False)
    assert r.data == expected(f, lambda p: setattr(p[TCP], "sport", 1))


def test_tcp_options_and_data_write(lua):
    f = tcp_frame(b"hello world", options=[("MSS", 1460), ("NOP", None), ("WScale", 2)])
    t = Ether(f)[TCP]
    r, _ = run("local o = tcp:options():get(); o[0] = 1; o[1] = 1; o[2] = 1; o[3] = 1;"
               "tcp:options():set(o); tcp:data():set('HELLO')", f, lua=lua)
    want = Ether(f)
    want[TCP].options = [("NOP", None)] * 4 + [("NOP", None), ("WScale", 2)]
    want[Raw].load = b"HELLO" + bytes(t.payload)[5:]
    assert r.data == _rebuild_tcp(want)
    assert_checksums_valid(r.data, ("IP", "TCP"))


def _rebuild_tcp(pkt):
    pkt = pkt.copy()
    del pkt[IP].chksum
    del pkt[TCP].chksum
    return bytes(pkt)


def test_tcp_options_empty_when_data_off_5(lua):
    f = tcp_frame(b"xyz")
    assert lua_values(f, ["tcp:options():get_size()", "#tcp:options():get()",
                          "tcp:data():get_offset()", "hex(tcp:data():get())"], lua=lua) == [
        "0", "0", "54", hexs(b"xyz")]


# ------------------------------------------------------------------ tcp options
def test_tcp_opt_read(lua):
    f = tcp_frame(b"", options=OPTS, flags="S")
    opts = dict(Ether(f)[TCP].options)
    vals = lua_values(f, ["o:MSS():get()", "o:WS():get()", "o:TSVAL():get()", "o:TSER():get()",
                          "hex(o:SACK():to_bytes())"], setup="local o = tcp:options(packet_tcp_opt)",
                      lua=lua)
    assert vals == [str(opts["MSS"]), str(opts["WScale"]), str(opts["Timestamp"][0]),
                    str(opts["Timestamp"][1]), "04 02"]


@pytest.mark.parametrize("stmt,name,value", [
    ("o:MSS():set(1200)", "MSS", 1200),
    ("o:WS():set(14)", "WScale", 14),
    ("o:TSVAL():set(1)", "Timestamp", (1, 987654321)),
    ("o:TSER():set(4000000000)", "Timestamp", (123456789, 4000000000)),
])
def test_tcp_opt_write(lua, stmt, name, value):
    f = tcp_frame(b"", options=OPTS, flags="S")
    r, _ = run("local o = tcp:options(packet_tcp_opt); " + stmt, f, lua=lua)
    want = Ether(f)
    want[TCP].options = [(k, value if k == name else v) for k, v in OPTS]
    assert r.data == _rebuild_tcp(want)
    assert dict(Ether(r.data)[TCP].options)[name] == value
    assert_checksums_valid(r.data, ("IP", "TCP"))


def test_tcp_opt_sack_permitted_clear(lua):
    f = tcp_frame(b"", options=OPTS, flags="S")
    r, _ = run("tcp:options(packet_tcp_opt):SACK():set(0x0101)", f, lua=lua)   # two NOPs
    names = [k for k, _ in Ether(r.data)[TCP].options]
    assert "SAckOK" not in names and names.count("NOP") == 3


def test_tcp_opt_absent_is_error(lua):
    f = tcp_frame(b"", options=[("MSS", 536)], flags="S")
    r, _ = run("local o = tcp:options(packet_tcp_opt); print(o:MSS():get()); o:WS():get()",
               f, lua=lua, expect_error=True)
    assert r.error is not None and "WS" in r.error.message
    r, _ = run("tcp:options(packet_tcp_opt):MSS():get()", tcp_frame(b"x"), lua=lua,
               expect_error=True)
    assert r.error is not None and "MSS" in r.error.message


def test_tcp_opt_options_after_eol_not_found(lua):
    # an MSS option behind End-of-options is not an option
    f = tcp_frame(b"", options=[("EOL", None), ("NOP", None), ("NOP", None), ("NOP", None)],
                  flags="S")
    f = bytearray(f)
    f[54 + 1:54 + 4] = b"\x02\x04\x05"
    r, _ = run("tcp:options(packet_tcp_opt):MSS():get()", bytes(f), lua=lua, expect_error=True)
    assert r.error is not None


# ------------------------------------------------------------------ udp
def test_udp_fields_read(lua):
    f = udp_frame(b"datagram", sport=1111, dport=2222)
    u = Ether(f)[UDP]
    assert lua_values(f, ["udp:sport():get()", "udp:dport():get()", "udp:length():get()",
                          "udp:check():get()", "hex(udp:data():get())"], lua=lua) == [
        str(u.sport), str(u.dport), str(u.len), str(u.chksum), hexs(bytes(u.payload))]


@pytest.mark.parametrize("stmt,change", [
    ("udp:sport():set(53)", lambda p: setattr(p[UDP], "sport", 53)),
    ("udp:dport():set(udp:dport():get() + 1)", lambda p: setattr(p[UDP], "dport", p[UDP].dport + 1)),
    ("udp:check():set(1)", lambda p: None),
    ("udp:data():set(0x41)", lambda p: setattr(p[Raw], "load", b"A" * len(p[Raw].load))),
    ("udp:data():set('HE')", lambda p: setattr(p[Raw], "load", b"HE" + p[Raw].load[2:])),
])
def test_udp_fields_write(lua, stmt, change):
    f = udp_frame(b"hello udp")
    r, _ = run(stmt, f, lua=lua)
    assert r.data == expected(f, change)
    assert_checksums_valid(r.data, ("IP", "UDP"))


def test_udp_length_write(lua):
    f = udp_frame(b"hello udp")
    r, _ = run("udp:length():set(udp:length():get() + 0)", f, lua=lua)
    assert r.data == f and not r.modified
    r, _ = run("udp:length():set(20)", f, lua=lua, fix_checksums=False)
    assert Ether(r.data)[UDP].len == 20 and r.data[:38] == f[:38] and r.data[40:] == f[40:]


def test_udp_checksum_after_shortening_length(lua):
    # The datagram ends where the UDP length says (the receiver trims the rest, RFC 768 and
    # Linux's udp_rcv): the fixed-up checksum must cover that many bytes.
    f = udp_frame(b"hello udp")
    r, _ = run("udp:length():set(12)", f, lua=lua)
    pkt = Ether(r.data)
    u = pkt[UDP]
    assert u.len == 12
    have, want = checksum_report(r.data)["IP"]
    assert have == want
    # What Linux verifies: the first u.len bytes, with u.len in the pseudo-header.
    datagram = bytearray(bytes(u)[:12])
    datagram[6:8] = b"\0\0"
    pseudo = inet_aton(pkt[IP].src) + inet_aton(pkt[IP].dst) + struct.pack("!BBH", 0, 17, 12)
    assert u.chksum == checksum(pseudo + bytes(datagram))


def test_udp_zero_checksum_stays_zero(lua):
    f = udp_frame(b"nochecksum", chksum=0)
    r, _ = run("udp:dport():set(7); ip:ttl():set(9)", f, lua=lua)
    u = Ether(r.data)[UDP]
    assert u.chksum == 0 and u.dport == 7
    assert_checksums_valid(r.data, ("IP",))


def test_udp_check_write_without_fixup(lua):
    f = udp_frame()
    r, _ = run("udp:check():set(0xabcd)", f, lua=lua, fix_checksums=False)
    assert Ether(r.data)[UDP].chksum == 0xabcd and r.data[:40] == f[:40] and r.data[42:] == f[42:]


# ------------------------------------------------------------------ tftp
def _tftp(layer) -> bytes:
    return bytes(Ether() / IP(src="10.77.0.5", dst="10.77.0.6") / UDP(sport=3000, dport=69)
                 / TFTP() / layer)


def test_tftp_rrq_fields(lua):
    f = _tftp(TFTP_RRQ(filename=b"secret.txt", mode=b"octet"))
    t = TFTP(bytes(Ether(f)[UDP].payload))
    vals = lua_values(f, ["tftp:opcode():get()", "tftp:filename():get()", "tftp:mode():get()"],
                      setup="local tftp = udp:data(packet_tftp)", lua=lua)
    assert vals == [str(t.op), t[TFTP_RRQ].filename.decode(), t[TFTP_RRQ].mode.decode()]


def test_tftp_rrq_write(lua):
    f = _tftp(TFTP_RRQ(filename=b"secret.txt", mode=b"octet"))
    r, _ = run("local t = udp:data(packet_tftp); t:filename():set('public.txt');"
               "t:mode():set('OCTET'); t:opcode():set(2)", f, lua=lua)
    t = TFTP(bytes(Ether(r.data)[UDP].payload))
    assert t.op == 2 and t[TFTP_WRQ].filename == b"public.txt" and t[TFTP_WRQ].mode == b"OCTET"
    assert_checksums_valid(r.data, ("IP", "UDP"))
    r, _ = run("udp:data(packet_tftp):filename():set('short')", f, lua=lua, expect_error=True)
    assert r.error is not None and r.data == f


def test_tftp_data_and_ack_fields(lua):
    f = _tftp(TFTP_DATA(block=513) / Raw(b"file contents"))
    t = TFTP(bytes(Ether(f)[UDP].payload))
    vals = lua_values(f, ["t:opcode():get()", "t:block_nr():get()", "hex(t:data():get())"],
                      setup="local t = udp:data(packet_tftp)", lua=lua)
    assert vals == [str(t.op), str(t[TFTP_DATA].block), hexs(bytes(t[TFTP_DATA].payload))]
    r, _ = run("local t = udp:data(packet_tftp); t:block_nr():set(7); t:data():set(0x2e)", f,
               lua=lua)
    t2 = TFTP(bytes(Ether(r.data)[UDP].payload))
    assert t2[TFTP_DATA].block == 7 and bytes(t2[TFTP_DATA].payload) == b"." * len(b"file contents")
    ack = _tftp(TFTP_ACK(block=42))
    assert lua_values(ack, ["udp:data(packet_tftp):block_nr():get()"], lua=lua) == ["42"]
    # fields that the opcode does not have are an error
    r, _ = run("udp:data(packet_tftp):filename():get()", f, lua=lua, expect_error=True)
    assert r.error is not None and "filename" in r.error.message
    r, _ = run("udp:data(packet_tftp):data():get()", ack, lua=lua, expect_error=True)
    assert r.error is not None
