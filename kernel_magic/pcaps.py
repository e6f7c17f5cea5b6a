"""Reading pcap/pcapng files for the replay backend without dissecting packets."""
from __future__ import annotations

from IPython.core.error import UsageError

from packetscript_lab.backends.replay_run import ETHERNET, RAW_IP

MAX_PACKETS = 1_000_000


def read_frames(path: str) -> tuple[list[tuple[float, bytes]], bool]:
    """(time offset, bytes) pairs and whether packets start at the IP header.

    Read with the replay backend's checked reader (no dissection, and a corrupt record is
    an error, never a skipped packet).
    """
    from packetscript_lab.backends.replay import ReplayError, read_capture

    frames: list[tuple[float, bytes]] = []
    try:
        linktype, batches = read_capture(path)
        for datas, times_ms in batches:
            frames += [(t / 1000.0, bytes(d)) for d, t in zip(datas, times_ms)]
            if len(frames) > MAX_PACKETS:
                batches.close()
                raise UsageError(f"--pcap {path}: more than {MAX_PACKETS} packets; use "
                                 "packetscript_lab.replay() for batch runs")
    except ReplayError as exc:
        raise UsageError(f"--pcap {exc}") from None
    if not frames:
        raise UsageError(f"--pcap {path}: the file holds no packets")
    if linktype != ETHERNET and linktype not in RAW_IP:
        raise UsageError(f"--pcap {path}: link type {linktype} is neither Ethernet nor raw IP")
    t0 = frames[0][0]
    return [(max(0.0, t - t0), d) for t, d in frames], linktype in RAW_IP
