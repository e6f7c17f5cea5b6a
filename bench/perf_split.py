"""Where a queue worker's CPU goes: a system-wide `perf record -g` split into the parts of
an NFQUEUE worker's work, from the call stacks of its samples.

The worker is the process with the most samples giving verdicts (nfqnl_recv_verdict); the
sender, the one with the most samples sending UDP (udp_sendmsg). A kernel sample is put
under the first part whose function is on its stack; a user-space one under its library.
Used by ``bench/nfqueue.py --profile``; needs ``perf`` (Debian: linux-perf) and root.
"""
from __future__ import annotations

import collections
import shutil
import signal
import subprocess

# Kernel parts, most specific first: (label, functions that put a sample under it).
KERNEL = [
    ("kernel: carrying each packet on after its verdict (reinjection, the server's stack)",
     ("nfqnl_reinject", "nf_reinject")),
    ("kernel: verdict messages (netlink, parsing, payloads)", ("nfqnl_recv_verdict", "netlink_sendmsg")),
    ("kernel: reading the queue (recv, recvmmsg)", ("netlink_recvmsg", "do_recvmmsg", "__sys_recvfrom")),
    ("kernel: system call entry, scheduling and the rest", ()),
]
USER = [
    ("user: the script and the engine (LuaJIT)", ("[JIT]", "luajit")),
    ("user: Python", ("libpython", "python3", ".cpython-")),
    ("user: C library", ("libc.so", "libnetfilter", "libnfnetlink", "libmnl")),
    ("user: other", ()),
]


class Recorder:
    """`perf record -a -g` around a block: ``with Recorder(path): ...``."""

    def __init__(self, path: str, frequency: int = 2000):
        if shutil.which("perf") is None:
            raise SystemExit("--profile needs perf: apt-get install linux-perf (Debian)")
        self.path, self.frequency = path, frequency

    def __enter__(self):
        self.proc = subprocess.Popen(["perf", "record", "-a", "-g", "-F", str(self.frequency),
                                      "-o", self.path], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)


def samples(path: str):
    """(pid, [frame, ...]) per sample, innermost frame first; a frame is 'symbol (dso)'."""
    out = subprocess.run(["perf", "script", "-i", path, "-F", "pid,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    for block in out.split("\n\n"):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if len(lines) < 2:
            continue
        frames = [line.split(None, 1)[1] if " " in line else "" for line in lines[1:]]
        yield int(lines[0].split()[-1]), frames


def _part(frames) -> str:
    leaf = frames[0]
    if "kernel.kallsyms" in leaf:
        stack = " ".join(frames)
        return next(label for label, names in KERNEL if not names or any(n in stack for n in names))
    return next(label for label, names in USER if not names or any(n in leaf for n in names))


def split(path: str) -> dict:
    """The worker's CPU by part (fractions), its share of kernel time and the sender's
    samples next to the worker's."""
    all_samples = list(samples(path))
    verdicts, sends = collections.Counter(), collections.Counter()
    for pid, frames in all_samples:
        stack = " ".join(frames)
        if "nfqnl_recv_verdict" in stack:
            verdicts[pid] += 1
        if "udp_sendmsg" in stack:
            sends[pid] += 1
    if not verdicts:
        raise RuntimeError("no verdicts in the profile: was the queue worker running?")
    worker = verdicts.most_common(1)[0][0]
    sender = sends.most_common(1)[0][0] if sends else None
    parts, total, sender_total = collections.Counter(), 0, 0
    for pid, frames in all_samples:
        if pid == worker:
            parts[_part(frames)] += 1
            total += 1
        elif pid == sender:
            sender_total += 1
    kernel = sum(n for label, n in parts.items() if label.startswith("kernel"))
    return {"parts": {label: parts[label] / total for label, _ in KERNEL + USER if parts[label]},
            "kernel_share": kernel / total, "samples": total, "sender_samples": sender_total}


def report(variant: str, result: dict) -> str:
    lines = [f"  {variant}: {result['samples']} samples of the worker "
             f"({result['sender_samples']} of the sender); kernel {result['kernel_share']:.0%}"]
    lines += [f"    {share:5.1%}  {label}" for label, share in result["parts"].items()]
    return "\n".join(lines)
