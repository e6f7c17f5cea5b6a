"""Taking a script to the kernel module (xt_LUA).

- checker: `check_source(source, profile="kernel") -> Report`, what would not work there;
- faithful: `transform(source)`, the kernel's integer arithmetic for Script(faithful=True);
- export: `export_script(...)`, the commands that deploy a script (iptables, OpenWrt);
- backend: detection of the module and `-j LUA` rules for Lab.attach(backend="kernel");
- vm: the real module built from its patches and run in a QEMU guest.

Comparing backends is :mod:`packetscript_lab.conformance`, a layer above this one.
"""
from __future__ import annotations

import importlib

__all__ = ["check_source", "Report", "Finding", "transform", "export_script"]

_HOMES = {"check_source": "checker", "Report": "checker", "Finding": "checker",
          "transform": "faithful", "export_script": "export", }


def __getattr__(name):
    # Submodules load on first use: the engine imports only `faithful`.
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
