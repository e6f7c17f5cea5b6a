"""Students on one machine, as real ordinary accounts: the course's limits hold (labs per
account, packets per second per lab, with errors that name the limit and how to change it),
and one student can neither reach another's lab (its socket, its namespaces, its processes'
descriptors and script), nor see its packets, nor slow it down with a flood."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import stockuser
from labutil import require_lab


pytestmark = [pytest.mark.timeout(240), pytest.mark.lab]
OTHER = "psl-student-b"


def _as(name, code, tmp_path, env=None, timeout=120):
    res = stockuser.run([sys.executable, "-c", textwrap.dedent(code)], tmp_path / f"stage-{name}",
                        name=name, env=env, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _start(name, code, tmp_path, env=None):
    """A student's program that prints one JSON line when ready and ends on a line of stdin."""
    account = stockuser.student(name)
    proc = subprocess.Popen(stockuser.command([sys.executable, "-c", textwrap.dedent(code)],
                                              tmp_path / f"stage-{name}", name),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**stockuser.stock_env(account), **(env or {})},
                            cwd=account.pw_dir)
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError(proc.stderr.read()[-3000:])
    return proc, json.loads(line)


def _finish(proc):
    try:
        proc.stdin.write("\n")
        proc.stdin.flush()
    except OSError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


LABS = """
    import json
    from packetscript_lab.lab import Lab, LabError
    from packetscript_lab.lab.limits import LabLimitError, labs_running
    first, second = Lab("pair"), Lab("pair")
    try:
        Lab("pair")
        refused = None
    except LabLimitError as exc:
        refused = str(exc)
    held = labs_running()
    first.close()
    with Lab("pair") as third:          # the closed lab's slot is free again
        again = sorted(third.hosts)
    second.close()
    print(json.dumps({"refused": refused, "held": held, "again": again, "after": labs_running()}))
"""


def test_an_account_runs_at_most_max_labs_labs(tmp_path):
    require_lab()
    out = _as(stockuser.STUDENT, LABS, tmp_path, env={"PACKETSCRIPT_MAX_LABS": "2"})
    assert out["refused"] and "already runs 2 labs" in out["refused"], out
    assert "PACKETSCRIPT_MAX_LABS" in out["refused"] and "lab.close()" in out["refused"]
    assert out["held"] == 2 and out["again"] == ["client", "server"] and out["after"] == 0


FLOOD = """
    import json, sys, time
    from packetscript_lab.lab import Lab, LabError
    with Lab("pair") as lab:
        h = lab.attach("function process_packet(p) return NF_ACCEPT end", host="server",
                       match="-p udp --dport 9000")
        try:
            lab.udp_stream("client", "server", port=9000, rate=5000, count=10)
            refused = None
        except LabError as exc:
            refused = str(exc)
        print(json.dumps({"flooding": True}), flush=True)
        t = time.monotonic()
        blast = lab.udp_blast("client", "10.77.0.2", port=9000, count=1000)
        elapsed = time.monotonic() - t
        seen = h.stats()["seen"]
        print(json.dumps({"refused": refused, "blast": blast, "elapsed": elapsed, "seen": seen}), flush=True)
        sys.stdin.readline()
"""

STEADY = """
    import json
    from packetscript_lab.lab import Lab
    with Lab("pair") as lab:
        r = lab.udp_stream("client", "server", port=9000, rate=100, count=100)
    print(json.dumps({"received": r["received"], "elapsed": r["elapsed"]}))
"""


