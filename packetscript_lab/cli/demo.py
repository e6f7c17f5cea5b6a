"""``packetscript demo``: a first script judging real traffic in a private lab network.

It needs the rights to create network namespaces (root, or unprivileged user namespaces).
Where they are missing it says so and runs the same script over a generated capture on
the replay backend instead.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from packetscript_lab.cli import CliError

DEMO_SCRIPT = """\
-- Drop every third UDP datagram, and mark the others with DSCP AF11 (TOS 0x28).
seen = 0
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip or not ip:data(packet_udp) then return NF_ACCEPT end
  seen = seen + 1
  if seen % 3 == 0 then return NF_DROP end
  ip:tos():set(0x28)
  return NF_ACCEPT
end
"""


def register(sub) -> None:
    p = sub.add_parser("demo", help="run a first script on a private lab network (or replay)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("auto", "nfqueue", "replay"), default="auto",
                   help="auto: the live lab where namespaces can be made, else replay")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of traffic (live lab)")
    p.add_argument("--rate", type=float, default=100.0, help="datagrams per second (live lab)")
    p.set_defaults(func=run)


def run(args) -> int:
    print("The script:\n" + "".join(f"    {line}\n" for line in DEMO_SCRIPT.splitlines()))
    if args.backend in ("auto", "nfqueue"):
        from packetscript_lab.lab import LabError

        try:
            lab, handle = _usable_lab()
        except LabError as exc:
            if args.backend == "nfqueue":
                raise CliError(str(exc)) from None
            print(f"The live lab cannot run here: {exc}\n"
                  "Running the same script on the replay backend instead.\n", file=sys.stderr)
        else:
            try:
                return _live(args, lab, handle)
            except LabError as exc:   # the lab worked and then failed: say so, do not fall back
                raise CliError(f"the live lab failed: {exc}") from None
            finally:
                lab.close()
    return _replayed()


def _usable_lab():
    """A lab with the demo script attached: everything that depends on this machine (the
    namespaces, iptables, NFQUEUE) is tried before the demo announces anything."""
    from packetscript_lab.lab import Lab

    lab = Lab("pair")
    try:
        handle = lab.attach(DEMO_SCRIPT, host="server", chain="INPUT", match="-p udp --dport 9000",
                            name="demo")
    except BaseException:
        lab.close()
        raise
    return lab, handle


def _live(args, lab, handle) -> int:
    server = lab.hosts["server"]
    print(f"Lab up: client {lab.hosts['client'].ip} <-> server {server.ip} (veth pair, "
          "own namespaces). Script attached on server INPUT, UDP port 9000.")
    print(f"Sending UDP to {server.ip}:9000 at {args.rate:g}/s for {args.duration:g} s ...")
    stream = lab.udp_stream("client", server.ip, port=9000, rate=args.rate,
                            duration=args.duration)
    recent = handle.recent(limit=3)
    stats = handle.detach()   # the final counts, after the queue drained
    print(f"\nsent {stream['sent']}, the server's socket received {stream['received']}")
    print(f"script: seen {stats['seen']}, accepted {stats['accepted']}, dropped {stats['dropped']}, "
          f"modified {stats['modified']}, errors {stats['errors']}, queue drops {stats['queue_drops']}, "
          f"passed unjudged {stats['passed_unjudged']}")
    for entry in recent:
        changed = ", ".join(entry.get("changed") or []) or "-"
        print(f"  {entry['verdict']:<8} {entry['summary']}  changed: {changed}")
    if stats["seen"] == 0:
        raise CliError("no packet reached the script: see docs/lab.md")
    return 0


def _replayed() -> int:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from packetscript_lab import replay
    from packetscript_lab.core import pcap

    packets = [Ether(src="02:77:00:00:00:01", dst="02:77:00:00:00:02")
               / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=40000, dport=9000)
               / Raw(f"datagram {i}".encode()) for i in range(300)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.pcap"
        pcap.write_pcap(path, pcap.ETHERNET, [(bytes(p), i / 100) for i, p in enumerate(packets)])
        result = replay(DEMO_SCRIPT, path, name="demo")
    v = result.verdicts
    print(f"replayed {result.packets} UDP datagrams client -> server: accept {v['accept']}, "
          f"drop {v['drop']}, modified {result.modified}, errors {result.errors}")
    return 0
