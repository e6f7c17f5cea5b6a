"""The engine against the reference (../shared/reference/packetscript-api.md), class by class:
what the module does is what the lab does, or the README declares the difference.

Expectations come from scapy or from the reference's own words; every runtime, and both
profiles where the profile matters.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.tftp import TFTP, TFTP_ERROR
from scapy.packet import Raw

from engine_util import RUNTIMES, assert_checksums_valid, checksum_report, expected, tcp_frame, udp_frame
from packetscript_lab import Script, ScriptError

PROFILES = ("lab", "kernel")
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _differences() -> str:
    """The README's table of differences from xt_LUA."""
    start = README.index("| xt_LUA | PacketScript Lab |")
    return README[start:README.index("\n\n", start)]


def _script(body: str, **kw) -> Script:
    return Script("function process_packet(p, skb)\n" + body + "\nreturn NF_ACCEPT\nend\n", **kw)


def _printed(body: str, frame: bytes, **kw) -> list[str]:
    s = _script(body, **kw)
    r = s.run(frame)
    assert r.error is None, r.error
    return s.output


# ------------------------------------------------------------------ §3.5 dynamic callbacks
DYN = """
function ok_get(a) return a[0] end
function bad_get(a) error("getter exploded") end
function bad_set(a, v) error("setter exploded") end
function ok_set(a, v) a[0] = v; return "written" end
register_dynamic_protbuf {
  name = "packet_dyn",
  protocol_fields = { {"good", 0, 8, "ok_get", "ok_set"}, {"broken", 0, 8, "bad_get", "bad_set"} },
}
function process_packet(p)
  local d = p:data(packet_dyn)
  print(tostring(d:broken():get()), tostring(d:broken():set(7)), d:good():get(), d:good():set(9))
  return NF_ACCEPT
end
"""


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("lua", RUNTIMES)
def test_dynamic_callback_that_raises_gives_false(lua, profile):
    """Reference §3.5: a getter that raises makes get() return false; a setter, set()."""
    s = Script(DYN, lua=lua, profile=profile)
    f = udp_frame()
    r = s.run(f)
    assert r.error is None and r.verdict == "accept"
    assert s.output == [f"false\tfalse\t{f[0]}\twritten"]
    assert r.data[0] == 9 and r.data[1:] == f[1:]


@pytest.mark.parametrize("lua", RUNTIMES)
def test_dynamic_callback_cannot_swallow_a_spent_budget(lua):
    src = DYN.replace('error("getter exploded")', "while true do end")
    s = Script(src, lua=lua, budget=1000)
    r = s.run(udp_frame())
    assert r.error is not None and "budget" in r.error.message and r.verdict == "drop"


# ------------------------------------------------------------------ §2.6 the skb argument
SKB_BODY = """
local ip = p:data(packet_eth):data(packet_ip)
ip:%s():set("10.77.9.9"%s)
"""


@pytest.mark.parametrize("field", ["saddr", "daddr"])
@pytest.mark.parametrize("lua", RUNTIMES)
@pytest.mark.parametrize("make", [tcp_frame, udp_frame], ids=["tcp", "udp"])
def test_address_setter_with_skb_patches_l4_checksum_in_kernel_mode(make, lua, field):
    """Reference §2.6: with skb the module patches the TCP/UDP checksum as well; without it
    only the IP header checksum (the BLOG DNAT example's stale L4 checksum)."""
    f = make()
    scapy_field = "src" if field == "saddr" else "dst"
    want = expected(f, lambda pk: setattr(pk[IP], scapy_field, "10.77.9.9"))
    s = _script(SKB_BODY % (field, ", skb"), lua=lua, profile="kernel", fix_checksums=False)
    r = s.run(f)
    assert r.error is None and r.data == want
    assert_checksums_valid(r.data, ("IP", "TCP" if make is tcp_frame else "UDP"))
    # the rest of the packet untouched (the module's daddr+skb bug writes into the payload)
    r2 = _script(SKB_BODY % (field, ""), lua=lua, profile="kernel", fix_checksums=False).run(f)
    rep = checksum_report(r2.data)
    assert rep["IP"][0] == rep["IP"][1]
    layer = "TCP" if make is tcp_frame else "UDP"
    assert rep[layer][0] != rep[layer][1], "without skb the L4 checksum goes stale, as in the module"


