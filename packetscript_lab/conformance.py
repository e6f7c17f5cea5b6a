"""Conformance: the same script over the same packets on several backends, and where they differ.

    res = compare(source, packets, backends=("replay", "nfqueue"), lab=None)
    print(res)              # one row per packet: each backend's verdict and output
    res.differences         # the rows whose verdicts or bytes differ

Backends:
- "replay": the engine in this process (Script.run_ip);
- "faithful": the same, with the kernel's arithmetic and no checksum fix-up
  (profile="kernel", faithful=True) — shows what the module would compute, no privileges;
- "nfqueue": a Lab: the script attached at the client's OUTPUT hook, the packets sent from the
  client, the bytes captured on the next hop (exactly what left the client), verdicts from the
  handle's packet log;
- "kernel": the same through `backend="kernel"` (xt_LUA), where the module is present. It
  yields only "passed"/"dropped", from what arrived.
- "xtlua-vm": the real xt_LUA module in a QEMU guest (packetscript_lab.xtlua.vm; needs
  `packetscript kernel build` first). Exact verdicts (accept/drop/continue) from the rule
  counters, the bytes the module left, the module's error message from the kernel log, and
  "hang"/"crash" where the module stopped the VM (which is then restarted).

Packets are IPv4 packets (scapy packets, bytes, Ethernet frames or a pcap path). By default
they are readdressed from the lab client to the lab server (checksums recomputed) so that
every backend sees identical input bytes.
"""
from __future__ import annotations

import html
import time

from packetscript_lab.core.netutil import ETH_HLEN, ETH_P_IP, eth_header, ethertype
from packetscript_lab.script import ScriptError
from dataclasses import dataclass, field

__all__ = ["compare", "ConformanceResult", "PacketRow", "Outcome", "BACKENDS"]

BACKENDS = ("replay", "faithful", "nfqueue", "kernel", "xtlua-vm")


@dataclass
class Outcome:
    verdict: str               # accept | drop | continue, or passed | dropped (kernel)
    data: bytes | None         # the IP packet after the script; None when it did not pass
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict not in ("drop", "dropped", "hang", "crash")


@dataclass
class PacketRow:
    index: int
    summary: str
    outcomes: dict[str, Outcome]
    input: bytes = b""
    reasons: list[str] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return bool(self.reasons)


