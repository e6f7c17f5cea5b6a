"""Replay throughput: the DNAT example over a 200k-packet pcap, against reading alone.

Both loops run in this process, one after the other, several rounds: the figure that
counts is the ratio, since the machine is shared and absolute speeds wander. Target:
replay >= 0.5 of the read-only loop's packets/s.

    python bench/replay.py [--packets 200000] [--rounds 3] [--lua luajit] [--in-process]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from packetscript_lab.examples import dnat

DNAT = dnat("10.77.2.2")
TARGET = 0.5


def make_pcap(path: Path, count: int) -> None:
    """UDP and TCP frames between two lab hosts, varied ports and sizes."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import RawPcapWriter

    templates = []
    for i in range(64):
        l4 = UDP(sport=20000 + i, dport=9000) if i % 4 else TCP(sport=30000 + i, dport=80, flags="PA")
        pkt = (Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
               / IP(src="10.77.1.1", dst="10.77.1.2") / l4 / Raw(b"p" * (16 + 8 * (i % 16))))
        templates.append(bytes(pkt))
    with RawPcapWriter(str(path), linktype=1, sync=False) as writer:
        writer.write_header(None)
        for i in range(count):
            writer.write_packet(templates[i % len(templates)], sec=1_700_000_000 + i // 1000,
                                usec=(i % 1000) * 1000)


def read_only(path: Path) -> float:
    from scapy.utils import RawPcapReader

    start, n = time.perf_counter(), 0
    for _data, _meta in RawPcapReader(str(path)):
        n += 1
    return n / (time.perf_counter() - start)


def replay_pps(path: Path, lua: str, in_process: bool) -> tuple[float, float]:
    """Packets/s of replay() as called (counts only), and with the output list cut out.

    As the CLI does, replay() gets the source and runs it in a watched Judge process;
    ``in_process`` hands it a Script instead (the unwatched engine, for comparison)."""
    from packetscript_lab import Script, replay

    script = Script(DNAT, lua=lua) if in_process else None
    start = time.perf_counter()
    result = replay(script, path) if in_process else replay(DNAT, path, lua=lua)
    counted = time.perf_counter() - start
    assert result.verdicts["continue"] == result.packets and result.errors == 0
    n = len(result.output)
    with_output = time.perf_counter() - start
    assert n == result.packets
    return result.packets / counted, result.packets / with_output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lua", default="luajit", choices=("luajit", "5.1", "5.4"))
    parser.add_argument("--in-process", action="store_true",
                        help="run a Script in this process instead of the watched Judge")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pcap"
        make_pcap(path, args.packets)
        ratios, out_ratios, base, ours, ours_out = [], [], [], [], []
        for _ in range(args.rounds):
            b = read_only(path)
            r, r_out = replay_pps(path, args.lua, args.in_process)
            base.append(b)
            ours.append(r)
            ours_out.append(r_out)
            ratios.append(r / b)
            out_ratios.append(r_out / b)
    ratio = statistics.median(ratios)
    print(f"packets: {args.packets}, rounds: {args.rounds}, lua: {args.lua}, "
          f"{'Script in this process' if args.in_process else 'Judge process'}")
    print(f"read-only RawPcapReader loop: {statistics.median(base):>10,.0f} packets/s (median)")
    print(f"replay, DNAT example:         {statistics.median(ours):>10,.0f} packets/s (median)")
    print(f"replay + output list as bytes:{statistics.median(ours_out):>10,.0f} packets/s (median)")
    print(f"ratio: {ratio:.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)}; target >= {TARGET})")
    print(f"ratio with the output list: {statistics.median(out_ratios):.2f}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
