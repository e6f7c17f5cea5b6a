"""The packet API as a script uses it: examples from the reference, payload chaining,
segments, byte arrays, the globals, dynamic protocols, and state between packets."""
from __future__ import annotations

import pytest
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.tftp import TFTP, TFTP_RRQ, TFTP_WRQ
from scapy.packet import Raw

from engine_util import (RUNTIMES, assert_checksums_valid, expected, hexs, lua_values, run,
                         script_for, tcp_frame, udp_frame)
from packetscript_lab import Script
from packetscript_lab.examples import dnat
from packetscript_lab.core.fields import changed_fields, summary

# ------------------------------------------------------------------ reference examples
DNAT = dnat("10.77.2.2")  # the reference's dnat.lua, on a lab address


@pytest.mark.parametrize("lua", RUNTIMES)
@pytest.mark.parametrize("make", [tcp_frame, udp_frame], ids=["tcp", "udp"])
def test_dnat_example(lua, make):
    f = make()
    s = Script(DNAT, lua=lua)
    r = s.run(f)
    assert r.verdict == "continue" and r.modified and r.error is None
    assert Ether(r.data)[IP].dst == "10.77.2.2"
    assert r.data == expected(f, lambda p: setattr(p[IP], "dst", "10.77.2.2"))
    assert_checksums_valid(r.data, ("IP", "TCP" if make is tcp_frame else "UDP"))
    # not IP: dropped, untouched
    arp = bytes(Ether() / ARP(pdst="10.77.0.9"))
    r = s.run(arp)
    assert r.verdict == "drop" and not r.modified and r.error is None and r.data == arp


@pytest.mark.parametrize("lua", RUNTIMES)
def test_dnat_without_fixup_updates_only_ip_checksum(lua):
    f = tcp_frame()
    r = Script(DNAT, lua=lua, fix_checksums=False).run(f)
    pkt = Ether(r.data)
    assert pkt[IP].dst == "10.77.2.2"
    want_ip = Ether(expected(f, lambda p: setattr(p[IP], "dst", "10.77.2.2")))
    assert pkt[IP].chksum == want_ip[IP].chksum            # incremental IP checksum, as the kernel
    assert pkt[TCP].chksum == Ether(f)[TCP].chksum          # L4 checksum left stale
    assert pkt[TCP].chksum != want_ip[TCP].chksum


@pytest.mark.parametrize("lua", ["luajit", "5.1"])
def test_saddr_without_fixup_incremental_checksum(lua):
    f = udp_frame(ttl=17)
    r, _ = run("ip:saddr():set('10.77.254.1')", f, lua=lua, fix_checksums=False)
    ip = Ether(r.data)[IP]
    assert ip.src == "10.77.254.1"
    assert ip.chksum == Ether(expected(f, lambda p: setattr(p[IP], "src", "10.77.254.1")))[IP].chksum
    assert Ether(r.data)[UDP].chksum == Ether(f)[UDP].chksum
    # other fields: nothing is recomputed
    r, _ = run("ip:ttl():set(1)", f, lua=lua, fix_checksums=False)
    assert Ether(r.data)[IP].chksum == Ether(f)[IP].chksum


TFTP_FILTER = """
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return NF_ACCEPT end
  local udp = ip:data(packet_udp)
  if not udp or udp:dport():get() ~= 69 then return NF_ACCEPT end
  local tftp = udp:data(packet_tftp)
  if tftp:opcode():get() == 1 and tftp:filename():get() == "secret.txt" then
    return NF_DROP
  end
  return NF_ACCEPT
end
"""


def _tftp_frame(layer, dport=69):
    return bytes(Ether() / IP(src="10.77.1.1", dst="10.77.1.2") / UDP(sport=3333, dport=dport)
                 / TFTP() / layer)


