"""The traffic language: flows between lab hosts, for the CLI, the magic and ``Lab.traffic``.

Grammar (flows separated by ``;``; docs/lab.md#traffic-language shows it to users)::

    udp  SRC DST[:PORT] [rate=PPS] [count=N | duration=S] [size=BYTES] [sport=PORT] [to=HOST] [ip=4|6]
    ping SRC DST        [rate=PPS] [count=N | duration=S] [size=BYTES] [ip=4|6]
    tcp  SRC DST[:PORT] [connections=N] [size=BYTES] [to=HOST] [ip=4|6]
    pcap FILE           [from=HOST] [rate=PPS]

SRC and DST are lab host names. DST may also be a lab address (inside 10.77.0.0/16, e.g. one a
DNAT script rewrites, or in a dual-stack lab inside fd77::/16, written ``[fd77:0:2::100]:9000``
with a port); ``to=HOST`` then names the host that listens. ``ip=6`` sends over IPv6 between the
hosts' IPv6 addresses (a dual-stack lab). A udp or ping flow without ``count=``/``duration=``
lasts the run's length. Nothing outside the lab can be addressed.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import shlex
import threading

DEFAULT_TRAFFIC = "udp client server:9000 rate=100"   # what the default rule (udp 9000) matches
DEFAULT_SECONDS = 5.0          # length of a flow without count=/duration= when the run has none
LAB_NET = ipaddress.ip_network("10.77.0.0/16")        # the lab's addresses (lab/topology.py)
LAB_NET6 = ipaddress.ip_network("fd77::/16")          # a dual-stack lab's IPv6 addresses
MAX_RATE = 20000.0             # packets/s the lab's generators keep up with
MAX_PACKETS = 1_000_000        # per flow: load stays bounded
DOCS = "docs/lab.md#traffic-language"
KINDS = ("udp", "tcp", "ping", "pcap")

_PORT = {"udp": 9000, "tcp": 7000}
_RATE = {"udp": 100.0, "ping": 5.0}
_SIZE = {"udp": 64, "ping": 56, "tcp": 32}          # payload bytes, as the lab's generators send
_KEYS = {"udp": ("rate", "count", "duration", "size", "sport", "to", "ip"),
         "ping": ("rate", "count", "duration", "size", "ip"),
         "tcp": ("connections", "size", "to", "ip"),
         "pcap": ("from", "rate")}
# key: (type, lowest, highest)
_LIMITS = {"rate": (float, 0.0, MAX_RATE), "count": (int, 1, MAX_PACKETS),
           "duration": (float, 0.0, 3600.0), "size": (int, 1, 65000),
           "connections": (int, 1, 1000), "sport": (int, 1, 65535)}
TCP_PAYLOAD = b"hello packetscript "


class TrafficError(ValueError):
    """A traffic spec that cannot be understood; the message says what to write instead."""


@dataclasses.dataclass(frozen=True)
class Flow:
    kind: str
    src: str                        # sending host (pcap: the host the capture is sent from)
    dst: str | None = None          # host name or lab address (None for pcap)
    port: int | None = None
    rate: float | None = None       # packets/s; pcap: None means as fast as the lab sends
    count: int | None = None
    duration: float | None = None
    size: int | None = None
    connections: int = 3
    sport: int | None = None
    receiver: str | None = None     # host that listens when dst is an address
    path: str | None = None         # pcap file
    ip: int = 4                     # IP version (6: between the hosts' IPv6 addresses)

    def __str__(self) -> str:
        if self.kind == "pcap":
            return f"pcap {os.path.basename(self.path)} from {self.src}"
        host = f"[{self.dst}]" if ":" in self.dst and self.port else self.dst
        dst = f"{host}:{self.port}" if self.port else host
        return f"{self.kind} {self.src} → {dst}" + (" ip=6" if self.ip == 6 else "")

    def packet_count(self, seconds: float) -> int:
        """How many packets a udp or ping flow sends when the run lasts ``seconds``."""
        if self.count is not None:
            return self.count
        return max(1, int(round(self.rate * (self.duration or seconds))))

    def seconds(self, run_seconds: float) -> float:
        """About how long the flow's traffic lasts (0 when it cannot be known: pcap, tcp)."""
        if self.kind in ("udp", "ping"):
            return self.packet_count(run_seconds) / self.rate
        return 0.0

    def payload_size(self) -> int:
        return self.size if self.size is not None else _SIZE[self.kind]

    def tcp_payload(self) -> bytes:
        return TCP_PAYLOAD.ljust(self.payload_size(), b".")[:self.payload_size()]


# --- parsing -------------------------------------------------------------------------------

def parse_traffic(spec: str) -> list[Flow]:
    """Flows of ``spec``; a mistake raises :class:`TrafficError` naming it and the fix."""
    try:
        lexer = shlex.shlex(spec, posix=True, punctuation_chars=";")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as exc:          # an unclosed quote
        raise TrafficError(f"{spec!r}: {exc}") from None
    flows, words = [], []
    for token in tokens + [";"]:
        if set(token) != {";"}:
            words.append(token)
        elif words:
            flows.append(parse_flow(words))
            words = []
    if not flows:
        raise TrafficError(f"empty traffic spec; e.g. {DEFAULT_TRAFFIC!r} (see {DOCS})")
    return flows


