"""The ``--traffic`` language: flows between lab hosts.

One spec, two uses: on a live lab each flow is driven by the Lab's traffic generators
(``udp_stream``, ``ping``, ``tcp_echo``); on the replay backend the same flows are made into
packets with scapy, time-stamped at the flow's rate, as the server's INPUT hook would see them.

Grammar (flows separated by ``;``)::

    udp  SRC DST[:PORT] [rate=PPS] [count=N] [size=BYTES]     default port 9000, rate 100
    ping SRC DST        [rate=PPS] [count=N]                   default rate 5
    tcp  SRC DST[:PORT] [connections=N] [size=BYTES]           default port 7000, 3 connections

SRC and DST are lab host names (``client``, ``server``, ``router``). DST may also be a lab
address (inside 10.77.0.0/16, e.g. an address nobody owns that a DNAT script rewrites); then
``to=HOST`` names the host that receives the udp/tcp traffic. Nothing outside the lab can
be addressed.
"""
from __future__ import annotations

import dataclasses
import ipaddress

DEFAULT_TRAFFIC = "udp client server:9000 rate=100"
DEFAULT_SECONDS = 5.0          # traffic length when a run has no --duration
LAB_NET = ipaddress.ip_network("10.77.0.0/16")   # the lab's addresses (packetscript_lab.lab.topology)
_KINDS = {"udp": 9000, "tcp": 7000, "ping": None}
_KEYS = {"udp": {"rate", "count", "size", "to"}, "ping": {"rate", "count"},
         "tcp": {"connections", "size", "to"}}


class TrafficError(ValueError):
    """A --traffic spec that cannot be understood."""


@dataclasses.dataclass(frozen=True)
class Flow:
    kind: str
    src: str
    dst: str
    port: int | None = None
    rate: float | None = None
    count: int | None = None
    size: int = 32
    connections: int = 3
    receiver: str | None = None     # host that listens when dst is an address

    def __str__(self) -> str:
        dst = f"{self.dst}:{self.port}" if self.port else self.dst
        return f"{self.kind} {self.src} → {dst}"

    def packet_count(self, seconds: float) -> int:
        """How many packets this flow offers in ``seconds`` (udp and ping)."""
        if self.count is not None:
            return self.count
        return max(1, int(round(self.rate * seconds)))


def parse_traffic(spec: str) -> list[Flow]:
    flows = []
    for part in spec.split(";"):
        words = part.split()
        if not words:
            continue
        flows.append(_parse_flow(words))
    if not flows:
        raise TrafficError("empty traffic spec; e.g. " + repr(DEFAULT_TRAFFIC))
    return flows


def _parse_flow(words: list[str]) -> Flow:
    kind = words[0].lower()
    if kind not in _KINDS:
        raise TrafficError(f"unknown flow kind {words[0]!r}; use udp, tcp or ping")
    if len(words) < 3:
        raise TrafficError(f"{' '.join(words)!r}: expected '{kind} SRC DST' (e.g. "
                           f"'{kind} client server')")
    src, dst = words[1], words[2]
    port = _KINDS[kind]
    if ":" in dst:
        dst, _, port_s = dst.partition(":")
        if kind == "ping":
            raise TrafficError("ping has no port")
        port = _number(port_s, "port", int)
        if not 0 < port < 65536:
            raise TrafficError(f"port {port} out of range")
    if _is_address(dst):
        if ipaddress.ip_address(dst) not in LAB_NET:
            raise TrafficError(f"{dst} is not a lab address: traffic stays inside the lab "
                               f"({LAB_NET})")
    elif not dst.isidentifier():
        raise TrafficError(f"{dst!r} is neither a lab host name nor a lab address")
    keys: dict[str, float] = {}
    receiver = None
    for word in words[3:]:
        key, eq, value = word.partition("=")
        if not eq or key not in _KEYS[kind]:
            allowed = ", ".join(sorted(_KEYS[kind]))
            raise TrafficError(f"{word!r}: {kind} flows take {allowed} (as key=value)")
        if key == "to":
            receiver = value
            continue
        keys[key] = _number(value, key, float if key == "rate" else int)
        if keys[key] <= 0:
            raise TrafficError(f"{key} must be positive")
    rate = keys.get("rate", {"udp": 100.0, "ping": 5.0}.get(kind))
    if rate is not None and rate > 20000:
        raise TrafficError(f"rate {rate:g} packets/s is more than the lab generates (20000)")
    return Flow(kind=kind, src=src, dst=dst, port=port, rate=rate,
                count=keys.get("count"), size=int(keys.get("size", 32)),
                connections=int(keys.get("connections", 3)), receiver=receiver)


