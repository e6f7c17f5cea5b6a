"""Fuzz the engine: mutated and random frames through scripts that use the whole API,
and through hostile ones, on every runtime and in both profiles.

Every packet must come back judged (a code byte each), nothing may raise into Python,
a frame the script did not change must come back byte for byte, and the process must
survive. Bounded in packets and in seconds; prints one line per script and runtime and
exits non-zero on the first broken promise.

    python bench/fuzz.py [--frames 20000] [--seconds 120] [--seed 1]
"""
from __future__ import annotations

import argparse
import random
import sys
import time

from packetscript_lab import Script
from packetscript_lab.examples import dnat

# Scripts that touch every protocol and field kind, each guarded only as a careless
# student would guard it: errors on odd frames are expected and must be counted.
API_TOUR = """
function process_packet(p)
  local eth = p:data(packet_eth)
  local ip = eth and eth:data(packet_ip)
  if not ip then return NF_ACCEPT end
  local n = ip:ttl():get() + ip:tos():get() + ip:ihl():get() + ip:frag_off():get()
  if ip:flags():get(2) then n = n + 1 end
  local tcp = ip:data(packet_tcp)
  if tcp then
    n = n + tcp:sport():get() + tcp:window_size():get()
    tcp:flags():set(5, false)
    local ok = pcall(function() return tcp:options(packet_tcp_opt):MSS():get() end)
    tcp:check():set(0)
  end
  local udp = ip:data(packet_udp)
  if udp then
    local d = udp:data():to_bytes()
    if #d > 0 then d[0] = (d[0] + 1) % 256; udp:data():set(d) end
  end
  local icmp = ip:data(packet_icmp)
  if icmp then icmp:type():set(0) end
  ip:ttl():set((n % 200) + 1)
  ip:saddr():set("10.77.0.1")
  return n % 3 == 0 and NF_DROP or XT_CONTINUE
end
"""

IP6_TOUR = """
function process_packet(p)
  local eth = p:data(packet_eth)
  local ip6 = eth and eth:data(packet_ip6)
  if not ip6 then return NF_ACCEPT end
  local n = ip6:hop_limit():get() + ip6:flow_label():get() + ip6:traffic_class():get()
  n = n + ip6:next_header():get() + #ip6:saddr():get()
  local tcp, udp, icmp6 = ip6:data(packet_tcp), ip6:data(packet_udp), ip6:data(packet_icmp6)
  if tcp then tcp:dport():set(8080); tcp:check():set(0) end
  if udp then udp:sport():set(n % 65536) end
  if icmp6 then icmp6:sequence():set(n % 65536) end
  ip6:flow_label():set(n)
  ip6:daddr():set("fd77:2::2")
  return n % 3 == 0 and NF_DROP or XT_CONTINUE
end
"""

RAW_WALK = """
function process_packet(p)
  local size, x = p:get_size(), 0
  for i = 0, size - 1, 7 do
    local r = p:raw(i, 1)
    if r then x = x + r:get()[0] end
  end
  local tail = p:raw(size - 2, 4)          -- false: past the end
  if tail then return NF_DROP end
  return x % 2 == 0 and NF_ACCEPT or NF_DROP
end
"""

HOSTILE = """
function process_packet(p)
  local b = p:raw(0, 1):get()[0]
  if b % 5 == 0 then while true do end end
  if b % 5 == 1 then local t = {} for i = 1, 1e9 do t[i] = i end end
  if b % 5 == 2 then error(setmetatable({}, {__tostring = function() while true do end end})) end
  if b % 5 == 3 then return "accept" end
  return NF_ACCEPT
end
"""

SCRIPTS = {"dnat": dnat("10.77.2.2"), "api-tour": API_TOUR, "ip6-tour": IP6_TOUR, "raw-walk": RAW_WALK,
           "hostile": HOSTILE}


def frames(rng: random.Random, count: int) -> list[bytes]:
    """Valid lab frames, then bit flips, truncations and pure noise of them."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
    from scapy.layers.l2 import Ether

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    base = [bytes(eth / IP(src="10.77.0.1", dst="10.77.2.2") / l4)
            for l4 in (UDP(sport=1234, dport=9000) / (b"u" * 20),
                       TCP(sport=40000, dport=80, options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]) / b"GET",
                       ICMP() / b"ping")]
    base += [bytes(eth / IPv6(src="fd77:1::1", dst="fd77:2::9") / l4)
             for l4 in (UDP(sport=1234, dport=9000) / (b"u" * 20),
                        IPv6ExtHdrHopByHop() / TCP(sport=40000, dport=80) / b"GET",
                        IPv6ExtHdrFragment(m=1) / UDP() / b"frag",
                        ICMPv6EchoRequest(data=b"ping"))]
    out = []
    for i in range(count):
        f = bytearray(rng.choice(base))
        kind = i % 4
        if kind == 1:
            for _ in range(rng.randint(1, 8)):
                f[rng.randrange(len(f))] = rng.randrange(256)
        elif kind == 2:
            f = f[:rng.randrange(len(f) + 1)]
        elif kind == 3:
            f = bytearray(rng.randbytes(rng.randrange(0, 120)))
        out.append(bytes(f))
    return out


def fuzz(name: str, source: str, lua: str, profile: str, batch: list[bytes]) -> tuple[int, int]:
    s = Script(source, lua=lua, profile=profile, budget=20_000, max_memory=64 << 20)
    judged = 0
    for start in range(0, len(batch), 256):
        chunk = batch[start:start + 256]
        codes, blob, errors = s.run_many(chunk, [0.0] * len(chunk))
        if len(codes) != len(chunk):
            raise AssertionError(f"{len(chunk)} frames in, {len(codes)} verdicts out")
        offset = 0
        for i, (frame, code) in enumerate(zip(chunk, codes)):
            after = blob[offset:offset + len(frame)] if blob is not None else frame
            offset += len(frame)
            if not code & 4 and after != frame:
                raise AssertionError(f"frame {start + i} changed without being reported")
            if code & 8 and i not in errors:
                raise AssertionError(f"frame {start + i} failed without an error")
        judged += len(codes)
    return judged, s.error_count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20_000, help="frames per script and runtime")
    ap.add_argument("--seconds", type=float, default=120, help="stop starting new runs after this")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    batch = frames(rng, args.frames)
    deadline = time.monotonic() + args.seconds
    total = 0
    for name, source in SCRIPTS.items():
        for lua in ("luajit", "5.1", "5.4"):
            for profile in ("lab", "kernel"):
                if time.monotonic() > deadline:
                    print(f"time is up after {total} frames")
                    return 0
                t = time.monotonic()
                judged, errors = fuzz(name, source, lua, profile, batch)
                total += judged
                print(f"{name:9} {lua:6} {profile:6} {judged:7} judged {errors:7} errors "
                      f"{time.monotonic() - t:6.1f} s")
    print(f"all {total} frames judged and accounted for")
    return 0


if __name__ == "__main__":
    sys.exit(main())
