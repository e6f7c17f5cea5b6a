"""Classroom capacity: how many students' labs one machine holds, what each costs, how fast
they start, and how that grows from 1 to 30 students working at once.

Each student is a separate ordinary account (numeric uids 62001..., no passwd entry needed)
running what a notebook does: start a lab (``Lab("pair")``), attach a counting script, send
its own number of UDP datagrams through it, check that the script judged exactly those,
and keep the lab open until every student's lab is up, so they are measured together.
Separate accounts matter: the course's per-account limit (``max_labs``, 4 by default,
docs/classroom.md) would forbid 30 labs for one account; run as an ordinary user the
benchmark has only that one account, and it lifts the limit for itself
(PACKETSCRIPT_MAX_LABS=0; a course's limits file would still bind and stop it).

Reported per step: start time (a lab's construction while all start together; median and
max), memory per lab (proportional set size of the lab's processes: the ``unshare``, the lab
process, its script judges), machine memory per student (MemAvailable before minus with all
labs up, divided by the students, the notebook-side client included), labs judging exactly
their own packets, and processes left after the labs closed. Bounded: at most 30 students
per step, every phase has a deadline.

    python bench/capacity.py                    # steps 1 5 10 20 30 (needs root for the accounts)
    python bench/capacity.py --steps 1 10       # fewer
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import stockuser  # noqa: E402  (running as a student account, as the tests do)
FIRST_UID = 62001
MAX_STUDENTS = 30
PHASE_TIMEOUT = 120.0

STUDENT = r"""
import json, os, sys, time
from packetscript_lab.lab import Lab
count = int(sys.argv[1])
t = time.monotonic()
lab = Lab("pair")
started = time.monotonic() - t
h = lab.attach("n = 0\nfunction process_packet(p) n = n + 1 return NF_ACCEPT end", host="server",
               match="-p udp --dport 9000")
r = lab.udp_stream("client", "server", port=9000, rate=200, count=count)
seen = h.stats()["seen"]
print(json.dumps({"start": started, "seen": seen, "received": r["received"], "count": count,
                  "unshare": lab.pid, "lab": lab.lab_pid}), flush=True)
sys.stdin.readline()              # stay up until every student's lab is measured
lab.close()
"""


def student_command(uid: int | None, stage: Path, count: int) -> list[str]:
    argv = [sys.executable, "-c", STUDENT, str(count)]
    if uid is None:
        return argv
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
    # An interpreter or checkout under /root (closed to other uids) shows through a private
    # mount namespace of this student's own; the host's mounts are not changed.
    return stockuser.with_root_dirs_visible(drop, stage)


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    return kids


def tree_pss(pid: int, kids: dict[int, list[int]]) -> int:
    """Proportional set size of ``pid`` and its descendants, in bytes."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def processes_of(uids: list[int]) -> int:
    n = 0
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if p.stat().st_uid in uids:
                    n += 1
            except OSError:
                pass
    return n


def step(n: int, separate: bool, work: Path) -> dict:
    uids = [FIRST_UID + i for i in range(n)] if separate else []
    env_base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1"}
    if not separate:
        env_base = dict(os.environ, PACKETSCRIPT_MAX_LABS="0")
    before = mem_available()
    procs = []
    t0 = time.monotonic()
    for i in range(n):
        uid = uids[i] if separate else None
        env = dict(env_base)
        if uid is not None:
            home = work / f"home-{uid}"
            home.mkdir(exist_ok=True)
            os.chown(home, uid, uid)
            env.update(HOME=str(home), USER=f"uid{uid}")
        procs.append(subprocess.Popen(student_command(uid, work / f"stage-{i}", 20 + i),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=env.get("HOME", str(work))))
    results, failures = [], []
    try:
        deadline = time.monotonic() + PHASE_TIMEOUT
        for p in procs:
            line = ""
            while not line and time.monotonic() < deadline and p.poll() is None:
                line = p.stdout.readline()
            if line:
                results.append(json.loads(line))
            else:
                failures.append((p.stderr.read() if p.poll() is not None else "timed out")[-400:])
        all_up = time.monotonic() - t0
        with_labs = mem_available()
        kids = children()
        pss = [tree_pss(r["unshare"], kids) for r in results]
    finally:
        for p in procs:
            try:
                p.stdin.write("\n")
                p.stdin.flush()
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    end = time.monotonic() + 10
    left = processes_of(uids) if separate else 0
    while left and time.monotonic() < end:
        time.sleep(0.1)
        left = processes_of(uids)
    starts = [r["start"] for r in results]
    return {"students": n, "up": len(results), "failures": failures,
            "start_median": statistics.median(starts) if starts else float("nan"),
            "start_max": max(starts) if starts else float("nan"), "all_up": all_up,
            "lab_mib": statistics.median(pss) / 2**20 if pss else float("nan"),
            "student_mib": (before - with_labs) / n / 2**20,
            "exact": sum(r["seen"] == r["count"] == r["received"] for r in results),
            "left": left}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20, 30],
                    help=f"numbers of students, each at most {MAX_STUDENTS}")
    a = ap.parse_args(argv)
    if any(not 1 <= n <= MAX_STUDENTS for n in a.steps):
        ap.error(f"each step is 1 to {MAX_STUDENTS} students")
    separate = os.geteuid() == 0
    work = Path(f"/tmp/packetscript-capacity-{os.getpid()}")
    work.mkdir(mode=0o755)
    print(f"{os.cpu_count()} CPUs, {mem_available() / 2**30:.1f} GiB available; students are "
          + ("separate accounts (uids %d...)" % FIRST_UID if separate else
             "one account (not root: PACKETSCRIPT_MAX_LABS=0 for this run)"))
    print(f"{'students':>8} {'up':>4} {'start med':>10} {'start max':>10} {'all up':>8} "
          f"{'MiB/lab':>8} {'MiB/student':>12} {'exact':>6} {'left':>5}")
    ok = True
    try:
        for n in a.steps:
            r = step(n, separate, work)
            print(f"{r['students']:>8} {r['up']:>4} {r['start_median']:>9.2f}s {r['start_max']:>9.2f}s "
                  f"{r['all_up']:>7.1f}s {r['lab_mib']:>8.1f} {r['student_mib']:>12.1f} "
                  f"{r['exact']:>3}/{r['up']:<2} {r['left']:>5}", flush=True)
            for f in r["failures"][:3]:
                print("  a student's lab failed:", f.strip().splitlines()[-1] if f.strip() else f)
            ok &= r["up"] == r["exact"] == n and r["left"] == 0
    finally:
        subprocess.run(["rm", "-rf", str(work)] + [f"/tmp/packetscript-lab-{FIRST_UID + i}"
                                                   for i in range(MAX_STUDENTS)])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