@pytest.mark.parametrize("lua", RUNTIMES)
@pytest.mark.parametrize("profile", ["lab", "kernel"])
def test_tftp_filename_filter(lua, profile):
    s = Script(TFTP_FILTER, lua=lua, profile=profile)
    cases = [
        (TFTP_RRQ(filename=b"secret.txt", mode=b"octet"), 69, "drop"),
        (TFTP_RRQ(filename=b"public.txt", mode=b"octet"), 69, "accept"),
        (TFTP_RRQ(filename=b"secret.txt.bak", mode=b"netascii"), 69, "accept"),
        (TFTP_WRQ(filename=b"secret.txt", mode=b"octet"), 69, "accept"),
        (TFTP_RRQ(filename=b"secret.txt", mode=b"octet"), 70, "accept"),
    ]
    for layer, dport, want in cases:
        f = _tftp_frame(layer, dport)
        r = s.run(f)
        assert (r.verdict, r.error, r.modified) == (want, None, False), layer.summary()
    assert s.run(tcp_frame()).verdict == "accept"
    assert s.error_count == 0


# ------------------------------------------------------------------ chaining
@pytest.mark.parametrize("lua", RUNTIMES)
def test_data_chaining_false_on_mismatch(lua):
    arp = bytes(Ether() / ARP())
    assert lua_values(arp, ["p:data(packet_eth):data(packet_ip)", "type(ip)"], lua=lua) == [
        "false", "boolean"]
    gre = bytes(Ether() / IP() / GRE() / IP() / UDP())
    assert Ether(gre)[IP].proto == 47
    assert lua_values(gre, ["ip:data(packet_tcp)", "ip:data(packet_udp)", "ip:data(packet_icmp)",
                            "ip:data(packet_tftp)", "eth:data(packet_tcp)"], lua=lua) == ["false"] * 5
    tcp = tcp_frame()
    assert lua_values(tcp, ["ip:data(packet_udp)", "ip:data(packet_icmp)", "tostring(tcp ~= false)"],
                      lua=lua) == ["false", "false", "true"]


@pytest.mark.parametrize("lua", RUNTIMES)
def test_unknown_type_is_error(lua):
    for t in ("99", "-1", "15"):
        r, s = run(f"eth:data({t})", udp_frame(), lua=lua, expect_error=True)
        assert r.error is not None and "unknown" in r.error.message
        assert r.verdict == "drop"


@pytest.mark.parametrize("lua", RUNTIMES)
def test_payload_without_type_keeps_container_type(lua):
    f = udp_frame()
    assert lua_values(f, ["ip:data()", "p:data(packet_ip):version():get()",
                          "udp:data(packet_tftp):get_offset()"], lua=lua) == [
        f"type: packet_ip, offset: 34, length: {len(f) - 34}",
        str(f[0] >> 4), "42"]


# ------------------------------------------------------------------ segments
@pytest.mark.parametrize("lua", RUNTIMES)
def test_raw_split_and_offsets(lua):
    f = udp_frame()
    vals = lua_values(f, [
        "hex(seg:raw(0, 5):to_bytes())", "hex(seg:raw(5, 5):to_bytes())",
        "seg2:get_offset()", "seg2:get_size()", "hex(seg2:to_bytes())",
        "seg:raw(5, 6)", "p:raw(0, #p:to_bytes() + 1)", "p:raw(-1, 2)",
        "p:raw(0, 0):get_size()", "seg1:raw(3, 5)",
    ], setup="local seg = p:raw(0, 10); local seg1 = p:raw(2, 10); local seg2 = seg1:raw(3, 5)",
        lua=lua)
    assert vals == [hexs(f[0:5]), hexs(f[5:10]), "5", "5", hexs(f[5:10]),
                    "false", "false", "false", "0", "type: packet_raw, offset: 5, length: 5"]


@pytest.mark.parametrize("lua", RUNTIMES)
def test_tostring_formats(lua):
    f = tcp_frame()
    vals = lua_values(f, ["p", "eth", "ip", "tcp", "ip:ttl()", "tcp:data():to_bytes()",
                          "ip:daddr():get()"], lua=lua)
    t_off = 14 + Ether(f)[IP].ihl * 4
    data = bytes(Ether(f)[TCP].payload)
    assert vals == [
        f"type: packet_raw, offset: 0, length: {len(f)}",
        f"type: packet_eth, offset: 0, length: {len(f)}",
        f"type: packet_ip, offset: 14, length: {len(f) - 14}",
        f"type: packet_tcp, offset: {t_off}, length: {len(f) - t_off}",
        "type: packet_ip, offset: 22, length: 1",
        f"byte_array: length: {len(data)}  value: " + hexs(data),
        Ether(f)[IP].dst,
    ]


