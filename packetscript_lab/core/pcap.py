"""Capture files: the link-type table, the one checked pcap/pcapng reader, and the writers.

Every part that reads or writes a capture comes here: the replay backend (and, through its
configuration, the LuaJIT replay driver ``lua/capture.lua``), the notebook's ``--pcap``,
the lab's ``replay_pcap`` and recorded runs. Reading never dissects a packet: frames stay
bytes, and a record that is not a packet is an error naming the file, the packet and the
byte offset, never a skipped packet.
"""
from __future__ import annotations

import gzip
import itertools
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from packetscript_lab.core.netutil import ETH_HLEN, ETH_P_IP, ETH_P_IPV6, eth_header

#: Packets per batch the reader yields.
BATCH = 4096
#: libpcap's largest packet for any link type: a record header claiming more is not a record.
MAX_RECORD = 262144
_SCAPY_MTU = 0xFFFF        # scapy's readers keep at most this many bytes of a packet
scapy_log = logging.getLogger("scapy.runtime")

#: The synthetic Ethernet header (02:00:00:00:00:01 -> 02:00:00:00:00:02, IPv4) a script
#: sees in front of a packet captured or hooked without one.
DEFAULT_ETH_HEADER = eth_header("02:00:00:00:00:02", "02:00:00:00:00:01", ETH_P_IP)


class CaptureError(Exception):
    """A capture that cannot be read: missing file, not a capture, unsupported link type,
    a corrupt record (the message names the file, the packet and the byte offset)."""


@dataclass(frozen=True)
class LinkType:
    """How packets of one pcap link type (LINKTYPE_*) reach the network layer."""

    code: int
    name: str
    kind: str                   # "ethernet", "raw" (starts at the IP header) or "cooked"
    header: int                 # bytes in front of the network-layer packet
    proto_at: int | None        # offset of the EtherType in that header (raw IP: None)


#: The link types every reader and writer accepts, the LuaJIT driver included.
LINK_TYPES = {lt.code: lt for lt in (
    LinkType(1, "Ethernet", "ethernet", ETH_HLEN, ETH_HLEN - 2),
    LinkType(12, "raw IP (DLT_RAW, OpenBSD)", "raw", 0, None),
    LinkType(14, "raw IP (DLT_RAW, BSD/OS)", "raw", 0, None),
    LinkType(101, "raw IP", "raw", 0, None),
    LinkType(228, "raw IPv4", "raw", 0, None),
    LinkType(229, "raw IPv6", "raw", 0, None),
    LinkType(113, "Linux cooked (SLL)", "cooked", 16, 14),
    LinkType(276, "Linux cooked (SLL2)", "cooked", 20, 0),
)}
ETHERNET, RAW_IP, LINUX_SLL, LINUX_SLL2 = 1, 101, 113, 276
#: Link types whose packets start at the IP header.
RAW_IP_TYPES = frozenset(c for c, lt in LINK_TYPES.items() if lt.kind == "raw")
SUPPORTED = ", ".join(f"{lt.name} ({lt.code})" for lt in LINK_TYPES.values())


def link(linktype: int, path=None) -> LinkType:
    """The table's entry for a link type; a clear error for one nobody here reads."""
    lt = LINK_TYPES.get(linktype)
    if lt is None:
        where = f"{path}: " if path is not None else ""
        raise CaptureError(f"{where}link type {linktype} is not supported: captures are read "
                           f"in {SUPPORTED}")
    return lt


def lua_link_types() -> dict:
    """The table as the LuaJIT driver's configuration: code -> kind, header, proto_at."""
    return {lt.code: {"kind": lt.kind, "header": lt.header, "proto_at": lt.proto_at or 0}
            for lt in LINK_TYPES.values()}


def eth_for_ip(packet: bytes, header: bytes = DEFAULT_ETH_HEADER) -> bytes:
    """The synthetic Ethernet header for a raw IP packet: ``header``'s MACs, and the
    EtherType of IPv6 or IPv4 by the packet's version nibble."""
    ethertype = ETH_P_IPV6 if packet[:1] and packet[0] >> 4 == 6 else ETH_P_IP
    return eth_header(header[:6], header[6:12], ethertype)


