"""PacketScript Lab: prototype PacketScript (xt_LUA) packet scripts.

Compile a script with :class:`Script` (in this process) or :class:`Judge` (in its own
process, under a wall-clock limit), replay it over a pcap with :func:`replay`, or attach
it to live traffic in a private network with :class:`Lab`.
"""
from packetscript_lab.backends.replay import ReplayError, ReplayResult, replay
from packetscript_lab.judge import Judge
from packetscript_lab.script import RunResult, Script, ScriptError, ScriptRuntimeError

__all__ = ["Script", "Judge", "ScriptError", "ScriptRuntimeError", "RunResult", "replay", "ReplayResult",
           "ReplayError", "Lab", "LabError"]
__version__ = "0.1.0"


def __getattr__(name):
    # The lab loads on first use: it brings pyroute2 and NetfilterQueue.
    if name in ("Lab", "LabError"):
        import importlib

        return getattr(importlib.import_module("packetscript_lab.lab"), name)
    raise AttributeError(f"module 'packetscript_lab' has no attribute {name!r}")
