"""The native replay path: a LuaJIT Judge reads, judges and writes the capture in its own
process (backends/capture.py, lua/capture.lua). Its results must be the ones the Python
path gives for the same packets, on every format and link type replay reads."""
from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import RawPcapReader

from packetscript_lab import Script, replay
from packetscript_lab.backends import capture
from test_judge import BEHAVE, HOSTILE, frames, rewritten
from test_replay import SCRIPT

T0 = 1_700_000_000


def varied():
    """Frames that exercise every verdict, an error, the checksum rules (fragments, UDP
    without checksum, odd lengths, TCP options) and non-IP."""
    pk = [
        Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=9999) / Raw(b"drop"),
        Ether() / IP(src="10.77.0.1", dst="10.77.0.3") / UDP(dport=53) / Raw(b"query"),
        Ether() / IP(src="10.77.0.1", dst="10.77.2.100") / TCP(dport=443, options=[("MSS", 1460)]) / Raw(b"hello!!"),
        Ether() / IP(src="10.77.0.1", dst="10.77.2.100") / TCP(dport=80) / Raw(b"x" * 301),
        Ether() / IP(src="10.77.0.1", dst="10.77.2.100", flags="MF") / TCP(dport=80) / Raw(b"frag"),
        Ether() / IP(src="10.77.0.1", dst="10.77.0.9") / UDP(dport=7, chksum=0) / Raw(b"nocheck"),
        Ether() / ARP(),
        Ether() / IP(src="10.77.0.1", dst="10.77.0.4") / ICMP(),
    ]
    return [bytes(p) for p in pk] * 3


def ip_of(frame: bytes) -> bytes:
    return frame[14:]


def sll(frame: bytes) -> bytes:
    return struct.pack(">HHHQH", 0, 1, 6, 0x0200000000010000, 0x0800 if frame[12:14] == b"\x08\x00" else 0x0806) + frame[14:]


def sll2(frame: bytes) -> bytes:
    proto = frame[12:14]
    return proto + struct.pack(">HIHBB", 0, 2, 1, 0, 6) + b"\x02\x00\x00\x00\x00\x01\x00\x00" + frame[14:]


def write_pcap(path, records, linktype, nano=False):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for i, data in enumerate(records):
            frac = 123_456_789 if nano else 123_457
            f.write(struct.pack("<IIII", T0 + i, frac, len(data), len(data)) + data)


def _block(btype, body):
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def write_pcapng(path, records, linktype, nano=True):
    """A section, one interface (with if_tsresol 9 when nano), enhanced packet blocks."""
    options = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0) if nano else b""
    blocks = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
              _block(1, struct.pack("<HHI", linktype, 0, 65535) + options)]
    unit = 10 ** 9 if nano else 10 ** 6
    for i, data in enumerate(records):
        ticks = (T0 + i) * unit + (123_456_789 if nano else 123_457)
        blocks.append(_block(6, struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)) + data))
    with open(path, "wb") as f:
        f.write(b"".join(blocks))


