"""Options of a ``%%packetscript`` cell: the argument parser's result, checked and frozen.

The parser itself is declared with IPython's magic_arguments on the magic (so the docstring
is the help); this module turns its namespace into a :class:`RunOptions`, reports mistakes
as :class:`UsageError` and computes the cache key of a cell.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re

from IPython.core.error import UsageError

from packetscript_lab.core.flows import TrafficError, parse_traffic

BACKENDS = ("nfqueue", "kernel", "replay")
LUAS = ("luajit", "5.1", "5.4")
PACES = ("recorded", "fast")      # packetscript_lab.backends.replay_run.PACES
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
DEFAULT_NAME = "script"

# Options whose value usually starts with "-": argparse would read it as another option.
_VALUE_OPTIONS = ("--match", "--traffic")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    name: str = DEFAULT_NAME
    backend: str | None = None          # None: the lab's NFQUEUE backend where it can run, else replay
    host: str | None = None             # None: the lab's default ("server")
    table: str | None = None
    chain: str | None = None
    match: str | None = None
    lua: str = "luajit"
    profile: str = "lab"
    on_error: str = "drop"
    budget: int | None = None
    pcap: str | None = None
    duration: float | None = None       # None: the run goes on until stopped
    traffic: str | None = None
    dashboard: bool = True
    record: str | None = None           # a directory for a record of the run (docs/records.md)
    pace: str | None = None             # replay only; None: recorded
    queues: int = 1                     # nfqueue only: queues the rule balances over

    @property
    def finite(self) -> bool:
        """The run ends by itself: after --duration, or when its capture has been played."""
        return self.duration is not None or self.pcap is not None

    def script_kwargs(self) -> dict:
        """Keyword arguments shared by ``Script`` and ``Lab.attach``."""
        kw = {"lua": self.lua, "profile": self.profile, "on_error": self.on_error}
        if self.budget is not None:
            kw["budget"] = self.budget
        if self.record is not None and self.backend == "replay":
            # A recorded replay draws known random numbers, so verify draws them again.
            kw["seed"] = int(hashlib.sha256(self.record.encode()).hexdigest()[:7], 16)
        return kw

    def placement(self) -> dict:
        """Where a live script is hooked in; only the options the user gave."""
        fields = {"host": self.host, "table": self.table, "chain": self.chain, "match": self.match}
        return {k: v for k, v in fields.items() if v is not None}

    def same_attachment(self, other: "RunOptions") -> bool:
        """True when ``other`` can replace this run's script in place (same hook, same runtime)."""
        keys = ("backend", "host", "table", "chain", "match", "lua", "profile", "on_error",
                "budget", "pcap", "traffic", "pace", "queues")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


def parse(parser, argv: list[str]):
    """``parser.parse_args(argv)``, but an unknown option names the nearest known one."""
    known = sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--")})
    for tok in argv:
        if not tok.startswith("--") or tok == "--":
            continue
        flag = tok.split("=", 1)[0]
        if flag in known or len([k for k in known if k.startswith(flag)]) == 1:
            continue                       # exact, or an abbreviation argparse accepts
        near = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}? " if near else ""
        raise UsageError(f"unknown option {flag}: {hint}%%packetscript? lists every option")
    return parser.parse_args(argv)


def protect_values(argv: list[str]) -> list[str]:
    """Glue ``--match "-p udp"`` into ``--match=-p udp`` so argparse keeps the value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in _VALUE_OPTIONS and i + 1 < len(argv):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def from_namespace(ns) -> RunOptions:
    """Check a parsed namespace; every mistake becomes one UsageError sentence."""
    name = ns.name or DEFAULT_NAME
    for key, allowed in (("backend", BACKENDS + (None,)), ("lua", LUAS),
                         ("profile", ("lab", "kernel")), ("on_error", ("drop", "accept"))):
        if getattr(ns, key) not in allowed:
            raise UsageError(f"{key} {getattr(ns, key)!r}: use one of "
                             + ", ".join(a for a in allowed if a))
    if not NAME_RE.match(name):
        raise UsageError(f"script name {name!r}: use letters, digits, '_', '.', '-' (at most 32)")
    if ns.budget is not None and ns.budget <= 0:
        raise UsageError(f"--budget must be a positive number of instructions, not {ns.budget}")
    if ns.duration is not None and not (0 < ns.duration <= 3600):
        raise UsageError(f"--duration must be between 0 and 3600 seconds, not {ns.duration}")
    pcap = ns.pcap
    if pcap is not None:
        pcap = os.path.expanduser(pcap)
        if not os.path.isfile(pcap):
            raise UsageError(f"--pcap {ns.pcap}: no such file")
    if ns.pcap is not None and ns.traffic is not None:
        raise UsageError("give either --pcap or --traffic, not both")
    if ns.traffic is not None:
        try:
            parse_traffic(ns.traffic)
        except TrafficError as exc:
            raise UsageError(f"--traffic: {exc}") from None
    pace = getattr(ns, "pace", None)
    if pace is not None and pace not in PACES:
        raise UsageError(f"--pace {pace!r}: use one of {', '.join(PACES)}")
    if pace is not None and ns.backend in ("nfqueue", "kernel"):
        raise UsageError("--pace sets how the replay backend plays packets; the live lab sends "
                         "them at the traffic's own rate (drop --pace, or use --backend replay)")
    record = getattr(ns, "record", None)
    if record is not None:
        from packetscript_lab.recording import RecordError, check_target
        record = os.path.expanduser(record)
        try:
            check_target(record)
        except RecordError as exc:
            raise UsageError(f"--record: {exc}") from None
    queues = getattr(ns, "queues", 1)
    if not 1 <= queues <= 16:
        raise UsageError(f"--queues must be a number of queues from 1 to 16, not {queues}")
    if queues != 1 and ns.backend in ("kernel", "replay"):
        raise UsageError(f"--queues spreads the rule over NFQUEUE queues; the {ns.backend} "
                         "backend has none (drop --queues, or use --backend nfqueue)")
    if ns.match is not None and ns.backend == "replay":
        raise UsageError("--match selects packets with iptables; the replay backend has no "
                         "iptables and runs every packet of the traffic through the script")
    return RunOptions(
        name=name, backend=ns.backend, host=ns.host, table=ns.table, chain=ns.chain,
        match=ns.match, lua=ns.lua, profile=ns.profile, on_error=ns.on_error,
        budget=ns.budget, pcap=pcap, duration=ns.duration, traffic=ns.traffic,
        dashboard=not ns.no_dashboard, pace=pace, record=record, queues=queues,
    )


def cache_key(source: str, options: RunOptions) -> str:
    """Hash of everything that changes what the compiled cell does (like %%cython's cache)."""
    relevant = options.script_kwargs()        # lua, profile, on_error, budget (and a seed)
    blob = json.dumps([source, relevant], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()