@pytest.mark.parametrize("lua", RUNTIMES)
def test_byte_arrays(lua):
    f = udp_frame(b"ABCDEFGH")
    pl = bytes(Ether(f)[UDP].payload)
    vals = lua_values(f, ["a[0]", f"a[{len(pl) - 1}]", "#a", "pcall(function() return a[#a] end)",
                          "pcall(function() return a[-1] end)",
                          "pcall(function() return a.x end)",
                          "pcall(function() a[0] = 256 end)",
                          "(function() a[0] = 0x7a; return a[0] end)()",
                          "udp:data():get()[0]"],
                      setup="local a = udp:data():get()", lua=lua)
    assert vals[:3] == [str(pl[0]), str(pl[-1]), str(len(pl))]
    assert vals[3:7] == ["false"] * 4                     # out of range / bad key / bad value
    assert vals[7] == "122" and vals[8] == str(pl[0])     # a copy: the packet is unchanged
    r, s = run("local a = udp:data():get(); print(select(2, pcall(function() return a[#a] end)))",
               f, lua=lua)
    assert "out of range" in s.output[0]
    r, _ = run("local a = udp:data():get(); a[0] = 0x7a; udp:data():set(a)", f, lua=lua)
    assert r.data == expected(f, lambda p: setattr(p[Raw], "load", b"z" + pl[1:]))


@pytest.mark.parametrize("lua", RUNTIMES)
def test_field_objects_stay_bound(lua):
    f = tcp_frame()
    ip = Ether(f)[IP]
    vals = lua_values(f, ["ttl:get()", "d:get()", "ip:get()[0]"],
                      setup="local ttl = ip:ttl(); local d = ip:daddr(); ip:tos(); tcp:sport()",
                      lua=lua)
    assert vals == [str(ip.ttl), ip.dst, str(f[14])]
    r, _ = run("local ttl, d = ip:ttl(), ip:daddr(); ip:id(); ttl:set(9); d:set('10.77.3.4')", f, lua=lua)
    assert r.data == expected(f, lambda p: (setattr(p[IP], "ttl", 9), setattr(p[IP], "dst", "10.77.3.4")))


@pytest.mark.parametrize("lua", RUNTIMES)
def test_truncated_packet_field_access_is_lua_error(lua):
    f = tcp_frame()[:40]                      # IP header complete, TCP header cut
    r, s = run("print(tcp:sport():get()); print(tcp:seq():get())", f, lua=lua, expect_error=True)
    assert s.output == [str(Ether(tcp_frame())[TCP].sport)]
    assert r.error is not None and "beyond the end" in r.error.message and r.data == f
    r, _ = run("p:raw(100, 2):set(1)", f, lua=lua, expect_error=True)
    assert r.error is not None and r.data == f


@pytest.mark.parametrize("lua", RUNTIMES)
def test_any_type_over_tcp_and_udp_payload(lua):
    f = tcp_frame(b"\x00\x01hello\x00octet\x00")
    assert lua_values(f, ["tcp:data(packet_tftp):filename():get()",
                          "tcp:data(packet_udp):get_offset()"], lua=lua) == ["hello", "54"]


# ------------------------------------------------------------------ globals
@pytest.mark.parametrize("lua", RUNTIMES)
@pytest.mark.parametrize("profile", ["lab", "kernel"])
def test_constants_and_supported_protocols(lua, profile):
    names = ["packet_raw", "packet_eth", "packet_ip", "packet_icmp", "packet_tcp",
             "packet_tcp_opt", "packet_udp", "packet_tftp"]
    exprs = [n for n in names] + [f"supported_protocols[{i}]" for i in range(len(names))] + [
        "NF_DROP", "NF_ACCEPT", "XT_CONTINUE", "STATE_ID", "supported_protocols[8]"]
    vals = lua_values(udp_frame(), exprs, prelude=False, lua=lua, profile=profile, state_id=5)
    assert vals == [str(i) for i in range(8)] + names + ["0", "1", "4294967295", "5", "nil"]