def test_a_flood_is_held_to_the_packet_rate_and_the_others_keep_working(tmp_path):
    require_lab()
    limit = 500
    flood, ready = _start(stockuser.STUDENT, FLOOD, tmp_path, env={"PACKETSCRIPT_MAX_PPS": str(limit)})
    try:
        assert ready == {"flooding": True}
        other = _as(OTHER, STEADY, tmp_path)          # while the flood runs
        out = json.loads(flood.stdout.readline())
    finally:
        _finish(flood)
    assert "at most 500 packets/s" in out["refused"] and "PACKETSCRIPT_MAX_PPS" in out["refused"]
    # 1000 datagrams at 500/s with a burst of 50: no less than 1.9 s, and every one arrived.
    assert out["blast"]["limited_to"] == limit and out["blast"]["sent"] == 1000
    assert out["elapsed"] >= (1000 - limit // 10) / limit * 0.98, out
    assert out["seen"] == 1000, out
    # The other student's stream is whole and on time (1 s of sending; slack for a busy machine).
    assert other["received"] == 100 and other["elapsed"] < 3.0, other


OWNER = """
    import json, subprocess, sys, threading
    from packetscript_lab.lab import Lab
    up = subprocess.run([sys.executable, "-m", "packetscript_lab", "lab", "up", "--name", "class"],
                        capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    lab = Lab("pair")
    # (the marker is put together here, so that no command line holds it but the script's own)
    h = lab.attach("-- secret-" + "answer-7731\\nfunction process_packet(p) return NF_ACCEPT end",
                   host="server", match="-p udp --dport 9000")
    print(json.dumps({"lab_pid": lab.lab_pid}), flush=True)
    # Traffic all along, until the test is done looking (the close ends the stream).
    threading.Thread(target=lambda: lab.udp_stream("client", "server", port=9000, rate=200,
                                                   duration=60), daemon=True).start()
    sys.stdin.readline()
    lab.close()
    subprocess.run([sys.executable, "-m", "packetscript_lab", "lab", "down", "--name", "class"])
"""

INTRUDER = """
    import glob, json, os, subprocess, sys
    from packetscript_lab.lab import Lab, LabError
    uid, pid = int(sys.argv[1]), int(sys.argv[2])
    out = {}
    try:
        Lab(_connect=f"\\0packetscript-lab-{uid}-class", start_timeout=5)
        out["socket"] = "connected"
    except LabError as exc:
        out["socket"] = "refused"
    denied = {}
    for what in ("ns/net", "ns/user", "fd", "environ", "mem", "root/tmp"):
        try:
            os.listdir(f"/proc/{pid}/{what}") if what in ("fd", "root/tmp") else open(f"/proc/{pid}/{what}", "rb").read(1)
            denied[what] = False
        except PermissionError:
            denied[what] = True
    out["denied"] = denied
    r = subprocess.run(["nsenter", "-t", str(pid), "-U", "-n", "--preserve-credentials",
                        "iptables", "-F"], capture_output=True, text=True)
    out["nsenter"] = [r.returncode, r.stderr.strip()]
    leaks = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if b"secret-" + b"answer-7731" in open(path, "rb").read():
                leaks.append(path)
        except OSError:
            pass
    out["script_in_cmdlines"] = leaks
    # The same addresses as the other lab (10.77.0.x): none of its packets reach this one.
    with Lab("pair") as mine:
        cap = mine.capture("server", timeout=1.0, bpf="udp", wait=False)
        mine.udp_stream("client", "server", port=9100, rate=100, count=5)
        got = cap.packets()
        out["captured_ports"] = sorted({p["UDP"].dport for p in got})
    print(json.dumps(out))
"""


def test_one_student_cannot_reach_see_or_change_another_students_lab(tmp_path):
    require_lab()
    owner = stockuser.student()
    proc, info = _start(stockuser.STUDENT, OWNER, tmp_path)
    try:
        out = _as(OTHER, INTRUDER.replace("sys.argv[1]", str(owner.pw_uid))
                  .replace("sys.argv[2]", str(info["lab_pid"])), tmp_path)
        hidden = _hidepid_view(tmp_path, info["lab_pid"])
    finally:
        _finish(proc)
    assert out["socket"] == "refused"
    assert all(out["denied"].values()), out["denied"]
    assert out["nsenter"][0] != 0 and "Permission denied" in out["nsenter"][1], out["nsenter"]
    assert out["script_in_cmdlines"] == []
    assert out["captured_ports"] == [9100], out           # only its own stream, never 9000
    assert hidden == "invisible"


def _hidepid_view(tmp_path, pid: int) -> str:
    """With /proc mounted hidepid=invisible (docs/classroom.md, Limits), another student
    does not even see the lab's processes (nor their interface counters)."""
    other = stockuser.student(OTHER)
    probe = (f"import os; print('visible' if os.path.exists('/proc/{pid}/task') "
             "else 'invisible')")
    argv = stockuser.with_root_dirs_visible(
        ["setpriv", f"--reuid={other.pw_uid}", f"--regid={other.pw_gid}", "--clear-groups", "--",
         sys.executable, "-c", probe], tmp_path / "hp",
        extra_steps=["mount -t proc -o hidepid=invisible proc /proc"])
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                         env=stockuser.stock_env(other))
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()
