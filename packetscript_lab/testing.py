"""Exercises that grade themselves: checks a (hidden) test makes against a student's script.

A test names the packets and says what must happen to them::

    from packetscript_lab import testing as pt

    fw = pt.cell("firewall")                       # the student's `%%packetscript firewall` cell
    syn = pt.tcp("client", "server", dport=80, flags="S")
    pt.expect_verdicts(fw, [(syn, "accept"), (pt.udp("client", "server", dport=53), "drop")])
    pt.expect_changes(pt.cell("nat"), pt.udp("client", "10.77.2.100", dport=9000),
                      {"ip.dst": "10.77.2.2"})
    pt.expect_delivery(pt.cell("limiter"), "udp client server:9000 count=100 rate=100",
                       received=(18, 22))

Each check runs on the replay backend (no privileges, a fresh script for every check) or,
with ``live=True``, in a lab of its own through NFQUEUE at the cell's hook. A check that
fails raises :class:`ExerciseFailure` (an AssertionError, so nbgrader and pytest count it)
whose message says, packet by packet, what the script did, what was expected, and the
script's own errors with their cell lines: feedback a student can act on.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import time

from packetscript_lab.core import frames as _frames
from packetscript_lab.core import results as _verdicts
from packetscript_lab.core.fields import field_value, ip_field
from packetscript_lab.core.netutil import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_FLAGS, eth_header

__all__ = ["ExerciseFailure", "Submission", "cell", "submission", "udp", "tcp", "ping",
           "verdicts_of", "expect_verdicts", "expect_changes", "expect_delivery"]

_ids = itertools.count(0x5100)     # IP ids: each test packet is found again by its id

# The notebook's runs, handed down by the notebook extension (kernel_magic, a floor above
# this module) when it loads: ``runs`` (name -> run with ``source`` and ``options``) and
# ``topology``. None outside a notebook.
_notebook = None


class ExerciseFailure(AssertionError):
    """A check failed; the message is written for the student."""


@dataclasses.dataclass
class Submission:
    """A student's script and where it is hooked (from the cell's options)."""

    source: str
    name: str = "script"
    lua: str = "luajit"
    profile: str = "lab"
    on_error: str = "drop"
    budget: int | None = None
    host: str = "server"
    table: str = "filter"
    chain: str = "INPUT"
    match: str = ""
    topology: str | dict = "pair"
    line_offset: int = 1          # the cell's magic line is line 1

    def script_options(self) -> dict:
        kw = {"lua": self.lua, "profile": self.profile, "on_error": self.on_error,
              "line_offset": self.line_offset}
        if self.budget is not None:
            kw["budget"] = self.budget
        return kw

    def hosts(self) -> dict:
        from packetscript_lab.lab.topology import describe
        return describe(self.topology)


def submission(source: str, **hook) -> Submission:
    """A Submission from a source string (``line_offset=0`` when it is not a cell)."""
    return Submission(source, **{"line_offset": 0, **hook})


def use_notebook(session) -> None:
    """Where :func:`cell` finds the notebook's cells (the extension calls this; None: none)."""
    global _notebook
    _notebook = session


def cell(name: str, **override) -> Submission:
    """The script of the last ``%%packetscript NAME`` cell run in this kernel, with its hook
    (host, table, chain, match) and compile options; ``override`` changes any of them."""
    session = _notebook
    run = session.runs.get(name) if session is not None else None
    if run is None:
        ran = ", ".join(session.runs) if session is not None and session.runs else "none"
        raise ExerciseFailure(
            f"no %%packetscript cell named {name!r} has run in this notebook (cells that ran: "
            f"{ran}). Run your cell first; its first line must be `%%packetscript {name} ...`.")
    o = run.options
    fields = {"source": run.source, "name": name, "lua": o.lua, "profile": o.profile,
              "on_error": o.on_error, "budget": o.budget, "topology": session.topology}
    fields.update({k: v for k, v in o.placement().items()})
    fields.update(override)
    return Submission(**fields)


