"""The real xt_LUA module in a micro-VM: build it, boot it, run scripts through it.

- build: `build(patches_dir)` fetches a Debian kernel into the cache and builds xt_LUA.ko and
  libxt_LUA.so from Debian's xtables-addons source plus the user's OpenWrt patches;
- machine: `XtLuaVM(build).run(source, packets)` boots that kernel in QEMU with the module
  loaded and returns each packet's verdict, bytes and kernel-log errors.
"""
from .build import Build, BuildError, build, cache_dir, kvm_available, load_build, prerequisites
from .machine import Case, GUEST_MAC, ROUTER_MAC, PacketResult, VMRun, XtLuaVM

__all__ = ["Build", "BuildError", "build", "cache_dir", "kvm_available", "load_build",
           "prerequisites", "Case", "GUEST_MAC", "ROUTER_MAC", "PacketResult", "VMRun", "XtLuaVM"]
