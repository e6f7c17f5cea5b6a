"""A stand-in for the absent xt_LUA module, for tests of the kernel backend only.

The machines this project is tested on cannot load kernel modules, so the LUA target never
exists there. `StandInLuaTarget(run)` wraps a real `run(argv)` (a program runner inside a lab
namespace) and changes exactly three things:

- reading /proc/net/ip_tables_targets also lists `LUA`;
- `iptables -j LUA --help` answers like libxt_LUA (its options);
- a rule with `-j LUA --script FILE [--function N] [--state I]` is added with real iptables
  as a target-less rule carrying the comment `LUA --script FILE ...`: it counts packets and
  lets them go on, i.e. it behaves like a loaded script that always returns XT_CONTINUE.
  As iptables does, the stand-in refuses a missing script file or one over 32768 bytes.

Everything else (the namespace, iptables, the counters, deleting rules) is real.
"""
from __future__ import annotations

import os
import subprocess

from .backend import TARGETS_FILE
from .rules import MAX_SCRIPT_SIZE

HELP = """LUA target options:
  --script <file>       Lua script to load
  --function <name>     function called per packet (default process_packet)
  --state <id>          Lua state id 0..8 (default 0)
"""


class StandInLuaTarget:
    def __init__(self, run):
        self.real_run = run
        self.scripts: list[str] = []      # script files the rules were given, in order

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess:
        argv = list(argv)
        if argv == ["cat", TARGETS_FILE]:
            res = self.real_run(argv)
            return subprocess.CompletedProcess(argv, res.returncode, res.stdout + "LUA\n",
                                               res.stderr)
        if "-j" in argv and argv[argv.index("-j") + 1:argv.index("-j") + 2] == ["LUA"]:
            j = argv.index("-j")
            if "--help" in argv:
                return subprocess.CompletedProcess(argv, 0, HELP, "")
            return self._lua_rule(argv[:j], argv[j + 2:])
        return self.real_run(argv)

    def _lua_rule(self, head: list[str], options: list[str]) -> subprocess.CompletedProcess:
        opts = dict(zip(options[::2], options[1::2]))
        path = opts.get("--script")
        error = None
        if path is None:
            error = "LUA: --script parameter required"
        elif not os.path.isfile(path):
            error = f"LUA: cannot open script file {path}"
        elif os.path.getsize(path) > MAX_SCRIPT_SIZE:
            error = f"LUA: script file {path} is larger than {MAX_SCRIPT_SIZE} bytes"
        if error:
            return subprocess.CompletedProcess(head, 2, "", error + "\n")
        self.scripts.append(path)
        text = "LUA " + " ".join(options)
        return self.real_run(head + ["-m", "comment", "--comment", text[:255]])