def parse_flow(words: list[str]) -> Flow:
    kind = words[0].lower()
    if kind not in KINDS:
        raise TrafficError(f"unknown flow kind {words[0]!r}{_nearest(kind, KINDS)}; "
                           f"use {', '.join(KINDS)} (see {DOCS})")
    if _old_spelling(kind, words):
        raise TrafficError(f"{' '.join(words)!r} is the old command-line spelling; write "
                           f"{_respell(kind, words)!r} (see {DOCS})")
    if kind == "pcap":
        return _parse_pcap(words)
    if len(words) < 3 or "=" in words[1] or "=" in words[2]:
        raise TrafficError(f"{' '.join(words)!r}: expected '{kind} SRC DST' "
                           f"(e.g. '{kind} client server')")
    src, (dst, port) = words[1], _destination(kind, words[2])
    keys = _keys(kind, words[3:])
    rate = keys.get("rate", _RATE.get(kind))
    if "count" in keys and "duration" in keys:
        raise TrafficError(f"{' '.join(words)!r}: give count= or duration=, not both")
    if kind == "udp" and keys.get("size", 8) < 8:
        raise TrafficError("udp size must be at least 8 bytes (the datagram's sequence number)")
    ip = keys.get("ip", 6 if ":" in dst else 4)
    if is_address(dst) and ip != ipaddress.ip_address(dst).version:
        raise TrafficError(f"{dst} is an IPv{ipaddress.ip_address(dst).version} address: "
                           f"drop ip={ip} or address the host by name")
    return Flow(kind=kind, src=_host(src), dst=dst, port=port, rate=rate,
                count=keys.get("count"), duration=keys.get("duration"), size=keys.get("size"),
                connections=keys.get("connections", 3), sport=keys.get("sport"),
                receiver=_host(keys["to"]) if "to" in keys else None, ip=ip)


def _parse_pcap(words: list[str]) -> Flow:
    if len(words) < 2 or "=" in words[1]:
        raise TrafficError(f"{' '.join(words)!r}: expected 'pcap FILE' "
                           "(e.g. 'pcap capture.pcap from=client')")
    keys = _keys("pcap", words[2:])
    return Flow(kind="pcap", src=_host(keys.get("from", "client")), path=words[1],
                rate=keys.get("rate"))


def _destination(kind: str, text: str) -> tuple[str, int | None]:
    if text.startswith("["):              # [IPv6 address]:port
        dst, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise TrafficError(f"{text!r}: write an IPv6 address with a port as [ADDRESS]:PORT")
        colon, port_text = rest[:1], rest[1:]
    elif text.count(":") > 1:             # an IPv6 address without a port
        dst, colon, port_text = text, "", ""
    else:
        dst, colon, port_text = text.partition(":")
    port = _PORT.get(kind)
    if colon:
        if kind == "ping":
            raise TrafficError(f"{text!r}: ping has no port (write 'ping SRC {dst}')")
        port = _number("port", port_text, (int, 1, 65535))
    if is_address(dst):
        net = LAB_NET if ipaddress.ip_address(dst).version == 4 else LAB_NET6
        if ipaddress.ip_address(dst) not in net:
            raise TrafficError(f"{dst} is not a lab address: traffic stays inside the lab "
                               f"({LAB_NET}, and {LAB_NET6} in a dual-stack lab)")
        dst = str(ipaddress.ip_address(dst))
    else:
        _host(dst)
    return dst, port


def _keys(kind: str, words: list[str]) -> dict:
    allowed = _KEYS[kind]
    keys: dict = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or key not in allowed:
            what = f"is not a {kind} option{_nearest(key, allowed)}" if eq else "is not key=value"
            raise TrafficError(f"{word!r} {what}; {kind} flows take {', '.join(allowed)} "
                               f"(as key=value, see {DOCS})")
        if key in keys:
            raise TrafficError(f"{key}= is given twice")
        if key == "ip":
            if value not in ("4", "6"):
                raise TrafficError(f"ip={value}: the IP version is 4 or 6")
            keys[key] = int(value)
            continue
        keys[key] = value if key in ("to", "from") else _number(key, value, _LIMITS[key])
    return keys


def _number(what: str, text: str, limits):
    """``text`` as a number within ``limits`` (float lows are exclusive: a rate of 0 is no rate)."""
    kind, low, high = limits
    try:
        value = kind(text)
    except ValueError:
        raise TrafficError(f"{what} {text!r} is not a number") from None
    if value < low or (kind is float and value == low):
        raise TrafficError(f"{what} must be positive, not {text}")
    if value > high:
        raise TrafficError(f"port {value} out of range (1-65535)" if what == "port" else
                           f"{what} {value:g} is more than the lab generates ({high:g})")
    return value


def _host(name: str) -> str:
    if not name.isidentifier():
        raise TrafficError(f"{name!r} is neither a lab host name nor a lab address")
    return name


