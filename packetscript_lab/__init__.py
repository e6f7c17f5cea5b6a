"""PacketScript Lab: prototype PacketScript (xt_LUA) packet scripts.

Compile a script with :class:`Script` (in this process) or :class:`Judge` (in its own
process, under a wall-clock limit), replay it over a pcap with :func:`replay`, or attach
it to live traffic in a private network with :class:`Lab`.
"""
import importlib

__all__ = ["Script", "Judge", "ScriptError", "ScriptRuntimeError", "RunResult", "replay", "ReplayResult",
           "ReplayError", "Lab", "LabError"]
__version__ = "0.1.0"

# Names load on first use: the script's process (judge_child) imports this package too and
# needs none of them, and the lab brings pyroute2 and NetfilterQueue.
_WHERE = {"replay": "backends.replay", "ReplayResult": "backends.replay", "ReplayError": "backends.replay",
          "Judge": "judge", "Script": "script", "ScriptError": "script", "ScriptRuntimeError": "script",
          "RunResult": "script", "Lab": "lab", "LabError": "lab"}


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"packetscript_lab.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'packetscript_lab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
