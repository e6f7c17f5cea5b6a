"""Helpers for the engine tests: run Lua bodies on frames, and check checksums with scapy.

Expectations are always computed with scapy (build, modify, delete the checksums and
rebuild), never typed in by hand.
"""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from packetscript_lab import Script

RUNTIMES = ("luajit", "5.1", "5.4")

# Locals every body can use: the usual chain, each step false when it does not apply,
# and hex(byte_array) -> "0a 0b ..." (lab profile).
PRELUDE = """
local eth = p:data(packet_eth)
local ip = eth and eth:data(packet_ip)
local tcp = ip and ip:data(packet_tcp)
local udp = ip and ip:data(packet_udp)
local icmp = ip and ip:data(packet_icmp)
local function hex(a)
  local t = {}
  for i = 0, #a - 1 do t[#t + 1] = string.format("%02x", a[i]) end
  return table.concat(t, " ")
end
"""


def script_for(body: str, prelude: bool = True, verdict: str = "NF_ACCEPT", **kw) -> Script:
    """A Script whose process_packet runs ``body`` (after PRELUDE) and returns ``verdict``."""
    src = ("function process_packet(p, skb)\n" + (PRELUDE if prelude else "") + body
           + f"\nreturn {verdict}\nend\n")
    return Script(src, **kw)


def run(body: str, frame: bytes, *, expect_error: bool = False, **kw):
    """Run ``body`` on ``frame``; returns (RunResult, Script). Fails on a script error
    unless ``expect_error``."""
    s = script_for(body, **kw)
    r = s.run(frame)
    if not expect_error:
        assert r.error is None, f"script failed: {r.error}"
    return r, s


def lua_values(frame: bytes, exprs: list[str], setup: str = "", **kw) -> list[str]:
    """tostring() of each Lua expression, evaluated on ``frame`` after PRELUDE + setup."""
    body = setup + "\n" + "\n".join(f"print(tostring({e}))" for e in exprs)
    r, s = run(body, frame, **kw)
    assert not r.modified, "reading fields changed the packet"
    return list(s.output)


def hexs(data: bytes) -> str:
    """The format of PRELUDE's hex()."""
    return " ".join(f"{b:02x}" for b in data)


# ------------------------------------------------------------------ frames
def tcp_frame(payload: bytes = b"GET / HTTP/1.0\r\n\r\n", options=None, **tcp_kw) -> bytes:
    tcp_kw.setdefault("sport", 40000)
    tcp_kw.setdefault("dport", 80)
    tcp_kw.setdefault("seq", 0x12345678)
    tcp_kw.setdefault("ack", 0x9ABCDEF0)
    tcp_kw.setdefault("flags", "PA")
    tcp_kw.setdefault("window", 29200)
    if options is not None:
        tcp_kw["options"] = options
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="10.77.0.1", dst="10.77.2.100", id=4321, ttl=61, tos=0x10)
                 / TCP(**tcp_kw) / Raw(payload))


def udp_frame(payload: bytes = b"hello udp", sport=5353, dport=9000, chksum=None, **ip_kw) -> bytes:
    ip_kw.setdefault("src", "10.77.0.1")
    ip_kw.setdefault("dst", "10.77.0.2")
    udp = UDP(sport=sport, dport=dport)
    if chksum is not None:
        udp.chksum = chksum
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(**ip_kw) / udp / Raw(payload))


def icmp_frame(payload: bytes = b"pingpayload", **icmp_kw) -> bytes:
    icmp_kw.setdefault("type", 8)
    icmp_kw.setdefault("id", 0x1234)
    icmp_kw.setdefault("seq", 7)
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="10.77.1.1", dst="10.77.1.2") / ICMP(**icmp_kw) / Raw(payload))


# ------------------------------------------------------------------ checksums
def _recomputed(frame: bytes, layer) -> int:
    pkt = Ether(frame)
    del pkt[layer].chksum
    return Ether(bytes(pkt))[layer].chksum


def checksum_report(frame: bytes) -> dict:
    """{layer name: (in frame, recomputed by scapy)} for IP, TCP, UDP, ICMP present."""
    pkt = Ether(frame)
    out = {}
    if IP not in pkt:
        return out
    out["IP"] = (pkt[IP].chksum, _recomputed(frame, IP))
    is_fragment = pkt[IP].frag != 0 or pkt[IP].flags.MF
    if is_fragment:
        return out
    for layer in (TCP, UDP, ICMP):
        if layer in pkt:
            have = pkt[layer].chksum
            if layer is UDP and have == 0:
                continue          # no checksum: nothing to verify
            out[layer.__name__] = (have, _recomputed(frame, layer))
    return out


def assert_checksums_valid(frame: bytes, layers=("IP",)) -> None:
    """Every checksum of the frame matches scapy's recomputation; ``layers`` must be present."""
    rep = checksum_report(frame)
    for name in layers:
        assert name in rep, f"{name} not found in {Ether(frame).summary()}"
    bad = {k: v for k, v in rep.items() if v[0] != v[1]}
    assert not bad, f"wrong checksums (have, should be): {bad}"


def rebuilt(pkt, keep_udp_zero: bool = True, l4: bool = True) -> bytes:
    """Bytes of a scapy packet with its checksums recomputed by scapy (what a correct
    fix-up gives). A UDP checksum of 0 stays 0; ``l4=False`` keeps the L4 checksum."""
    pkt = pkt.copy()
    if IP in pkt:
        del pkt[IP].chksum
    if l4:
        for layer in (TCP, ICMP, UDP):
            if layer in pkt:
                if layer is UDP and keep_udp_zero and pkt[UDP].chksum == 0:
                    continue
                del pkt[layer].chksum
    return bytes(pkt)


def expected(frame: bytes, change, fix: bool = True) -> bytes:
    """The frame after ``change(scapy_packet)``; checksums recomputed when ``fix``."""
    pkt = Ether(frame)
    change(pkt)
    return rebuilt(pkt) if fix else bytes(pkt)
