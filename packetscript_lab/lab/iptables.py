"""iptables rules inside one lab host.

An attached script is one rule: ``MATCH -m mark ! --mark BIT/BIT -j NFQUEUE --queue-num N
--queue-bypass``. ``--queue-bypass`` lets packets through while no listener is bound
(otherwise NFQUEUE drops them). The mark test is how ``XT_CONTINUE`` works: the worker
re-injects the packet with NF_REPEAT and BIT set, the hook is traversed again, this rule no
longer matches and the next rules of the chain decide. Each attached script has its own
bit, so several scripts in one chain continue into each other. When the queue rule is the
last rule of its chain and the chain's policy is ACCEPT, nothing follows it: going on is
accepting, and the worker gives NF_ACCEPT, sparing the kernel a second traversal.
"""
from __future__ import annotations

import os
import shlex

from ..core.netfilter import TABLES
from .netns import NetNS
from .protocol import LabError

EGRESS_CHAINS = ("OUTPUT", "POSTROUTING")


class RuleError(LabError):
    pass


def check_hook(table: str, chain: str) -> None:
    if table not in TABLES:
        raise RuleError(f"unknown table {table!r}; use one of {', '.join(TABLES)}")
    if chain not in TABLES[table]:
        raise RuleError(f"table {table!r} has no built-in chain {chain!r}; "
                        f"it has {', '.join(TABLES[table])}")


def ip6tables_program(iptables: str) -> str:
    """The ip6tables of the same family as ``iptables`` (iptables-legacy -> ip6tables-legacy),
    for the IPv6 rules of a dual-stack lab."""
    head, name = os.path.split(iptables)
    program = os.path.join(head, name.replace("iptables", "ip6tables", 1))
    if head and not os.path.exists(program):
        raise LabError(f"a dual-stack lab needs {program} next to {iptables} for its IPv6 "
                       "rules: install ip6tables (Debian/Ubuntu: the iptables package)")
    return program


def ip_versions(ip, dual_stack: bool) -> tuple[int, ...]:
    """The IP versions a script's rule is added for: ``ip`` 4 or 6, or None for every
    version the lab has (4, and 6 in a dual-stack lab)."""
    if ip is None:
        return (4, 6) if dual_stack else (4,)
    if ip not in (4, 6) or isinstance(ip, bool):
        raise RuleError(f"ip must be 4, 6 or None (every IP version the lab has), not {ip!r}")
    if ip == 6 and not dual_stack:
        raise RuleError("this lab is IPv4 only: start it dual-stack (Lab(..., ipv6=True), "
                        "--ipv6) to attach to IPv6 traffic")
    return (ip,)


def mark_bit(queue_num: int) -> int:
    return 0x10000 << queue_num


def queue_spec(queues) -> str:
    """The NFQUEUE target's queue as iptables prints it: ``--queue-num N`` for one queue,
    ``--queue-balance A:B`` for a run of them (the kernel picks one by a hash of the
    packet's address pair: a script spread over several queues, fanout.py)."""
    qs = [queues] if isinstance(queues, int) else list(queues)
    if len(qs) == 1:
        return f"--queue-num {qs[0]}"
    return f"--queue-balance {qs[0]}:{qs[-1]}"


def queue_rule(chain: str, match: str, queue_num, bit: int) -> list[str]:
    """``queue_num``: one queue, or a list of consecutive queues to balance over."""
    return [chain, *shlex.split(match or ""), "-m", "mark", "!", "--mark", f"{bit:#x}/{bit:#x}",
            "-j", "NFQUEUE", *queue_spec(queue_num).split(), "--queue-bypass"]


# Options that change a ruleset (everything else only reads it).
_CHANGES = {"-A", "--append", "-I", "--insert", "-D", "--delete", "-R", "--replace", "-F", "--flush",
            "-P", "--policy", "-N", "--new-chain", "-X", "--delete-chain", "-E", "--rename-chain"}


class IPTables:
    """Adds and removes rules in one namespace with the given iptables program.

    ``on_change(done)`` is called with False before a command that changes the rules and
    with True after it (whether it worked or not).
    """

    def __init__(self, ns: NetNS, program: str = "iptables", on_change=None):
        self.ns = ns
        self.program = program
        self.on_change = on_change

    def run(self, args: list[str]) -> str:
        changes = self.on_change is not None and any(a in _CHANGES for a in args)
        if changes:
            self.on_change(False)
        try:
            res = self.ns.sh([self.program, *args], check=False)
        finally:
            if changes:
                self.on_change(True)
        if res.returncode != 0:
            raise RuleError(f"{self.program} {' '.join(args)}: {(res.stderr or res.stdout).strip()}")
        return res.stdout

    def ends_with_queue(self, table: str, chain: str, queue_num) -> bool:
        """Is the queue rule the last of a built-in chain whose policy is ACCEPT? Then
        going on after it (XT_CONTINUE) is the same as accepting."""
        lines = self.run(["-t", table, "-S", chain]).splitlines()
        rules = [ln for ln in lines if ln.startswith(f"-A {chain} ")]
        return (f"-P {chain} ACCEPT" in lines and bool(rules)
                and f"{queue_spec(queue_num)} " in rules[-1] + " ")

    def add(self, table: str, rule: list[str], position: int | None = None) -> None:
        if position is None:
            self.run(["-t", table, "-A", *rule])
        else:
            self.run(["-t", table, "-I", rule[0], str(position), *rule[1:]])

    def delete(self, table: str, rule: list[str]) -> None:
        self.run(["-t", table, "-D", *rule])

    def _save_program(self) -> str:
        return self.program if self.program.endswith("-save") else f"{self.program}-save"

    def save(self) -> str:
        return self.ns.sh([self._save_program()]).stdout

    def save_counters(self) -> str:
        """The ruleset with each rule's packet and byte counters (``[packets:bytes] -A ...``),
        read in one go: the queue rules' counters are where packet accounting starts."""
        return self.ns.sh([self._save_program(), "-c"]).stdout
