"""`packetscript check SCRIPT`: does the script compile, and would it work in xt_LUA?

Exit status: 0 no findings; 1 the script does not compile (FILE:LINE: message on stderr);
2 a usage problem (unreadable file, bad option); 3 at least one error finding (the script
cannot work in that profile); 4 warnings only (it runs, but gives other results there).
"""
from __future__ import annotations

import json
import sys

from packetscript_lab.cli.replay import read_script
from packetscript_lab.script import RUNTIMES

EXIT_COMPILE = 1


def register(sub) -> None:
    p = sub.add_parser("check", help="compile a script and report what would not work in the kernel",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("script", help="the Lua script")
    p.add_argument("--profile", choices=("lab", "kernel"), default="lab",
                   help="lab: the lab sandbox; kernel: what xt_LUA can run (default: lab)")
    p.add_argument("--lua", choices=list(RUNTIMES), default="luajit",
                   help="runtime used to compile the script (default: luajit)")
    p.add_argument("--function", default="process_packet", metavar="NAME",
                   help="the function the rule calls (default: process_packet)")
    p.add_argument("--state", type=int, metavar="ID", help="the --state id the rule will use")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def compile_error(source: str, path: str, lua: str, function: str):
    """The engine's ScriptError for the script in the lab sandbox, or None. It compiles in
    a watched process (Judge): a top level that hangs in a C function fails, not hangs."""
    from packetscript_lab import Judge, ScriptError
    try:
        Judge(source, name=path, lua=lua, profile="lab", function=function).close()
    except ScriptError as exc:
        return exc
    return None


def describe(error, path: str) -> str:
    line = getattr(error, "line", None)
    return f"{path}:{line}: {error.message}" if line else f"{path}: {error.message}"


def run(args) -> int:
    from packetscript_lab.xtlua.checker import check_source

    source = read_script(args.script)
    error = compile_error(source, args.script, args.lua, args.function)
    if error is not None:
        print(describe(error, args.script), file=sys.stderr)
        if args.json:
            print(json.dumps({"file": args.script, "profile": args.profile, "portable": False,
                              "compile_error": {"line": getattr(error, "line", None),
                                                "message": error.message},
                              "findings": []}))
        return EXIT_COMPILE
    report = check_source(source, args.profile, name=args.script, function=args.function,
                          state_id=args.state)
    print(report.to_json() if args.json else str(report))
    return report.exit_status