def framer(linktype: int, header: bytes = DEFAULT_ETH_HEADER):
    """(to_ethernet, from_ethernet) for a link type: frames cross into the script as
    Ethernet (with ``header``'s MACs) and come back in the capture's own form. (None, None)
    for Ethernet."""
    lt = link(linktype)
    if lt.kind == "ethernet":
        return None, None
    if lt.kind == "raw":
        return (lambda data: eth_for_ip(data, header) + data), (lambda orig, frame: frame[ETH_HLEN:])
    hdr, at = lt.header, lt.proto_at

    def to_eth(data):
        return header[:ETH_HLEN - 2] + data[at:at + 2] + data[hdr:]

    def from_eth(orig, frame):
        return orig[:hdr] + frame[ETH_HLEN:]
    return to_eth, from_eth


# ---------------------------------------------------------------------- writing
_PCAP_HEADER = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
PCAP_HEADER_SIZE = _PCAP_HEADER.size
# pcapng: block types (section header, interface description, enhanced, simple and obsolete
# packet blocks), the section's byte-order magic, option codes.
SHB, IDB, EPB, SPB, OPB, BYTE_ORDER_MAGIC = 0x0A0D0D0A, 1, 6, 3, 2, 0x1A2B3C4D
OPT_END, OPT_COMMENT, OPT_SHB_USERAPPL, OPT_IF_TSRESOL = 0, 1, 4, 9


def lua_format() -> dict:
    """The formats' numbers as the LuaJIT driver's configuration."""
    return {"magic_us": PCAP_MAGIC_US, "magic_ns": PCAP_MAGIC_NS, "shb": SHB, "idb": IDB,
            "epb": EPB, "spb": SPB, "opb": OPB, "bom": BYTE_ORDER_MAGIC, "opt_end": OPT_END,
            "opt_tsresol": OPT_IF_TSRESOL}


def pcap_header(linktype: int, nano: bool = False) -> bytes:
    """A pcap file header (little-endian, version 2.4) for microsecond or nanosecond times."""
    link(linktype)
    return _PCAP_HEADER.pack(PCAP_MAGIC_NS if nano else PCAP_MAGIC_US, 2, 4, 0, 0, MAX_RECORD,
                             linktype)


def pcap_record(data: bytes, seconds: float, nano: bool = False) -> bytes:
    """One pcap record: its header (time, captured and original length) and the bytes."""
    sec, frac = divmod(round(seconds * (1e9 if nano else 1e6)), 10**9 if nano else 10**6)
    return _RECORD.pack(sec, frac, len(data), len(data)) + bytes(data)


def write_pcap(path, linktype: int, packets, nano: bool = False) -> None:
    """A pcap file of ``packets``, (bytes, time in seconds) pairs, in link type ``linktype``."""
    with open(path, "wb") as f:
        f.write(pcap_header(linktype, nano))
        for data, seconds in packets:
            f.write(pcap_record(data, seconds, nano))


def _block(kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", kind, n) + body + struct.pack("<I", n)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def write_pcapng(path, packets, linktype: int = ETHERNET, nano: bool = False) -> None:
    """A pcapng file: one section, one interface, one Enhanced Packet Block per packet of
    ``packets`` ((bytes, time in seconds, comment or None)), the comment as opt_comment
    (Wireshark shows it; ``tshark -Y 'frame.comment contains "drop"'`` filters on it)."""
    link(linktype)
    digits = 9 if nano else 6
    with open(path, "wb") as f:
        shb = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) \
            + _option(OPT_SHB_USERAPPL, b"packetscript_lab") + _option(OPT_END, b"")
        f.write(_block(SHB, shb))
        f.write(_block(IDB, struct.pack("<HHI", linktype, 0, 0)
                       + _option(OPT_IF_TSRESOL, bytes([digits])) + _option(OPT_END, b"")))
        for data, seconds, comment in packets:
            t = round(seconds * 10**digits)
            body = struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(data), len(data)) + data
            body += b"\0" * (-len(body) % 4)
            if comment is not None:
                body += _option(OPT_COMMENT, comment.encode("utf-8", "replace")) \
                    + _option(OPT_END, b"")
            f.write(_block(EPB, body))


# ---------------------------------------------------------------------- reading
def read(path: str | os.PathLike):
    """(link type, batches of (frames as bytes, times in ms)) of a pcap or pcapng file.

    Raises CaptureError for a missing, unreadable or corrupt file, naming the packet and
    byte offset where it goes wrong, and never skips a record. Gzipped files are read too.
    """
    return _open(Path(path), False)


