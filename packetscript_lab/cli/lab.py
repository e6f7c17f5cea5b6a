"""``packetscript lab up|down|status``: a lab network that outlives one command."""
from __future__ import annotations

import json

from packetscript_lab.cli import CliError


def register(subparsers) -> None:
    p = subparsers.add_parser("lab", help="start, stop or inspect a background lab network",
                              description="Manage a lab network that keeps running between "
                              "commands (see docs/lab.md). `packetscript run --lab NAME` uses it.")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--name", default="default", help="lab name (several labs can run at once)")
    p.add_argument("--topology", default="pair",
                   help="for `up`: pair = client-server, router = client-router-server, or a "
                   "description file (.json/.yaml, docs/topologies.md)")
    p.add_argument("--interval", type=float, default=0.5, help="for `up`: stats sample interval (s)")
    p.add_argument("--ipv6", action="store_true",
                   help="for `up`: a dual-stack lab (IPv6 addresses in fd77::/16 too)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _hosts_text(status: dict) -> str:
    lines = []
    for h in status["hosts"].values():
        for i in h.interfaces:
            lines.append(f"  {h.name:<7} {i.ifname:<5} {i.ip + '/' + str(i.prefix):<15} {i.mac}"
                         f"  -> {i.peer_host} {i.peer_ip}")
            if getattr(i, "ip6", None):
                lines.append(f"  {'':<7} {'':<5} {i.ip6 + '/64':<15}  -> {i.peer_host} {i.peer_ip6}")
    return "\n".join(lines)


def _jsonable(status: dict) -> dict:
    out = dict(status)
    out["hosts"] = {n: {"ip": h.ip, "ip6": h.ip6, "mac": h.mac, "ifname": h.ifname,
                        "interfaces": [vars(i) for i in h.interfaces]}
                    for n, h in status["hosts"].items()}
    return out


def run(args) -> int:
    from packetscript_lab.lab import LabError, daemon

    try:
        if args.action == "up":
            status = daemon.start(args.name, args.topology, args.interval, ipv6=args.ipv6)
            if args.json:
                print(json.dumps(_jsonable(status)))
            else:
                print(f"lab {args.name!r} is up ({status['topology']}):\n{_hosts_text(status)}")
            return 0
        if args.action == "down":
            if not daemon.stop(args.name):
                raise CliError(f"no lab named {args.name!r} is running")
            if args.json:
                print(json.dumps({"name": args.name, "stopped": True}))
            else:
                print(f"lab {args.name!r} is down")
            return 0
        if not daemon.is_running(args.name):
            if args.json:
                print(json.dumps({"name": args.name, "running": False}))
            else:
                print(f"no lab named {args.name!r} is running (start one with `packetscript lab up`)")
            return 1
        with daemon.connect(args.name) as lab:
            status = lab.status()
        if args.json:
            print(json.dumps(dict(_jsonable(status), name=args.name, running=True)))
        else:
            print(f"lab {args.name!r} is up ({status['topology']}, {status['uptime']:.0f}s):")
            print(_hosts_text(status))
            for n, a in status["attached"].items():
                print(f"  script {n}: {a['host']} {a['table']}/{a['chain']} {a['match']} queue {a['queue']}")
        return 0
    except LabError as exc:
        raise CliError(str(exc)) from None
