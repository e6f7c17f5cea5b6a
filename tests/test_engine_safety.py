"""A script cannot reach outside its packet: not by editing a segment's fields, not with a
segment or byte-array view kept from an earlier packet. Each attempt is a Lua error with
the script's line, and the next packet runs normally."""
import pytest

from engine_util import RUNTIMES, udp_frame
from packetscript_lab import Script

pytestmark = pytest.mark.parametrize("lua", RUNTIMES)

ASSIGNMENTS = {
    "field offset moved far away": "local d = ip:daddr(); d.o = 100000; d:set('10.77.0.9')",
    "field offset moved before the packet": "local t = ip:ttl(); t.o = -3; t:set(1)",
    "segment made huge": "ip.n = 1e9; local x = ip:data():get()",
    "fractional offset": "ip.o = 14.5; local x = ip:ttl():get()",
    "IP header moved away": "local c = ip:data(packet_udp) and ip:saddr(); c.ip = 1e6; c:set('10.77.0.3')",
    "packet generation copied": "local t = ip:ttl(); t.g = 1e9",
}


@pytest.mark.parametrize("name", list(ASSIGNMENTS))
def test_segments_and_fields_cannot_be_edited(lua, name):
    frame = udp_frame(b"payload")
    s = Script("function process_packet(p)\n  local ip = p:data(packet_eth):data(packet_ip)\n"
               f"  {ASSIGNMENTS[name]}\n  return NF_ACCEPT\nend", lua=lua)
    r = s.run(frame)
    assert r.verdict == "drop" and r.error is not None
    assert "through their methods" in r.error.message and r.error.line == 3
    assert r.data == frame and not r.modified
    assert s.run(udp_frame(b"other")).error is not None      # the next packet runs (and fails the same way)


def test_rawset_state_is_ignored_by_the_api(lua):
    # rawset writes the table, not the state the API works from: reads and writes stay on
    # the field they were made for.
    frame = udp_frame(b"payload")
    s = Script("function process_packet(p)\n  local ip = p:data(packet_eth):data(packet_ip)\n"
               "  local t = ip:ttl()\n  rawset(t, 'o', -5); rawset(t, 'n', 1e9); rawset(ip, 'o', 9999)\n"
               "  t:set(9)\n  print(ip:ttl():get(), t:get_offset(), t:get_size())\n  return NF_ACCEPT\nend", lua=lua)
    r = s.run(frame)
    assert r.error is None and r.modified
    assert r.data[14 + 8] == 9 and r.data[:22] == frame[:22]
    assert s.output == ["9\t22\t1"]


def test_tcp_checksum_setter_stays_inside_the_packet(lua):
    # A checksum setter computes over the segment the API made, whatever the script assigns;
    # the result does not depend on bytes of an earlier, longer packet.
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    short = bytes(Ether() / IP(src="10.77.0.1", dst="10.77.2.2") / TCP(dport=80) / b"hi")
    long_ = bytes(Ether() / IP(src="10.77.0.1", dst="10.77.2.2") / TCP(dport=80) / (b"Z" * 900))
    src = ("function process_packet(p)\n  local tcp = p:data(packet_eth):data(packet_ip):data(packet_tcp)\n"
           "  local c = tcp:check(); rawset(c, 'o', 1e6); pcall(function() c.o = 1e6 end)\n"
           "  c:set(0)\n  return NF_ACCEPT\nend")
    results = []
    for before in (short, long_):
        s = Script(src, lua=lua, fix_checksums=False)
        s.run(before)
        results.append(s.run(short))
    assert results[0].error is None and results[0].data == results[1].data
    assert Ether(results[0].data)[TCP].chksum == Ether(short)[TCP].chksum


def test_a_segment_kept_from_an_earlier_packet_is_refused(lua):
    s = Script("function process_packet(p)\n  if saved then saved:ttl():set(1) end\n"
               "  saved = p:data(packet_eth):data(packet_ip)\n  return NF_ACCEPT\nend", lua=lua)
    assert s.run(udp_frame()).verdict == "accept"
    r = s.run(udp_frame())
    assert r.verdict == "drop" and "earlier packet" in r.error.message and r.error.line == 2


def test_a_field_setter_called_on_another_segment_is_refused(lua):
    # An address setter writes four bytes: called on a one-byte segment at the packet's end
    # it would write past the packet.
    s = Script("function process_packet(p)\n  local ip = p:data(packet_eth):data(packet_ip)\n"
               "  local last = p:raw(p:get_size() - 1, 1)\n  ip:daddr().set(last, '10.77.0.9')\n"
               "  return NF_ACCEPT\nend", lua=lua)
    frame = udp_frame(b"xyz")
    r = s.run(frame)
    assert r.verdict == "drop" and "another kind of field" in r.error.message and r.error.line == 4
    assert r.data == frame and not r.modified


def test_edited_slot_and_packet_numbers_stay_inside_the_packet(lua):
    # A field kept from an earlier packet, its slot and packet numbers copied from an object
    # of this packet (a one-byte segment at the end): still refused, nothing written.
    s = Script("function process_packet(p)\n  local last = p:raw(p:get_size() - 1, 1)\n"
               "  if saved then\n    rawset(saved, 1, rawget(last, 1)); rawset(saved, 2, rawget(last, 2))\n"
               "    saved:set('10.77.0.9')\n  end\n"
               "  saved = p:data(packet_eth):data(packet_ip):daddr()\n  return NF_ACCEPT\nend", lua=lua)
    assert s.run(udp_frame(b"xyz")).verdict == "accept"
    frame = udp_frame(b"abc")
    r = s.run(frame)
    assert r.verdict == "drop" and "another kind of field" in r.error.message and r.error.line == 5
    assert r.data == frame and not r.modified


def test_a_byte_array_view_kept_from_an_earlier_packet_is_refused(lua):
    # Dynamic-protocol callbacks get views into the packet; one kept in a global must not
    # write into whatever packet comes next.
    src = """
function get_tag(view) kept = view return view[0] end
register_dynamic_protbuf { name = "packet_tag", protocol_fields = { {"tag", 0, 8, "get_tag", nil} } }
function process_packet(p)
  if kept then kept[0] = 7 end
  local udp = p:data(packet_eth):data(packet_ip):data(packet_udp)
  local tag = udp:data(packet_tag)
  tag:tag():get()
  return NF_ACCEPT
end"""
    s = Script(src, lua=lua)
    first = s.run(udp_frame(b"\x05abc"))
    assert first.verdict == "accept" and not first.modified
    r = s.run(udp_frame(b"\x05abc"))
    assert r.verdict == "drop" and "earlier packet" in r.error.message and r.error.line == 5
    assert not r.modified


def test_a_script_that_eats_memory_gets_an_error_not_the_machine(lua):
    s = Script("function process_packet(p)\n  tries = (tries or 0) + 1\n"
               "  if tries == 1 then local big = string.rep('x', 2^30) end\n  return NF_ACCEPT\nend",
               lua=lua, max_memory=64 << 20, on_error="accept")
    r = s.run(udp_frame())
    assert r.verdict == "accept" and r.error is not None and "memory" in r.error.message
    r = s.run(udp_frame())                   # the runtime recovers: the next packet runs
    assert r.error is None and s.error_count == 1
