"""Export: the exact commands that deploy a script as an xt_LUA rule.

`export_script(source, chain=..., match=...)` checks the script for the kernel first and
raises NotExportable (carrying the Report) when it cannot work there. Otherwise it returns
an ExportPlan whose `render()` is a shell script: the script file, the iptables rule for any
Linux with xtables-addons' LUA target, and the OpenWrt packages and firewall include.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from ..core.netfilter import TABLES
from .checker import Report, check_source
from .rules import MAX_SCRIPT_PATH, MAX_STATE_ID, rule_args

__all__ = ["ExportPlan", "NotExportable", "export_script", "OPENWRT_PACKAGES"]

OPENWRT_PACKAGES = ("kmod-ipt-lua", "iptables-mod-lua")
DEFAULT_DIR = "/etc/packetscript"


class NotExportable(Exception):
    """The kernel checker found errors; `report` holds them."""

    def __init__(self, report: Report):
        self.report = report
        super().__init__(f"{report.file} cannot work in the kernel: "
                         f"{len(report.errors)} error(s)\n{report}")


@dataclass
class ExportPlan:
    name: str                 # the script's base name without .lua
    source: str
    path: str                 # where the script lives on the target
    table: str
    chain: str
    match: list[str]
    function: str | None
    state_id: int | None
    report: Report

    @property
    def tag(self) -> str:
        """The rule's comment: finds it again even after the script file has changed."""
        return f"packetscript:{self.name}"

    def rule_args(self) -> list[str]:
        """Everything after `iptables -t TABLE -A`: the rule itself."""
        return rule_args(self.chain, self.match, self.path, function=self.function,
                         state_id=self.state_id, tag=self.tag)

    def iptables_command(self) -> str:
        return shlex.join(["iptables", "-t", self.table, "-A", *self.rule_args()])

    def delete_command(self) -> str:
        """Deletes every rule with this script's tag, by number (highest first).

        Deleting by rule text would not work once the file changed: iptables compares the
        script text it reads from the file with the copy inside the rule.
        """
        t, c = shlex.quote(self.table), shlex.quote(self.chain)
        return (f"for n in $(iptables -t {t} -L {c} -n --line-numbers | "
                f"awk '/\\/\\* {self.tag} \\*\\// {{print $1}}' | sort -rn); do "
                f"iptables -t {t} -D {c} \"$n\"; done")

    def render(self) -> str:
        return "\n".join(self._header() + self._script_file() + self._linux() + self._openwrt())

    # sections
    def _header(self) -> list[str]:
        lines = ["#!/bin/sh",
                 f"# Deploy {self.name}.lua as a PacketScript (xt_LUA) rule: "
                 f"{self.table} {self.chain}.",
                 "# Checked for the kernel profile: no errors"
                 + (f", {len(self.report.warnings)} warning(s):" if self.report.warnings else ".")]
        for f in self.report.warnings:
            lines.append(f"#   line {f.line}: [{f.rule}] {f.message}")
            lines.append(f"#     fix: {f.fix}")
        lines += ["#",
                  "# Notes on the kernel module:"]
        lost = [opt for opt, val in (("--function", self.function), ("--state", self.state_id))
                if val is not None]
        if lost:
            lines.append(f"# - iptables-save (and iptables -L) keep only --script: {' and '.join(lost)} "
                         "are lost on save/restore; re-add the rule with this script instead.")
        else:
            lines.append("# - iptables-save keeps only --script; add --function/--state again "
                         "after a restore if you use them.")
        lines += [
            "# - The script's top level runs when the rule is inserted; with legacy iptables any",
            "#   later rule change reloads it and its globals start again.",
            "# - A script error or a non-number return drops the packet; test it in the lab first.",
            "",
        ]
        return lines

    def _script_file(self) -> list[str]:
        eof = _heredoc_marker(self.source)
        body = self.source if self.source.endswith("\n") else self.source + "\n"
        return ["## 1. The script file (iptables copies its text into the rule when it is added)",
                f"mkdir -p {shlex.quote(os.path.dirname(self.path) or '/')}",
                f"cat > {shlex.quote(self.path)} <<'{eof}'",
                body + eof,
                ""]

    def _linux(self) -> list[str]:
        return ["## 2a. Any Linux with xtables-addons built with the LUA (PacketScript) patch",
                self.iptables_command(),
                "# remove it again:",
                f"# {self.delete_command()}",
                ""]

    def _openwrt(self) -> list[str]:
        include = f"packetscript_{re.sub(r'[^A-Za-z0-9_]', '_', self.name)}"
        hook = os.path.join(os.path.dirname(self.path) or "/", f"{self.name}.firewall.sh")
        delete = self.delete_command()
        eof = _heredoc_marker(delete)
        return [
            "## 2b. OpenWrt: packages, then a firewall include that re-adds the rule on every",
            "##     firewall start/reload (use either the fw4 or the fw3 part)",
            "opkg update && opkg install " + " ".join(OPENWRT_PACKAGES)
            + "   # OpenWrt 25+: apk add " + " ".join(OPENWRT_PACKAGES),
            f"cat > {shlex.quote(hook)} <<'{eof}'",
            "#!/bin/sh",
            "# Remove the rule if the firewall kept it, then add it once.",
            delete,
            self.iptables_command(),
            eof,
            f"chmod 755 {shlex.quote(hook)}",
            "",
            "# fw4 (OpenWrt 22.03 and later): a script include in /etc/config/firewall:",
            f"#   config include '{include}'",
            "#       option type 'script'",
            f"#       option path '{hook}'",
            "#       option fw4_compatible '1'",
            "# fw4 itself is nftables: the LUA target needs an iptables command; if `iptables`",
            "# is missing: opkg install iptables-nft kmod-nft-compat",
            f"uci -q delete firewall.{include}",
            f"uci set firewall.{include}=include",
            f"uci set firewall.{include}.type=script",
            f"uci set firewall.{include}.path={shlex.quote(hook)}",
            f"uci set firewall.{include}.fw4_compatible=1",
            "# fw3 (OpenWrt 21.02 and earlier): the same include with reload=1 instead, or",
            f"# append the line `{hook}` to /etc/firewall.user:",
            f"# uci set firewall.{include}.reload=1",
            "uci commit firewall",
            "/etc/init.d/firewall restart",
            "# keep the script across sysupgrade:",
            f"grep -qx {shlex.quote(os.path.dirname(self.path) + '/')} /etc/sysupgrade.conf || "
            f"echo {shlex.quote(os.path.dirname(self.path) + '/')} >> /etc/sysupgrade.conf",
            "",
        ]


