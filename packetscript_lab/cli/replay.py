"""``packetscript replay SCRIPT.lua INPUT.pcap``: run a script over a capture file."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from packetscript_lab.cli import CliError
from packetscript_lab.script import PROFILES, RUNTIMES


def add_script_options(parser) -> None:
    """Options that choose how a script is compiled, shared by the commands that run one."""
    parser.add_argument("--lua", choices=list(RUNTIMES), default="luajit",
                        help="Lua runtime (default: luajit; 5.1 is the kernel module's version)")
    parser.add_argument("--profile", choices=PROFILES, default="lab",
                        help="libraries the script may use: lab (base, string, table, math) "
                             "or kernel (what xt_LUA offers)")
    parser.add_argument("--on-error", choices=("drop", "accept"), default="drop",
                        help="verdict of a packet whose script fails (default: drop, as xt_LUA)")
    parser.add_argument("--budget", type=int, default=100_000, metavar="STEPS",
                        help="loop iterations and calls one packet may take (default: 100000)")
    parser.add_argument("--no-fix-checksums", dest="fix_checksums", action="store_false",
                        help="leave checksums as the script left them (what the kernel module does)")


def script_kwargs(args) -> dict:
    return {"lua": args.lua, "profile": args.profile, "on_error": args.on_error,
            "budget": args.budget, "fix_checksums": args.fix_checksums}


def read_script(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise CliError(f"cannot read {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None


def compile_script(path: str, **kwargs):
    """A Judge (the script in its own, watched process) from a file, or a CliError that
    shows FILE:LINE: message."""
    from packetscript_lab.judge import Judge
    from packetscript_lab.script import ScriptError

    try:
        return Judge(read_script(path), name=path, **kwargs)
    except ScriptError as exc:
        raise CliError(f"{exc}") from None
    except ValueError as exc:
        raise CliError(str(exc)) from None


EXIT_STATUS = (
    "Exit status: 0 when the capture was replayed to its end and the script judged at least "
    "one packet without failing (or the capture holds no packets); 1 when the script failed "
    "on every packet (the summary is still printed, a note goes to stderr); 2 when nothing "
    "could be replayed: a usage mistake, a missing, unreadable or corrupt capture (every "
    "record must be a packet: a cut, garbage or sparse file, or a pcapng packet on an "
    "interface the file never declared, stops with 'corrupt capture at packet N'), or a "
    "script that does not compile.")


def register(sub) -> None:
    p = sub.add_parser("replay", help="run a script over a pcap or pcapng file (no privileges needed)",
                       description="Run SCRIPT over every packet of INPUT and report the verdicts. "
                                   "Ethernet, raw-IP and Linux cooked captures are read; the script "
                                   "always sees an Ethernet frame.",
                       epilog=EXIT_STATUS)
    p.add_argument("script", metavar="SCRIPT.lua", nargs="?")
    p.add_argument("input", metavar="INPUT.pcap", nargs="?")
    p.add_argument("--record", metavar="DIR",
                   help="also write a record of the run into DIR (a new directory): seen.pcapng "
                        "with each packet's verdict, changed fields and error as comments, "
                        "left.pcapng, the script, options and versions (docs/records.md)")
    p.add_argument("--verify", metavar="DIR",
                   help="replay the record in DIR and report every packet whose verdict or bytes "
                        "differ from it (exit status 1 when any differ); takes no SCRIPT or INPUT")
    p.add_argument("--out", metavar="OUT.pcap", help="write the packets that pass, as changed")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: packets, verdicts, errors, modified, pps")
    add_script_options(p)
    p.add_argument("--time-limit", type=float, default=0.25, metavar="SECONDS",
                   help="wall-clock time one packet may take, C functions included; a packet "
                        "that takes longer gets the error verdict and the script restarts "
                        "with fresh state (default: 0.25)")
    p.add_argument("--batch-time-limit", type=float, default=3.0, metavar="SECONDS",
                   help="wall-clock time a batch of packets may take (default: 3)")
    p.set_defaults(func=run)


def run(args) -> int:
    from packetscript_lab.backends.replay import ReplayError, replay

    if args.verify is not None or args.record is not None:
        from packetscript_lab.cli.record import run_record
        return run_record(args)
    if args.script is None or args.input is None:
        raise CliError("replay needs SCRIPT.lua and INPUT.pcap (or --verify DIR)")
    script = compile_script(args.script, time_limit=args.time_limit,
                            batch_time_limit=args.batch_time_limit, **script_kwargs(args))
    try:
        result = replay(script, args.input, out=args.out, progress=not args.json,
                        keep_output=args.out is not None)
    except ReplayError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc}") from None
    finally:
        script.close()
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(format_summary(result, args))
    for line in script.output[:20]:
        print(f"[print] {line}", file=sys.stderr)
    return exit_status(result, args.script)


def exit_status(result, script_path: str) -> int:
    """1 when the script failed on every packet of a non-empty capture, else 0 (EXIT_STATUS)."""
    if result.packets and result.errors == result.packets:
        first = result.script_errors[0] if result.script_errors else None
        why = f"; first error: {script_path}:{first.line or '?'}: {first.message}" if first else ""
        print(f"packetscript replay: the script failed on every one of the {result.packets} "
              f"packets{why}", file=sys.stderr)
        return 1
    return 0


def format_summary(result, args) -> str:
    v = result.verdicts
    lines = [
        f"{args.input}: {result.packets} packets through {args.script} "
        f"in {result.elapsed:.2f} s ({result.pps:,.0f} packets/s)",
        f"  accept {v['accept']}   drop {v['drop']}   continue {v['continue']}",
        f"  modified {result.modified}   errors {result.errors}",
    ]
    for err in result.script_errors:
        lines.append(f"  error x{err.count}: {args.script}:{err.line or '?'}: {err.message}")
    if result.restarts or result.timeouts or result.crashes or result.unjudged:
        lines.append(f"  watchdog: {result.timeouts} packets ran past the time limit, {result.crashes} "
                     f"killed the script's process, {result.unjudged} were not judged; the script "
                     f"restarted {result.restarts} times with fresh state")
    if result.eth_changes:
        lines.append(f"  note: {result.eth_changes} packets had their synthetic Ethernet header changed; "
                     "a raw-IP capture cannot keep it")
    if args.out:
        lines.append(f"  wrote {len(result.output)} packets to {args.out}")
    return "\n".join(lines)
