"""`packetscript kernel build|run`: the real xt_LUA module, built here and run in a micro-VM.

`kernel build --patches DIR` fetches a Debian kernel, its headers and xtables-addons-source
with apt-get download into the cache (~/.cache/packetscript-lab; nothing is installed), applies
the LUA parts of OpenWrt's xtables-addons patches from DIR and builds xt_LUA.ko and
libxt_LUA.so. `kernel run SCRIPT PCAP` boots that kernel in QEMU with the module loaded and
runs the script over the pcap's IPv4 packets with `-j LUA --script`, printing each packet's
verdict, the fields the module changed and its error messages. Exit status: 0 done; 2 a
missing prerequisite or a usage problem (the message says what to install or pass).
"""
from __future__ import annotations

import sys

from packetscript_lab.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("kernel", help="build the real xt_LUA module and run scripts in it (VM)",
                       description=__doc__.split("\n\n", 1)[1])
    ksub = p.add_subparsers(dest="kernel_command", metavar="ACTION")
    ksub.required = True
    b = ksub.add_parser("build", help="build xt_LUA.ko and libxt_LUA.so against a Debian kernel")
    b.add_argument("--patches", metavar="DIR",
                   help="OpenWrt's net/xtables-addons/patches (from openwrt/packages)")
    b.add_argument("--force", action="store_true", help="rebuild even if a build exists")
    b.set_defaults(func=run_build)
    r = ksub.add_parser("run", help="run a script in the real module inside a VM")
    r.add_argument("script", help="the Lua script")
    r.add_argument("pcap", help="packets to send (IPv4; Ethernet or raw IP pcap)")
    r.add_argument("--function", metavar="NAME", help="--function of the rule")
    r.add_argument("--state", type=int, metavar="ID", help="--state of the rule (0..8)")
    r.add_argument("--accel", choices=("kvm", "tcg"),
                   help="QEMU accelerator (default: kvm when /dev/kvm works, else tcg)")
    r.set_defaults(func=run_vm)


def run_build(args) -> int:
    from packetscript_lab.xtlua.vm import BuildError, build, kvm_available, prerequisites

    missing = prerequisites(args.patches)
    if missing:
        raise CliError("cannot build xt_LUA:\n- " + "\n- ".join(missing))
    try:
        result = build(args.patches, force=args.force,
                       progress=lambda m: print(m, file=sys.stderr))
    except BuildError as exc:
        raise CliError(str(exc)) from None
    print(result.describe())
    if not kvm_available():
        print("note: /dev/kvm is not usable here; the VM will run under TCG emulation (slower)")
    return 0


def run_vm(args) -> int:
    from packetscript_lab.cli.replay import read_script
    from packetscript_lab.core.fields import changed_fields
    from packetscript_lab.core.netutil import eth_header
    from packetscript_lab.conformance import _ip_packets
    from packetscript_lab.xtlua.vm import BuildError, XtLuaVM, load_build

    source = read_script(args.script)
    try:
        packets = _ip_packets(args.pcap)
    except (OSError, ValueError) as exc:
        raise CliError(f"{args.pcap}: {exc}") from None
    try:
        vm = XtLuaVM(load_build(), accel=args.accel)
        run = vm.run(source, packets, function=args.function, state_id=args.state)
    except BuildError as exc:
        raise CliError(str(exc)) from None
    print(f"VM: {run.accel}{' (' + run.note + ')' if run.note else ''}, {run.boots} boot(s), "
          f"boot {', '.join(f'{s:.1f}' for s in run.boot_seconds)} s, QEMU RSS "
          f"{run.max_rss_mb:.0f} MB, guest MemTotal {run.guest_memory.get('MemTotal', '?')}")
    for line in run.load_log:
        print(f"kernel: {line}")
    if run.load_error:
        print(f"{args.script}: the module refused the rule: {run.load_error}")
        return 1
    eth = eth_header(bytes(6), bytes(6))
    for r, sent in zip(run.results, packets):
        changed = ""
        if r.data is not None and r.data != sent:
            changed = " changed: " + (", ".join(changed_fields(eth + sent, eth + r.data))
                                      or "bytes")
        print(f"#{r.index} {r.verdict}{changed}" + (f"  error: {r.error}" if r.error else ""))
    return 0
