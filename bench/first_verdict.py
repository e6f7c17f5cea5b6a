"""Cell to first verdict: how long after a live %%packetscript cell is run its script judges
its first packet.

What a cell does (kernel_magic/session.py start_cell), timed step by step: compile the script
to check it (a Judge in the kernel's process, kept warm from the first cell on), attach it in
the lab (the lab process compiles its own Judge and adds the NFQUEUE rule), start the cell's
traffic (UDP client -> server:9000, 200/s), and wait until the handle's stats count a judged
packet. Reported twice: with the lab already up (re-running a cell; median of --rounds), and
from nothing (the lab built first, as the first cell of a notebook does). Targets: <= 0.3 s
with a lab up, <= 1.0 s including building it. Needs a lab (root, see docs/lab.md).

    python bench/first_verdict.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

from packetscript_lab.examples import dnat
from packetscript_lab.judge import Judge, keep_process_ready
from packetscript_lab.lab import Lab

SOURCE = dnat("10.77.0.2")
UP_TARGET, BUILD_TARGET = 0.3, 1.0


def cell(lab: Lab, name: str) -> dict:
    """One live cell, timed: seconds from its start to each step's end."""
    t0 = time.perf_counter()
    Judge(SOURCE, line_offset=1).close()                 # the kernel's compile check
    t_compiled = time.perf_counter()
    h = lab.attach(SOURCE, name=name, line_offset=1)
    t_attached = time.perf_counter()
    sender = threading.Thread(target=lab.udp_stream, args=("client", "server"),
                              kwargs={"rate": 200, "duration": 1.5}, daemon=True)
    sender.start()
    deadline = t0 + 10
    while h.stats()["judged"] == 0:
        if time.perf_counter() > deadline:
            raise SystemExit("no verdict within 10 s")
        time.sleep(0.002)
    t_verdict = time.perf_counter()
    sender.join()
    h.detach()
    return {"compile": t_compiled - t0, "attach": t_attached - t_compiled,
            "first packet": t_verdict - t_attached, "total": t_verdict - t0}


def show(label: str, rows: list[dict], extra: float = 0.0) -> float:
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    parts = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in med.items() if k != "total")
    total = med["total"] + extra
    print(f"{label}: {total:.3f} s (median; {parts}"
          f"{f', building the lab {extra:.3f} s' if extra else ''})")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    keep_process_ready()            # what the magic does when it loads
    t0 = time.perf_counter()
    lab = Lab(topology="pair")
    built = time.perf_counter() - t0
    try:
        first = cell(lab, "first")
        build_total = show("from nothing (lab built, first cell)", [first], built)
        rows = [cell(lab, f"rerun{i}") for i in range(args.rounds)]
        up_total = show(f"lab up (a cell run again, {args.rounds} rounds)", rows)
        rounds = ", ".join("%.3f" % r["total"] for r in rows)
        print(f"  per round: {rounds} s")
    finally:
        lab.close()
    print(f"targets: <= {UP_TARGET} s with a lab up ({'met' if up_total <= UP_TARGET else 'NOT met'}), "
          f"<= {BUILD_TARGET} s including building it ({'met' if build_total <= BUILD_TARGET else 'NOT met'})")
    return 0 if up_total <= UP_TARGET and build_total <= BUILD_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
