"""``packetscript run SCRIPT.lua``: attach a script in a lab, drive traffic, watch verdicts."""
from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

from packetscript_lab.cli import CliError
from packetscript_lab.core import flows

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="attach a script to live lab traffic and show its verdicts",
        description="Start a private lab (or use one from `packetscript lab up --name NAME` "
        "with --lab NAME), attach SCRIPT through NFQUEUE, generate traffic and print a live "
        "summary of verdicts. Example: packetscript run drop.lua --host server --chain INPUT "
        "--match '-p udp --dport 9000' --traffic 'udp client server:9000 rate=200 duration=3'")
    p.add_argument("script", help="Lua file with process_packet(p)")
    p.add_argument("--topology", default="pair",
                   help="pair, router or a description file (.json/.yaml, docs/topologies.md)")
    p.add_argument("--lab", metavar="NAME", help="use the running lab NAME instead of a new one")
    p.add_argument("--ipv6", action="store_true",
                   help="a dual-stack lab (IPv6 addresses in fd77::/16 too); the script then "
                   "sees IPv6 packets its --match takes as well")
    p.add_argument("--ip", type=int, choices=(4, 6),
                   help="attach to this IP version only (default: every version the lab has)")
    p.add_argument("--host", default="server", help="host whose hook runs the script")
    p.add_argument("--table", default="filter")
    p.add_argument("--chain", default="INPUT")
    p.add_argument("--match", default="-p udp --dport 9000", help="iptables match for the rule")
    p.add_argument("--traffic", action="append", default=[], metavar="FLOWS",
                   help="flows in the traffic language, e.g. 'udp client server:9000 rate=200; "
                   "ping client server count=5' | 'tcp client server connections=3' | "
                   f"'pcap FILE from=client' (repeatable; the language: {flows.DOCS}). "
                   f"Default: {flows.DEFAULT_TRAFFIC!r}, the same as the notebook magic's")
    p.add_argument("--no-traffic", action="store_true",
                   help="generate no traffic: watch what you send yourself (e.g. into --lab NAME)")
    p.add_argument("--duration", type=float,
                   help="seconds of traffic for flows without count= or duration= (default "
                   f"{flows.DEFAULT_SECONDS:g}), and the least the run lasts; it ends when "
                   "the traffic has ended")
    p.add_argument("--profile", choices=("lab", "kernel"), default="lab")
    p.add_argument("--lua", choices=("luajit", "5.1", "5.4"), default="luajit")
    p.add_argument("--on-error", choices=("drop", "accept"), default="drop")
    p.add_argument("--on-overload", choices=("accept", "drop"), default="accept",
                   help="when the queue is full: accept (fail open, counted as passed unjudged) "
                   "or drop (counted as queue drops)")
    p.add_argument("--queue-len", type=int, default=4096, metavar="N",
                   help="packets that may wait for a verdict (default: 4096)")
    p.add_argument("--queues", type=int, default=1, metavar="N",
                   help="spread the rule over N queues (1-16; --queue-balance by address "
                   "pair), one worker and one copy of the script each: a global is per queue")
    p.add_argument("--record", metavar="DIR",
                   help="write a record of the run into DIR (a new directory): what the script "
                   "saw with each packet's verdict, changed fields and error (docs/records.md)")
    p.add_argument("--record-limit", type=int, default=10_000, metavar="N",
                   help="with --record: keep the latest N packets (default 10000, at most 100000)")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=run)


def choose_traffic(args) -> list[flows.Flow]:
    """The flows to drive: --traffic, else none with --no-traffic, else the default (said once)."""
    if args.no_traffic and args.traffic:
        raise CliError("give --traffic or --no-traffic, not both")
    if args.duration is not None and not 0 < args.duration <= 3600:
        raise CliError(f"--duration must be between 0 and 3600 seconds, not {args.duration:g}")
    if args.no_traffic:
        return []
    specs = args.traffic
    if not specs:
        specs = [flows.DEFAULT_TRAFFIC]
        print(f"no --traffic given: generating the default {flows.DEFAULT_TRAFFIC!r} for "
              f"{_seconds(args):g} s (--traffic FLOWS for others, --no-traffic for none; "
              f"see {flows.DOCS})", file=sys.stderr if args.json else sys.stdout)
    try:
        chosen = [flow for spec in specs for flow in flows.parse_traffic(spec)]
        flows.check_load(chosen, _seconds(args))
        return chosen
    except flows.TrafficError as exc:
        raise CliError(f"--traffic: {exc}") from None


def _seconds(args) -> float:
    return args.duration if args.duration is not None else flows.DEFAULT_SECONDS


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


def _short(flow: flows.Flow, r: dict) -> str:
    if "error" in r:
        return f"{r['flow']}: {r['error']}"
    if flow.kind == "udp":
        return (f"{r['flow']}: sent {r['sent']}, received {r['received']}, "
                f"missing {r['missing_count']}, {r['rate']:.0f} pkt/s")
    if flow.kind == "ping":
        rtt = sorted(r["rtt_ms"])
        mid = f", rtt p50 {rtt[len(rtt) // 2]:.3f} ms" if rtt else ""
        return f"{r['flow']}: sent {r['sent']}, received {r['received']}{mid}"
    if flow.kind == "tcp":
        return f"{r['flow']}: {r['ok']} of {r['connections']} echo connections ok"
    return f"{r['flow']}: {r['sent']} packets sent"


