"""Runs inside the micro-VM (standard library only): the lab process, wired to the host.

The host's ``Lab`` talks to its lab process over a stream socket (protocol.py). In the VM
that stream is a virtio-serial port (``/dev/vportNpM`` named ``packetscript-lab``), whose
other end is a socket the host's ``Lab`` holds. The lab process wants a socket
(``--fd``), so this driver gives it one end of a socket pair and copies bytes between the
other end and the port, both ways, unchanged.

It ends when either side ends: the lab process exits (``Lab.close()``), or the host's end
of the port goes away (the Lab's process died: the port then reads end-of-file), in which
case it stops the lab process. The VM's init powers off right after.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

PORT_NAME = "packetscript-lab"


def find_port() -> str:
    base = "/sys/class/virtio-ports"
    for _ in range(200):               # the port shows up once virtio_console has probed
        for dev in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            try:
                name = open(os.path.join(base, dev, "name")).read().strip()
            except OSError:
                continue
            if name == PORT_NAME:
                return "/dev/" + dev
        time.sleep(0.05)
    raise RuntimeError(f"no virtio-serial port named {PORT_NAME} in {base}")


def main(job_dir: str) -> int:
    spec = json.load(open(os.path.join(job_dir, "lab.json")))
    env = dict(spec["env"], PATH="/usr/sbin:/usr/bin:/sbin:/bin",
               XTABLES_LIBDIR=os.environ.get("XTABLES_LIBDIR", ""), HOME="/tmp")
    port = os.open(find_port(), os.O_RDWR)
    mem = {k: v.split()[0] for k, v in (ln.split(":", 1) for ln in open("/proc/meminfo"))
           if k in ("MemTotal", "MemAvailable")}
    print(f"PSVM-LAB-STARTED mem_total_kb={mem.get('MemTotal')} "
          f"mem_available_kb={mem.get('MemAvailable')}", flush=True)
    code = bridge(port, spec["argv"], env)
    print(f"PSVM-LAB-ENDED {code}", flush=True)
    return 0


def bridge(port: int, argv: list, env: dict, poll: float = 0.5, grace: float = 5.0) -> int:
    """Run `argv --fd N` and copy bytes between `port` and its socket until either ends;
    returns the lab process's exit status."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    lab = subprocess.Popen([*argv, "--fd", str(theirs.fileno())], env=env,
                           pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    theirs.close()
    done = threading.Event()

    def host_to_lab():
        seen = False
        try:
            while not done.is_set():
                data = os.read(port, 65536)
                if not data:
                    # End of file: the host's end is not connected. Before the first byte
                    # that can mean "not yet"; after it, the host's Lab is gone.
                    if seen:
                        break
                    time.sleep(0.05)
                    continue
                seen = True
                ours.sendall(data)
        except OSError:
            pass
        done.set()

    def lab_to_host():
        try:
            while True:
                data = ours.recv(65536)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(port, view):]
        except OSError:
            pass
        done.set()

    for fn in (host_to_lab, lab_to_host):
        threading.Thread(target=fn, daemon=True).start()
    while not done.wait(poll):
        if lab.poll() is not None:
            time.sleep(poll)            # let its last replies through
            done.set()
    ours.close()          # a lab process whose client is gone ends by itself...
    try:
        lab.wait(grace)
    except subprocess.TimeoutExpired:     # ...or is stopped
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(5)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait()
    return lab.returncode


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Exception as exc:
        print(f"PSVM-GUEST-ERROR {exc!r}", flush=True)
        sys.exit(1)
