"""core/pcap.py: the one capture reader and writer, for every link type in its table, and the
consumers (the Python replay path and the LuaJIT driver) that read that table."""
from __future__ import annotations

import gzip
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from packetscript_lab import Script, replay
from packetscript_lab.core import pcap
from packetscript_lab.core.netutil import ETH_P_IP, ETH_P_IPV6

T0 = 1_700_000_000
SCRIPT = """
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return NF_ACCEPT end
  if ip:ttl():get() == 9 then return NF_DROP end
  ip:ttl():set(33)
  return NF_ACCEPT
end
"""


def ip_packets(linktype: int) -> list[bytes]:
    """IPv6 packets for the IPv6 link type, IPv4 ones for the others."""
    if linktype == 229:
        return [bytes(IPv6(src="fd77::1", dst="fd77::2", hlim=h) / UDP(dport=9) / Raw(b"six"))
                for h in (64, 9, 5)]
    return [bytes(IP(src="10.77.0.1", dst="10.77.0.2", ttl=t) / UDP(dport=9) / Raw(b"four"))
            for t in (64, 9, 5)]


def in_link_type(lt: pcap.LinkType, packet: bytes) -> bytes:
    """A network-layer packet as a capture of link type ``lt`` holds it, built from the
    table's own facts (header length, where its EtherType sits)."""
    ethertype = ETH_P_IPV6 if packet[0] >> 4 == 6 else ETH_P_IP
    if lt.kind == "raw":
        return packet
    header = bytearray(b"\x02" * lt.header)
    header[lt.proto_at:lt.proto_at + 2] = struct.pack("!H", ethertype)
    return bytes(header) + packet


@pytest.mark.parametrize("code", sorted(pcap.LINK_TYPES))
@pytest.mark.parametrize("form", ["pcap-us", "pcap-ns", "pcapng-us", "pcapng-ns"])
def test_every_link_type_is_written_read_and_framed(tmp_path, code, form):
    lt = pcap.LINK_TYPES[code]
    packets = ip_packets(code)
    records = [in_link_type(lt, p) for p in packets]
    times = [T0 + 0.000001, T0 + 1.5, T0 + 2.000123]
    path = tmp_path / "cap"
    nano = form.endswith("ns")
    if form.startswith("pcapng"):
        pcap.write_pcapng(path, [(r, t, None) for r, t in zip(records, times)], code, nano=nano)
    else:
        pcap.write_pcap(path, code, zip(records, times), nano=nano)
    linktype, batches = pcap.read(path)
    got = [(d, t) for frames, ms in batches for d, t in zip(frames, ms)]
    assert linktype == code
    assert [d for d, _ in got] == records
    assert [t / 1000 for _, t in got] == pytest.approx(times, abs=1e-6)
    to_eth, from_eth = pcap.framer(code)
    for record, packet in zip(records, packets):
        frame = to_eth(record) if to_eth else record
        assert frame[14:] == packet, "the script sees the IP packet behind an Ethernet header"
        want = ETH_P_IPV6 if packet[0] >> 4 == 6 else ETH_P_IP
        assert struct.unpack("!H", frame[12:14])[0] == want
        if from_eth:
            assert from_eth(record, frame) == record


def test_nanosecond_times_keep_their_nanoseconds(tmp_path):
    path = tmp_path / "ns.pcap"
    pcap.write_pcap(path, pcap.ETHERNET, [(bytes(Ether() / IP()), 12.000000123)], nano=True)
    assert struct.unpack_from("<I", path.read_bytes())[0] == pcap.PCAP_MAGIC_NS
    (_frames, (ms,)), = pcap.read(path)[1]
    assert ms == pytest.approx(12000.000123, abs=1e-9)


def test_pcapng_comments_round_trip(tmp_path):
    path = tmp_path / "notes.pcapng"
    frames = [bytes(Ether() / IP(ttl=t)) for t in (1, 2, 3)]
    comments = ["#1 verdict=drop", None, "#3 verdict=accept changed=ip.ttl é"]
    pcap.write_pcapng(path, [(f, T0 + i, c) for i, (f, c) in enumerate(zip(frames, comments))])
    linktype, batches = pcap.read_commented(path)
    (got, times, notes), = list(batches)
    assert (linktype, got, notes) == (pcap.ETHERNET, frames, comments)
    assert times == [1000.0 * (T0 + i) for i in range(3)]


def test_gzipped_captures_are_read(tmp_path):
    plain, packed = tmp_path / "a.pcap", tmp_path / "a.pcap.gz"
    frames = [bytes(Ether() / IP(ttl=t)) for t in (1, 2)]
    pcap.write_pcap(plain, pcap.ETHERNET, [(f, 1.0) for f in frames])
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert [d for b, _ in pcap.read(packed)[1] for d in b] == frames


def test_a_corrupt_record_names_the_file_the_packet_and_the_offset(tmp_path):
    path = tmp_path / "bad.pcap"
    frame = bytes(Ether() / IP())
    pcap.write_pcap(path, pcap.ETHERNET, [(frame, 1.0)] * 3)
    data = bytearray(path.read_bytes())
    second = 24 + 16 + len(frame)
    data[second + 8:second + 12] = struct.pack("<I", 10_000_000)      # caplen beyond any packet
    path.write_bytes(bytes(data))
    with pytest.raises(pcap.CaptureError) as err:
        for _ in pcap.read(path)[1]:
            pass
    assert str(path) in str(err.value)
    assert f"packet 2 (byte offset {second})" in str(err.value)


def test_a_truncated_file_is_an_error_not_a_shorter_capture(tmp_path):
    path = tmp_path / "cut.pcap"
    pcap.write_pcap(path, pcap.ETHERNET, [(bytes(Ether() / IP()), 1.0)] * 3)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(pcap.CaptureError, match=r"cut.pcap: corrupt capture at packet 3.*truncated"):
        pcap.read_packets(path)


def test_an_unknown_link_type_lists_the_ones_read(tmp_path):
    with pytest.raises(pcap.CaptureError, match=r"link type 105 is not supported.*Linux cooked \(SLL2\) \(276\)"):
        pcap.write_pcap(tmp_path / "x.pcap", 105, [])


@pytest.mark.parametrize("code", sorted(pcap.LINK_TYPES))
def test_every_link_type_in_the_table_is_replayed_natively_as_in_python(tmp_path, code):
    """The LuaJIT driver takes its link types from the table: an entry added there is read
    natively, with the results of the Python path."""
    lt = pcap.LINK_TYPES[code]
    path = tmp_path / "in.pcap"
    pcap.write_pcap(path, code, [(in_link_type(lt, p), T0 + i)
                                 for i, p in enumerate(ip_packets(code))])
    native = replay(SCRIPT, path)
    assert native._written is not None, "the LuaJIT driver should read this link type itself"
    reference = replay(Script(SCRIPT), path)
    assert native.verdicts == reference.verdicts == {"drop": 1 if code != 229 else 0,
                                                     "accept": 3 if code == 229 else 2,
                                                     "continue": 0}
    assert native.output == reference.output
    assert native.modified == reference.modified
