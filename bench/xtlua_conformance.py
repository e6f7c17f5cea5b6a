"""Differential conformance against the real xt_LUA module (in a QEMU guest).

    .venv/bin/python bench/xtlua_conformance.py [--nfqueue] [--only NAME ...]

Runs every script of tests/lua_corpus (portable and nonportable) over a fixed set of packets
through replay, faithful mode, optionally the NFQUEUE lab, and the real module
(`packetscript kernel build --patches DIR` must have run), and prints every packet whose
outcome differs, with the reason. Needs root for the VM's 9p share of / (and for --nfqueue).
"""
import argparse
import json
import time
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP

from packetscript_lab.conformance import compare_many

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "lua_corpus"


def packets():
    return [
        IP(ttl=64) / UDP(sport=40000, dport=69) / b"\x00\x01file.txt\x00octet\x00",
        IP(ttl=5) / UDP(sport=40001, dport=53) / b"dns-ish",
        IP(ttl=64) / TCP(sport=40002, dport=80, flags="S", seq=1000),
        IP(ttl=64) / TCP(sport=40003, dport=80, flags="PA", seq=2000, ack=1)
        / b"GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n",
        IP(ttl=3) / ICMP(type=8, id=7, seq=1) / b"ping",
        IP(ttl=64, tos=0x10) / UDP(sport=5000, dport=5001) / (b"x" * 200),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nfqueue", action="store_true", help="also run the NFQUEUE lab")
    ap.add_argument("--only", nargs="*", help="script names (without .lua)")
    ap.add_argument("--json", metavar="FILE", help="also write every outcome to FILE")
    args = ap.parse_args()
    sources = {}
    for kind in ("portable", "nonportable"):
        for f in sorted((CORPUS / kind).glob("*.lua")):
            if not args.only or f.stem in args.only:
                sources[f"{kind}/{f.stem}"] = f.read_text()
    backends = ("replay", "faithful") + (("nfqueue",) if args.nfqueue else ()) + ("xtlua-vm",)
    started = time.monotonic()
    results = compare_many(sources, packets(), backends=backends)
    if args.json:
        Path(args.json).write_text(json.dumps({
            name: [{b: [o.verdict, o.data.hex() if o.data else None, o.error]
                    for b, o in row.outcomes.items()} | {"reasons": row.reasons}
                   for row in res.rows] for name, res in results.items()}, indent=1))
    differing = 0
    for name, res in results.items():
        print(f"== {name}: {len(res.differences)} of {len(res.rows)} packet(s) differ")
        if res.differences:
            differing += 1
            print(res)
    print(f"{len(results)} scripts x {len(packets())} packets; {differing} script(s) with "
          f"differences; {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
