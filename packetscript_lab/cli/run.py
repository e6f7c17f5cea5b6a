"""``packetscript run SCRIPT.lua``: attach a script in a lab, drive traffic, watch verdicts."""
from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from pathlib import Path

from packetscript_lab.cli import CliError

TRAFFIC_KINDS = ("udp", "ping", "tcp", "pcap")
_NUMERIC = {"rate": float, "duration": float, "size": int, "port": int, "count": int,
            "interval": float, "connections": int, "sport": int}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="attach a script to live lab traffic and show its verdicts",
        description="Start a private lab (or use one from `packetscript lab up --name NAME` "
        "with --lab NAME), attach SCRIPT through NFQUEUE, generate traffic and print a live "
        "summary of verdicts. Example: packetscript run drop.lua --host server --chain INPUT "
        "--match '-p udp --dport 9000' --traffic 'udp rate=200 duration=3'")
    p.add_argument("script", help="Lua file with process_packet(p)")
    p.add_argument("--topology", choices=("pair", "router"), default="pair")
    p.add_argument("--lab", metavar="NAME", help="use the running lab NAME instead of a new one")
    p.add_argument("--host", default="server", help="host whose hook runs the script")
    p.add_argument("--table", default="filter")
    p.add_argument("--chain", default="INPUT")
    p.add_argument("--match", default="-p udp --dport 9000", help="iptables match for the rule")
    p.add_argument("--traffic", action="append", default=[], metavar="SPEC",
                   help="'udp [src=client] [dst=server] [port=9000] rate=N duration=S [size=B] "
                   "[receiver=HOST]' | 'ping [src=] [dst=] count=N interval=S' | "
                   "'tcp [src=] [dst=] [port=7000] connections=N' | 'pcap path=FILE [host=client]'"
                   " (repeatable)")
    p.add_argument("--duration", type=float, help="seconds to watch (default: traffic time + 1)")
    p.add_argument("--profile", choices=("lab", "kernel"), default="lab")
    p.add_argument("--lua", choices=("luajit", "5.1", "5.4"), default="luajit")
    p.add_argument("--on-error", choices=("drop", "accept"), default="drop")
    p.add_argument("--on-overload", choices=("accept", "drop"), default="accept",
                   help="when the queue is full: accept (fail open, counted as passed unjudged) "
                   "or drop (counted as queue drops)")
    p.add_argument("--queue-len", type=int, default=4096, metavar="N",
                   help="packets that may wait for a verdict (default: 4096)")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=run)


def parse_traffic(spec: str, topology: str) -> tuple[str, dict]:
    words = shlex.split(spec)
    if not words or words[0] not in TRAFFIC_KINDS:
        raise CliError(f"--traffic {spec!r}: start with one of {', '.join(TRAFFIC_KINDS)}")
    kind, opts = words[0], {}
    for w in words[1:]:
        if "=" not in w:
            raise CliError(f"--traffic {spec!r}: expected key=value, got {w!r}")
        k, v = w.split("=", 1)
        try:
            opts[k] = _NUMERIC[k](v) if k in _NUMERIC else v
        except ValueError:
            raise CliError(f"--traffic {spec!r}: {k} must be a number") from None
    if kind != "pcap":
        opts.setdefault("src", "client")
        opts.setdefault("dst", "server")
    allowed = {"udp": {"src", "dst", "port", "rate", "duration", "size", "count", "receiver", "sport"},
               "ping": {"src", "dst", "count", "interval", "size"},
               "tcp": {"src", "dst", "port", "connections", "payload", "receiver"},
               "pcap": {"path", "host", "interval"}}[kind]
    unknown = set(opts) - allowed
    if unknown:
        raise CliError(f"--traffic {spec!r}: unknown option(s) {', '.join(sorted(unknown))} "
                       f"for {kind} (allowed: {', '.join(sorted(allowed))})")
    if kind == "pcap" and "path" not in opts:
        raise CliError(f"--traffic {spec!r}: pcap needs path=FILE")
    return kind, opts


def _expected_time(kind: str, o: dict) -> float:
    if kind == "udp":
        return o.get("duration", 2.0) if "count" not in o else o["count"] / o.get("rate", 100.0)
    if kind == "ping":
        return o.get("count", 3) * o.get("interval", 0.2) + 1
    return 1.0


def _drive(lab, kind: str, o: dict):
    if kind == "udp":
        return lab.udp_stream(**o)
    if kind == "ping":
        return lab.ping(**o)
    if kind == "tcp":
        if "payload" in o:
            o = dict(o, payload=o["payload"].encode())
        return lab.tcp_echo(**o)
    return {"sent": lab.replay_pcap(o.get("host", "client"), o["path"], interval=o.get("interval", 0.0))}