@pytest.mark.parametrize("lua", RUNTIMES)
def test_skb_argument_leaves_udp_without_checksum_alone(lua):
    f = udp_frame(chksum=0)
    r = _script(SKB_BODY % ("daddr", ", skb"), lua=lua, profile="kernel", fix_checksums=False).run(f)
    assert r.error is None and Ether(r.data)[UDP].chksum == 0
    assert_checksums_valid(r.data, ("IP",))


def test_skb_difference_is_declared():
    assert "`skb`" in _differences()


# ------------------------------------------------------------------ numeric strings
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("lua", RUNTIMES)
def test_integer_setters_take_numeric_strings(lua, profile):
    """luaL_checkinteger (Lua 5.1) takes "7" as 7: so do the setters, bit numbers and raw()."""
    f = tcp_frame()
    body = """
local ip = p:data(packet_eth):data(packet_ip)
local tcp = ip:data(packet_tcp)
ip:ttl():set("7"); ip:tos():set(" 0x20 "); ip:ihl():set("5"); tcp:dport():set("8080")
tcp:flags():set("1")
p:raw("0", "2"):set("255")
print(tostring(tcp:flags():get("4")), #p:raw("0", "6"):get())
"""
    s = _script(body, lua=lua, profile=profile)
    r = s.run(f)
    assert r.error is None, r.error

    def change(pk):
        pk.dst = "ff:ff" + pk.dst[5:]
        pk[IP].ttl, pk[IP].tos = 7, 0x20
        pk[TCP].dport, pk[TCP].flags = 8080, pk[TCP].flags | 0x80
    assert r.data == expected(f, change)
    assert s.output == ["true\t6"]


@pytest.mark.parametrize("lua", RUNTIMES)
def test_non_numeric_string_is_still_refused(lua):
    s = _script('p:data(packet_eth):data(packet_ip):ttl():set("seven")', lua=lua)
    r = s.run(udp_frame())
    assert r.error is not None and "number" in r.error.message


# ------------------------------------------------------------------ base library globals
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("lua", RUNTIMES)
def test_gcinfo_is_there(lua, profile):
    out = _printed("print(type(gcinfo()), gcinfo() > 0)", udp_frame(), lua=lua, profile=profile)
    assert out == ["number\ttrue"]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("lua", ["luajit", "5.1"])
def test_getfenv_setfenv_on_the_scripts_own_functions(lua, profile):
    src = """
local function reads_x() return x end
x = "global"
setfenv(reads_x, { x = "private" })
function process_packet(p)
  local env = getfenv(1)
  print(reads_x(), x, getfenv(reads_x).x, env == _G, getfenv() == _G, getfenv(0) == _G)
  return NF_ACCEPT
end
"""
    s = Script(src, lua=lua, profile=profile)
    r = s.run(udp_frame())
    assert r.error is None, r.error
    assert s.output == ["private\tglobal\tprivate\ttrue\ttrue\ttrue"]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("lua", ["luajit", "5.1"])
def test_setfenv_cannot_reach_the_engine(lua, profile):
    """The API's methods, print, pcall, nf and register_dynamic_protbuf keep their environment,
    and getfenv never shows the engine's globals."""
    body = """
local out = ""
local targets = { p.raw, p.get, print, pcall, nf.get_time, register_dynamic_protbuf, getfenv, setfenv }
for i, fn in ipairs(targets) do
  out = out .. tostring(pcall(setfenv, fn, {})) .. " " .. tostring(getfenv(fn) == _G) .. " "
end
out = out .. tostring(pcall(setfenv, 0, {})) .. " "
out = out .. tostring(getfenv(p.raw).debug == nil and getfenv(print).io == nil)
print(out)
print(p:data(packet_eth):data(packet_ip):ttl():get())
"""
    s = _script(body, lua=lua, profile=profile)
    r = s.run(udp_frame())
    assert r.error is None, r.error
    assert s.output[0] == " ".join(["false", "true"] * 8 + ["false", "true"])
    assert s.output[1] == str(Ether(udp_frame())[IP].ttl)


@pytest.mark.parametrize("lua", ["luajit", "5.1"])
def test_setfenv_cannot_escape_the_budget(lua):
    src = """
function process_packet(p)
  local function spin() while true do end end
  setfenv(spin, {})
  setfenv(1, { NF_ACCEPT = 1 })
  spin()
  return NF_ACCEPT
end
"""
    s = Script(src, lua=lua, budget=5000)
    r = s.run(udp_frame())
    assert r.error is not None and "budget" in r.error.message


