"""The run-handle protocol every backend's runs follow, and the bookkeeping they share.

A run is one script judging packets over time: attached to a live lab hook through NFQUEUE
(``lab.handle.AttachedScript``, backend "nfqueue"), loaded into the xt_LUA kernel module
(the same class, backend "kernel") or fed a capture at its pace
(``backends.replay_run.ReplayRun``, backend "replay"). The dashboard, the notebook summary
and the tests read all of them through ``RunHandle``; docs/CONTRACTS.md states what each
method promises.

The shared parts live here once: the packet counters, the ring of recent packets (kept raw,
formatted only when read), the errors of a script as plain dicts, and what replaced scripts
leave behind.
"""
from __future__ import annotations

import collections
from typing import Protocol, runtime_checkable

JUDGE_COUNTS = ("restarts", "timeouts", "crashes", "unjudged")
VERDICT_COUNTER = {"accept": "accepted", "drop": "dropped", "continue": "continued"}
COUNTER_NAMES = ("seen", "bytes", "accepted", "dropped", "continued", "modified",
                 "errors", "eth_modified", "internal_errors")


@runtime_checkable
class RunHandle(Protocol):
    """What every run offers, whichever backend judges its packets."""

    name: str
    backend: str          # "nfqueue", "kernel" or "replay"

    def stats(self) -> dict:
        """Counters since the run started ("seen", "bytes", "accepted", ... per backend)."""

    def series(self) -> list[dict]:
        """Samples of the counters over time, each with its time "t"."""

    def recent(self, limit: int | None = None) -> list[dict]:
        """The latest packets: t, summary, verdict, changed, changes, error."""

    def errors(self) -> list[dict]:
        """The script's runtime errors: message, line, count (replaced scripts' included)."""

    def output(self) -> list[str]:
        """Lines the script printed."""

    def replace(self, source) -> None:
        """Swap in a new script (its Lua source) between two packets."""

    def detach(self) -> dict:
        """End the run (again: no-op) and return its final stats."""


class Counters:
    """A run's packet counters. Workers add to the integers (a batch at a time, or with
    ``add`` a packet at a time); readers take a ``snapshot``."""

    __slots__ = COUNTER_NAMES

    def __init__(self) -> None:
        for n in COUNTER_NAMES:
            setattr(self, n, 0)

    def add(self, nbytes: int, verdict: str, modified: bool, error, eth_modified=False) -> None:
        """Count one judged packet of ``nbytes`` bytes."""
        self.seen += 1
        self.bytes += nbytes
        name = VERDICT_COUNTER[verdict]
        setattr(self, name, getattr(self, name) + 1)
        self.modified += bool(modified)
        self.eth_modified += bool(eth_modified)
        self.errors += error is not None

    def snapshot(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in COUNTER_NAMES}


class Recent:
    """The most recent packets of one run: (time, ip bytes before, ip bytes after or
    None, verdict, error, Ethernet header) each.

    Packets come in batches (one append per batch, not per packet); they are unpacked and
    described only when someone reads the entries.
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
        return entries_of(self.items(), limit)


def entries_of(items: list[tuple], limit: int | None = None) -> list[dict]:
    """The latest ``limit`` (default all) of ``Recent.items()`` as the dashboard lists them."""
    if limit is not None:
        items = items[-limit:] if limit > 0 else []
    return [describe(*item) for item in items]


def describe(t, before, after, verdict, error, eth) -> dict:
    """One recent packet as the dashboard lists it."""
    from packetscript_lab.core.fields import changed_fields, field_changes, summary

    return {
        "t": t,
        "summary": _safe(summary, eth + before),
        "verdict": verdict,
        "changed": _safe(changed_fields, eth + before, eth + after) if after is not None else [],
        "changes": _safe(field_changes, eth + before, eth + after) if after is not None else [],
        "error": None if error is None else str(error),
    }


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # a malformed packet must not break the listing
        return f"<{type(exc).__name__}: {exc}>"


def error_dicts(script) -> list[dict]:
    """A script's kept runtime errors (ScriptRuntimeError) as {"message", "line", "count"}."""
    return [{"message": e.message, "line": e.line, "count": e.count} for e in script.errors]


class Replaced:
    """What the scripts a run replaced leave behind: their errors, printed lines and
    wall-clock counts, so a run's numbers go on across ``replace()``."""

    def __init__(self) -> None:
        self.any = False                  # a record holds one script's packets
        self.errors: list[dict] = []
        self.output: list[str] = []
        self.counts = dict.fromkeys(JUDGE_COUNTS, 0)

    def retire(self, script) -> None:
        self.any = True
        self.errors += error_dicts(script)
        self.output += list(getattr(script, "output", None) or [])
        now = script.counts() if hasattr(script, "counts") else {}
        for k in JUDGE_COUNTS:
            self.counts[k] += now.get(k, 0)

    def all_errors(self, script) -> list[dict]:
        return self.errors + (error_dicts(script) if script is not None else [])

    def all_output(self, script) -> list[str]:
        return self.output + list(getattr(script, "output", None) or [])

    def judge_counts(self, script) -> dict:
        """restarts, timeouts, crashes, unjudged of every script the run has had."""
        now = script.counts() if script is not None and hasattr(script, "counts") else {}
        return {k: self.counts[k] + now.get(k, 0) for k in JUDGE_COUNTS}