@pytest.mark.parametrize("lua", RUNTIMES)
def test_verdicts(lua):
    f = udp_frame()
    for const, want in (("NF_DROP", "drop"), ("NF_ACCEPT", "accept"), ("XT_CONTINUE", "continue"),
                        ("-1", "continue")):
        r, _ = run("", f, verdict=const, lua=lua, prelude=False)
        assert r.verdict == want and r.error is None


@pytest.mark.parametrize("lua", RUNTIMES)
def test_nf_get_time_from_ts(lua):
    s = script_for("print(nf.get_time())", lua=lua, prelude=False)
    s.run(udp_frame(), ts=12.345)
    s.run(udp_frame(), ts=1700000000.5)
    assert s.output == ["12345", "1700000000500"]


@pytest.mark.parametrize("lua", RUNTIMES)
def test_nf_get_random_seeded(lua):
    body = "print(nf.get_random(), nf.get_random())"
    outs = []
    for seed in (7, 7, 8):
        s = script_for(body, lua=lua, prelude=False, seed=seed)
        for _ in range(2):
            r = s.run(udp_frame())
            assert r.error is None and r.verdict == "accept", r.error
        outs.append(s.output)
    assert outs[0] == outs[1] and outs[0] != outs[2]
    values = [int(v) for line in outs[0] + outs[2] for v in line.split("\t")]
    assert all(0 <= v < 2 ** 32 for v in values) and len(set(values)) == len(values)


@pytest.mark.parametrize("lua", RUNTIMES)
def test_globals_persist_between_packets(lua):
    src = """
count, seen = 0, {}
function process_packet(p)
  count = count + 1
  local ip = p:data(packet_eth):data(packet_ip)
  local src = ip:saddr():get()
  seen[src] = (seen[src] or 0) + 1
  if seen[src] > 2 then return NF_DROP end   -- rate limit: 2 packets per source
  print(count)
  return NF_ACCEPT
end
"""
    s = Script(src, lua=lua)
    got = [s.run(udp_frame(src=a)).verdict for a in ["10.77.1.11", "10.77.1.11", "10.77.1.22", "10.77.1.11"]]
    assert got == ["accept", "accept", "accept", "drop"]
    assert s.output == ["1", "2", "3"]


@pytest.mark.parametrize("lua", RUNTIMES)
def test_run_ip(lua):
    s = Script(DNAT, lua=lua)
    pkt = bytes(IP(src="10.77.0.1", dst="10.77.2.100") / UDP() / Raw(b"dns?"))
    r = s.run_ip(pkt)
    assert r.verdict == "continue" and r.modified and not r.eth_modified
    want = IP(pkt)
    want.dst = "10.77.2.2"
    del want.chksum
    del want[UDP].chksum
    assert r.data == bytes(want)
    r = Script("function process_packet(p) p:data(packet_eth):smac():set(1) return NF_ACCEPT end",
               lua=lua).run_ip(pkt)
    assert r.eth_modified and not r.modified and r.data == pkt


# ------------------------------------------------------------------ dynamic protocols
ETH_DYN = """
function u16_get(a) return a[0] * 256 + a[1] end
function u16_set(a, v) a[0] = math.floor(v / 256) % 256; a[1] = v % 256; return true end
function eth_dyn_has_protocol(seg, t)
  return t == packet_ip and seg:type():get() == 0x0800
end
function eth_dyn_get_field_changes(seg) return {0, 0, 0, 0}, {0, 0, 0, 0} end
register_dynamic_protbuf {
  name = "packet_eth_dyn",
  payload_field = "data",
  protocol_fields = {
    {"dmac", 0, 48, nil, nil},
    {"smac", 48, 48, nil, nil},
    {"type", 96, 16, "u16_get", "u16_set"},
    {"data", 112, 0, nil, nil},
  },
  has_protocol = "eth_dyn_has_protocol",
  get_field_changes = "eth_dyn_get_field_changes",
}
"""