def test_kernel_profile_keeps_newproxy_out():
    for lua in RUNTIMES:
        assert _printed("print(type(newproxy))", udp_frame(), lua=lua, profile="kernel") == ["nil"]
    assert "`newproxy`" in _differences()


def test_fenv_on_54_is_declared():
    assert _printed("print(type(setfenv), type(getfenv))", udp_frame(), lua="5.4") == ["nil\tnil"]
    assert "`setfenv`" in _differences() and "5.4" in _differences()


# ------------------------------------------------------------------ 5.4 tables for userdata
def test_54_byte_arrays_and_skb_are_tables_declared():
    body = "print(type(p:get()), type(skb), getmetatable(p:get()), getmetatable(skb))"
    assert _printed(body, udp_frame(), lua="5.1") == ["userdata\tuserdata\tbyte_array\tnil"]
    out = _printed(body, udp_frame(), lua="5.4")
    assert out[0].startswith("table\ttable\tbyte_array\t")
    assert "Lua 5.4" in _differences()


# ------------------------------------------------------------------ declared differences
@pytest.mark.parametrize("lua", RUNTIMES)
def test_missing_entry_function_refused_at_load(lua):
    with pytest.raises(ScriptError, match="defines no function 'process_packet'"):
        Script("x = 1\n", lua=lua)
    assert "entry function" in _differences()


@pytest.mark.parametrize("lua", RUNTIMES)
def test_tcp_check_setter_valid_without_zeroing(lua):
    f = tcp_frame()
    r = _script("""
local ip = p:data(packet_eth):data(packet_ip)
ip:data(packet_tcp):dport():set(81)
ip:data(packet_tcp):check():set(0)
""", lua=lua, profile="kernel", fix_checksums=False).run(f)
    assert r.error is None
    rep = checksum_report(r.data)
    assert rep["TCP"][0] == rep["TCP"][1]
    assert "without zeroing" in _differences()


def _tftp(op_layer) -> bytes:
    return bytes(Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=3000, dport=69)
                 / TFTP() / op_layer)


@pytest.mark.parametrize("lua", RUNTIMES)
def test_tftp_setters_write_numbers_and_error_packets_have_no_block(lua):
    from scapy.layers.tftp import TFTP_DATA
    f = _tftp(TFTP_DATA(block=3) / Raw(b"abc"))
    body = """
local t = p:data(packet_eth):data(packet_ip):data(packet_udp):data(packet_tftp)
t:block_nr():set(0x0102)
t:opcode():set(4)
"""
    r = _script(body, lua=lua).run(f)
    assert r.error is None
    assert bytes(r.data[42:46]) == b"\x00\x04\x01\x02"
    ferr = _tftp(TFTP_ERROR(errorcode=1, errormsg=b"nope"))
    r = _script("p:data(packet_eth):data(packet_ip):data(packet_udp):data(packet_tftp):block_nr():get()",
                lua=lua).run(ferr)
    assert r.error is not None and "opcode 5" in r.error.message
    table = _differences()
    assert "big-endian" in table and "ERROR" in table


@pytest.mark.parametrize("lua", RUNTIMES)
def test_dynamic_callback_name_that_is_no_function_is_named(lua):
    src = DYN.replace('"ok_get", "ok_set"', '"no_such_getter", "ok_set"')
    r = Script(src, lua=lua).run(udp_frame())
    assert r.error is not None and "no_such_getter" in r.error.message
    assert "no global function" in _differences()


@pytest.mark.parametrize("lua", RUNTIMES)
def test_segments_and_fields_are_locked_tables_declared(lua):
    """The module's segments and field objects are userdata; here they are tables whose
    state a script cannot reach: assigning a key to either is an error."""
    body = """
local ip = p:data(packet_eth):data(packet_ip)
print(type(p), type(ip), type(ip:ttl()))
"""
    assert _printed(body, udp_frame(), lua=lua) == ["table\ttable\ttable"]
    for target in ("p", "p:data(packet_eth):data(packet_ip):ttl()"):
        r = _script(f"local t = {target}\nt.offset = 0", lua=lua).run(udp_frame())
        assert r.error is not None and "through their methods" in r.error.message, (target, r)
    assert "segments and fields are userdata" in _differences()
