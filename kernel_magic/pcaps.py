"""Reading pcap/pcapng files for the notebook's ``--pcap`` without dissecting packets."""
from __future__ import annotations

from IPython.core.error import UsageError

from packetscript_lab.core import pcap

MAX_PACKETS = 1_000_000


def read_frames(path: str) -> tuple[list[tuple[float, bytes]], bool]:
    """(time offset, bytes) pairs and whether packets start at the IP header.

    Read with the one checked reader (core.pcap: no dissection, and a corrupt record is an
    error, never a skipped packet).
    """
    try:
        linktype, frames = pcap.read_packets(path, most=MAX_PACKETS)
    except pcap.CaptureError as exc:
        message = str(exc)
        if message.endswith(f"more than {MAX_PACKETS} packets"):
            message += "; use packetscript_lab.replay() for batch runs"
        raise UsageError(f"--pcap {message}") from None
    if not frames:
        raise UsageError(f"--pcap {path}: the file holds no packets")
    kind = pcap.link(linktype).kind
    if kind not in ("ethernet", "raw"):
        raise UsageError(f"--pcap {path}: link type {linktype} is neither Ethernet nor raw IP")
    return frames, kind == "raw"
