"""The lab end of a run: what the lab process holds for one attached script.

``Attached`` is a script judged through NFQUEUE (or a bare queue for benchmarks): its worker
keeps the recent packets, the script keeps its errors and printed lines. ``KernelRun`` is a
script loaded into the xt_LUA module by a LUA rule (``xtlua.backend.KernelRule``): it counts
from the rule counters, and the module hands no packets, errors or lines back. The client's
``AttachedScript`` reads both through the commands of ``commands.py``.
"""
from __future__ import annotations

import os
import tempfile

from packetscript_lab.runs import Replaced

from . import iptables as ipt
from .accounting import Tally, account
from .errors import LabError


class Attached:
    """Lab-side state of one script attached through a queue."""

    def __init__(self, name, host, table, chain, match, rule, queue_num, worker, thread,
                 options, session, backend):
        self.name, self.host, self.table, self.chain, self.match = name, host, table, chain, match
        self.rule, self.queue_num, self.worker, self.thread = rule, queue_num, worker, thread
        self.options, self.session, self.backend = options, session, backend
        self.replaced = Replaced()   # errors and wall-clock counts of the scripts replaced
        self.tally = Tally()         # the kernel's counters of its rule and queue, kept cumulative
        self.versions: tuple[int, ...] = (4,)   # IP versions with a queue rule (4 and/or 6)
        # Every queue the rule balances over (queues=N, fanout.py); queue_num is the first.
        self.queues: list[int] = [] if queue_num is None else [queue_num]

    @property
    def script(self):
        """The Judge that judges this handle's packets now (None: kernel or bare)."""
        return self.worker.script if self.worker is not None else None

    def info(self) -> dict:
        return {"name": self.name, "host": self.host, "table": self.table, "chain": self.chain,
                "match": self.match, "queue": self.queue_num, "queues": list(self.queues),
                "backend": self.backend,
                "ip": list(self.versions),
                "mark": ipt.mark_bit(self.queue_num) if self.queue_num is not None else None}

    def _settled(self) -> None:
        """Let a worker whose reports trail its verdicts (the native one) catch up."""
        settle = getattr(self.worker, "settle", None)
        if settle is not None:
            settle()

    def errors(self) -> list[dict]:
        self._settled()
        return self.replaced.all_errors(self.script)

    def output(self) -> list[str]:
        self._settled()
        return self.replaced.all_output(self.script)

    def recent(self, limit: int | None = None) -> list[dict]:
        self._settled()
        return self.worker.recent.entries(limit) if self.worker is not None else []

    def recorded(self) -> list[tuple]:
        """The kept packets as the script saw them (Ethernet frames) and what it did."""
        if self.worker is None:
            return []
        self._settled()
        return [(t, eth + before, None if after is None else eth + after, verdict,
                 None if error is None else str(error))
                for t, before, after, verdict, error, eth in self.worker.recent.items()]


class KernelRun(Attached):
    """A script in the xt_LUA module. ``changing()`` is the lab's context for a change of the
    host's rules (the queue workers' XT_CONTINUE shortcut is off while it lasts)."""

    def __init__(self, name, host, table, chain, match, options, session, rule, changing):
        super().__init__(name, host, table, chain, match, None, None, None, None, options,
                         session, "kernel")
        self.kernel_rule = rule
        self._changing = changing
        self._past: dict = {}    # counts of the rules that earlier replace() calls removed

    def load(self, source: str) -> None:
        with self._changing():
            _insert_script(self.kernel_rule.insert, source)

    def stats(self) -> dict:
        # The rule counters: packets that reached the script, and those that went on
        # (XT_CONTINUE); "stopped" is accepted + dropped, which counters cannot tell
        # apart. Changed bytes and script errors stay in the kernel (its log).
        c = self.kernel_rule.counters()
        stats = {k: c[k] + self._past.get(k, 0) for k in ("seen", "bytes", "continued", "stopped")}
        stats["queue_drops"] = 0
        # The module judges every packet in line: nothing waits, nothing passes unjudged.
        stats.update(account(stats["seen"], stats["seen"], 0, 0))
        return stats

    def replace(self, source: str) -> None:
        before = self.stats()
        with self._changing():
            _insert_script(self.kernel_rule.replace, source)
        self._past = before   # the new rules count from zero; the handle's counts go on

    def detach(self) -> dict:
        final = self.stats()
        with self._changing():
            self.kernel_rule.remove()
        return final


def kernel_runner(space):
    """Runs programs in a host's namespace for the kernel backend. Tests set
    PACKETSCRIPT_XT_LUA_STANDIN=1 to go through the stand-in for the xt_LUA module,
    which cannot be loaded on machines without loadable modules (xtlua/standin.py)."""
    def run(argv):
        return space.sh(argv, check=False)

    if os.environ.get("PACKETSCRIPT_XT_LUA_STANDIN") == "1":
        from packetscript_lab.xtlua.standin import StandInLuaTarget

        return StandInLuaTarget(run)
    return run


def _insert_script(insert, source: str) -> None:
    """Give the kernel the script through a file that lives only while the rule is added:
    iptables copies the text into the rule, so nothing is left behind."""
    with tempfile.NamedTemporaryFile("w", prefix="packetscript-", suffix=".lua") as f:
        f.write(source)
        f.flush()
        try:
            insert(f.name)
        except RuntimeError as exc:
            raise LabError(f"the kernel module refused the script: {exc}") from None