def run(args) -> int:
    path = Path(args.script)
    if not path.is_file():
        raise CliError(f"no such script file: {args.script}")
    source = path.read_text()
    traffic = choose_traffic(args)      # mistakes in the traffic are reported before a lab starts
    if args.record:
        from packetscript_lab.recording import RecordError, check_target
        try:
            check_target(args.record)
        except RecordError as exc:
            raise CliError(f"--record: {exc}") from None
    live = not args.json and sys.stdout.isatty()
    lab = _open_lab(args)
    try:
        h = _attach(lab, args, path, source, traffic)
        if not args.json:
            what = "; ".join(map(str, traffic)) or "no generated traffic"
            print(f"{path.name} on {args.host} {args.table}/{args.chain} {args.match!r} "
                  f"({lab.topology} lab); traffic: {what}")
        outcome = _watch(lab, h, args, traffic, live)
    finally:
        lab.close()
    if args.json:
        rows = [dict(r, kind=f.kind) for f, r in zip(traffic, outcome.results)]
        print(json.dumps({"script": str(path), "host": args.host, "table": args.table,
                          "chain": args.chain, "match": args.match, "stats": outcome.stats,
                          "errors": outcome.errors, "output": outcome.output[-50:],
                          "traffic": rows,
                          "record": str(outcome.record) if outcome.record else None}))
        return 0
    if live:
        print()
    _print_outcome(outcome, traffic)
    return 0


def _open_lab(args):
    """The running lab ``--lab NAME``, or a new one of ``--topology``."""
    from packetscript_lab.lab import Lab, LabError, daemon
    try:
        lab = daemon.connect(args.lab) if args.lab else Lab(args.topology, ipv6=args.ipv6)
    except LabError as exc:
        raise CliError(str(exc)) from None
    if args.ipv6 and not lab.description.get("ipv6"):
        lab.close()
        raise CliError(f"lab {args.lab!r} is IPv4 only: start it with `packetscript lab up --ipv6`")
    return lab


def _attach(lab, args, path: Path, source: str, traffic: list[flows.Flow]):
    from packetscript_lab import ScriptError
    from packetscript_lab.lab import LabError
    try:
        flows.check_hosts(traffic, lab.hosts)
        return lab.attach(source, host=args.host, table=args.table, chain=args.chain,
                          match=args.match, name=path.stem, lua=args.lua, profile=args.profile,
                          on_error=args.on_error, on_overload=args.on_overload,
                          queue_len=args.queue_len, ip=args.ip, queues=args.queues,
                          record=args.record_limit if args.record else 0)
    except flows.TrafficError as exc:
        raise CliError(f"--traffic: {exc}") from None
    except ScriptError as exc:
        raise CliError(f"{path}: {exc}") from None
    except (LabError, ValueError) as exc:
        raise CliError(str(exc)) from None


@dataclasses.dataclass
class _Outcome:
    results: list[dict]       # one row per flow
    stats: dict               # the final counts, after the queue has drained
    errors: list[dict]
    recent: list[dict]
    output: list[str]
    record: Path | None


def _watch(lab, h, args, traffic: list[flows.Flow], live: bool) -> _Outcome:
    """Drive the traffic, show the counters while it runs, then read and detach."""
    seconds = _seconds(args)
    # The run lasts at least --duration (or, with no traffic, the default) and until the
    # traffic has ended.
    watch = args.duration if args.duration is not None else (0.0 if traffic else seconds)
    results: list[dict] = []
    driver = threading.Thread(target=lambda: results.extend(flows.drive(lab, traffic, seconds)),
                              name="traffic", daemon=True)
    driver.start()
    start = time.monotonic()
    while time.monotonic() < start + watch or driver.is_alive():
        driver.join(0.5)
        if live:
            print("\r" + _line(h.stats()), end="", flush=True)
        if time.monotonic() > start + watch + seconds + 60:
            break                    # a generator that never returns must not hang the CLI
    errors, recent, output = h.errors(), h.recent(5), h.output()
    record = None
    if args.record:
        from packetscript_lab.recording import RecordError
        try:
            record = h.record(args.record, traffic={"flows": [str(f) for f in traffic],
                                                    "results": results})
        except (RecordError, OSError) as exc:
            raise CliError(f"--record: {exc}") from None
    return _Outcome(results, h.detach(), errors, recent, output, record)


def _print_outcome(o: _Outcome, traffic: list[flows.Flow]) -> None:
    print(_line(o.stats))
    if _accounting(o.stats):
        print(_accounting(o.stats))
    for flow, r in zip(traffic, o.results):
        print("  " + _short(flow, r))
    for e in o.errors[:5]:
        print(f"  error line {e['line']}: {e['message']} (x{e['count']})")
    for line in o.output[-10:]:
        print(f"  print: {line}")
    if o.record:
        print(f"  recorded in {o.record} (seen.pcapng, left.pcapng, script.lua, record.json)")
    for r in o.recent:
        print(f"  {r['verdict']:<8} {r['summary']}" + (f"  changed {','.join(r['changed'])}"
                                                       if r["changed"] else ""))
