"""Counters of one attached script, its ring of recent packets, and kernel-side counters.

The worker only adds to integers and keeps each batch's lists as they are; summaries and
the list of changed fields are worked out when someone asks for them, not per packet.
"""
from __future__ import annotations

import collections
import time

COUNTER_NAMES = ("seen", "bytes", "accepted", "dropped", "continued", "modified",
                 "errors", "eth_modified", "internal_errors")


class Counters:
    __slots__ = COUNTER_NAMES

    def __init__(self) -> None:
        for n in COUNTER_NAMES:
            setattr(self, n, 0)

    def snapshot(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in COUNTER_NAMES}


class Recent:
    """The most recent packets of one script: (time, ip bytes before, ip bytes after or
    None, verdict, error, Ethernet header) each.

    The worker hands over whole batches (one append per batch, not per packet); they are
    unpacked only when someone reads the entries.
    """

    def __init__(self, size: int = 200):
        self.size = size
        self._batches: collections.deque = collections.deque()
        self._count = 0

    def add_batch(self, t: float, befores, afters, verdicts, errors: dict, eths) -> None:
        self._batches.append((t, befores, afters, verdicts, errors, eths))
        self._count += len(befores)
        while self._batches and self._count - len(self._batches[0][1]) >= self.size:
            self._count -= len(self._batches.popleft()[1])

    def items(self) -> list[tuple]:
        out = []
        for t, befores, afters, verdicts, errors, eths in list(self._batches):
            out += [(t, b, a, v, errors.get(i), e)
                    for i, (b, a, v, e) in enumerate(zip(befores, afters, verdicts, eths))]
        return out[-self.size:]

    def entries(self, limit: int | None = None) -> list[dict]:
        from packetscript_lab.core.fields import changed_fields, field_changes, summary

        items = self.items()
        if limit is not None:
            items = items[-limit:]
        out = []
        for t, before, after, verdict, error, eth in items:
            out.append({
                "t": t,
                "summary": _safe(summary, eth + before),
                "verdict": verdict,
                "changed": _safe(changed_fields, eth + before, eth + after) if after is not None else [],
                "changes": _safe(field_changes, eth + before, eth + after) if after is not None else [],
                "error": None if error is None else str(error),
            })
        return out


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # a malformed packet must not break the listing
        return f"<{type(exc).__name__}: {exc}>"


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


def now() -> float:
    return time.time()
