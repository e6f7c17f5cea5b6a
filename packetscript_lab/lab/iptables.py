"""iptables rules inside one lab host.

An attached script is one rule: ``MATCH -m mark ! --mark BIT/BIT -j NFQUEUE --queue-num N
--queue-bypass``. ``--queue-bypass`` lets packets through while no listener is bound
(otherwise NFQUEUE drops them). The mark test is how ``XT_CONTINUE`` works: the worker
re-injects the packet with NF_REPEAT and BIT set, the hook is traversed again, this rule no
longer matches and the next rules of the chain decide. Each attached script has its own
bit, so several scripts in one chain continue into each other.
"""
from __future__ import annotations

import shlex

from .netns import NetNS
from .protocol import LabError

TABLES = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
EGRESS_CHAINS = ("OUTPUT", "POSTROUTING")


class RuleError(LabError):
    pass


def check_hook(table: str, chain: str) -> None:
    if table not in TABLES:
        raise RuleError(f"unknown table {table!r}; use one of {', '.join(TABLES)}")
    if chain not in TABLES[table]:
        raise RuleError(f"table {table!r} has no built-in chain {chain!r}; "
                        f"it has {', '.join(TABLES[table])}")


def mark_bit(queue_num: int) -> int:
    return 0x10000 << queue_num


def queue_rule(chain: str, match: str, queue_num: int, bit: int) -> list[str]:
    return [chain, *shlex.split(match or ""), "-m", "mark", "!", "--mark", f"{bit:#x}/{bit:#x}",
            "-j", "NFQUEUE", "--queue-num", str(queue_num), "--queue-bypass"]


class IPTables:
    """Adds and removes rules in one namespace with the given iptables program."""

    def __init__(self, ns: NetNS, program: str = "iptables"):
        self.ns = ns
        self.program = program

    def run(self, args: list[str]) -> str:
        res = self.ns.sh([self.program, *args], check=False)
        if res.returncode != 0:
            raise RuleError(f"{self.program} {' '.join(args)}: {(res.stderr or res.stdout).strip()}")
        return res.stdout

    def add(self, table: str, rule: list[str], position: int | None = None) -> None:
        if position is None:
            self.run(["-t", table, "-A", *rule])
        else:
            self.run(["-t", table, "-I", rule[0], str(position), *rule[1:]])

    def delete(self, table: str, rule: list[str]) -> None:
        self.run(["-t", table, "-D", *rule])

    def save(self) -> str:
        return self.ns.sh([f"{self.program}-save"] if not self.program.endswith("-save")
                          else [self.program]).stdout