@pytest.mark.parametrize("lua", RUNTIMES)
def test_dynamic_eth_protocol(lua):
    src = ETH_DYN + """
function process_packet(p)
  local e = p:data(packet_eth_dyn)
  print(packet_eth_dyn, supported_protocols[packet_eth_dyn], e:type():get(), tostring(e))
  local ip = e:data(packet_ip)
  if not ip then return NF_DROP end
  ip:ttl():set(ip:ttl():get() - 1)
  e:type():set(0x0800)
  return NF_ACCEPT
end
"""
    s = Script(src, lua=lua)
    f = udp_frame(ttl=30)
    r = s.run(f)
    assert r.verdict == "accept" and r.error is None
    assert s.output == [f"8\tpacket_eth_dyn\t{Ether(f).type}\ttype: packet_eth_dyn, offset: 0, length: {len(f)}"]
    assert r.data == expected(f, lambda p: setattr(p[IP], "ttl", 29))
    arp = bytes(Ether() / ARP())
    assert s.run(arp).verdict == "drop"


@pytest.mark.parametrize("lua", RUNTIMES)
def test_dynamic_setter_writes_packet(lua):
    src = ETH_DYN + """
function process_packet(p)
  p:data(packet_eth_dyn):type():set(0x86dd)
  return NF_ACCEPT
end
"""
    f = udp_frame()
    r = Script(src, lua=lua).run(f)
    assert Ether(r.data).type == 0x86dd and r.data[14:] == f[14:] and r.data[:12] == f[:12]


APP = """
-- A small application protocol over UDP: 1-byte version, 1-byte kind, 2-byte length, body.
function u8(a) return a[0] end
function set_u8(a, v) a[0] = v; return true end
function body_len(a) return a[0] * 256 + a[1] end
function app_has(seg, t) return t == packet_tftp and seg:kind():get() == 9 end
function app_changes(seg)
  -- fields: version, kind, length, body; the body starts 8 bits later in version 2
  if seg:version():get() == 2 then return {0, 0, 0, 8}, {0, 0, 0, 0} end
  return {0, 0, 0, 0}, {0, 0, 0, 0}
end
function bad_get(a) error("getter exploded") end
function bad_set(a, v) error("setter exploded") end
register_dynamic_protbuf {
  name = "packet_app",
  payload_field = "body",
  protocol_fields = {
    {"version", 0, 8, "u8", "set_u8"},
    {"kind", 8, 8, "u8", "set_u8"},
    {"length", 16, 16, "body_len", nil},
    {"body", 32, 0, nil, nil},
    {"broken", 0, 8, "bad_get", nil},
    {"broken_set", 8, 8, nil, "bad_set"},
  },
  has_protocol = "app_has",
  get_field_changes = "app_changes",
}
register_dynamic_protbuf {
  name = "packet_app2",
  protocol_fields = { {"first", 0, 8, "u8", nil} },
}
"""


def _app_frame(version, kind, body):
    payload = bytes([version, kind]) + len(body).to_bytes(2, "big") + body
    return udp_frame(payload, dport=7777)


@pytest.mark.parametrize("lua", RUNTIMES)
def test_dynamic_app_protocol_over_udp(lua):
    src = APP + """
function process_packet(p)
  local udp = p:data(packet_eth):data(packet_ip):data(packet_udp)
  local app = udp:data(packet_app)
  local b = app:body():to_bytes()
  print(app:version():get(), app:kind():get(), app:length():get(), #b, b[0],
        udp:data(packet_app2):first():get(), packet_app, packet_app2)
  if app:kind():get() == 1 then app:kind():set(2) end
  if app:body(packet_tftp) then return NF_DROP end
  return NF_ACCEPT
end
"""
    s = Script(src, lua=lua)
    f1 = _app_frame(1, 1, b"abcdef")
    r = s.run(f1)
    assert r.verdict == "accept" and r.error is None
    assert r.data == expected(f1, lambda p: setattr(p[Raw], "load", _app_payload(1, 2, b"abcdef")))
    assert_checksums_valid(r.data, ("IP", "UDP"))
    # version 2: get_field_changes moves the body (the last field) one byte on
    f2 = _app_frame(2, 9, b"XYZ")
    r = s.run(f2)
    assert r.verdict == "drop" and r.error is None and not r.modified
    assert s.output == [f"1\t1\t6\t6\t{ord('a')}\t1\t8\t9", f"2\t9\t3\t2\t{ord('Y')}\t2\t8\t9"]


