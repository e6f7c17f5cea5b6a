"""A stand-in for the absent xt_LUA module, for tests of the kernel backend only.

The machines this project is tested on cannot load kernel modules, so the LUA target never
exists there. `StandInLuaTarget(run)` wraps a real `run(argv)` (a program runner inside a lab
namespace) and changes exactly three things:

- reading /proc/net/ip_tables_targets also lists `LUA`;
- `iptables -j LUA --help` answers like libxt_LUA (its options);
- a rule with `-j LUA --script FILE [--function N] [--state I]` is added with real iptables
  as a target-less rule carrying the comment `LUA --script FILE ...`: it counts packets and
  lets them go on, i.e. it behaves like a loaded script that always returns XT_CONTINUE.
  As libxt_LUA does, the stand-in refuses a missing script file, one over 32768 bytes and a
  --state outside 0..8, with libxt_LUA's own messages.

Everything else (the namespace, iptables, the counters, deleting rules) is real.
"""
from __future__ import annotations

import os
import subprocess

from .backend import TARGETS_FILE
from .rules import MAX_SCRIPT_SIZE

# Texts below are libxt_LUA's own (OpenWrt's 200/201 patches, checked against the built
# extension in docs/kernel.md "Measured against the real module").
HELP = """LUA target options:
  --script SCRIPT      Process packet with the Lua script given by SCRIPT
                                                                       
  --state ID           Process packet within the Lua state given by ID.
                       Omitting --state infers the ID 0, which can be
                       refered to the 'global' state.
                                                                       
  --function FUNCTION  Name of the function that processes the Lua packet

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
        state = opts.get("--state")
        if path is None and state is None and "--function" not in opts:
            error = "LUA: --script parameter required"
        elif path is not None and len(path) > 256:
            error = "LUA: Maximum script length is 256"
        elif path is None or not os.path.isfile(path):
            error = f"LUA: Cannot open script {path}"
        elif os.path.getsize(path) > MAX_SCRIPT_SIZE:
            error = "LUA: The size of the script is too big"
        elif state is not None and not (state.isdigit() and 0 <= int(state) <= 8):
            error = f"LUA: Invalid --state {state}"
        if error:
            return subprocess.CompletedProcess(head, 2, "", error + "\n")
        self.scripts.append(path)
        text = "LUA " + " ".join(options)
        return self.real_run(head + ["-m", "comment", "--comment", text[:255]])