def _line(s: dict) -> str:
    return (f"seen {s['seen']:>7}  accepted {s['accepted']:>7}  dropped {s['dropped']:>7}  "
            f"continued {s['continued']:>7}  modified {s['modified']:>7}  errors {s['errors']:>5}  "
            f"queue drops {s['queue_drops']:>4}  passed unjudged {s.get('passed_unjudged', 0):>5}")


def _accounting(s: dict) -> str:
    """Where every packet of the queue rule went (docs/lab.md, Statistics)."""
    if "rule_packets" not in s:
        return ""
    return (f"  rule matched {s['rule_packets']} = judged {s['judged']} + passed unjudged "
            f"{s['passed_unjudged']} + queue drops {s['queue_drops']} + in flight {s['in_flight']}")


def _short(kind: str, r: dict) -> str:
    if kind == "udp":
        return (f"udp: sent {r['sent']}, received {r['received']}, missing {r['missing_count']}, "
                f"{r['rate']:.0f} pkt/s")
    if kind == "ping":
        rtt = sorted(r["rtt_ms"])
        mid = f", rtt p50 {rtt[len(rtt) // 2]:.3f} ms" if rtt else ""
        return f"ping: sent {r['sent']}, received {r['received']}{mid}"
    if kind == "tcp":
        return f"tcp: {r['ok']} of {r['connections']} echo connections ok"
    return f"pcap: {r['sent']} packets sent"


def run(args) -> int:
    from packetscript_lab import ScriptError
    from packetscript_lab.lab import Lab, LabError, daemon

    path = Path(args.script)
    if not path.is_file():
        raise CliError(f"no such script file: {args.script}")
    source = path.read_text()
    traffic = [parse_traffic(t, args.topology) for t in args.traffic]
    duration = args.duration if args.duration is not None else (
        max((_expected_time(k, o) for k, o in traffic), default=2.0) + 1.0)
    live = not args.json and sys.stdout.isatty()
    try:
        lab = daemon.connect(args.lab) if args.lab else Lab(args.topology)
    except LabError as exc:
        raise CliError(str(exc)) from None
    results: list = [None] * len(traffic)
    try:
        try:
            h = lab.attach(source, host=args.host, table=args.table, chain=args.chain,
                           match=args.match, name=path.stem, lua=args.lua, profile=args.profile,
                           on_error=args.on_error, on_overload=args.on_overload,
                           queue_len=args.queue_len)
        except ScriptError as exc:
            raise CliError(f"{path}: {exc}") from None
        except (LabError, ValueError) as exc:
            raise CliError(str(exc)) from None

        def drive(i, kind, o):
            try:
                results[i] = _drive(lab, kind, o)
            except Exception as exc:  # reported in the summary, not from this thread
                results[i] = {"error": str(exc)}

        threads = [threading.Thread(target=drive, args=(i, k, o), daemon=True)
                   for i, (k, o) in enumerate(traffic)]
        for t in threads:
            t.start()
        if not args.json:
            print(f"{path.name} on {args.host} {args.table}/{args.chain} {args.match!r} "
                  f"({lab.topology} lab); watching {duration:.1f}s")
        end = time.monotonic() + duration
        while time.monotonic() < end or any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if live:
                print("\r" + _line(h.stats()), end="", flush=True)
            if time.monotonic() > end + 30:
                break
        errors = h.errors()
        recent = h.recent(5)
        output = h.output()
        stats = h.detach()   # the final counts, after the queue has drained
    finally:
        lab.close()

    if args.json:
        print(json.dumps({"script": str(path), "host": args.host, "table": args.table,
                          "chain": args.chain, "match": args.match, "stats": stats,
                          "errors": errors, "output": output[-50:],
                          "traffic": [dict(r or {}, kind=k) for (k, _), r in zip(traffic, results)]}))
        return 0
    if live:
        print()
    print(_line(stats))
    if _accounting(stats):
        print(_accounting(stats))
    for (kind, _), r in zip(traffic, results):
        print("  " + (f"{kind}: {r['error']}" if r and "error" in r else _short(kind, r or {})))
    for e in errors[:5]:
        print(f"  error line {e['line']}: {e['message']} (x{e['count']})")
    for line in output[-10:]:
        print(f"  print: {line}")
    for r in recent:
        print(f"  {r['verdict']:<8} {r['summary']}" + (f"  changed {','.join(r['changed'])}"
                                                       if r["changed"] else ""))
    return 0