def read_commented(path: str | os.PathLike):
    """As :func:`read`, with each batch's pcapng packet comments (None where there is none)
    as a third list."""
    return _open(Path(path), True)


def read_packets(path: str | os.PathLike, most: int | None = None):
    """(link type, [(time offset in seconds from the first packet, bytes)]) of a capture
    of a supported link type; at most ``most`` packets, else a CaptureError."""
    frames: list[tuple[float, bytes]] = []
    linktype, batches = read(path)
    link(linktype, path)
    for datas, times_ms in batches:
        frames += [(t / 1000.0, bytes(d)) for d, t in zip(datas, times_ms)]
        if most is not None and len(frames) > most:
            batches.close()
            raise CaptureError(f"{path}: more than {most} packets")
    t0 = frames[0][0] if frames else 0.0
    return linktype, [(max(0.0, t - t0), d) for t, d in frames]


def _reader(path: Path):
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapReader

    if not path.exists():
        raise CaptureError(f"{path}: no such file")
    if path.is_dir():
        raise CaptureError(f"{path} is a directory, not a capture file")
    try:
        return RawPcapReader(str(path))
    except (Scapy_Exception, EOFError, OSError, ValueError) as exc:
        raise CaptureError(f"{path} is not a pcap or pcapng file ({exc}); "
                           "write captures with tcpdump -w, Wireshark or scapy's wrpcap") from None


def _open(path: Path, comments: bool):
    """Every record is accounted for: a record that is not a packet (a header claiming more
    bytes than any packet has, an empty all-zero header as in a sparse or overwritten file,
    a packet cut short, a pcapng packet naming an interface the file never declared) stops
    the read with ``corrupt capture at packet N (byte offset X)``, instead of a library
    warning and a skipped packet, or minutes spent reading zeros."""
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader

    reader = _reader(path)
    pcapng = isinstance(reader, RawPcapNgReader)
    packets = iter(reader)
    read_ = [0]      # pcapng packets read so far, for the position of a problem
    problems = _ScapyReadProblems(lambda: (read_[0] + 1, _tell(reader)))
    # First in line: scapy's own filter silences a warning repeated within seconds, which
    # would let the second read of a bad file in one process skip packets silently.
    scapy_log.filters.insert(0, problems)
    try:
        first = next(packets, None)
    except (Scapy_Exception, ValueError, struct.error) as exc:
        scapy_log.removeFilter(problems)
        reader.close()
        raise CaptureError(f"{path}: corrupt capture ({exc})") from None
    if first is None:
        scapy_log.removeFilter(problems)
        reader.close()
        if problems.messages:
            raise _problem_error(path, problems.messages[0])
        return getattr(reader, "linktype", ETHERNET), iter(())
    linktype = first[1].linktype if pcapng else reader.linktype

    def batches():
        try:
            yield from (_pcapng_batches(path, linktype, first, packets, problems, comments, read_)
                        if pcapng else _pcap_batches(path, reader, first, packets, problems, comments))
        except (Scapy_Exception, ValueError, struct.error) as exc:
            raise CaptureError(f"{path}: corrupt capture ({exc})") from None
        finally:
            scapy_log.removeFilter(problems)
            reader.close()
    return linktype, batches()


def _pcap_batches(path: Path, reader, first, packets, problems, comments: bool):
    """Batches of a pcap file, each record checked where a batch looks suspect."""
    done, offset = 0, 24                 # packets read; byte offset of the next record
    per_ms = 1e6 if getattr(reader, "nano", False) else 1e3   # ns or µs pcap
    chunk = [first] + list(itertools.islice(packets, BATCH - 1))
    while chunk:
        frames = [d for d, _ in chunk]
        data, meta = chunk[-1]
        # The common case costs a few C-speed passes; only a suspect batch is walked.
        if problems.messages or not all(frames) or len(data) < min(meta.caplen, _SCAPY_MTU):
            _check_pcap_records(path, chunk, done, offset, problems)
        if max(map(len, frames)) >= _SCAPY_MTU:    # scapy kept only part of a big packet
            offset += sum(16 + m.caplen for _, m in chunk)
        else:
            offset += 16 * len(chunk) + sum(map(len, frames))
        times = [sec * 1000.0 + frac / per_ms for _, (sec, frac, _w, _c) in chunk]
        yield (frames, times, [None] * len(frames)) if comments else (frames, times)
        done += len(chunk)
        chunk = list(itertools.islice(packets, BATCH))
    if not isinstance(reader.f, gzip.GzipFile) and offset < path.stat().st_size:
        raise CaptureError(f"{path}: corrupt capture at packet {done + 1} (byte offset {offset}): "
                           f"{path.stat().st_size - offset} bytes after packet {done} are not "
                           "a whole record: the file is truncated")


