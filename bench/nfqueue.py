"""NFQUEUE benchmark: the DNAT example vs. a bare accept-only NetfilterQueue callback.

The DNAT script runs on both queue workers: the native one (the script's process answers
the queue, lab/nfqnative.py; "dnat") and the NetfilterQueue one (Python hands batches to
the script's process; "dnat-py"), so before and after come from the same run. "accept"
is an accept-only script on the native worker: the floor of that path, so the difference
to "dnat" is the script's own cost. CPU per packet counts the lab process and the scripts'
processes (the kernel's work on a verdict, which carries the packet on, included).

Same lab (router topology), same sender (a separate process in the client host sending
numbered UDP datagrams as fast as it can), same hook (mangle POSTROUTING on the router),
alternating trials. Throughput is what the queue worker judged per second between its
first and last packet; the queue runs without fail-open so an overloaded worker shows up as
queue drops, not as unjudged packets. Latency is the ping round trip client -> server with
no rule, with the bare callback and with the script on the server's INPUT hook.

With ``--queues N`` (N > 1) each trial also runs the fan-out pair: the DNAT script on one
queue ("dnat-1q") and spread over N queues (``attach(queues=N)``, "dnat-Nq"), both fed by
FANOUT_FLOWS senders at once, each to its own destination address: the kernel balances by
address pair, so one sender alone would reach one queue whatever N is.

With ``--profile`` (needs ``perf``), one more trial of the bare callback and of the DNAT
script on the native worker runs under ``perf record -a -g``, and the worker's CPU is split
into its parts (bench/perf_split.py): the script and engine, Python, reading the queue,
verdict messages, and the kernel carrying each packet on after its verdict. The kernel's
share bounds what any worker can gain over the bare callback on this path: a worker whose
own work cost nothing would still pay it.

Bounded: --count packets per trial (default 30000), --trials per variant (default 5),
--pings per latency variant (default 300). Prints the figures; needs a lab (see docs/lab.md).

    python bench/nfqueue.py [--count 30000] [--trials 5] [--pings 300] [--queues 2] [--profile]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from packetscript_lab.examples import dnat
from packetscript_lab.lab import Lab


def settle(h, timeout: float = 20.0) -> dict:
    """Stats once the worker has stopped seeing packets."""
    end = time.monotonic() + timeout
    last = -1
    while time.monotonic() < end:
        s = h.stats()
        if s["seen"] == last and s["queue_backlog"] == 0:
            return s
        last = s["seen"]
        time.sleep(0.3)
    return h.stats()


ACCEPT = "function process_packet(p) return NF_ACCEPT end"


def worker_cpu(lab: Lab) -> float:
    """CPU seconds the lab process and the scripts' processes used so far (not the sender,
    not finished helper programs): what judging the packets costs, whoever is faster."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick      # utime, stime

    root = lab.lab_pid
    total, todo = cpu(root), [root]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                kids = (task / "children").read_text().split()
            except OSError:             # a thread that ended meanwhile
                continue
            for kid in kids:
                try:
                    if b"judge_child" in Path(f"/proc/{kid}/cmdline").read_bytes():
                        total += cpu(int(kid))
                except OSError:
                    pass
    return total


def throughput_trial(lab: Lab, variant: str, count: int) -> dict:
    match = "-p udp --dport 9000"
    if variant == "bare":
        h = lab._attach_bare("router", "mangle", "POSTROUTING", match, name="bare", on_overload="drop")
        dst = "10.77.2.2"
    else:
        source = ACCEPT if variant == "accept" else dnat("10.77.2.2")
        h = lab.attach(source, host="router", table="mangle", chain="POSTROUTING",
                       match=match, name=variant, on_overload="drop",
                       worker="python" if variant == "dnat-py" else "native")
        dst = "10.77.2.100"
    try:
        cpu0 = worker_cpu(lab)
        sent = lab.udp_blast("client", dst, port=9000, count=count)
        s = settle(h)
        cpu = worker_cpu(lab) - cpu0
    finally:
        h.detach()
    busy = max(s["last_t"] - s["first_t"], 1e-9)
    return {"variant": variant, "sent": sent["sent"], "send_pps": sent["sent"] / sent["elapsed"],
            "seen": s["seen"], "pps": s["seen"] / busy, "queue_drops": s["queue_drops"],
            "modified": s["modified"], "errors": s["errors"], "cpu_us": cpu / max(s["seen"], 1) * 1e6}


