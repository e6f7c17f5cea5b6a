"""Where every packet that hit a script's queue rule went.

The kernel counts only some of the fates of a queued packet: the queue rule's own counter
(every packet it matched), and the queue's drops (``queue_dropped``: queue full without
fail-open; ``user_dropped``: the netlink socket could not take it). Packets that fail open
(queue or socket full with ``on_overload="accept"``) and packets that ``--queue-bypass``
lets through while no listener is bound are counted nowhere, so they are what is left:

    rule_packets == judged + passed_unjudged + queue_drops + in_flight

``judged`` is what the worker gave a verdict (script verdicts and internal failures),
``in_flight`` the queue's backlog (packets waiting for a verdict). The identity is exact
once traffic stops; while packets flow the parts are read one after the other (the rule
counter first, so a packet judged in between makes ``passed_unjudged`` lower, never
higher). One GSO packet is one rule match but may be queued as several segments.
"""
from __future__ import annotations

import re
import threading

from .iptables import queue_spec

_COUNTS = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$")


def parse_rule_counters(save_output: str) -> dict[str, list[tuple[str, int, int, str]]]:
    """``iptables-save -c`` output → {table: [(chain, packets, bytes, rule text)]}."""
    out: dict[str, list] = {}
    table = None
    for line in save_output.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            out.setdefault(table, [])
            continue
        m = _COUNTS.match(line)
        if m and table is not None:
            out[table].append((m.group(3), int(m.group(1)), int(m.group(2)), m.group(4)))
    return out


def queue_rule_packets(rules: dict, table: str, chain: str, queue_num, bit: int) -> int | None:
    """The packet counter of the lab's queue rule (found by its queue number, or list of
    balanced queues, and mark bit), or None when that rule is not in the ruleset."""
    mark = f"--mark {bit:#x}/{bit:#x} "
    num = f"{queue_spec(queue_num)} "
    for c, packets, _bytes, text in rules.get(table, ()):
        if c == chain and num in text + " " and mark in text + " ":
            return packets
    return None


class Tally:
    """Kernel counters of one attached script, kept cumulative.

    The queue's counters start again from zero when its queue is bound anew (a restarted
    listener), and a rule counter is gone once its rule is (detach, a flush): a value lower
    than the last one read starts a new run that is added to the old total, and a missing
    value keeps the last one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._base: dict[str, int] = {}

    def total(self, key: str, value: int | None) -> int:
        with self._lock:
            last = self._last.get(key, 0)
            if value is None:
                value = last
            elif value < last:
                self._base[key] = self._base.get(key, 0) + last
            self._last[key] = value
            return self._base.get(key, 0) + value


def account(rule_packets: int, judged: int, queue_drops: int, in_flight: int) -> dict[str, int]:
    """The accounting keys of ``h.stats()`` from the counters read."""
    unjudged = rule_packets - judged - queue_drops - in_flight
    return {"rule_packets": rule_packets, "judged": judged,
            "passed_unjudged": max(unjudged, 0), "in_flight": in_flight}
