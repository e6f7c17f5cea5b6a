"""PacketScript Lab: prototype PacketScript (xt_LUA) packet scripts.

Compile a script with :class:`Script`, replay it over a pcap with :func:`replay`, or attach
it to live traffic in a private network with :class:`Lab`.
"""
from packetscript_lab.script import RunResult, Script, ScriptError, ScriptRuntimeError

__all__ = ["Script", "ScriptError", "ScriptRuntimeError", "RunResult", "replay", "ReplayResult",
           "Lab", "LabError"]
__version__ = "0.1.0"


def __getattr__(name):
    # The replay backend and the lab load on first use: importing scapy takes a while.
    if name in ("replay", "ReplayResult"):
        from packetscript_lab import replay as _replay
        return getattr(_replay, name)
    if name in ("Lab", "LabError"):
        from packetscript_lab import lab as _lab
        return getattr(_lab, name)
    raise AttributeError(f"module 'packetscript_lab' has no attribute {name!r}")