def _app_payload(version, kind, body):
    return bytes([version, kind]) + len(body).to_bytes(2, "big") + body


@pytest.mark.parametrize("lua", RUNTIMES)
def test_dynamic_callback_error_gives_false(lua):
    """Reference §3.5: a getter or setter that raises makes get() or set() return false;
    the packet goes on."""
    src = APP + """
function process_packet(p)
  local udp = p:data(packet_eth):data(packet_ip):data(packet_udp)
  udp:data(packet_app):kind():set(5)
  print(udp:data(packet_app):broken():get(), udp:data(packet_app):broken_set():set(1))
  return NF_ACCEPT
end
"""
    s = Script(src, lua=lua)
    f = _app_frame(1, 1, b"abc")
    r = s.run(f)
    assert r.verdict == "accept" and r.error is None
    assert s.output == ["false\tfalse"]
    assert r.data == expected(f, lambda p: setattr(p[Raw], "load", _app_payload(1, 5, b"abc")))


@pytest.mark.parametrize("lua", RUNTIMES)
def test_dynamic_registration_errors(lua):
    from packetscript_lab import ScriptError
    for bad in ('register_dynamic_protbuf { name = "packet_ip", protocol_fields = {{"a", 0, 8}} }',
                'register_dynamic_protbuf { name = "x y", protocol_fields = {{"a", 0, 8}} }',
                'register_dynamic_protbuf { name = "packet_z" }'):
        with pytest.raises(ScriptError):
            Script(bad + "\nfunction process_packet(p) return NF_ACCEPT end", lua=lua)


# ------------------------------------------------------------------ fields.py
def test_changed_fields_and_summary():
    f = udp_frame(b"hello", sport=1234, dport=9000)
    r = Script(DNAT).run(f)
    assert changed_fields(f, r.data) == ["ip.check", "ip.daddr", "udp.check"]
    assert changed_fields(f, f) == []
    u = Ether(f)
    assert summary(f) == f"UDP {u[IP].src}:1234 > {u[IP].dst}:9000 len {len(f)}"
    t = tcp_frame(flags="S")
    assert summary(t).startswith(f"TCP 10.77.0.1:{Ether(t)[TCP].sport} > 10.77.2.100:80 [S]")
    assert summary(b"\x00" * 5) == "truncated frame, 5 bytes"


# ------------------------------------------------------------------ checksum fix-up edges
@pytest.mark.parametrize("lua", RUNTIMES)
def test_fixup_with_ip_options_and_padding(lua):
    from scapy.layers.inet import IPOption_NOP
    frames = [
        bytes(Ether() / IP(options=[IPOption_NOP()] * 8) / TCP(dport=80) / Raw(b"opt")),
        bytes(Ether() / IP(options=[IPOption_NOP()] * 4) / UDP(dport=53) / Raw(b"q")),
        bytes(Ether() / IP(options=[IPOption_NOP()] * 4) / ICMP() / Raw(b"i")),
    ]
    short = bytes(Ether() / IP() / TCP(flags="S"))
    frames.append(short + b"\x00" * (60 - len(short)))          # Ethernet padding
    short = bytes(Ether() / IP() / UDP() / Raw(b"x"))
    frames.append(short + b"\xff" * (60 - len(short)))
    s = Script(DNAT, lua=lua)
    for f in frames:
        r = s.run(f)
        assert r.error is None and Ether(r.data)[IP].dst == "10.77.2.2"
        assert r.data == expected(f, lambda p: setattr(p[IP], "dst", "10.77.2.2"))
        assert_checksums_valid(r.data, ("IP",))


@pytest.mark.parametrize("lua", RUNTIMES)
def test_modified_means_bytes_differ(lua):
    f = udp_frame()
    r, _ = run("local t = ip:ttl():get(); ip:ttl():set(1); ip:ttl():set(t)", f, lua=lua)
    assert r.data == f
    assert not r.modified          # nothing changed: not counted as modified
    r, _ = run("ip:ttl():set(ip:ttl():get())", f, lua=lua)
    assert r.data == f and not r.modified
