"""replay(): capture files and packet lists through a script, counts and output."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, CookedLinux, Ether
from scapy.packet import Raw
from scapy.utils import RawPcapReader, RawPcapWriter, rdpcap, wrpcap, wrpcapng

from engine_util import assert_checksums_valid, rebuilt
from packetscript_lab import ReplayError, Script, replay

# Drops UDP to port 9999, rewrites the destination of TCP, continues everything else,
# fails on ICMP (indexing past the packet), counts packets in a global.
SCRIPT = """
n = 0
function process_packet(p)
  n = n + 1
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  local udp = ip:data(packet_udp)
  if udp and udp:dport():get() == 9999 then return NF_DROP end
  local tcp = ip:data(packet_tcp)
  if tcp then ip:daddr():set("10.77.2.1") return NF_ACCEPT end
  if ip:data(packet_icmp) then return p:to_bytes()[100000] end
  return NF_ACCEPT
end
"""


def packets(n_udp_drop=2):
    pk = []
    for i in range(n_udp_drop):
        pk.append(Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=9999) / Raw(b"d%d" % i))
    pk.append(Ether() / IP(src="10.77.0.1", dst="10.77.0.3") / UDP(dport=53) / Raw(b"query"))
    pk.append(Ether() / IP(src="10.77.0.1", dst="10.77.2.100") / TCP(dport=443) / Raw(b"hello"))
    pk.append(Ether() / ARP())
    pk.append(Ether() / IP(src="10.77.0.1", dst="10.77.0.4") / ICMP())
    out = [Ether(bytes(p)) for p in pk]
    for i, p in enumerate(out):
        p.time = 1_700_000_000 + i * 0.5 + 0.0003      # sub-millisecond part: 300 us
    return out


def expected_output(pkts):
    """What passes, as the script leaves it: computed with scapy."""
    out = []
    for p in pkts:
        if IP in p and UDP in p and p[UDP].dport == 9999:
            continue
        if IP in p and p[IP].proto == 1:
            continue                                   # the script fails: dropped
        if TCP in p:
            q = p.copy()
            q[IP].dst = "10.77.2.1"
            out.append(rebuilt(q))
        else:
            out.append(bytes(p))
    return out


def check_counts(res, pkts):
    n_drop = sum(1 for p in pkts if UDP in p and p[UDP].dport == 9999)
    assert res.packets == len(pkts)
    assert res.verdicts == {"accept": 2, "drop": n_drop + 1, "continue": 1}
    assert res.errors == 1 and res.modified == 1
    assert res.pps > 0 and res.elapsed > 0
    assert res.as_dict() == {"packets": len(pkts), "verdicts": res.verdicts, "errors": 1,
                             "modified": 1, "pps": round(res.pps, 1), "restarts": 0,
                             "timeouts": 0, "crashes": 0, "unjudged": 0}


@pytest.mark.parametrize("lua", ["luajit", "5.1", "5.4"])
def test_replay_packet_list(lua):
    pkts = packets()
    res = replay(SCRIPT, pkts, lua=lua)
    check_counts(res, pkts)
    assert res.output == expected_output(pkts)
    for data in res.output:
        if IP in Ether(data):
            assert_checksums_valid(data)
    assert res.script.errors[0].line == 11 and res.script.error_count == 1


def test_replay_list_of_bytes_and_script_object():
    pkts = packets()
    s = Script(SCRIPT)
    res = replay(s, [bytes(p) for p in pkts])
    check_counts(res, pkts)
    assert res.script is s
    res2 = replay(s, [bytes(p) for p in pkts])   # globals carry on in the same Script
    assert res2.packets == len(pkts)
    s.output.clear()


def test_replay_pcap_and_out_file(tmp_path):
    pkts = packets()
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    wrpcap(str(src), pkts)
    res = replay(SCRIPT, src, out=out)
    check_counts(res, pkts)
    written = rdpcap(str(out))
    assert [bytes(p) for p in written] == expected_output(pkts)
    kept_times = [float(p.time) for p in pkts if not (UDP in p and p[UDP].dport == 9999)
                  and not (IP in p and p[IP].proto == 1)]
    assert [float(p.time) for p in written] == pytest.approx(kept_times, abs=1e-6)
    assert RawPcapReader(str(out)).linktype == 1


def test_replay_pcapng(tmp_path):
    pkts = packets(3)
    src = tmp_path / "in.pcapng"
    wrpcapng(str(src), pkts)
    res = replay(SCRIPT, str(src), out=str(tmp_path / "o.pcap"))
    check_counts(res, pkts)
    assert [bytes(p) for p in rdpcap(str(tmp_path / "o.pcap"))] == expected_output(pkts)


def test_replay_nf_get_time_from_capture(tmp_path):
    pkts = packets()
    wrpcap(str(tmp_path / "t.pcap"), pkts)
    res = replay("function process_packet(p) print(nf.get_time()) return NF_ACCEPT end",
                 tmp_path / "t.pcap")
    # whole milliseconds, as Script.run(frame, ts) and the kernel's jiffies_to_msecs give
    want = [str(int(float(p.time) * 1000)) for p in pkts]
    assert want[1] == "1700000000500"
    assert res.script.output == want
    s = Script("function process_packet(p) print(nf.get_time()) return NF_ACCEPT end")
    s.run(bytes(pkts[1]), ts=float(pkts[1].time))
    assert s.output == [want[1]]


@pytest.mark.parametrize("linktype", [101, 228])
def test_replay_raw_ip_linktype(tmp_path, linktype):
    ips = [IP(src="10.77.0.1", dst="10.77.2.100") / TCP(dport=80) / Raw(b"x" * 10),
           IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=9999),
           IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=53) / Raw(b"q")]
    src, out = tmp_path / "raw.pcap", tmp_path / "raw_out.pcap"
    with RawPcapWriter(str(src), linktype=linktype) as w:
        for p in ips:
            w.write(bytes(p))
    # the script sees an Ethernet frame in front of the IP packet
    res = replay(SCRIPT.replace("n = n + 1", "n = n + 1; print(#p:to_bytes())"), src, out=out)
    assert res.script.output == [str(14 + len(p)) for p in ips]
    assert res.packets == 3 and res.verdicts == {"accept": 2, "drop": 1, "continue": 0}
    reader = RawPcapReader(str(out))
    assert reader.linktype == linktype
    got = [data for data, _ in reader]
    reader.close()
    want_tcp = ips[0].copy()
    want_tcp.dst = "10.77.2.1"
    assert got == [rebuilt(IP(bytes(want_tcp))), bytes(ips[2])]
    assert res.packets_out()[0][IP].dst == "10.77.2.1"
    assert res.eth_changes == 0


def test_replay_raw_ip_list_of_scapy_packets():
    ips = [IP(dst="10.77.2.100") / TCP(), IP(dst="10.77.1.11") / UDP(dport=9999)]
    res = replay(SCRIPT, ips)
    assert res.linktype != 1 and res.verdicts["drop"] == 1
    assert IP(res.output[0]).dst == "10.77.2.1" and len(res.output[0]) == len(ips[0])
    assert_checksums_valid(bytes(Ether() / IP(res.output[0])), ("IP", "TCP"))


def test_replay_raw_ip_eth_header_change_counted():
    res = replay("function process_packet(p) p:data(packet_eth):dmac():set(1) return NF_ACCEPT end",
                 [IP() / UDP()])
    assert res.eth_changes == 1 and res.output == [bytes(IP() / UDP())]


def test_replay_linux_cooked(tmp_path):
    pkts = [CookedLinux(proto=0x0800) / IP(dst="10.77.2.100") / TCP(dport=1) / Raw(b"ab"),
            CookedLinux(proto=0x0800) / IP(dst="10.77.9.9") / UDP(dport=9999)]
    src = tmp_path / "sll.pcap"
    wrpcap(str(src), pkts)
    out = tmp_path / "sll_out.pcap"
    res = replay(SCRIPT, src, out=out)
    assert res.verdicts["accept"] == 1 and res.verdicts["drop"] == 1
    got = rdpcap(str(out))
    assert len(got) == 1 and isinstance(got[0], CookedLinux) and got[0][IP].dst == "10.77.2.1"
    assert bytes(got[0])[:16] == bytes(pkts[0])[:16]


def test_replay_empty_and_many(tmp_path):
    wrpcap(str(tmp_path / "e.pcap"), [])
    res = replay(SCRIPT, tmp_path / "e.pcap")
    assert res.packets == 0 and res.output == []
    many = [Ether() / IP() / UDP(dport=9999 if i % 3 == 0 else 7) for i in range(5000)]
    res = replay(SCRIPT, many)   # more than one batch
    assert res.packets == 5000 and res.verdicts["drop"] == sum(1 for i in range(5000) if i % 3 == 0)
    assert res.script.output == [] and len(res.output) == 5000 - res.verdicts["drop"]


# ------------------------------------------------------------------ bad input
def test_missing_file(tmp_path):
    with pytest.raises(ReplayError, match="no such file"):
        replay(SCRIPT, tmp_path / "nope.pcap")
    with pytest.raises(ReplayError, match="directory"):
        replay(SCRIPT, tmp_path)


@pytest.mark.parametrize("content", [b"", b"this is not a capture file at all\n" * 4,
                                     b"\xd4\xc3\xb2"])
def test_not_a_capture(tmp_path, content):
    f = tmp_path / "bad.pcap"
    f.write_bytes(content)
    with pytest.raises(ReplayError) as exc:
        replay(SCRIPT, f)
    assert "bad.pcap" in str(exc.value)


def test_truncated_pcap(tmp_path):
    src = tmp_path / "t.pcap"
    wrpcap(str(src), packets())
    data = src.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-10])
    with pytest.raises(ReplayError) as exc:
        replay(SCRIPT, cut)
    assert "cut.pcap" in str(exc.value) and "truncated" in str(exc.value)


def test_truncated_pcapng(tmp_path):
    # the last packet block is cut short: not a silent replay of fewer packets
    pkts = packets()
    src = tmp_path / "t.pcapng"
    wrpcapng(str(src), pkts)
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(src.read_bytes()[:-10])
    with pytest.raises(ReplayError) as exc:
        res = replay(SCRIPT, cut)
        print(f"replayed {res.packets} of {len(pkts)} packets without an error")
    assert "cut.pcapng" in str(exc.value)


def test_corrupt_record_header(tmp_path):
    src = tmp_path / "t.pcap"
    wrpcap(str(src), packets())
    data = bytearray(src.read_bytes())
    data[24 + 8:24 + 12] = (0x7fffffff).to_bytes(4, "little")      # caplen of packet 1
    bad = tmp_path / "corrupt.pcap"
    bad.write_bytes(bytes(data))
    with pytest.raises(ReplayError) as exc:
        replay(SCRIPT, bad)
    assert "corrupt.pcap" in str(exc.value)


def test_unsupported_linktype(tmp_path):
    src = tmp_path / "lt.pcap"
    with RawPcapWriter(str(src), linktype=105) as w:    # 802.11
        w.write(b"\x00" * 30)
    with pytest.raises(ReplayError, match="link type 105"):
        replay(SCRIPT, src)


def test_bad_packet_list():
    with pytest.raises(ReplayError):
        replay(SCRIPT, [UDP()])


@pytest.mark.parametrize("lua", ["luajit", "5.4"])
def test_replay_budget_and_errors_per_packet(lua):
    src = """
