"""Traffic inside lab hosts: plain and raw sockets created inside the host's namespace.

Scapy is used for crafting (in the notebook) and for reading pcaps and compiling BPF
filters here, never for sending: scapy caches interfaces at import and would send on the
wrong one after a namespace switch. A socket created in a namespace stays in it, so each
function creates its sockets through ``NetNS.run`` and may use them from any thread.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time

from ..core import pcap
from ..core.netutil import (ETH_HLEN, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REPLY,
                            ICMPV6_ECHO_REQUEST, checksum)
from ..core.protocols import BY_NAME
from .netns import NetNS
from .protocol import LabError

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26


# Where an IP packet names its destination, from the protocol table.
_DADDR4 = slice(*BY_NAME["packet_ip"].field("daddr").byte_range)
_DADDR6 = slice(*BY_NAME["packet_ip6"].field("daddr").byte_range)


def family(addr: str) -> int:
    """The socket family of a lab address: IPv6 ones have colons."""
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _any(addr: str) -> str:
    return "::" if ":" in addr else "0.0.0.0"


def _listener(addr: str, kind: int) -> socket.socket:
    """A socket to listen on for traffic to ``addr``; an IPv6 one takes only IPv6, so an
    IPv4 and an IPv6 flow to one port each reach their own."""
    s = socket.socket(family(addr), kind)
    if ":" in addr:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return s


# -- sending --------------------------------------------------------------------------

def send_frames(ns: NetNS, ifname: str, frames: list[tuple[str, bytes]], interval: float = 0.0,
                budget=None) -> int:
    """Send ("l2", ethernet frame) on ``ifname`` or ("l3", IPv4 or IPv6 packet) through
    routing (IPPROTO_RAW sockets take the packet's own IP header, of either version).
    ``budget`` (limits.PacketBudget), when the lab's packet rate is limited, paces every sender."""
    v6 = any(kind == "l3" and data[:1] and data[0] >> 4 == 6 for kind, data in frames)

    def open_socks():
        l2 = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        l2.bind((ifname, 0))
        l3 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        l3v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) if v6 else None
        return l2, l3, l3v6

    l2, l3, l3v6 = ns.run(open_socks)
    sent = 0
    try:
        for kind, data in frames:
            if budget:
                budget.take()
            if kind == "l2":
                l2.send(data)
            elif data[0] >> 4 == 6:
                l3v6.sendto(data, (socket.inet_ntop(socket.AF_INET6, data[_DADDR6]), 0))
            else:
                dst = socket.inet_ntoa(data[_DADDR4])
                l3.sendto(data, (dst, 0))
            sent += 1
            if interval:
                time.sleep(interval)
    finally:
        for s in (l2, l3, l3v6):
            if s is not None:
                s.close()
    return sent