# ------------------------------------------------------------------ packets
@dataclasses.dataclass
class Packet:
    """A test packet: its IP bytes, who sends it and a description for feedback."""

    src_host: str | None
    ip: bytes
    text: str
    topology: str | dict = "pair"

    def field(self, name: str):
        """A header field of the packet by its protocol-table name (``ip.id``, ``ip.daddr``)."""
        return ip_field(self.ip, name)

    @property
    def ident(self) -> int:
        return self.field("ip.id")

    def frame(self, hosts: dict, dst_host: str | None) -> bytes:
        """The Ethernet frame as the receiving host's hook sees it."""
        from packetscript_lab.lab.topology import link_macs
        src = hosts.get(self.src_host)
        dst = hosts.get(dst_host) if dst_host else None
        if src is not None and dst is not None:
            smac, dmac = link_macs(src, dst)
        elif src is not None:
            smac, dmac = src.interfaces[0].mac, src.interfaces[0].peer_mac
        else:
            smac, dmac = "02:77:00:00:00:01", "02:77:00:00:00:02"
        return eth_header(dmac, smac) + self.ip

    def __str__(self) -> str:
        return self.text


def _endpoint(name_or_ip: str, topology) -> tuple[str | None, str]:
    from packetscript_lab.lab.topology import describe, host_of_ip
    hosts = describe(topology)
    if name_or_ip in hosts:
        return name_or_ip, hosts[name_or_ip].ip
    try:
        addr = ipaddress.ip_address(name_or_ip)
    except ValueError:
        raise ValueError(f"{name_or_ip!r} is neither a host of the lab ({', '.join(hosts)}) "
                         "nor an address") from None
    if addr not in ipaddress.ip_network("10.77.0.0/16"):
        raise ValueError(f"{addr} is not a lab address (10.77.0.0/16)")
    return host_of_ip(hosts, str(addr)), str(addr)


def _ip_packet(src: str, dst: str, proto: int, l4: bytes, ttl: int) -> bytes:
    return _frames.ip4(src, dst, proto, l4, ident=next(_ids), ttl=ttl)


def udp(src: str, dst: str, dport: int = 9000, sport: int = 40000, payload: bytes = b"",
        ttl: int = 64, topology="pair") -> Packet:
    """A UDP packet from host (or lab address) ``src`` to ``dst``."""
    (sh, sip), (_, dip) = _endpoint(src, topology), _endpoint(dst, topology)
    ip = _ip_packet(sip, dip, IPPROTO_UDP, _frames.udp(sip, dip, sport, dport, payload), ttl)
    return Packet(sh, ip, f"UDP {sip}:{sport} > {dip}:{dport}", topology)


def tcp(src: str, dst: str, dport: int = 80, sport: int = 41000, flags: str = "S",
        seq: int = 1000, ack: int = 0, payload: bytes = b"", ttl: int = 64,
        topology="pair") -> Packet:
    """A TCP segment; ``flags`` as letters, e.g. "S", "SA", "A", "PA", "FA", "R"."""
    bad = set(flags) - set(TCP_FLAGS)
    if bad:
        raise ValueError(f"TCP flags are letters of {''.join(TCP_FLAGS)}, not {''.join(bad)}")
    bits = sum(TCP_FLAGS[f] for f in set(flags))
    (sh, sip), (_, dip) = _endpoint(src, topology), _endpoint(dst, topology)
    ip = _ip_packet(sip, dip, IPPROTO_TCP,
                    _frames.tcp(sip, dip, sport, dport, seq, ack, bits, payload), ttl)
    return Packet(sh, ip, f"TCP {sip}:{sport} > {dip}:{dport} [{flags}]", topology)


def ping(src: str, dst: str, seq: int = 0, ttl: int = 64, topology="pair") -> Packet:
    """An ICMP echo request."""
    (sh, sip), (_, dip) = _endpoint(src, topology), _endpoint(dst, topology)
    ip = _ip_packet(sip, dip, IPPROTO_ICMP, _frames.icmp_echo(0x5053, seq, b"packetscript-lab"), ttl)
    return Packet(sh, ip, f"ping {sip} > {dip} seq {seq}", topology)


# ------------------------------------------------------------------ running
@dataclasses.dataclass
class Outcome:
    packet: Packet
    verdict: str | None            # None: the packet never reached the script (live)
    before: bytes = b""
    after: bytes | None = None     # the frame after the script when it changed
    error: str | None = None


def _dst_host(sub: Submission, p: Packet) -> str | None:
    from packetscript_lab.lab.topology import describe, host_of_ip
    return host_of_ip(describe(sub.topology), p.field("ip.daddr"))


