"""`packetscript export SCRIPT --chain CHAIN --match MATCH`: commands that deploy a script.

Prints a shell script for the target machine: the script file, the iptables rule
(`-j LUA --script FILE`) and the OpenWrt packages and firewall include. Scripts that cannot
work in the kernel are refused. Exit status: 0 printed; 1 the script does not compile;
2 a usage problem; 3 refused because of kernel checker errors (listed on stderr).
"""
from __future__ import annotations

import sys

from packetscript_lab.cli import CliError
from packetscript_lab.cli.check import compile_error, describe
from packetscript_lab.cli.replay import read_script

EXIT_REFUSED = 3


def register(sub) -> None:
    p = sub.add_parser("export", help="print the commands that deploy a script in the kernel",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("script", help="the Lua script")
    p.add_argument("--chain", required=True, help="chain of the rule, e.g. POSTROUTING")
    p.add_argument("--match", default="", help="iptables match, e.g. \"-d 10.77.0.2 -p udp\"")
    p.add_argument("--table", default="mangle", help="table of the rule (default: mangle)")
    p.add_argument("--function", metavar="NAME", help="function the rule calls "
                   "(the module's default: process_packet)")
    p.add_argument("--state", type=int, metavar="ID", help="Lua state id 0..8 (default 0)")
    p.add_argument("--path", help="where the script goes on the target "
                   "(default: /etc/packetscript/NAME.lua)")
    p.add_argument("--lua", choices=("luajit", "5.1", "5.4"), default="5.1",
                   help="runtime used to compile the script (default: 5.1, the kernel's)")
    p.set_defaults(func=run)


def run(args) -> int:
    from packetscript_lab.xtlua.export import NotExportable, export_script

    source = read_script(args.script)
    error = compile_error(source, args.script, args.lua, args.function or "process_packet")
    if error is not None:
        print(describe(error, args.script), file=sys.stderr)
        return 1
    try:
        plan = export_script(source, name=args.script, chain=args.chain, match=args.match,
                             table=args.table, function=args.function, state_id=args.state,
                             path=args.path)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except NotExportable as exc:
        print(f"{args.script}: refused: it cannot work in the kernel module", file=sys.stderr)
        print(str(exc.report), file=sys.stderr)
        return EXIT_REFUSED
    print(plan.render())
    return 0