def ping(ns: NetNS, dst: str, count: int = 3, interval: float = 0.2, timeout: float = 1.0,
         size: int = 56, budget=None) -> dict:
    """ICMP echo (ICMPv6 to an IPv6 address) from a host over a raw socket; RTTs in
    milliseconds of the answered ones."""
    v6 = ":" in dst
    # ICMPv6 raw sockets: the kernel fills in the checksum (it covers a pseudo-header) and
    # hands back the message without the IPv6 header.
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    request, reply = (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) if v6 else \
        (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
    sock = ns.run(lambda: socket.socket(family(dst), socket.SOCK_RAW, proto))
    ident = (os.getpid() ^ threading.get_ident()) & 0xFFFF
    pending: dict[int, float] = {}
    rtts: list[float] = []
    lost: list[int] = []
    try:
        sock.setblocking(False)
        payload = bytes(size)
        next_send = time.monotonic()
        seq = 0
        deadline = None
        while True:
            now = time.monotonic()
            if seq < count and now >= next_send:
                hdr = struct.pack("!BBHHH", request, 0, 0, ident, seq)
                pkt = struct.pack("!BBHHH", request, 0, 0 if v6 else checksum(hdr + payload),
                                  ident, seq) + payload
                if budget:
                    budget.take()
                pending[seq] = time.monotonic()
                sock.sendto(pkt, (dst, 0))
                seq += 1
                next_send = now + interval
                if seq == count:
                    deadline = time.monotonic() + timeout
            if seq == count and (not pending or time.monotonic() >= deadline):
                break
            wait = (next_send if seq < count else deadline) - time.monotonic()
            r, _, _ = select.select([sock], [], [], max(0.0, wait))
            if not r:
                continue
            while True:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                t = time.monotonic()
                ihl = 0 if v6 else (data[0] & 0x0F) * 4
                icmp = data[ihl:ihl + 8]
                if len(icmp) < 8:
                    continue
                typ, _code, _ck, rid, rseq = struct.unpack("!BBHHH", icmp)
                if typ == reply and rid == ident and rseq in pending:
                    rtts.append((t - pending.pop(rseq)) * 1000.0)
        lost = sorted(pending)
    finally:
        sock.close()
    return {"sent": count, "received": len(rtts), "lost": lost, "rtt_ms": rtts}


# -- UDP stream with sequence numbers ----------------------------------------------------

def udp_stream(src: NetNS, dst_ns: NetNS, dst: str, port: int = 9000, rate: float = 100.0,
               duration: float = 2.0, size: int = 64, count: int | None = None,
               grace: float = 0.5, sport: int = 0, budget=None) -> dict:
    """Send ``count`` (default rate*duration) numbered datagrams at ``rate``/s and count arrivals.

    The receiver listens on ``port`` on every address of the receiving host, so a stream to
    an address that a script rewrites still arrives. Returns sent, received, missing
    sequence numbers, duplicates, out-of-order arrivals and the achieved rates.
    """
    n = int(count if count is not None else rate * duration)
    size = max(size, 8)
    rx, tx = _udp_sockets(src, dst_ns, dst, port, sport)
    seen: dict[int, int] = {}
    order: list[int] = []
    done = threading.Event()
    t = threading.Thread(target=_receive_numbered, args=(rx, n, grace, done, seen, order),
                         name="udp-rx", daemon=True)
    t.start()
    try:
        sent, elapsed = _send_numbered(tx, n, rate, bytes(size - 8), (dst, port), budget)
    finally:
        done.set()
        t.join()
        tx.close()
        rx.close()
    missing = [i for i in range(n) if i not in seen]
    reordered = sum(1 for a, b in zip(order, order[1:]) if b < a)
    return {"sent": n, "sent_ok": sent, "received": len(seen), "missing": missing[:10000],
            "missing_count": len(missing), "duplicates": sum(v - 1 for v in seen.values()),
            "reordered": reordered, "elapsed": elapsed,
            "rate": (n / elapsed) if elapsed > 0 else float(n)}


def _udp_sockets(src: NetNS, dst_ns: NetNS, dst: str, port: int, sport: int):
    """(receiver bound to ``port`` in the receiving host, sender in the sending host)."""
    def open_rx():
        s = _listener(dst, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((_any(dst), port))
        return s

    def open_tx():
        s = socket.socket(family(dst), socket.SOCK_DGRAM)
        if sport:
            s.bind((_any(dst), sport))
        return s

    return dst_ns.run(open_rx), src.run(open_tx)


def _receive_numbered(rx: socket.socket, n: int, grace: float, done: threading.Event,
                      seen: dict[int, int], order: list[int]) -> None:
    """Count datagrams by sequence number until all ``n`` came, or ``grace`` after ``done``."""
    rx.settimeout(0.05)
    end = None
    while True:
        if done.is_set():
            end = end or time.monotonic() + grace
            if time.monotonic() >= end or len(seen) >= n:
                return
        try:
            data = rx.recv(65535)
        except socket.timeout:
            continue
        if len(data) >= 8:
            (sq,) = struct.unpack_from("!Q", data)
            seen[sq] = seen.get(sq, 0) + 1
            order.append(sq)


def _send_numbered(tx: socket.socket, n: int, rate: float, pad: bytes, to: tuple,
                   budget) -> tuple[int, float]:
    """Send datagrams 0..n-1 at ``rate``/s; (how many the socket took, seconds it took)."""
    start = time.monotonic()
    sent = 0
    for i in range(n):
        target = start + i / rate if rate > 0 else start
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if budget:
            budget.take()
        try:
            tx.sendto(struct.pack("!Q", i) + pad, to)
            sent += 1
        except OSError:
            pass  # e.g. EPERM from an OUTPUT drop: the datagram counts as sent, not received
    return sent, time.monotonic() - start


# -- TCP echo ------------------------------------------------------------------------------

# What one short echo connection puts on the wire, both ways (handshake, data, echo, acks,
# close), counted against a lab's packet-rate limit.
TCP_PACKETS_PER_ECHO = 10


def tcp_echo(src: NetNS, dst_ns: NetNS, dst: str, port: int = 7000, connections: int = 3,
             payload: bytes = b"hello packetscript", timeout: float = 2.0, budget=None) -> dict:
    """Run a small echo server on the destination host and make ``connections`` round trips."""

    def open_srv():
        s = _listener(dst, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((_any(dst), port))
        s.listen(16)
        return s

    srv = dst_ns.run(open_srv)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            with c:
                c.settimeout(timeout)
                try:
                    while data := c.recv(65536):
                        c.sendall(data)
                except OSError:
                    pass

    t = threading.Thread(target=serve, name="tcp-echo", daemon=True)
    t.start()
    results = []
    try:
        for _ in range(connections):
            if budget:
                budget.take(TCP_PACKETS_PER_ECHO)
            t0 = time.monotonic()
            try:
                c = src.run(lambda: socket.socket(family(dst), socket.SOCK_STREAM))
                with c:
                    c.settimeout(timeout)
                    c.connect((dst, port))
                    c.sendall(payload)
                    c.shutdown(socket.SHUT_WR)
                    got = b""
                    while chunk := c.recv(65536):
                        got += chunk
                ok = got == payload
                results.append({"ok": ok, "rtt_ms": (time.monotonic() - t0) * 1000.0,
                                "error": None if ok else f"echoed {len(got)} of {len(payload)} bytes"})
            except OSError as exc:
                results.append({"ok": False, "rtt_ms": None, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        stop.set()
        t.join()
        srv.close()
    return {"connections": connections, "ok": sum(r["ok"] for r in results),
            "failed": sum(not r["ok"] for r in results), "results": results}


# -- pcap replay ---------------------------------------------------------------------------

def read_pcap(path: str, src_mac: bytes, dst_mac: bytes, rewrite_macs: bool = True) -> list[tuple[str, bytes]]:
    """Frames of a pcap or pcapng ready for ``send_frames``: Ethernet frames get this hop's
    MACs; other link types are sent from their IP header on. Read with the one checked
    reader (core.pcap): a corrupt record is an error."""
    try:
        linktype, packets = pcap.read_packets(path)
    except pcap.CaptureError as exc:
        raise LabError(str(exc)) from None
    lt = pcap.link(linktype)
    if lt.kind == "ethernet":
        # this hop's MACs, then the frame's own EtherType and payload
        return [("l2", dst_mac + src_mac + d[ETH_HLEN - 2:] if rewrite_macs else d)
                for _t, d in packets]
    out = [("l3", d[lt.header:]) for _t, d in packets]
    for n, (_kind, ip) in enumerate(out, 1):
        if ip[:1] and ip[0] >> 4 != 4:
            raise LabError(f"{path}: packet {n} is not IPv4; packets of a {lt.name} capture are "
                           "sent through IPv4 routing: give an Ethernet capture for other packets")
    return out


# -- capture ---------------------------------------------------------------------------------

class Capture:
    """Frames arriving on one host's interfaces (outgoing frames are left out)."""

    def __init__(self, ns: NetNS, ifnames: list[str], bpf: str | None = None):
        prog = _compile_bpf(bpf) if bpf else None

        def open_socks():
            socks = []
            for name in ifnames:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                if prog is not None:
                    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
                s.bind((name, ETH_P_ALL))
                s.setblocking(False)
                socks.append(s)
            return socks

        self._prog_keep = prog
        self.socks = ns.run(open_socks)

    def collect(self, count: int | None = None, timeout: float = 2.0) -> list[bytes]:
        frames: list[bytes] = []
        end = time.monotonic() + timeout
        try:
            while count is None or len(frames) < count:
                left = end - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select(self.socks, [], [], left)
                for s in r:
                    while count is None or len(frames) < count:
                        try:
                            data, addr = s.recvfrom(65535)
                        except BlockingIOError:
                            break
                        if addr[2] != PACKET_OUTGOING:
                            frames.append(data)
        finally:
            self.close()
        return frames

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []


def _compile_bpf(expr: str) -> bytes:
    """A ``struct sock_fprog`` for a tcpdump-style filter, compiled by libpcap through scapy."""
    import ctypes

    from scapy.arch.common import compile_filter

    prog = compile_filter(expr, linktype=1)  # Ethernet; scapy bpf_program (bf_len, bf_insns)
    # Keep the instruction array alive with the returned structure.
    buf = struct.pack("HL", prog.bf_len, ctypes.addressof(prog.bf_insns.contents))
    _KEEP.append(prog)
    return buf


_KEEP: list = []


# -- load ----------------------------------------------------------------------------------

_BLAST = """
import socket, struct, sys, time
dst, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
pad = bytes(max(size - 8, 0)); pack = struct.Struct("!Q").pack; send = s.sendto; a = (dst, port)
t = time.monotonic(); err = 0
for i in range(count):
    try:
        send(pack(i) + pad, a)
    except OSError:
        err += 1
print(time.monotonic() - t, err)
"""


def udp_blast(src: NetNS, dst: str, port: int = 9000, count: int = 20000, size: int = 64,
              timeout: float = 60.0, budget=None) -> dict:
    """Send ``count`` datagrams as fast as possible from a separate process in ``src``.

    A separate process keeps the sender off the lab process's interpreter lock, so it
    does not slow the queue workers it is measuring. Under a packet-rate limit (``budget``)
    the datagrams go from here instead, paced by the lab's bucket.
    """
    import sys

    if budget:
        return _paced_blast(src, dst, port, int(count), int(size), budget)

    res = src.sh([sys.executable, "-c", _BLAST, dst, str(port), str(int(count)), str(int(size))],
                 timeout=timeout)
    elapsed, errors = res.stdout.split()
    return {"sent": int(count) - int(errors), "send_errors": int(errors), "elapsed": float(elapsed)}


def _paced_blast(src: NetNS, dst: str, port: int, count: int, size: int, budget) -> dict:
    sock = src.run(lambda: socket.socket(family(dst), socket.SOCK_DGRAM))
    pad, errors, t = bytes(max(size - 8, 0)), 0, time.monotonic()
    try:
        for i in range(count):
            budget.take()
            try:
                sock.sendto(struct.pack("!Q", i) + pad, (dst, port))
            except OSError:
                errors += 1
    finally:
        sock.close()
    return {"sent": count - errors, "send_errors": errors, "elapsed": time.monotonic() - t,
            "limited_to": budget.rate}
