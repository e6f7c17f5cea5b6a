"""Verdict names, shared by every backend.

They keep their xtables meaning: ``continue`` (XT_CONTINUE) goes on with the next rule of
the chain; it is not the same as ``accept``.
"""
DROP = "drop"
ACCEPT = "accept"
CONTINUE = "continue"

#: Verdict codes used between the Lua runner and Python, in code order.
BY_CODE = (DROP, ACCEPT, CONTINUE)
ALL = BY_CODE
