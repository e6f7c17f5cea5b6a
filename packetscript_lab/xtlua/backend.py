"""Kernel backend: attach a script with the real xt_LUA module (`-j LUA --script FILE`).

Everything here works through one callable, `run(argv) -> CompletedProcess`, that runs a
program inside the lab host's network namespace (the lab's `NetNS.sh(argv, check=False)`),
so no rule ever lands in the host's own namespace.

    detect(run)          -> Detection (truthy when the module and iptables' LUA extension exist)
    require(run)         -> raises KernelModuleMissing with the install route
    rule_args(...)       -> the iptables arguments of a LUA rule (from rules.py)
    KernelRule(run, ...) -> insert() / replace(path) / remove() / counters() of one attached script

Each attached script lives in a chain of its own, jumped to with the attach's match: the LUA
rule counts every packet the script saw, and a target-less rule after it counts the packets
that came back with XT_CONTINUE (they then return to the calling chain). The counting rule
repeats no match, so a script that rewrites what the match names (a DNAT with `-d ADDR`)
is counted right. Accepted and dropped packets both stop at the LUA rule, so counters cannot
tell them apart: `stopped` is their sum.
"""
from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Callable

from .rules import rule_args

__all__ = ["Detection", "KernelModuleMissing", "KernelRule", "INSTALL_ROUTE", "detect",
           "require", "rule_args", "counters"]

Run = Callable[[list], subprocess.CompletedProcess]

INSTALL_ROUTE = (
    "Install PacketScript's xt_LUA module: on OpenWrt, `opkg install kmod-ipt-lua "
    "iptables-mod-lua` (packages of xtables-addons); elsewhere build xtables-addons with "
    "OpenWrt's LUA patch (net/xtables-addons/patches/200-add-lua-packetscript.patch in "
    "openwrt/packages), which provides xt_LUA.ko and libxt_LUA.so, then `modprobe xt_LUA`. "
    "Until then use backend=\"nfqueue\" (same script, same verdicts, in userspace) and "
    "Script(..., profile=\"kernel\", faithful=True) for the kernel's arithmetic."
)
TARGETS_FILE = "/proc/net/ip_tables_targets"


class KernelModuleMissing(RuntimeError):
    """The xt_LUA kernel module (or iptables' LUA extension) is not available here."""

    def __init__(self, detection: "Detection"):
        self.detection = detection
        super().__init__(f"the PacketScript kernel module is not available: {detection.detail}. "
                         + INSTALL_ROUTE)


@dataclass
class Detection:
    kernel_target: bool       # LUA registered in the kernel (or xt_LUA loadable)
    iptables_extension: bool  # iptables knows `-j LUA` (libxt_LUA.so)
    detail: str

    @property
    def present(self) -> bool:
        return self.kernel_target and self.iptables_extension

    def __bool__(self) -> bool:
        return self.present


def detect(run: Run, program: str = "iptables") -> Detection:
    """Look for the LUA target in the namespace `run` executes in."""
    targets = run(["cat", TARGETS_FILE])
    loaded = targets.returncode == 0 and "LUA" in targets.stdout.split()
    loadable = False
    if not loaded:
        info = _try(run, ["modinfo", "-n", "xt_LUA"])
        loadable = info is not None and info.returncode == 0 and bool(info.stdout.strip())
    ext = _try(run, [program, "-j", "LUA", "--help"])
    has_ext = ext is not None and ext.returncode == 0 and "--script" in ext.stdout
    missing = []
    if not (loaded or loadable):
        missing.append(f"no LUA target in {TARGETS_FILE} and no loadable xt_LUA module")
    if not has_ext:
        missing.append(f"`{program} -j LUA --help` fails (no libxt_LUA extension)")
    return Detection(loaded or loadable, has_ext,
                     "; ".join(missing) or ("LUA target loaded" if loaded else "xt_LUA loadable"))


def _try(run: Run, argv: list[str]):
    try:
        return run(argv)
    except (OSError, subprocess.SubprocessError):   # program not installed
        return None


def require(run: Run, program: str = "iptables") -> Detection:
    found = detect(run, program)
    if not found:
        raise KernelModuleMissing(found)
    return found


def counters(run: Run, table: str, chain: str, tag: str,
             program: str = "iptables") -> list[tuple[int, int, int]]:
    """(rule number, packets, bytes) of every rule in the chain whose comment is `tag`."""
    res = run([program, "-t", table, "-L", chain, "-n", "-v", "-x", "--line-numbers"])
    if res.returncode != 0:
        raise RuntimeError(f"{program} -L {chain}: {(res.stderr or res.stdout).strip()}")
    out = []
    pattern = re.compile(r"/\* " + re.escape(tag) + r" \*/")
    for line in res.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0].isdigit() and pattern.search(line):
            out.append((int(fields[0]), int(fields[1]), int(fields[2])))
    return out