def _is_address(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


def _number(text: str, what: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise TrafficError(f"{what} {text!r} is not a number") from None


# --- packets for the replay backend and for `%packetscript send` -------------------------

MAX_PACKETS = 1_000_000


def build_packets(flows: list[Flow], hosts: dict, seconds: float) -> list[tuple[float, bytes]]:
    """(time offset, Ethernet frame) pairs for ``flows`` over ``seconds``, sorted by time."""
    check_hosts(flows, hosts)
    out: list[tuple[float, bytes]] = []
    for flow in flows:
        if flow.kind != "tcp" and flow.packet_count(seconds) > MAX_PACKETS:
            raise TrafficError(f"{flow} would be {flow.packet_count(seconds)} packets; at most "
                               f"{MAX_PACKETS} are generated (lower the rate or the duration)")
        src = hosts[flow.src]
        if _is_address(flow.dst):
            # an address nobody owns: the frame as it leaves the source towards its first hop
            dst = _Addr(flow.dst, src.interfaces[0].peer_mac if getattr(src, "interfaces", None)
                        else "02:00:00:00:00:02")
        else:
            dst = hosts[flow.dst]
        out.extend(_flow_packets(flow, src, dst, seconds))
    out.sort(key=lambda pair: pair[0])
    return out


def check_hosts(flows: list[Flow], hosts) -> None:
    """Every host a flow names exists in this lab (before anything is attached or sent)."""
    for flow in flows:
        for name in (flow.src, flow.receiver, None if _is_address(flow.dst) else flow.dst):
            if name is not None and name not in hosts:
                raise TrafficError(f"no host {name!r} in this lab (hosts: {', '.join(hosts)})")


@dataclasses.dataclass
class _Addr:
    ip: str
    mac: str
    interfaces: tuple = ()


def _flow_packets(flow: Flow, src, dst, seconds: float):
    from kernel_magic import frames
    from kernel_magic.hosts import link_macs

    smac, dmac = link_macs(src, dst)

    def l2(proto, l4, ident):
        return frames.frame(smac, dmac, src.ip, dst.ip, proto, l4, ident=ident)

    if flow.kind == "udp":
        gap = 1.0 / flow.rate
        for i in range(flow.packet_count(seconds)):
            payload = f"seq={i:08d} ".encode().ljust(flow.size, b".")
            seg = frames.udp(src.ip, dst.ip, 40000 + i % 1000, flow.port, payload)
            yield i * gap, l2(17, seg, i)
    elif flow.kind == "ping":
        gap = 1.0 / flow.rate
        for i in range(flow.packet_count(seconds)):
            yield i * gap, l2(1, frames.icmp_echo(0x5053, i & 0xFFFF, b"packetscript-lab"), i)
    else:  # tcp: what the server sees of short client connections
        payload = b"hello packetscript ".ljust(flow.size, b".")
        f = frames.TCP_FLAGS
        t, ident = 0.0, 0
        for c in range(flow.connections):
            sport, seq = 41000 + c, 1000 * (c + 1)
            for flags, data, s in ((f["S"], b"", seq), (f["A"], b"", seq + 1),
                                   (f["P"] | f["A"], payload, seq + 1),
                                   (f["F"] | f["A"], b"", seq + 1 + len(payload))):
                ack = 0 if flags == f["S"] else 5000
                yield t, l2(6, frames.tcp(src.ip, dst.ip, sport, flow.port, s, ack, flags, data),
                            ident)
                t += 0.01
                ident += 1
            t += 0.2


# --- live lab ----------------------------------------------------------------------------

def drive(lab, flows: list[Flow], seconds: float) -> list[dict]:
    """Run ``flows`` on a live lab, one after another; returns one result dict per flow.

    Runs in a worker thread: results are returned, never printed.
    """
    results = []
    for flow in flows:
        row = {"flow": str(flow)}
        try:
            if flow.kind == "udp":
                n = flow.packet_count(seconds)
                res = lab.udp_stream(flow.src, flow.dst, port=flow.port, rate=flow.rate,
                                     duration=n / flow.rate, receiver=flow.receiver)
            elif flow.kind == "ping":
                res = lab.ping(flow.src, flow.dst, count=flow.packet_count(seconds),
                               interval=1.0 / flow.rate)
            else:
                res = lab.tcp_echo(flow.src, flow.dst, port=flow.port,
                                   connections=flow.connections, receiver=flow.receiver,
                                   payload=b"hello packetscript ".ljust(flow.size, b"."))
            row.update({k: v for k, v in dict(res).items() if isinstance(v, (int, float, str))})
        except Exception as exc:  # reported in the summary, not lost in the thread
            row["error"] = f"{type(exc).__name__}: {exc}"
        results.append(row)
    return results
