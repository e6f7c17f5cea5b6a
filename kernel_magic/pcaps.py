"""Reading pcap/pcapng files for the notebook's ``--pcap`` without dissecting packets."""
from __future__ import annotations

from IPython.core.error import UsageError

from packetscript_lab.backends.flow_frames import MAX_PACKETS, read_capture
from packetscript_lab.core.pcap import CaptureError


def read_frames(path: str) -> tuple[list[tuple[float, bytes]], bool]:
    """(time offset, bytes) pairs and whether packets start at the IP header; a UsageError
    naming ``--pcap`` for a capture that cannot be replayed."""
    try:
        return read_capture(path)
    except CaptureError as exc:
        message = str(exc)
        if message.endswith(f"more than {MAX_PACKETS} packets"):
            message += "; use packetscript_lab.replay() for batch runs"
        raise UsageError(f"--pcap {message}") from None