@dataclass
class ConformanceResult:
    backends: tuple
    rows: list[PacketRow]
    unavailable: dict[str, str] = field(default_factory=dict)   # backend -> why it did not run

    @property
    def differences(self) -> list[PacketRow]:
        return [r for r in self.rows if r.differs]

    @property
    def ok(self) -> bool:
        return not self.differences

    def _cells(self, row: PacketRow) -> list[str]:
        cells = []
        for b in self.ran:
            o = row.outcomes.get(b)
            if o is None:
                cells.append("-")
            else:
                changed = (f" [{_changed(row.input, o.data)}]"
                           if o.data is not None and o.data != row.input else "")
                cells.append(o.verdict + changed + (f" error: {o.error}" if o.error else ""))
        return cells

    @property
    def ran(self) -> list[str]:
        return [b for b in self.backends if b not in self.unavailable]

    def __str__(self) -> str:
        head = ["#", "packet", *self.ran, "differs"]
        body = [[str(r.index), r.summary, *self._cells(r), "; ".join(r.reasons) or ""]
                for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                 for line in [head, *body]]
        lines.append(f"{len(self.differences)} of {len(self.rows)} packet(s) differ")
        for b, why in self.unavailable.items():
            lines.append(f"{b}: not run: {why}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ["#", "packet", *self.ran, "differs"])
        rows = []
        for r in self.rows:
            style = ' style="background:#fdd"' if r.differs else ""
            cells = "".join(f"<td>{html.escape(c)}</td>"
                            for c in [str(r.index), r.summary, *self._cells(r),
                                      "; ".join(r.reasons)])
            rows.append(f"<tr{style}>{cells}</tr>")
        notes = "".join(f"<p>{html.escape(b)}: not run: {html.escape(w)}</p>"
                        for b, w in self.unavailable.items())
        return (f"<table><tr>{head}</tr>{''.join(rows)}</table>"
                f"<p>{len(self.differences)} of {len(self.rows)} packet(s) differ</p>{notes}")


# --- input ----------------------------------------------------------------------------------

def _ip_packets(packets) -> list[bytes]:
    if isinstance(packets, str):
        from packetscript_lab.core import pcap
        linktype, batches = pcap.read(packets)
        to_eth, _ = pcap.framer(linktype)
        packets = [to_eth(d) if to_eth else d for frames, _times in batches for d in frames]
    out = []
    for p in packets:
        raw = bytes(p)
        if raw and raw[0] >> 4 == 4:
            out.append(raw)
        elif len(raw) > ETH_HLEN and ethertype(raw) == ETH_P_IP:
            out.append(raw[ETH_HLEN:])
        else:
            raise ValueError(f"packet {len(out)} is not IPv4 (only IPv4 goes through xt_LUA)")
    return out


def _readdress(packets: list[bytes], src: str, dst: str) -> list[bytes]:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    out = []
    for i, raw in enumerate(packets):
        p = IP(raw)
        p.src, p.dst = src, dst
        p.id = 0x5000 + i        # distinct ids: packets are found again on the wire
        del p.chksum, p.len
        for layer in (TCP, UDP, ICMP):
            if p.haslayer(layer):
                del p[layer].chksum
        out.append(bytes(p))
    return out


def _summary(ip: bytes) -> str:
    from packetscript_lab.core.fields import summary
    from packetscript_lab.core.pcap import eth_for_ip
    try:
        return summary(eth_for_ip(ip) + ip)
    except Exception:          # a summary is a courtesy; a malformed packet still compares
        return f"{len(ip)} bytes"


# --- backends ------------------------------------------------------------------------------

def _run_replay(source, packets, eth, **options) -> list[Outcome]:
    from packetscript_lab import Judge
    with Judge(source, name="conformance", **options) as script:   # watched, as in replay
        if eth is not None:
            script.eth_header = eth
        out = []
        for ip in packets:
            r = script.run_ip(ip)
            err = r.error.message if r.error else None
            out.append(Outcome(r.verdict, r.data if r.verdict != "drop" else None, err))
    return out


def _run_lab(lab, source, packets, backend, options) -> list[Outcome]:
    client = lab.hosts["client"]
    iface = client.interfaces[0] if getattr(client, "interfaces", None) else None
    next_hop = iface.peer_host if iface else "server"
    bpf = f"ip and src host {client.ip}"
    match = f"-s {client.ip} -o {client.ifname}"
    kw = {} if backend == "kernel" else options
    handle = lab.attach(source, host="client", table="filter", chain="OUTPUT", match=match,
                        name=f"conformance-{backend}", backend=backend, **kw)
    try:
        cap = lab.capture(next_hop, timeout=1.5 + 0.05 * len(packets), bpf=bpf, wait=False,
                          raw=True)
        time.sleep(0.2)
        lab.send("client", packets, interval=0.02)
        frames = cap.packets()
        log = handle.recent() if backend != "kernel" else []
    finally:
        handle.detach()
    from packetscript_lab.core.fields import ip_field
    arrived = {}
    for frame in frames:
        ip = frame[ETH_HLEN:] if ethertype(frame) == ETH_P_IP else frame
        length = ip_field(ip, "ip.tot_len")
        ip = ip[:length] if length is not None else ip   # no Ethernet padding
        arrived.setdefault(ip_field(ip, "ip.id"), ip)
    ids = [ip_field(p, "ip.id") for p in packets]
    verdicts = [e.get("verdict") for e in log][-len(packets):] if log else []
    if len(verdicts) != len(packets):
        verdicts = [None] * len(packets)
    out = []
    unmatched = [ip for i, ip in arrived.items() if i not in ids]
    for pid, verdict in zip(ids, verdicts):
        data = arrived.get(pid)
        if data is None and verdict in ("accept", "continue") and unmatched:
            data = unmatched.pop(0)     # the script rewrote the IP id
        if verdict is None or backend == "kernel":
            verdict = "passed" if data is not None else "dropped"
        out.append(Outcome(verdict, data))
    return out


def _run_vm(source, packets, options) -> list[Outcome]:
    from packetscript_lab.xtlua.vm import XtLuaVM, load_build
    run = XtLuaVM(load_build()).run(source, packets, function=options.get("function"),
                                    state_id=options.get("state_id"))
    if run.load_error:
        return [Outcome("refused", None, f"rule refused: {run.load_error}")] * len(packets)
    return [Outcome(r.verdict, r.data if r.verdict in ("accept", "continue") else None, r.error)
            for r in run.results]


def _diff(row: PacketRow) -> None:
    items = list(row.outcomes.items())
    for (a, oa), (b, ob) in zip(items, items[1:]):
        exact = not {oa.verdict, ob.verdict} & {"passed", "dropped"}
        if exact and oa.verdict != ob.verdict:
            row.reasons.append(f"verdict {a}={oa.verdict} {b}={ob.verdict}")
        elif oa.passed != ob.passed:
            row.reasons.append(f"{a} {'passes' if oa.passed else 'drops'}, "
                               f"{b} {'passes' if ob.passed else 'drops'}")
        elif oa.passed and oa.data is not None and ob.data is not None and oa.data != ob.data:
            row.reasons.append(f"bytes {a}≠{b} ({_changed(oa.data, ob.data)})")


def _changed(a: bytes, b: bytes) -> str:
    from packetscript_lab.core.fields import changed_fields
    from packetscript_lab.core.pcap import eth_for_ip
    try:
        fields = changed_fields(eth_for_ip(a) + a, eth_for_ip(b) + b)
    except Exception:
        fields = []
    return ", ".join(fields) or f"{sum(x != y for x, y in zip(a, b))} byte(s)"


def _run_backend(b, results, unavailable, source, ips, eth, lab, script_options, vm_options):
    if b == "replay":
        results[b] = _run_replay(source, ips, eth, **script_options)
    elif b == "faithful":
        opts = dict(script_options, profile="kernel", faithful=True)
        results[b] = _run_replay(source, ips, eth, **opts)
    elif b == "xtlua-vm":
        results[b] = _run_vm(source, ips, vm_options)
    else:
        try:
            results[b] = _run_lab(lab, source, ips, b, script_options)
        except Exception as exc:
            if b != "kernel":
                raise
            unavailable[b] = str(exc)


def compare(source: str, packets, backends=("replay", "nfqueue"), lab=None, *,
            readdress: bool = True, vm_frame: bool = False,
            **script_options) -> ConformanceResult:
    """Run `source` over `packets` on each backend and line the outcomes up per packet.

    `lab` is a running Lab (pair or router topology); one is started (and closed) when a lab
    backend is asked for and none is given. `script_options` go to Script / Lab.attach
    (lua, profile, fix_checksums, ...). A "kernel" backend that is not present here is
    listed in `unavailable` with the reason instead of failing the comparison.
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    ips = _ip_packets(packets)
    needs_lab = any(b in ("nfqueue", "kernel") for b in backends)
    vm_options = {k: script_options[k] for k in ("function", "state_id") if k in script_options}
    own_lab = None
    if needs_lab and lab is None:
        from packetscript_lab import Lab
        lab = own_lab = Lab("pair")
    try:
        eth = None
        if lab is not None:
            client = lab.hosts["client"]
            iface = client.interfaces[0]
            if readdress:
                dst = lab.hosts["server"].ip
                ips = _readdress(ips, client.ip, dst)
            eth = eth_header(iface.peer_mac, iface.mac)
        elif readdress:
            ips = _readdress(ips, "10.77.0.1", "10.77.0.2")
        if lab is None and ("xtlua-vm" in backends or vm_frame):
            from packetscript_lab.xtlua.vm import GUEST_MAC, ROUTER_MAC
            eth = eth_header(ROUTER_MAC, GUEST_MAC)     # the frame the VM's router gets
        results: dict[str, list[Outcome]] = {}
        unavailable: dict[str, str] = {}
        for b in backends:
            try:
                _run_backend(b, results, unavailable, source, ips, eth, lab, script_options,
                             vm_options)
            except ScriptError as exc:     # not installed: the packets go by untouched
                results[b] = [Outcome("refused", None, f"script refused: {exc}")] * len(ips)
        rows = []
        for i, ip in enumerate(ips):
            row = PacketRow(i, _summary(ip), {b: results[b][i] for b in backends if b in results},
                            ip)
            _diff(row)
            rows.append(row)
        return ConformanceResult(tuple(backends), rows, unavailable)
    finally:
        if own_lab is not None:
            own_lab.close()


def compare_many(sources: dict, packets, backends=("replay", "faithful", "xtlua-vm"), lab=None,
                 *, readdress: bool = True, **script_options) -> dict:
    """`compare` for several scripts at once: {name: ConformanceResult}.

    The "xtlua-vm" backend runs all scripts in one VM (restarted only where the module hangs
    or crashes it); the other backends run per script as in `compare`.
    """
    ips = _ip_packets(packets)
    if readdress:
        ips = _readdress(ips, "10.77.0.1", "10.77.0.2")
    vm_runs = {}
    if "xtlua-vm" in backends:
        from packetscript_lab.xtlua.vm import Case, XtLuaVM, load_build
        names = list(sources)
        runs = XtLuaVM(load_build()).run_cases(
            [Case(n, sources[n], ips, script_options.get("function"),
                  script_options.get("state_id")) for n in names])
        for n, run in zip(names, runs):
            vm_runs[n] = ([Outcome("refused", None, f"rule refused: {run.load_error}")] * len(ips)
                          if run.load_error else
                          [Outcome(r.verdict, r.data if r.verdict in ("accept", "continue")
                                   else None, r.error) for r in run.results])
    others = tuple(b for b in backends if b != "xtlua-vm")
    out = {}
    for name, source in sources.items():
        res = compare(source, ips, backends=others, lab=lab, readdress=False,
                      vm_frame="xtlua-vm" in backends, **script_options) if others else None
        rows = []
        for i, ip in enumerate(ips):
            outcomes = {b: res.rows[i].outcomes[b] for b in others if b in res.rows[i].outcomes}
            if name in vm_runs:
                outcomes["xtlua-vm"] = vm_runs[name][i]
            row = PacketRow(i, _summary(ip), outcomes, ip)
            _diff(row)
            rows.append(row)
        out[name] = ConformanceResult(tuple(backends), rows,
                                      dict(res.unavailable) if res else {})
    return out