def _heredoc_marker(text: str) -> str:
    marker = "PACKETSCRIPT_EOF"
    while marker in text:
        marker += "_"
    return marker


def export_script(source: str, *, name: str = "script", chain: str, match: str = "",
                  table: str = "mangle", function: str | None = None,
                  state_id: int | None = None, path: str | None = None) -> ExportPlan:
    """The deployment plan for `source`; NotExportable when the kernel checker finds errors.

    ValueError for options iptables would refuse (unknown table, chain not in the table,
    state id outside 0..8).
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; use one of {', '.join(TABLES)}")
    if not chain or not re.fullmatch(r"[A-Za-z0-9_.-]+", chain):
        raise ValueError(f"bad chain name {chain!r}")
    if chain.isupper() and chain not in TABLES[table] and chain in sum(TABLES.values(), ()):
        raise ValueError(f"table {table!r} has no built-in chain {chain!r}; "
                         f"it has {', '.join(TABLES[table])}")
    if state_id is not None and not 0 <= state_id <= MAX_STATE_ID:
        raise ValueError(f"--state {state_id}: iptables accepts 0..{MAX_STATE_ID}")
    try:
        match_args = shlex.split(match or "")
    except ValueError as exc:
        raise ValueError(f"cannot split --match {match!r}: {exc}") from None
    base = re.sub(r"\.lua$", "", os.path.basename(name)) or "script"
    path = path or f"{DEFAULT_DIR}/{base}.lua"
    if len(path.encode()) > MAX_SCRIPT_PATH:
        raise ValueError(f"script path {path!r} is over {MAX_SCRIPT_PATH} bytes (the rule's limit)")
    report = check_source(source, "kernel", name=name, function=function or "process_packet",
                          state_id=state_id)
    if report.errors:
        raise NotExportable(report)
    return ExportPlan(base, source, path, table, chain, match_args, function, state_id, report)
