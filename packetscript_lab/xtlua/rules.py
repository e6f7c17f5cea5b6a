"""The portability rules: one id per kind of problem, with its severity and why.

`error`: the script cannot work in the kernel (it fails to load, crashes, or computes
something else). `warning`: it runs, but the kernel leaves a result the lab would not
(stale checksums, truncated division). docs/kernel.md renders this table.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str      # "error" | "warning"
    profiles: tuple    # profiles the rule applies to
    summary: str


_K = ("kernel",)
_ALL = ("lab", "kernel")

RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("syntax", "error", _ALL, "the checker cannot parse the script"),
    Rule("library", "error", _ALL,
         "a library the profile does not have (kernel: string, table, math, io, os, ...; "
         "lab: io, os, require, debug, ...)"),
    Rule("string-method", "error", _K, "a string method call; kernel strings have no methods"),
    Rule("lua51-syntax", "error", _K, "syntax newer than Lua 5.1 (//, bit operators, goto, <const>)"),
    Rule("float-literal", "error", _K, "a float literal; kernel numbers are integers"),
    Rule("power", "error", _K, "`^` is multiplication in the kernel (2^8 == 16)"),
    Rule("division", "warning", _K, "`/` is integer division, truncating toward zero"),
    Rule("script-size", "error", _K, "the script is over 32768 bytes (MAX_SCRIPT_SIZE)"),
    Rule("nul-byte", "error", _K, "a NUL byte; iptables copies the script only up to it"),
    Rule("function-name", "error", _K, "the --function name is over 256 bytes or not a name"),
    Rule("entry-missing", "error", _ALL, "no global function with the --function name"),
    Rule("state-id", "error", _K, "the --state id is outside 0..8 (iptables' limit)"),
    Rule("field-kept", "error", _K,
         "a field object kept and used later (shared-metatable bug: it reads another field)"),
    Rule("stale-checksum", "warning", _K,
         "a field change whose checksum the kernel does not fix"),
    Rule("skb-address", "error", _K,
         "`skb` passed to an address setter (wild pointer on 64-bit kernels)"),
    Rule("dynamic-protocols", "error", _K, "more than one register_dynamic_protbuf"),
    Rule("dynamic-protocol-bug", "error", _K,
         "a dynamic protocol feature that crashes (setter callbacks, payload without has_protocol)"),
    Rule("not-in-xt-lua", "error", _K,
         "a protocol the lab adds beyond xt_LUA (IPv6: packet_ip6, packet_icmp6)"),
)}

MAX_SCRIPT_SIZE = 32768
MAX_FUNCTION_NAME = 256
MAX_STATE_ID = 8
MAX_SCRIPT_PATH = 256          # bytes of --script the rule holds


def rule_args(chain: str, match: str | list[str], script_path: str, *,
              function: str | None = None, state_id: int | None = None,
              tag: str | None = None) -> list[str]:
    """A LUA rule's iptables arguments (everything after ``-t TABLE -A``):
    `CHAIN MATCH [-m comment --comment TAG] -j LUA --script FILE [--function] [--state]`."""
    if state_id is not None and not 0 <= state_id <= MAX_STATE_ID:
        raise ValueError(f"state id {state_id}: iptables accepts 0..{MAX_STATE_ID}")
    if len(script_path.encode()) > MAX_SCRIPT_PATH:
        raise ValueError(f"script path {script_path!r} is over {MAX_SCRIPT_PATH} bytes "
                         "(the rule's limit)")
    m = shlex.split(match) if isinstance(match, str) else list(match)
    args = [chain, *m]
    if tag:
        args += ["-m", "comment", "--comment", tag]
    args += ["-j", "LUA", "--script", script_path]
    if function is not None:
        args += ["--function", function]
    if state_id is not None:
        args += ["--state", str(state_id)]
    return args