def verdicts_of(sub: Submission, packets: list[Packet], live: bool = False) -> list[Outcome]:
    """What the script does with each packet, in order, from a fresh script state."""
    if live:
        return _live_outcomes(sub, packets)
    from packetscript_lab.judge import Judge
    from packetscript_lab.recording import judge_entries
    from packetscript_lab.script import ScriptError

    hosts = sub.hosts()
    # The frame as the hook's host sees it: addressed to the hook's host on its LAN.
    frames = [p.frame(hosts, sub.host if sub.host in hosts else _dst_host(sub, p)) for p in packets]
    try:
        with Judge(sub.source, name=sub.name, **sub.script_options()) as j:
            entries = judge_entries(j, frames, [i * 0.01 for i in range(len(frames))])
    except ScriptError as exc:
        raise ExerciseFailure(f"your script {sub.name!r} does not compile: {exc}") from None
    return [Outcome(p, e.verdict, e.frame, e.after, e.error) for p, e in zip(packets, entries)]


def _live_outcomes(sub: Submission, packets: list[Packet]) -> list[Outcome]:
    from packetscript_lab.lab import Lab
    from packetscript_lab.script import ScriptError

    with Lab(sub.topology, sample_interval=0.2) as lab:
        try:
            h = lab.attach(sub.source, host=sub.host, table=sub.table, chain=sub.chain,
                           match=sub.match, name=sub.name, record=max(200, 4 * len(packets)),
                           **sub.script_options())
        except ScriptError as exc:
            raise ExerciseFailure(f"your script {sub.name!r} does not compile: {exc}") from None
        for p in packets:
            if p.src_host is None:
                raise ValueError(f"{p}: live packets are sent by a lab host; its source is none")
            seen = h.stats()["seen"]
            src = lab.hosts[p.src_host].interfaces[0]
            frame = eth_header(src.peer_mac, src.mac) + p.ip
            lab.send(p.src_host, [frame])
            deadline = time.monotonic() + 1.0      # a packet the hook never sees: None
            while time.monotonic() < deadline and h.stats()["seen"] == seen:
                time.sleep(0.01)
        kept = lab._call("recorded", name=h.name)
        h.detach()
    by_id = {}
    for _t, before, after, verdict, error in kept:
        ident = field_value(before, "ip.id")
        by_id.setdefault(ident, (before, after, verdict, error))
    out = []
    for p in packets:
        hit = by_id.get(p.ident)
        out.append(Outcome(p, None) if hit is None else
                   Outcome(p, hit[2], hit[0], hit[1], hit[3]))
    return out


def _feedback(sub: Submission, problems: list[str], total: int, what: str,
              outcomes: list[Outcome]) -> str:
    lines = [f"{sub.name}: {len(problems)} of {total} {what}:"] + [f"  {p}" for p in problems]
    errors = [o for o in outcomes if o.error]
    if errors:
        lines.append(f"Your script failed on {len(errors)} packet(s) (a failed packet gets the "
                     f"error verdict, {sub.on_error}); the first error: {errors[0].error}")
    return "\n".join(lines)


def expect_verdicts(sub: Submission, expected: list[tuple[Packet, str]], live: bool = False) -> None:
    """Each packet, sent in this order to a fresh script, gets its verdict
    ("accept", "drop" or "continue"; "pass" accepts either accept or continue)."""
    for _p, v in expected:
        if v not in (*_verdicts.ALL, "pass"):
            raise ValueError(f"expected verdict {v!r}: use accept, drop, continue or pass")
    outcomes = verdicts_of(sub, [p for p, _ in expected], live=live)
    problems = []
    for n, (o, (_p, want)) in enumerate(zip(outcomes, expected), 1):
        got = o.verdict
        if got is None:
            problems.append(f"packet {n}, {o.packet}: never reached your script at "
                            f"{sub.host} {sub.table}/{sub.chain}; expected {want}")
        elif got != want and not (want == "pass" and got in ("accept", "continue")):
            problems.append(f"packet {n}, {o.packet}: your script returned {got}, expected {want}"
                            + (f" (it failed: {o.error})" if o.error else ""))
    if problems:
        raise ExerciseFailure(_feedback(sub, problems, len(expected), "packets got the wrong verdict",
                                        outcomes))


# The names a test may use, and the protocol table's name of each.
_FIELD_ALIASES = {"ip.src": "ip.saddr", "ip.dst": "ip.daddr", "ip.saddr": "ip.saddr",
                  "ip.daddr": "ip.daddr", "ip.ttl": "ip.ttl", "ip.tos": "ip.tos", "ip.id": "ip.id",
                  "ip.proto": "ip.protocol", "eth.dst": "eth.dmac", "eth.src": "eth.smac",
                  "udp.sport": "udp.sport", "udp.dport": "udp.dport", "tcp.sport": "tcp.sport",
                  "tcp.dport": "tcp.dport"}


