"""``packetscript replay SCRIPT INPUT --record DIR`` and ``packetscript replay --verify DIR``."""
from __future__ import annotations

import json
import sys

from packetscript_lab.cli import CliError


def run_record(args) -> int:
    from packetscript_lab import recording
    from packetscript_lab.backends.replay import ReplayError
    from packetscript_lab.cli.replay import read_script, script_kwargs
    from packetscript_lab.script import ScriptError

    try:
        if args.verify is not None:
            if args.script or args.input or args.record:
                raise CliError("--verify DIR takes no SCRIPT, INPUT or --record: the record "
                               "holds the script, its options and the packets")
            result = recording.verify(args.verify)
            if args.json:
                print(json.dumps({"packets": result.packets, "differences": result.differences}))
            else:
                print(f"{args.verify}: {result.report()}")
            return 0 if result.ok else 1
        if args.script is None or args.input is None:
            raise CliError("replay --record DIR needs SCRIPT.lua and INPUT.pcap")
        if args.out:
            raise CliError("--record writes the packets that left into DIR/left.pcapng; drop --out")
        summary, path = recording.record_replay(
            read_script(args.script), args.input, args.record,
            time_limit=args.time_limit, batch_time_limit=args.batch_time_limit,
            name=args.script, **script_kwargs(args))
    except (recording.RecordError, ReplayError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except ScriptError as exc:
        raise CliError(f"{exc}") from None
    except OSError as exc:
        raise CliError(f"cannot write the record: {exc}") from None
    if args.json:
        print(json.dumps({**summary, "record": str(path)}))
    else:
        v = summary["verdicts"]
        print(f"{args.input}: {summary['packets']} packets through {args.script}\n"
              f"  accept {v['accept']}   drop {v['drop']}   continue {v['continue']}\n"
              f"  modified {summary['modified']}   errors {summary['errors']}\n"
              f"  recorded in {path} (seen.pcapng, left.pcapng, script.lua, record.json)")
    if summary["packets"] and summary["errors"] == summary["packets"]:
        print("packetscript replay: the script failed on every packet", file=sys.stderr)
        return 1
    return 0
