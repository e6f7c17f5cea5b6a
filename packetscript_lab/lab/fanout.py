"""One script spread over several queues (``attach(..., queues=N)``).

The rule sends to N consecutive queues with ``--queue-balance A:B``; without
``--queue-cpu-fanout`` the kernel picks the queue by a hash of the packet's address pair
and protocol, the same in both directions, so one conversation always reaches the same
queue (docs/lab.md, Fan-out). Each queue has its own worker and its own copy of the script
(its own Lua state): a script global is per queue.

``Fan`` makes the N workers look like one to the lab process: counters add up, recent
packets merge by time, replacing swaps every copy, draining and stopping go to all.
All N workers set the same mark bit (the first queue's) for XT_CONTINUE, since the one
rule tests one bit whichever queue the packet went through.
"""
from __future__ import annotations

from packetscript_lab.runs import COUNTER_NAMES, entries_of

MAX_FANOUT = 16


def check_queues(queues) -> int:
    """``queues`` as a number of queues, or a clear error."""
    if isinstance(queues, bool) or not isinstance(queues, int) or not 1 <= queues <= MAX_FANOUT:
        raise ValueError(f"queues must be a whole number of queues from 1 to {MAX_FANOUT} "
                         f"(one worker per queue), not {queues!r}")
    return queues


def take_queues(free: list[int], n: int) -> list[int]:
    """The lowest run of ``n`` consecutive free queue numbers, taken out of ``free``
    (``--queue-balance`` names a range). None when there is no such run."""
    have = set(free)
    for first in sorted(free):
        run = list(range(first, first + n))
        if have.issuperset(run):
            for q in run:
                free.remove(q)
            return run
    return None


class Scripts:
    """The N copies of one script, seen as one by Replaced (errors, output, counts)."""

    def __init__(self, scripts: list):
        self.scripts = scripts

    @property
    def errors(self):
        return [e for s in self.scripts for e in s.errors]

    @property
    def output(self) -> list[str]:
        return [line for s in self.scripts for line in (getattr(s, "output", None) or [])]

    def counts(self) -> dict:
        out: dict = {}
        for s in self.scripts:
            for k, v in (s.counts() if hasattr(s, "counts") else {}).items():
                out[k] = out.get(k, 0) + v
        return out

    def close(self) -> None:
        for s in self.scripts:
            s.close()


class _Counters:
    def __init__(self, workers):
        self.workers = workers

    def snapshot(self) -> dict[str, int]:
        snaps = [w.counters.snapshot() for w in self.workers]
        return {n: sum(s.get(n, 0) for s in snaps) for n in COUNTER_NAMES}


class _Recent:
    def __init__(self, workers):
        self.workers = workers

    def items(self) -> list[tuple]:
        merged = sorted((i for w in self.workers for i in w.recent.items()), key=lambda i: i[0])
        return merged[-max(w.recent.size for w in self.workers):]

    def entries(self, limit: int | None = None) -> list[dict]:
        return entries_of(self.items(), limit)


class Fan:
    """N queue workers of one attached script, with the interface of one worker."""

    def __init__(self, workers: list, threads: list):
        self.workers, self.threads = workers, threads
        self.counters = _Counters(workers)
        self.recent = _Recent(workers)
        self.kind = getattr(workers[0], "kind", "netfilterqueue")

    @property
    def script(self):
        return Scripts([w.script for w in self.workers])

    @script.setter
    def script(self, new: Scripts) -> None:
        for w, s in zip(self.workers, new.scripts):
            w.script = s

    @property
    def continue_accepts(self) -> bool:
        return all(w.continue_accepts for w in self.workers)

    @continue_accepts.setter
    def continue_accepts(self, value: bool) -> None:
        for w in self.workers:
            w.continue_accepts = value

    @property
    def first_t(self):
        ts = [w.first_t for w in self.workers if w.first_t]
        return min(ts) if ts else 0.0

    @property
    def last_t(self):
        ts = [w.last_t for w in self.workers if w.last_t]
        return max(ts) if ts else 0.0

    def settle(self) -> None:
        """Each worker's reports catch up (the native workers'; see Attached._settled)."""
        for w in self.workers:
            if hasattr(w, "settle"):
                w.settle()

    def drain(self) -> None:
        for w in self.workers:
            w.drain()

    def stop(self) -> None:
        for w in self.workers:
            w.stop()

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)