def _field_value(frame: bytes, field: str):
    """The value of ``layer.field`` in an Ethernet frame (addresses as text, others ints),
    read through the protocol table."""
    if field not in _FIELD_ALIASES:
        raise ValueError(f"field {field!r}: use one of {', '.join(sorted(_FIELD_ALIASES))}")
    return field_value(frame, _FIELD_ALIASES[field])


def expect_changes(sub: Submission, packet: Packet, fields: dict, verdict: str = "pass",
                   live: bool = False) -> None:
    """The packet gets ``verdict`` and leaves with these field values (e.g. {"ip.dst":
    "10.77.2.2", "udp.dport": 8080}); fields not named may change only in checksums."""
    (o,) = verdicts_of(sub, [packet], live=live)
    problems = []
    if o.verdict is None:
        problems.append(f"{packet}: never reached your script at {sub.host} {sub.table}/{sub.chain}")
    else:
        if not (o.verdict == verdict or (verdict == "pass" and o.verdict in ("accept", "continue"))):
            problems.append(f"{packet}: your script returned {o.verdict}, expected "
                            f"{'accept or continue' if verdict == 'pass' else verdict}")
        after = o.after if o.after is not None else o.before
        for field, want in fields.items():
            got = _field_value(after, field)
            if str(got) != str(want):
                before = _field_value(o.before, field)
                problems.append(f"{packet}: {field} is {got} after your script, expected {want}"
                                + (" (your script left it unchanged)" if got == before else ""))
        if o.after is not None:
            from packetscript_lab.core.fields import changed_fields
            named = {_FIELD_ALIASES.get(f, f) for f in fields}
            extra = [c for c in changed_fields(o.before, o.after)
                     if not c.endswith((".check", ".checksum")) and c not in named]
            if extra:
                problems.append(f"{packet}: your script also changed {', '.join(extra)}, which "
                                "should stay as they were")
    if problems:
        raise ExerciseFailure(_feedback(sub, problems, 1, "checks failed", [o]))


def expect_delivery(sub: Submission, traffic: str, received, seconds: float = 5.0,
                    live: bool = False) -> dict:
    """Drive ``traffic`` (the traffic language, docs/lab.md) through the script; the
    receivers get ``received`` packets in all: a number, or a (lowest, highest) range.
    Returns {"sent", "received"}."""
    from packetscript_lab.core import flows as flows_mod

    lo, hi = (received, received) if isinstance(received, int) else received
    flows = flows_mod.parse_traffic(traffic)
    if live:
        from packetscript_lab.lab import Lab
        from packetscript_lab.script import ScriptError
        with Lab(sub.topology, sample_interval=0.2) as lab:
            try:
                h = lab.attach(sub.source, host=sub.host, table=sub.table, chain=sub.chain,
                               match=sub.match, name=sub.name, **sub.script_options())
            except ScriptError as exc:
                raise ExerciseFailure(f"your script {sub.name!r} does not compile: {exc}") from None
            rows = flows_mod.drive(lab, flows, seconds)
            errors = h.errors()
            h.detach()
        sent = sum(r.get("sent", r.get("connections", 0)) for r in rows)
        got = sum(r.get("received", r.get("ok", 0)) for r in rows)
        first_error = f"{errors[0]['message']} (line {errors[0]['line']})" if errors else None
    else:
        from packetscript_lab.backends.flow_frames import build_packets
        from packetscript_lab.judge import Judge
        from packetscript_lab.recording import judge_entries
        from packetscript_lab.script import ScriptError
        pairs = build_packets(flows, sub.hosts(), seconds)
        try:
            with Judge(sub.source, name=sub.name, **sub.script_options()) as j:
                entries = judge_entries(j, [f for _, f in pairs], [t for t, _ in pairs])
        except ScriptError as exc:
            raise ExerciseFailure(f"your script {sub.name!r} does not compile: {exc}") from None
        sent = len(entries)
        got = sum(e.verdict != "drop" for e in entries)
        first_error = next((e.error for e in entries if e.error), None)
    if not lo <= got <= hi:
        want = f"{lo}" if lo == hi else f"between {lo} and {hi}"
        msg = (f"{sub.name}: with traffic {traffic!r} the receivers got {got} of {sent} packets; "
               f"expected {want}.")
        if first_error:
            msg += f"\nYour script failed on some packets; the first error: {first_error}"
        raise ExerciseFailure(msg)
    return {"sent": sent, "received": got}