def _pcapng_batches(path: Path, linktype: int, first, packets, problems, comments: bool,
                    read_: list[int]):
    """Batches of a pcapng file's packets, all of one link type."""
    frames, times, notes = [], [], []
    for data, meta in itertools.chain([first], packets):
        if problems.messages:
            break
        if meta.linktype != linktype:
            raise CaptureError(f"{path}: mixes link types {linktype} and {meta.linktype}; "
                               "read one interface at a time (split it with editcap or tshark)")
        read_[0] += 1
        frames.append(data)
        # A simple packet block has no time: 0.
        times.append(0.0 if meta.tshigh is None else ((meta.tshigh << 32) | meta.tslow) * 1000 / meta.tsresol)
        notes.append(meta.comments[0].decode("utf-8", "replace") if meta.comments else None)
        if len(frames) == BATCH:
            yield (frames, times, notes) if comments else (frames, times)
            frames, times, notes = [], [], []
    if problems.messages:
        raise _problem_error(path, problems.messages[0])
    if frames:
        yield (frames, times, notes) if comments else (frames, times)


def _tell(reader) -> int | None:
    try:
        return reader.f.tell()
    except (OSError, ValueError, AttributeError):
        return None


def _check_pcap_records(path: Path, chunk, done: int, offset: int, problems) -> None:
    """Raise for the first record of a batch that is not a packet."""
    for i, (data, meta) in enumerate(chunk):
        at = f"{path}: corrupt capture at packet {done + i + 1} (byte offset {offset})"
        if meta.caplen > MAX_RECORD:
            raise CaptureError(f"{at}: its record header claims {meta.caplen} captured bytes, more "
                               f"than any packet has ({MAX_RECORD}): the file is corrupt")
        if not data and meta.wirelen == 0:
            raise CaptureError(f"{at}: an empty record (a header of zeros): from here on the file "
                               "holds no packets (a sparse, preallocated or overwritten file?)")
        if len(data) < min(meta.caplen, _SCAPY_MTU):
            raise CaptureError(f"{at}: the packet is cut short ({len(data)} of {meta.caplen} "
                               "bytes): the file is truncated")
        offset += 16 + meta.caplen
    if problems.messages:
        raise _problem_error(path, problems.messages[0])


_UNDECLARED = re.compile(r"invalid interface id (\d+)/(\d+)")


def _problem_error(path: Path, problem) -> CaptureError:
    """A CaptureError from what scapy complained about, and where."""
    message, packet, offset = problem
    near = f" (near byte offset {offset})" if offset is not None else ""
    m = _UNDECLARED.search(message)
    if m:
        return CaptureError(
            f"{path}: corrupt capture at packet {packet}{near}: it names interface {m.group(1)}, "
            f"but the file declares only {m.group(2)} interface(s) before it; every pcapng "
            "packet needs an Interface Description Block for its interface (was the file cut "
            "from a larger capture or concatenated? rewrite it with editcap or tshark)")
    return CaptureError(f"{path}: corrupt capture at packet {packet}{near}: {message}: "
                        "the file is truncated or corrupt")


class _ScapyReadProblems(logging.Filter):
    """scapy logs a cut or broken record (and skips it, or ends the capture there);
    collect those messages with where they happened (instead of printing them), so that
    the read fails with them."""

    def __init__(self, position):
        super().__init__()
        self.position = position            # () -> (packet number, byte offset or None)
        self.messages: list[tuple[str, int, int | None]] = []

    def filter(self, record) -> bool:
        message = record.getMessage()
        if message.startswith("more Pcap"):     # scapy's mark of a repeated warning
            message = message[5:]
        if message.startswith("Pcap"):
            self.messages.append((message, *self.position()))
            return False
        return True