class KernelRule:
    """One script attached as a LUA rule plus its XT_CONTINUE counting rule, in a chain of
    its own that the attach's chain jumps to with the attach's match."""

    def __init__(self, run: Run, *, tag: str, table: str, chain: str, match: str = "",
                 function: str | None = None, state_id: int | None = None,
                 program: str = "iptables"):
        self.run, self.tag, self.table, self.chain = run, tag, table, chain
        self.match, self.function, self.state_id, self.program = match, function, state_id, program
        self.generation = 0
        self.script_path: str | None = None

    def _tag(self, kind: str, generation: int | None = None) -> str:
        return f"{self.tag}:{self.generation if generation is None else generation}:{kind}"

    def _ipt(self, *args: str) -> str:
        res = self.run([self.program, "-t", self.table, *args])
        if res.returncode != 0:
            raise RuntimeError(f"{self.program} {' '.join(args)}: "
                               f"{(res.stderr or res.stdout).strip()}")
        return res.stdout

    def chain_of(self, generation: int | None = None) -> str:
        """The script's own chain: a name from the tag (iptables allows 28 characters)."""
        digest = hashlib.sha1(self.tag.encode()).hexdigest()[:10]
        return f"PSL-{digest}-{self.generation if generation is None else generation}"

    def _add(self, script_path: str, at: int | None) -> None:
        """This generation's chain, counting rule and jump (at rule number `at` of the
        attach's chain, or appended), then the LUA rule as the last change.

        The LUA rule goes in last: with legacy iptables every table change re-runs the top
        level of every LUA rule in the table, and measured against the real module a script
        that registers a dynamic protocol cannot be loaded twice, so a change after it would
        fail. Undone if any step fails.
        """
        own = self.chain_of()
        jump = [*shlex.split(self.match), "-m", "comment", "--comment", self._tag("jump"), "-j", own]
        lua = rule_args(own, "", script_path, function=self.function,
                        state_id=self.state_id, tag=self._tag("lua"))
        try:
            self._ipt("-N", own)
            self._ipt("-A", own, "-m", "comment", "--comment", self._tag("continue"))
            self._ipt(*(("-I", self.chain, str(at)) if at else ("-A", self.chain)), *jump)
            self._ipt("-I", own, "1", *lua[1:])
        except RuntimeError:
            self._delete_generation(self.generation)
            raise

    def insert(self, script_path: str) -> None:
        """Add the rules; the kernel runs the script's top level now (errors refuse it)."""
        require(self.run, self.program)
        self._add(script_path, None)
        self.script_path = script_path

    def replace(self, script_path: str) -> None:
        """Put the new script's jump in front of the old one's, then remove the old rules.

        Packets keep meeting one of the two scripts throughout. (With legacy iptables every
        change reloads all LUA rules of the table, so their globals restart anyway.)
        """
        old = self.generation
        first = min(n for n, _, _ in counters(self.run, self.table, self.chain,
                                              self._tag("jump", old), self.program))
        self.generation += 1
        try:
            self._add(script_path, first)
        except RuntimeError:
            self.generation = old
            raise
        self._delete_generation(old)
        self.script_path = script_path

    def remove(self) -> None:
        self._delete_generation(self.generation)

    def _delete_generation(self, generation: int) -> None:
        """The jump to the generation's chain, then the chain; whatever of them exists."""
        for n, _, _ in sorted(counters(self.run, self.table, self.chain,
                                       self._tag("jump", generation), self.program), reverse=True):
            self._ipt("-D", self.chain, str(n))
        own = self.chain_of(generation)
        if self.run([self.program, "-t", self.table, "-F", own]).returncode == 0:
            self._ipt("-X", own)

    def counters(self) -> dict:
        """{"seen", "bytes", "continued", "stopped"} of the current script, from the rules."""
        own = self.chain_of()
        lua = counters(self.run, self.table, own, self._tag("lua"), self.program)
        cont = counters(self.run, self.table, own, self._tag("continue"), self.program)
        seen = sum(p for _, p, _ in lua)
        continued = sum(p for _, p, _ in cont)
        return {"seen": seen, "bytes": sum(b for _, _, b in lua), "continued": continued,
                "stopped": seen - continued}