def is_address(text: str) -> bool:
    """An IPv4 or IPv6 address (not a host name)."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _nearest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- the command line's old spelling (`udp dst=server port=9000 receiver=server`) ------------

_OLD_KEYS = {"src", "dst", "port", "receiver", "interval", "path", "host"}


def _old_spelling(kind: str, words: list[str]) -> bool:
    if kind != "pcap" and (len(words) == 1 or "=" in words[1]):
        return True                   # no SRC: the old keys-only form
    return any(w.partition("=")[0] in _OLD_KEYS and "=" in w for w in words[1:])


def _respell(kind: str, words: list[str]) -> str:
    """The same flow in today's language, for the error message."""
    old = dict(w.partition("=")[::2] for w in words[1:] if "=" in w)
    given = [w for w in words[1:] if "=" not in w] + [None, None]    # SRC DST written already
    if kind == "pcap":
        head = [kind, old.pop("path", given[0] or "FILE"),
                f"from={old.pop('host', old.pop('from', 'client'))}"]
    else:
        dst, _, port = (old.pop("dst", None) or given[1] or "server").partition(":")
        port = old.pop("port", None) or port or _PORT.get(kind)
        head = [kind, old.pop("src", None) or given[0] or "client", f"{dst}:{port}" if port else dst]
    if "receiver" in old:
        old["to"] = old.pop("receiver")
    if "interval" in old:
        interval = old.pop("interval")
        try:
            old["rate"] = f"{1 / float(interval):g}"
        except (ValueError, ZeroDivisionError):
            pass
    return " ".join(head + [f"{k}={v}" for k, v in old.items()])


# --- hosts and driving flows on a live lab ---------------------------------------------------

def check_hosts(flows: list[Flow], hosts) -> None:
    """Every host and capture file a flow names exists, and no two flows listen on one port
    (checked before anything is attached or sent)."""
    listeners: set = set()
    for flow in flows:
        if flow.path is not None and not os.path.isfile(flow.path):
            raise TrafficError(f"pcap {flow.path}: no such file")
        for name in (flow.src, flow.receiver, flow.dst):
            if name is None or is_address(name) or name in hosts:
                continue
            raise TrafficError(f"no host {name!r} in this lab{_nearest(name, hosts)} "
                               f"(hosts: {', '.join(hosts)})")
        if flow.kind in ("udp", "tcp"):
            # flows run at the same time: two listeners on one port would share its packets
            where = (flow.kind, flow.receiver or flow.dst, flow.port, flow.ip)
            if where in listeners:
                raise TrafficError(f"two {flow.kind} flows to {where[1]} port {flow.port} at "
                                   "the same time; give each its own port (e.g. "
                                   f"{flow.dst}:{flow.port + 1})")
            listeners.add(where)


def check_load(flows: list[Flow], seconds: float) -> None:
    """Generated load stays bounded: at most MAX_PACKETS per flow."""
    for flow in flows:
        if flow.kind in ("udp", "ping") and flow.packet_count(seconds) > MAX_PACKETS:
            raise TrafficError(f"{flow} would be {flow.packet_count(seconds)} packets; at most "
                               f"{MAX_PACKETS} are generated (lower the rate or the duration)")


def run_flow(lab, flow: Flow, seconds: float) -> dict:
    """Drive one flow with the lab's generators; returns what the generator measured."""
    if flow.kind == "udp":
        n = flow.packet_count(seconds)
        return lab.udp_stream(flow.src, flow.dst, port=flow.port, rate=flow.rate,
                              duration=n / flow.rate, count=n, size=flow.payload_size(),
                              receiver=flow.receiver, sport=flow.sport or 0, ip=flow.ip)
    if flow.kind == "ping":
        return lab.ping(flow.src, flow.dst, count=flow.packet_count(seconds),
                        interval=1.0 / flow.rate, size=flow.payload_size(), ip=flow.ip)
    if flow.kind == "tcp":
        return lab.tcp_echo(flow.src, flow.dst, port=flow.port, connections=flow.connections,
                            receiver=flow.receiver, payload=flow.tcp_payload(), ip=flow.ip)
    sent = lab.replay_pcap(flow.src, flow.path, interval=1.0 / flow.rate if flow.rate else 0.0)
    return {"sent": sent}


def drive(lab, flows: list[Flow], seconds: float = DEFAULT_SECONDS) -> list[dict]:
    """Run ``flows`` at the same time on a live lab; one row per flow, in order.

    A row is ``{"flow": str(flow), **result}``, or ``{"flow": ..., "error": "..."}``: a failing
    flow never hides the others' results. Never prints (it runs in worker threads).
    """
    check_load(flows, seconds)
    rows: list[dict] = [{"flow": str(f)} for f in flows]

    def work(row: dict, flow: Flow) -> None:
        try:
            row.update(dict(run_flow(lab, flow, seconds)))
        except Exception as exc:  # reported in the row, not lost in the thread
            row["error"] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=work, args=pair, name=f"flow-{pair[1].kind}", daemon=True)
               for pair in zip(rows, flows)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rows
