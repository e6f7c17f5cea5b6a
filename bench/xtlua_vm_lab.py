"""Start-up and memory of the lab inside the xt_LUA VM (``Lab(backend="xtlua-vm")``).

    .venv/bin/python bench/xtlua_vm_lab.py [--topology pair|router] [--runs N]

Per run: QEMU start to the guest's init (boot), to the lab's "ready" (the lab process is up
and its hosts exist), QEMU's resident memory and the guest's memory, the time to attach a
kernel-backend script and a ping's round trip through the lab, and the time close() takes.
Needs a build (`packetscript kernel build --patches DIR`) and root (9p share of /).
"""
import argparse
import json
import time

from packetscript_lab.lab import Lab

ACCEPT = "function process_packet(p) return XT_CONTINUE end\n"


def one(topology: str) -> dict:
    t0 = time.monotonic()
    lab = Lab(topology, backend="xtlua-vm")
    up = time.monotonic() - t0
    info = lab.vm.info()
    t1 = time.monotonic()
    h = lab.attach(ACCEPT, host="server", chain="INPUT", match="-p icmp", name="b",
                   backend="kernel")
    attach = time.monotonic() - t1
    ping = lab.ping("client", "server", count=5)
    seen = h.stats()["seen"]
    t2 = time.monotonic()
    lab.close()
    return {**info, "lab_up_s": round(up, 1), "attach_s": round(attach, 2),
            "ping_ms": ping.get("rtt_ms") or ping.get("rtts"), "ping_received": ping["received"],
            "script_saw": seen, "close_s": round(time.monotonic() - t2, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topology", default="pair")
    p.add_argument("--runs", type=int, default=1)
    a = p.parse_args()
    for _ in range(a.runs):
        print(json.dumps(one(a.topology)))


if __name__ == "__main__":
    main()
