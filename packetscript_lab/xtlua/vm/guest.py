"""Runs inside the micro-VM (standard library only): the real xt_LUA over a list of packets.

Topology inside the VM (all of it is the VM's own network; nothing leaves it):

    c0 (VM root ns) ==veth== r0 [netns "router", 10.77.0.254/32] -> forwards ->
    r1 [10.77.9.1/24] ==veth== s1 (VM root ns)

Each packet is injected as an Ethernet frame on c0, so the router receives it with a MAC
header (which is where xt_LUA starts the packet), meets `-t mangle -A PREROUTING -i r0 -j LUA
--script FILE` there, is forwarded out r1 and captured on s1. Per packet the guest reads the
LUA rule's counter and the target-less rule after it (XT_CONTINUE), whether the packet
arrived, its bytes, and what the module printed to the kernel log. Forwarding decrements the
TTL after the script ran; the captured bytes are given back with that undone, so they are
what the script left.

Results go one JSON line per packet to JOB/results.jsonl, flushed at once: if the module
hangs the VM, the host knows how far it got.
"""
import json
import os
import socket
import subprocess
import sys
import time

C0, R0, S1, R1 = "02:77:00:00:00:01", "02:77:00:00:00:fe", "02:77:00:00:09:02", "02:77:00:00:09:01"
IPT = "iptables-legacy"


def sh(*argv, check=True):
    res = subprocess.run(argv, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def router(*argv, check=True):
    return sh("ip", "netns", "exec", "router", *argv, check=check)


def topology():
    sh("ip", "netns", "add", "router")
    for a, b, ma, mb in (("c0", "r0", C0, R0), ("s1", "r1", S1, R1)):
        sh("ip", "link", "add", a, "address", ma, "type", "veth", "peer", "name", b,
           "address", mb)
        sh("ip", "link", "set", b, "netns", "router")
        sh("sysctl", "-qw", f"net.ipv6.conf.{a}.disable_ipv6=1", check=False)
        sh("ip", "link", "set", a, "up")
    router("sysctl", "-qw", "net.ipv4.ip_forward=1")
    router("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
    router("sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0")
    for dev, addr in (("r0", "10.77.0.254/32"), ("r1", "10.77.9.1/24")):
        router("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1", check=False)
        router("sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0")
        router("ip", "addr", "add", addr, "dev", dev)
        router("ip", "link", "set", dev, "up")
    router("ip", "link", "set", "lo", "up")
    router("ip", "neigh", "add", "10.77.9.2", "lladdr", S1, "dev", "r1", "nud", "permanent")
    router("ip", "route", "add", "default", "via", "10.77.9.2", "dev", "r1")


def counters():
    out = router(IPT + "-save", "-c", "-t", "mangle").stdout
    found = {}
    for line in out.splitlines():
        for tag in ("psvm-lua", "psvm-continue"):
            if f'--comment {tag} ' in line + " " or f'--comment "{tag}"' in line:
                pk = line[1:line.index("]")].split(":")[0]
                found[tag] = int(pk)
    return found.get("psvm-lua", 0), found.get("psvm-continue", 0)


def undo_forward(ip: bytes) -> bytes:
    """Give back the TTL and header checksum ip_decrease_ttl() changed after the script."""
    b = bytearray(ip[:int.from_bytes(ip[2:4], "big")] if len(ip) >= 20 else ip)
    if len(b) < 20:
        return bytes(b)
    b[8] = (b[8] + 1) & 0xFF
    after = int.from_bytes(b[10:12], "little")      # the kernel adds htons(0x0100) as a u32

    def forward(c):
        c += 1
        return (c + (c >= 0xFFFF)) & 0xFFFF
    for cand in ((after - 1) & 0xFFFF, (after - 2) & 0xFFFF):
        if forward(cand) == after:
            b[10:12] = cand.to_bytes(2, "little")
            break
    return bytes(b)


def kmsg_reader():
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(fd, 0, os.SEEK_END)

    def read():
        lines = []
        while True:
            try:
                rec = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                return lines
            except OSError:       # a record was overwritten; go on
                continue
            lines.append(rec.split(";", 1)[-1].strip())
    return read


def main(job_dir):
    job = json.load(open(os.path.join(job_dir, "job.json")))
    out = open(os.path.join(job_dir, "results.jsonl"), "a")

    def emit(rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()
        os.fsync(out.fileno())

    kmsg = kmsg_reader()
    topology()
    emit({"ready": True, "uptime": float(open("/proc/uptime").read().split()[0]),
          "meminfo": {k: v.strip() for k, v in (ln.split(":") for ln in open("/proc/meminfo"))
                      if k in ("MemTotal", "MemAvailable")}})
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind(("c0", 0))
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    rx.bind(("s1", 0))
    rx.setblocking(False)
    eth = bytes.fromhex(R0.replace(":", "")) + bytes.fromhex(C0.replace(":", "")) + b"\x08\x00"
    wait = job.get("wait", 0.25)
    first_case, first_packet = job.get("start", [0, 0])
    for c in range(first_case, len(job["cases"])):
        case = job["cases"][c]
        router(IPT, "-t", "mangle", "-F", "PREROUTING")
        # The counting rule goes in first and the LUA rule in front of it: with legacy
        # iptables every later change would run the script's top level a second time.
        router(IPT, "-t", "mangle", "-A", "PREROUTING", "-i", "r0", "-m", "comment",
               "--comment", "psvm-continue")
        rule = ["-t", "mangle", "-I", "PREROUTING", "1", "-i", "r0", "-m", "comment",
                "--comment", "psvm-lua", "-j", "LUA", "--script", case["script"]]
        if case.get("function"):
            rule += ["--function", case["function"]]
        if case.get("state") is not None:
            rule += ["--state", str(case["state"])]
        kmsg()
        res = router(IPT, *rule, check=False)
        if res.returncode != 0:
            emit({"case": c, "setup_error": (res.stderr or res.stdout).strip(), "kmsg": kmsg()})
            continue
        emit({"case": c, "loaded": True, "kmsg": kmsg()})
        start = first_packet if c == first_case else 0
        for index in range(start, len(case["packets"])):
            ip = bytes.fromhex(case["packets"][index])
            while True:          # drain
                try:
                    rx.recv(65536)
                except BlockingIOError:
                    break
            before = counters()
            emit({"case": c, "sending": index})
            tx.send(eth + ip)
            got, deadline = None, time.monotonic() + wait
            while got is None and time.monotonic() < deadline:
                try:
                    frame = rx.recv(65536)
                except BlockingIOError:
                    time.sleep(0.002)
                    continue
                if frame[12:14] == b"\x08\x00":
                    got = frame[14:]
            after = counters()
            seen, cont = after[0] - before[0], after[1] - before[1]
            if seen == 0:
                verdict = "not-seen"
            elif cont:
                verdict = "continue"
            else:
                verdict = "accept" if got is not None else "drop"
            logs = [ln for ln in kmsg() if "LUA" in ln or "Oops" in ln or "BUG" in ln]
            error = next((ln for ln in logs if "failed" in ln or "must return" in ln), None)
            emit({"case": c, "index": index, "verdict": verdict, "seen": seen, "continued": cont,
                  "data": undo_forward(got).hex() if got is not None else None,
                  "error": error, "kmsg": logs})


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as exc:      # reported to the host through the console and the results
        print(f"PSVM-GUEST-ERROR {exc!r}", flush=True)
        with open(os.path.join(sys.argv[1], "results.jsonl"), "a") as f:
            f.write(json.dumps({"guest_error": repr(exc)}) + "\n")