function process_packet(p)
  local udp = p:data(packet_eth):data(packet_ip):data(packet_udp)
  udp:sport():set(1)                       -- discarded when the packet fails
  if udp:dport():get() == 7 then while true do end end
  if udp:dport():get() == 8 then error("eight") end
  return NF_ACCEPT
end"""
    pk = [Ether() / IP() / UDP(dport=d) for d in (6, 7, 8, 6, 7)]
    res = replay(src, pk, lua=lua, on_error="accept", budget=2000)
    assert res.packets == 5 and res.errors == 3 and res.modified == 2
    assert res.verdicts == {"accept": 5, "drop": 0, "continue": 0}
    for p, out in zip(pk, res.output):
        if p[UDP].dport == 6:
            assert Ether(out)[UDP].sport == 1
            assert_checksums_valid(out, ("IP", "UDP"))
        else:
            assert out == bytes(p)
    errs = {e.message.split(" ")[0]: e.count for e in res.script.errors}
    assert errs == {"budget": 2, "eight": 1}


def _pcap_header(linktype: int = 1) -> bytes:
    import struct

    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("packets_before", [0, 3])
def test_sparse_file_behind_a_pcap_header_fails_at_once(tmp_path, packets_before):
    # A 1 GiB file of zeros after a valid header: millions of empty "records", read in
    # minutes unless the first one is taken for what it is.
    src = tmp_path / "sparse.pcap"
    wrpcap(str(src), packets()[:packets_before]) if packets_before else src.write_bytes(_pcap_header())
    offset = src.stat().st_size
    with open(src, "r+b") as f:
        f.truncate(1 << 30)
    with pytest.raises(ReplayError) as exc:
        replay(SCRIPT, src)
    assert (f"corrupt capture at packet {packets_before + 1} (byte offset {offset})"
            in str(exc.value)), exc.value
    assert "sparse" in str(exc.value)


@pytest.mark.timeout(30)
def test_garbage_behind_a_pcap_header_names_the_record(tmp_path):
    import random

    src = tmp_path / "garbage.pcap"
    wrpcap(str(src), packets()[:2])
    offset = src.stat().st_size
    junk = random.Random(7).randbytes(8 << 20)
    src.write_bytes(src.read_bytes() + b"\xff\xff\xff\x7f" * 3 + junk)   # a huge caplen first
    with pytest.raises(ReplayError) as exc:
        replay(SCRIPT, src)
    assert f"corrupt capture at packet 3 (byte offset {offset})" in str(exc.value)
    assert "claims 2147483647 captured bytes" in str(exc.value)


def _pcapng_with_interface_id(tmp_path, packet_index: int, interface: int):
    import struct

    src = tmp_path / "in.pcapng"
    wrpcapng(str(src), packets())
    data = bytearray(src.read_bytes())
    off, epbs = 0, []
    while off < len(data):
        block_type, block_len = struct.unpack_from("<II", data, off)
        if block_type == 6:                                  # Enhanced Packet Block
            epbs.append(off)
        off += block_len
    struct.pack_into("<I", data, epbs[packet_index] + 8, interface)
    bad = tmp_path / "undeclared.pcapng"
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("packet_index", [0, 2])
def test_pcapng_packet_on_an_undeclared_interface_is_an_error(tmp_path, packet_index):
    bad = _pcapng_with_interface_id(tmp_path, packet_index, 1)
    # Every time, not only until scapy's own filter starts silencing a repeated warning.
    for _ in range(4):
        with pytest.raises(ReplayError) as exc:
            res = replay(SCRIPT, bad)
            print(f"replayed {res.packets} packets, silently skipping one")
        msg = str(exc.value)
        assert f"corrupt capture at packet {packet_index + 1}" in msg
        assert "names interface 1, but the file declares only 1 interface" in msg


@pytest.mark.timeout(30)
def test_sparse_pcapng_fails_fast(tmp_path):
    src = tmp_path / "sparse.pcapng"
    wrpcapng(str(src), packets()[:2])
    with open(src, "r+b") as f:
        f.truncate(1 << 30)
    with pytest.raises(ReplayError, match="corrupt capture at packet 3"):
        replay(SCRIPT, src)