CASES = {
    "pcap-ethernet": (write_pcap, 1, lambda f: f, False),
    "pcap-ns-ethernet": (write_pcap, 1, lambda f: f, True),
    "pcap-raw-ip": (write_pcap, 101, ip_of, False),
    "pcap-sll": (write_pcap, 113, sll, False),
    "pcap-sll2": (write_pcap, 276, sll2, False),
    "pcapng-ns-ethernet": (write_pcapng, 1, lambda f: f, True),
    "pcapng-us-raw-ip": (write_pcapng, 228, ip_of, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_native_replay_matches_the_python_path(tmp_path, case):
    writer, linktype, form, nano = CASES[case]
    path = tmp_path / "in.cap"
    writer(path, [form(f) for f in varied()], linktype, nano)
    native = replay(SCRIPT, path, out=tmp_path / "out.pcap")
    assert native._written is not None, "the LuaJIT Judge should read this capture itself"
    # The reference: the same script in this process, through the Python reader.
    reference = replay(Script(SCRIPT), path)
    assert native.packets == reference.packets == len(varied())
    assert native.verdicts == reference.verdicts
    assert (native.errors, native.modified, native.eth_changes) == (reference.errors, reference.modified,
                                                                   reference.eth_changes)
    assert native.output == reference.output
    assert native.output_times == pytest.approx(reference.output_times, abs=1e-6)
    # Times to the microsecond, whatever the file's resolution (the output is a µs pcap).
    expected_frac = 0.123457
    assert [round(t - int(t), 6) for t in native.output_times] == [expected_frac] * len(native.output)
    assert [int(t) for t in native.output_times][:2] == [T0 + 1, T0 + 2]
    # The --out file is that output, in the input's link type.
    written = list(RawPcapReader(str(tmp_path / "out.pcap")))
    assert [d for d, _ in written] == native.output
    assert RawPcapReader(str(tmp_path / "out.pcap")).linktype == linktype


def test_the_script_sees_capture_time_in_ms(tmp_path):
    source = """
function process_packet(p)
  print(nf.get_time())
  return NF_ACCEPT
end
"""
    path = tmp_path / "in.pcapng"
    write_pcapng(path, varied()[:2], 1, nano=True)
    result = replay(source, path, keep_output=False)
    assert result.script.output == [str((T0 * 1000) + 123), str((T0 + 1) * 1000 + 123)]


@pytest.mark.parametrize("writer", [write_pcap, write_pcapng])
def test_overrun_mid_file_is_found_counted_and_the_rest_judged(tmp_path, monkeypatch, writer):
    """Small ranges (4 packets) so the culprit sits in a later range and the fresh process
    must open the file again in the middle (pcapng: its interfaces read again)."""
    monkeypatch.setattr(capture, "CHUNK", 4)
    ports = [9000] * 9 + [6666] + [9000] * 5
    packets = frames(ports)
    path = tmp_path / "in.cap"
    writer(path, packets, 1, False)
    result = replay(BEHAVE % HOSTILE["find-backtracking"], path, name="hostile")
    assert result._written is not None
    assert result.packets == 15 and result.errors == 1 and result.timeouts == 1
    assert result.verdicts == {"accept": 14, "drop": 1, "continue": 0}
    assert result.output == [rewritten(f) for i, f in enumerate(packets) if i != 9]
    assert "time limit of 250 ms exceeded" in result.script_errors[0].message


def test_on_error_accept_writes_the_packet_that_overran_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(capture, "CHUNK", 4)
    packets = frames([9000, 6666, 9000])
    path = tmp_path / "in.pcap"
    write_pcap(path, packets, 1)
    result = replay(BEHAVE % HOSTILE["find-backtracking"], path, on_error="accept")
    assert result.verdicts["accept"] == 3 and result.errors == 1
    assert result.output == [rewritten(packets[0]), packets[1], rewritten(packets[2])]


def test_a_corrupt_record_is_named_by_the_checked_reader(tmp_path):
    path = tmp_path / "in.pcap"
    write_pcap(path, varied(), 1)
    data = bytearray(path.read_bytes())
    # The 5th record's caplen claims 1 MB.
    at = 24
    for _ in range(4):
        at += 16 + struct.unpack_from("<I", data, at + 8)[0]
    struct.pack_into("<I", data, at + 8, 1 << 20)
    path.write_bytes(bytes(data))
    with pytest.raises(Exception) as info:
        replay(SCRIPT, path)
    assert f"corrupt capture at packet 5 (byte offset {at})" in str(info.value)


def test_other_runtimes_and_gzip_take_the_python_path(tmp_path):
    import gzip

    path = tmp_path / "in.pcap"
    write_pcap(path, varied(), 1)
    assert replay(SCRIPT, path, lua="5.4")._written is None
    gz = tmp_path / "in.pcap.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    result = replay(SCRIPT, gz)
    assert result._written is None and result.packets == len(varied())


@pytest.mark.parametrize("writer", [write_pcap, write_pcapng])
def test_a_capture_larger_than_the_mapped_window(tmp_path, monkeypatch, writer):
    """The file is read through a window of two pages here (32 MiB normally): records cross
    its edges, and the result is the same as reading it whole."""
    monkeypatch.setattr(capture, "WINDOW", 8192)
    records = varied() * 40
    path = tmp_path / "in.cap"
    writer(path, records, 1, False)
    assert path.stat().st_size > 5 * 8192
    native = replay(SCRIPT, path)
    assert native._written is not None
    reference = replay(Script(SCRIPT), path)
    assert native.packets == len(records) and native.verdicts == reference.verdicts
    assert native.output == reference.output


def test_a_pcapng_of_simple_packet_blocks_is_replayed_by_the_python_path(tmp_path):
    """The driver reads enhanced packet blocks only; a file that starts with another kind
    of packet block is replayed as before, through the Python reader."""
    records = varied()[:4]
    blocks = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
              _block(1, struct.pack("<HHI", 1, 0, 65535))]
    blocks += [_block(3, struct.pack("<I", len(d)) + d) for d in records]
    path = tmp_path / "simple.pcapng"
    path.write_bytes(b"".join(blocks))
    result = replay("function process_packet(p) return NF_ACCEPT end", path)
    assert result._written is None
    assert result.packets == 4 and result.output == records
