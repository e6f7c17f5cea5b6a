"""Replay against what a user would pick instead: tcprewrite, and reading alone.

Two figures, each a ratio to a baseline measured in the same run, paired rounds (the
machine is shared; absolute speeds wander):

1. ``packetscript replay dnat.lua in.pcap --out out.pcap`` (the CLI, a fresh process, the
   script in its watched Judge process) against ``tcprewrite --dstipmap=0.0.0.0/0:10.77.2.2/32``
   on the same capture (2M packets by default): wall time ratio, target <= 1.5.
2. ``replay(dnat, path)`` called in this process (counts; the output kept as a file) against
   a loop that only reads the file with scapy's RawPcapReader: packets/s ratio, target >= 3.

Peak memory (max RSS) of the CLI's processes and of tcprewrite is reported too, and the CPU time
ratio (user + system), which varies less than wall time when other work shares the cores.
tcprewrite comes with Debian's tcpreplay package: ``apt-get install tcpreplay``.

    python bench/replay.py [--packets 2000000] [--rounds 3] [--lua luajit]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packetscript_lab.core import pcap
from packetscript_lab.examples import dnat

DNAT = dnat("10.77.2.2")
CLI_TARGET = 1.5
INPROCESS_TARGET = 3.0


def make_pcap(path: Path, count: int) -> None:
    """UDP and TCP frames between two lab hosts, varied ports and sizes (records written
    with struct: scapy's writer would take minutes for millions)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    templates = []
    for i in range(64):
        l4 = UDP(sport=20000 + i, dport=9000) if i % 4 else TCP(sport=30000 + i, dport=80, flags="PA")
        pkt = (Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
               / IP(src="10.77.1.1", dst="10.77.1.2") / l4 / Raw(b"p" * (16 + 8 * (i % 16))))
        templates.append(bytes(pkt))
    with open(path, "wb") as f:
        f.write(pcap.pcap_header(pcap.ETHERNET))
        chunk = []
        for i in range(count):
            chunk.append(pcap.pcap_record(templates[i % 64], 1_700_000_000 + i / 1000))
            if len(chunk) >= 10000:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))


GNU_TIME = "/usr/bin/time"


def timed_run(argv) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (KiB) and CPU seconds (user + system, the children it waited
    for included) of one command. The peak comes from GNU time when it is there: a process
    started straight from this one would report this process's size as its own peak (the
    kernel keeps the high-water mark across exec); without it, that larger figure is shown."""
    with tempfile.NamedTemporaryFile() as rss_file:
        wrap = [GNU_TIME, "-f", "%M", "-o", rss_file.name] if os.access(GNU_TIME, os.X_OK) else []
        start = time.perf_counter()
        proc = subprocess.Popen(wrap + argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"{argv[0]} failed: {proc.stderr.read().decode()[-500:]}")
        proc.stderr.close()
        proc.returncode = 0
        peak = int(open(rss_file.name).read().split()[-1]) if wrap else usage.ru_maxrss
    return took, peak, usage.ru_utime + usage.ru_stime


def read_only(path: Path) -> float:
    from scapy.utils import RawPcapReader

    start, n = time.perf_counter(), 0
    for _data, _meta in RawPcapReader(str(path)):
        n += 1
    return n / (time.perf_counter() - start)


def replay_pps(path: Path, lua: str) -> float:
    from packetscript_lab import replay

    start = time.perf_counter()
    result = replay(DNAT, path, lua=lua)
    took = time.perf_counter() - start
    assert result.verdicts["continue"] == result.packets and result.errors == 0
    return result.packets / took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lua", default="luajit", choices=("luajit", "5.1", "5.4"))
    parser.add_argument("--read-packets", type=int, default=200_000,
                        help="packets for the in-process comparison (the read-only loop is slow)")
    args = parser.parse_args()
    tcprewrite = shutil.which("tcprewrite")
    if tcprewrite is None:
        print("tcprewrite not found: apt-get install tcpreplay (Debian/Ubuntu)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big, small = tmp / "big.pcap", tmp / "small.pcap"
        make_pcap(big, args.packets)
        make_pcap(small, args.read_packets)
        script = tmp / "dnat.lua"
        script.write_text(DNAT)
        ours_cmd = [sys.executable, "-m", "packetscript_lab", "replay", str(script), str(big),
                    "--out", str(tmp / "ours.pcap"), "--lua", args.lua, "--json"]
        theirs_cmd = [tcprewrite, "--dstipmap=0.0.0.0/0:10.77.2.2/32", "--infile", str(big),
                      "--outfile", str(tmp / "theirs.pcap")]
        cli, cli_rss, tr, tr_rss, cli_ratios, cpu_ratios = [], [], [], [], [], []
        pps, base, in_ratios = [], [], []
        for _ in range(args.rounds):
            t_ours, rss_ours, cpu_ours = timed_run(ours_cmd)
            t_theirs, rss_theirs, cpu_theirs = timed_run(theirs_cmd)
            cpu_ratios.append(cpu_ours / cpu_theirs)
            cli.append(t_ours)
            cli_rss.append(rss_ours)
            tr.append(t_theirs)
            tr_rss.append(rss_theirs)
            cli_ratios.append(t_ours / t_theirs)
            b, r = read_only(small), replay_pps(small, args.lua)
            base.append(b)
            pps.append(r)
            in_ratios.append(r / b)
        size = big.stat().st_size
    cli_ratio, in_ratio = statistics.median(cli_ratios), statistics.median(in_ratios)
    print(f"capture: {args.packets:,} packets ({size / 1e6:.0f} MB), rounds: {args.rounds}, lua: {args.lua}")
    print(f"tcprewrite DNAT:          {statistics.median(tr):6.2f} s wall (median), peak RSS {max(tr_rss) / 1024:.0f} MiB")
    print(f"packetscript replay --out:{statistics.median(cli):6.2f} s wall (median), peak RSS "
          f"{max(cli_rss) / 1024:.0f} MiB (largest of its processes)")
    print(f"  ratio to tcprewrite: {cli_ratio:.2f} (per round: {', '.join(f'{x:.2f}' for x in cli_ratios)}; "
          f"target <= {CLI_TARGET})")
    print(f"  CPU time (user + system) ratio: {statistics.median(cpu_ratios):.2f} (per round: "
          f"{', '.join(f'{x:.2f}' for x in cpu_ratios)}; steadier than wall time on a shared machine)")
    print(f"in process, {args.read_packets:,} packets: read-only RawPcapReader loop "
          f"{statistics.median(base):,.0f} packets/s, replay() {statistics.median(pps):,.0f} packets/s")
    print(f"  ratio: {in_ratio:.2f} (per round: {', '.join(f'{x:.2f}' for x in in_ratios)}; "
          f"target >= {INPROCESS_TARGET})")
    return 0 if cli_ratio <= CLI_TARGET and in_ratio >= INPROCESS_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
