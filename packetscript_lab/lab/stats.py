"""The kernel-side counters of the lab: NFQUEUE's queues and the interfaces.

A queue worker's own counters and ring of recent packets are every run's
(``packetscript_lab.runs.Counters`` and ``Recent``).
"""
from __future__ import annotations


def parse_nfqueue(text: str) -> dict[int, dict[str, int]]:
    """Parse /proc/net/netfilter/nfnetlink_queue: per queue number, its drop counters.

    Columns: queue_num peer_portid queue_total copy_mode copy_range queue_dropped
    user_dropped id_sequence 1. ``queue_dropped`` counts packets dropped because the queue
    was full (without fail-open); ``user_dropped`` packets the netlink socket could not take.
    """
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        out[int(f[0])] = {"queue_total": int(f[2]), "queue_dropped": int(f[5]),
                          "user_dropped": int(f[6]), "id_sequence": int(f[7])}
    return out


NET_DEV_FIELDS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped")
NET_DEV_TX = ("tx_bytes", "tx_packets", "tx_errors", "tx_dropped")


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """Parse /proc/net/dev into per-interface rx/tx packet, byte, error and drop counters."""
    out = {}
    for line in text.splitlines()[2:]:
        if ":" not in line:
            continue
        name, rest = line.split(":", 1)
        v = [int(x) for x in rest.split()]
        name = name.strip()
        if name == "lo":
            continue
        out[name] = dict(zip(NET_DEV_FIELDS, v[0:4])) | dict(zip(NET_DEV_TX, v[8:12]))
    return out
