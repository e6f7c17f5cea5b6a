"""Verdict names and the result code of one packet, shared by every backend and the Lua engine.

Verdicts keep their xtables meaning: ``continue`` (XT_CONTINUE) goes on with the next rule
of the chain; it is not the same as ``accept``.

A result code is one byte: the verdict's index in :data:`BY_CODE` in the low two bits
(:data:`VERDICT`), and flags above it. The Lua runner gets these numbers through its
configuration (:func:`lua_table`), so Lua and Python read the same names.
"""
DROP = "drop"
ACCEPT = "accept"
CONTINUE = "continue"

#: Verdict codes used between the Lua runner and Python, in code order.
BY_CODE = (DROP, ACCEPT, CONTINUE)
ALL = BY_CODE
CODE = {v: i for i, v in enumerate(BY_CODE)}
DROP_CODE, ACCEPT_CODE, CONTINUE_CODE = (CODE[v] for v in BY_CODE)

#: The verdict's bits: ``code & VERDICT`` indexes BY_CODE (0, drop, means the packet stops).
VERDICT = 3
#: The packet's bytes after the script differ from the input (checksums then fixed).
CHANGED = 4
#: The script failed on the packet; the verdict bits hold the on-error verdict.
FAILED = 8
#: The first 14 bytes (the Ethernet header, synthetic for an IP packet) changed.
ETH_CHANGED = 16
#: Bytes after the Ethernet header (the IP packet) changed.
BODY_CHANGED = 32
#: The script printed lines, waiting to be read (the one-packet IP path only).
PRINTED = 64
#: How many distinct codes there are: the size of a table of counts per code.
CODES = 128

FLAGS = {"changed": CHANGED, "failed": FAILED, "eth_changed": ETH_CHANGED,
         "body_changed": BODY_CHANGED, "printed": PRINTED}


def lua_table() -> dict:
    """The names and bits as the Lua runner's configuration ``results``."""
    return {"verdict": VERDICT, **CODE, **FLAGS}


def verdict(code: int) -> str:
    """The verdict name of a result code."""
    return BY_CODE[code & VERDICT]


def passes(code: int) -> bool:
    """Whether the packet goes on (accept or continue)."""
    return code & VERDICT != DROP_CODE