FANOUT_FLOWS = 8


def fanout_trial(lab: Lab, queues: int, count: int) -> dict:
    """The DNAT script on ``queues`` queues, FANOUT_FLOWS senders (address pairs) at once."""
    from concurrent.futures import ThreadPoolExecutor

    variant = f"dnat-{queues}q"
    h = lab.attach(dnat("10.77.2.2"), host="router", table="mangle", chain="POSTROUTING",
                   match="-p udp --dport 9000", name=variant, on_overload="drop", queues=queues)
    try:
        cpu0 = worker_cpu(lab)
        t0 = time.monotonic()
        with ThreadPoolExecutor(FANOUT_FLOWS) as pool:
            sent = list(pool.map(lambda i: lab.udp_blast("client", f"10.77.2.{100 + i}", port=9000,
                                                         count=count // FANOUT_FLOWS),
                                 range(FANOUT_FLOWS)))
        elapsed = time.monotonic() - t0
        s = settle(h)
        cpu = worker_cpu(lab) - cpu0
    finally:
        final = h.detach()
    busy = max(s["last_t"] - s["first_t"], 1e-9)
    total = sum(x["sent"] for x in sent)
    if final["rule_packets"] != total:      # lost before the rule (e.g. a full backlog)
        print(f"  {variant}: the rule matched {final['rule_packets']} of {total} sent")
    return {"variant": variant, "sent": total, "send_pps": total / elapsed, "seen": s["seen"],
            "pps": s["seen"] / busy, "queue_drops": s["queue_drops"], "modified": s["modified"],
            "errors": s["errors"], "cpu_us": cpu / max(s["seen"], 1) * 1e6,
            "by_queue": s.get("by_queue")}


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def latency(lab: Lab, variant: str, pings: int) -> dict:
    h = None
    if variant == "bare":
        h = lab._attach_bare("server", "filter", "INPUT", "-p icmp", name="bare-icmp")
    elif variant == "accept":
        h = lab.attach(ACCEPT, host="server", chain="INPUT", match="-p icmp", name="accept-icmp")
    elif variant in ("script", "script-py"):
        h = lab.attach(dnat("10.77.2.2"), host="server", chain="INPUT", match="-p icmp",
                       name="dnat-icmp", worker="python" if variant == "script-py" else "native")
    try:
        r = lab.ping("client", "server", count=pings, interval=0.005, timeout=1.0)
    finally:
        if h:
            h.detach()
    rtt = r["rtt_ms"]
    return {"variant": variant, "received": r["received"], "p50_ms": pct(rtt, 0.5),
            "p99_ms": pct(rtt, 0.99)}


def profile(lab: Lab, count: int) -> None:
    """One trial each of the bare callback and the native DNAT worker under perf."""
    import tempfile

    import perf_split

    print("\nwhere the worker's CPU goes (perf, one trial each):")
    shares = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("bare", "dnat"):
            path = f"{tmp}/{variant}.data"
            with perf_split.Recorder(path):
                r = throughput_trial(lab, variant, count)
            result = perf_split.split(path)
            shares[variant] = result["kernel_share"]
            print(perf_split.report(f"{variant} ({r['cpu_us']:.1f} us CPU per packet)", result))
    print(f"  a worker costing nothing itself would judge at most {1 / shares['bare']:.2f}x the bare "
          "callback's packets on this path (1 / the kernel's share of the bare callback's CPU)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=30000)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--pings", type=int, default=300)
    ap.add_argument("--queues", type=int, default=1,
                    help="N > 1: also compare the DNAT script on 1 queue and on N queues")
    ap.add_argument("--profile", action="store_true",
                    help="split the workers' CPU into its parts with perf (bench/perf_split.py)")
    a = ap.parse_args()
    count, trials = min(a.count, 200_000), min(a.trials, 10)
    with Lab("router") as lab:
        lab.ping("client", "server", count=5, interval=0.01)  # warm up
        runs = {"bare": [], "accept": [], "dnat": [], "dnat-py": []}
        fan = {1: [], a.queues: []} if a.queues > 1 else {}
        for i in range(trials):
            trial = [(v, lambda v=v: throughput_trial(lab, v, count)) for v in runs]
            trial += [(q, lambda q=q: fanout_trial(lab, q, count)) for q in fan]
            for key, run in trial:
                r = run()
                (fan if isinstance(key, int) else runs)[key].append(r)
                variant = r["variant"]
                print(f"trial {i + 1} {variant:<7} sent {r['sent']} ({r['send_pps']:,.0f}/s)  "
                      f"judged {r['seen']} at {r['pps']:,.0f} pkt/s  queue drops {r['queue_drops']}"
                      f"  modified {r['modified']}  errors {r['errors']}  CPU {r['cpu_us']:.1f} us/pkt"
                  + (f"  by queue {r['by_queue']}" if r.get("by_queue") else ""))
        # Each trial runs both variants back to back; their ratio is the least disturbed
        # by whatever else the shared machine does, so its median is the headline.
        best = {v: max(x["pps"] for x in rs) for v, rs in runs.items()}
        med = {v: statistics.median(x["pps"] for x in rs) for v, rs in runs.items()}
        print(f"\nthroughput: bare {med['bare']:,.0f} pkt/s, DNAT script native {med['dnat']:,.0f} pkt/s, "
              f"on NetfilterQueue {med['dnat-py']:,.0f} pkt/s (medians of {trials}; best "
              f"{best['bare']:,.0f} / {best['dnat']:,.0f} / {best['dnat-py']:,.0f})")
        cpu = {v: statistics.median(x["cpu_us"] for x in rs) for v, rs in runs.items()}
        print("CPU per packet (medians): " + ", ".join(f"{v} {c:.1f} us" for v, c in cpu.items()))
        for variant, label in (("dnat", "native worker"), ("dnat-py", "NetfilterQueue worker")):
            ratios = [d["pps"] / b["pps"] for b, d in zip(runs["bare"], runs[variant])]
            print(f"ratio, {label}: {statistics.median(ratios):.2f} (median of the trials' ratios: "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}; spread {min(ratios):.2f}-{max(ratios):.2f}; "
                  "target >= 1.5)")
            capacity = [b["cpu_us"] / d["cpu_us"] for b, d in zip(runs["bare"], runs[variant])]
            print(f"  capacity ratio (bare CPU per packet / script CPU per packet), {label}: "
                  f"{statistics.median(capacity):.2f} (trials {', '.join(f'{r:.2f}' for r in capacity)})")
        if fan:
            one, many = fan[1], fan[a.queues]
            ratios = [m["pps"] / o["pps"] for o, m in zip(one, many)]
            sends = [m["send_pps"] / o["send_pps"] for o, m in zip(one, many)]
            # Packets judged of the same number sent: under overload (queue drops) the
            # steadier figure, since judging rates follow the senders' bursts.
            judged = [m["seen"] / max(o["seen"], 1) for o, m in zip(one, many)]
            print(f"fan-out, DNAT script on {a.queues} queues vs 1 ({FANOUT_FLOWS} senders, "
                  f"{os.cpu_count()} CPUs): {statistics.median(ratios):.2f} (median of the trials' "
                  f"ratios: {', '.join(f'{r:.2f}' for r in ratios)}); packets judged "
                  f"{statistics.median(judged):.2f}x ({', '.join(f'{r:.2f}' for r in judged)}); judged all: "
                  f"1 queue {sum(o['seen'] == o['sent'] for o in one)}/{trials}, "
                  f"{a.queues} queues {sum(m['seen'] == m['sent'] for m in many)}/{trials}; "
                  f"sender rate ratio {statistics.median(sends):.2f}; CPU per packet "
                  f"{statistics.median(o['cpu_us'] for o in one):.1f} vs "
                  f"{statistics.median(m['cpu_us'] for m in many):.1f} us")
        if a.profile:
            profile(lab, count)
        pings = min(a.pings, 2000)
        lat = [latency(lab, v, pings) for v in ("none", "bare", "accept", "script", "script-py")]
        print(f"\nping round trip client -> server ({pings} pings):")
        for r in lat:
            print(f"  {r['variant']:<7} p50 {r['p50_ms'] * 1000:7.1f} us   p99 {r['p99_ms'] * 1000:7.1f} us"
                  f"   received {r['received']}")
        base = lat[0]
        for r in lat[1:]:
            print(f"  added by {r['variant']:<7} p50 {(r['p50_ms'] - base['p50_ms']) * 1000:+7.1f} us"
                  f"   p99 {(r['p99_ms'] - base['p99_ms']) * 1000:+7.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
