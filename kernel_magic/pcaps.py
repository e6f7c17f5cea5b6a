"""Reading pcap/pcapng files for the replay backend without dissecting packets."""
from __future__ import annotations

from IPython.core.error import UsageError

from kernel_magic.replay_run import ETHERNET, RAW_IP

MAX_PACKETS = 1_000_000


def read_frames(path: str) -> tuple[list[tuple[float, bytes]], bool]:
    """(time offset, bytes) pairs and whether packets start at the IP header.

    Uses scapy's raw readers: full dissection would be far slower than the script itself.
    """
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader, RawPcapReader

    reader = None
    for cls in (RawPcapReader, RawPcapNgReader):
        try:
            reader = cls(path)
            break
        except Scapy_Exception:
            continue
        except OSError as exc:
            raise UsageError(f"--pcap {path}: {exc.strerror or exc}") from None
    if reader is None:
        raise UsageError(f"--pcap {path}: not a pcap or pcapng file")
    frames: list[tuple[float, bytes]] = []
    linktype = None
    with reader:
        for data, meta in reader:
            ts, lt = _timestamp(meta), getattr(meta, "linktype", None) or reader.linktype
            if linktype is None:
                linktype = lt
            elif lt != linktype:
                raise UsageError(f"--pcap {path}: mixes link types {linktype} and {lt}")
            frames.append((ts, bytes(data)))
            if len(frames) > MAX_PACKETS:
                raise UsageError(f"--pcap {path}: more than {MAX_PACKETS} packets; use "
                                 "packetscript_lab.replay() for batch runs")
    if not frames:
        raise UsageError(f"--pcap {path}: the file holds no packets")
    if linktype != ETHERNET and linktype not in RAW_IP:
        raise UsageError(f"--pcap {path}: link type {linktype} is neither Ethernet nor raw IP")
    t0 = frames[0][0]
    return [(max(0.0, t - t0), d) for t, d in frames], linktype in RAW_IP


def _timestamp(meta) -> float:
    if hasattr(meta, "sec"):
        return meta.sec + meta.usec / 1e6
    # pcapng: 64-bit timestamp in units of tsresol
    return ((meta.tshigh << 32) | meta.tslow) / float(meta.tsresol)
