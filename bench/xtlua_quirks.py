"""README's "what the lab does differently from xt_LUA" rows, checked in the real module.

    .venv/bin/python bench/xtlua_quirks.py [NAME ...]

Each row of the README table whose left column (what xt_LUA does) can be seen from outside
gets one small script and a packet or two. The script writes what it read into a header
byte (TOS or IP id) or the payload, so the bytes that leave the VM's router show the
module's behaviour. All cases run in one VM boot (`XtLuaVM.run_cases`); the one that hangs
the module on purpose (an endless loop) runs last. Prints: row, claim, what the module
did, agrees. Rows not here are covered by the corpus run in docs/kernel.md (script errors,
missing entry function, saddr/daddr with skb, stale checksums, two dynamic protocols); the
ignored last `get_field_changes` entry is not (its field would read uninitialised memory).
Needs root and a build (`packetscript kernel build --patches DIR`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet import IPOption

SRC, DST = "10.77.0.1", "10.77.0.2"


def _ip(**kw):
    return IP(src=SRC, dst=DST, ttl=64, **kw)


def _tcp_checksum_ok(data: bytes) -> bool:
    pkt = IP(data)
    sent = pkt[TCP].chksum
    del pkt[TCP].chksum
    return IP(bytes(pkt))[TCP].chksum == sent


HEAD = "function process_packet(p)\n  local ip = p:data(packet_eth):data(packet_ip)\n"
TAIL = "  return XT_CONTINUE\nend\n"


@dataclass
class Quirk:
    name: str
    row: str                  # the README row (left column, shortened)
    claim: str                # what the result must show if the row is right
    source: str
    packets: list
    check: Callable           # results -> (observed text, agrees)


def _out(results, i=0):
    r = results[i]
    return r.data if r.verdict in ("continue", "accept") and r.data else None


def _frag_off(results):
    d = _out(results)
    if d is None:
        return f"{results[0].verdict}: {results[0].error}", False
    return f"#get() = {d[1]}, first byte {d[20]:#04x}", d[1] == 1 and d[20] == 0x40


def _bits(results):
    d = _out(results)
    if d is None:
        return f"{results[0].verdict}: {results[0].error}", False
    return f"flags byte {d[6]:#04x} after set(2, false) on 0x00", d[6] == 0x40


def _mode(results):
    d = _out(results)
    if d is None:
        oops = [k for k in results[0].kmsg if "RIP: 0010" in k]
        return (f"{results[0].verdict}" + (f" ({oops[0].split('RIP: 0010:')[1]})" if oops else ""),
                results[0].verdict == "crash")
    kind = {1: '"\\0octet\\0"', 2: '"octet"'}.get(d[1] // 100, "other")
    return f"mode is {kind}, length {d[1] % 100}", False


def _tftp_setters(results):
    a, b = _out(results, 0), _out(results, 1)
    if a is None or b is None:
        return f"{results[0].verdict}/{results[1].verdict}", False
    op, blk = a[28:30], b[30:32]
    return (f"opcode set(3) -> {op.hex(' ')}, block_nr set(5) -> {blk.hex(' ')}",
            op == b"\x03\x03" and blk == b"\x05\x05")


def _tftp_error(results):
    d = _out(results)
    if d is None:
        return f"{results[0].verdict}: {results[0].error}", False
    return f"block_nr:get() = {int.from_bytes(d[4:6], 'big')} (opcode 5)", d[4:6] == b"\x00\x05"


def _ihl(results):
    d = _out(results)
    if d is None:
        return f"{results[0].verdict}: {results[0].error}", False
    v = int.from_bytes(d[4:6], "big")
    return f"udp sport read as {v:#06x} (real sport 0x03e8)", v == 0x0101


def _tcp_options(results):
    r = results[0]
    if r.data is None:
        # the size is an offset minus an address (docs/kernel.md): its sign varies per boot
        return f"{r.verdict}: {r.error}", r.verdict == "drop" and (
            "requested size < 0" in r.error or "not enough memory" in r.error)
    return f"#options:get() = {r.data[1]} on 10 payload bytes, no options", False


def _tcp_check(results):
    a, b = _out(results, 0), _out(results, 1)
    if a is None or b is None:
        return f"{results[0].verdict}/{results[1].verdict}", False
    za, zb = _tcp_checksum_ok(a), _tcp_checksum_ok(b)
    return (f"valid after set(): from a valid checksum {za}, from a zeroed one {zb}",
            not za and not zb)


def _shared_metatable(results):
    d = _out(results)
    if d is None:
        return f"{results[0].verdict}: {results[0].error}", False
    return (f"saddr field kept, get() after ip:ttl() gave {d[1]} "
            "(200 = the address string)", d[1] == 10)


def _no_such_function(results):
    d = _out(results)
    if d is None:
        return f"{results[0].verdict}: {results[0].error}", False
    return (f"get() false: {bool(d[1] & 1)}, set() false: {bool(d[1] & 2)}, ttl kept: "
            f"{d[8] == 64}", d[1] == 3 and d[8] == 64)


def _truncated(results):
    r = results[0]
    return (f"{r.verdict}" + (f", udp check read past the end = "
                              f"{int.from_bytes(r.data[4:6], 'big'):#06x}" if r.data else ""),
            r.verdict == "continue")


def _endless(results):
    r = results[0]
    return f"{r.verdict}", r.verdict in ("hang", "crash")


TFTP_RRQ = b"\x00\x01file.txt\x00octet\x00"
TFTP = "  local t = ip:data(packet_udp):data(packet_tftp)\n"

QUIRKS = [
    Quirk("frag_off", "`frag_off` reads one byte",
          "get() gives a 1-byte array: the flags byte 0x40 of a DF packet",
          HEAD + "  local f = ip:frag_off():get()\n  ip:tos():set(#f)\n"
          "  ip:data():set(f)\n" + TAIL,
          [_ip(flags="DF") / UDP(sport=1000, dport=2000) / b"\xaa\xbb\xcc"], _frag_off),
    Quirk("bit-set-only", "bit fields can only be set",
          "`flags:set(2, false)` sets the DF bit",
          HEAD + "  ip:flags():set(2, false)\n" + TAIL,
          [_ip() / UDP(sport=1000, dport=2000) / b"x"], _bits),
    Quirk("tftp-setters", "TFTP `opcode` and `block_nr` setters fill every byte",
          "set(3) gives 03 03, set(5) gives 05 05",
          HEAD + TFTP + "  if t:opcode():get() == 1 then t:opcode():set(3)\n"
          "  else t:block_nr():set(5) end\n" + TAIL,
          [_ip() / UDP(sport=40000, dport=69) / TFTP_RRQ,
           _ip() / UDP(sport=40000, dport=69) / b"\x00\x03\x00\x01data"], _tftp_setters),
    Quirk("tftp-error", "TFTP fields of an ERROR packet sit at offset 0",
          "block_nr of an ERROR packet reads the opcode (5)",
          HEAD + TFTP + "  ip:id():set(t:block_nr():get())\n" + TAIL,
          [_ip() / UDP(sport=40000, dport=69) / b"\x00\x05\x00\x01File not found\x00"],
          _tftp_error),
    Quirk("ihl", "IP payload at byte 20 whatever the IHL",
          "with IHL 6 the UDP sport is read from the options (0x0101)",
          HEAD + "  ip:id():set(ip:data(packet_udp):sport():get())\n" + TAIL,
          [_ip(options=[IPOption(b"\x01\x01\x01\x00")]) / UDP(sport=1000, dport=2000) / b"x"],
          _ihl),
    Quirk("tcp-check", "`tcp:check():set()` is right only if the field was zeroed first",
          "set() leaves an invalid checksum, zeroed first or not",
          HEAD + "  ip:data(packet_tcp):check():set()\n" + TAIL,
          [_ip() / TCP(sport=1000, dport=80, flags="PA", seq=1) / b"abc",
           _ip() / TCP(sport=1000, dport=80, flags="PA", seq=2, chksum=0) / b"abc"],
          _tcp_check),
    # The ones below make (or may make) the module raise (then the next packet would hang): one packet each.
    Quirk("shared-metatable", "field objects share one metatable per protocol",
          "a kept saddr field reads with ttl's getter: the address's first byte (10)",
          HEAD + "  local a = ip:saddr()\n  local t = ip:ttl()\n  local x = a:get()\n"
          '  if type(x) == "number" then ip:tos():set(x) else ip:tos():set(200) end\n' + TAIL,
          [_ip() / UDP(sport=1000, dport=2000) / b"x"], _shared_metatable),
    Quirk("truncated", "no bounds checks: fields of a truncated packet read past its end",
          "reading the UDP checksum of a 4-byte UDP segment works (continue)",
          HEAD + "  ip:id():set(ip:data(packet_udp):check():get())\n" + TAIL,
          [_ip(proto=17) / b"\x03\xe8\x07\xd0"], _truncated),
    # Registers a dynamic protocol: a module holds one, so this is the only such case.
    Quirk("no-such-function", "a getter or setter name that is no global function makes "
          "`get()`/`set()` return `false`", "get() and set(1) give false, the byte is kept",
          "function q_has(seg, proto) return true end\n"
          "register_dynamic_protbuf({ name = \"packet_q\", has_protocol = \"q_has\",\n"
          "  protocol_fields = { {\"ttl\", 176, 8, \"no_getter\", \"no_setter\"} } })\n"
          + HEAD + "  local f = p:data(packet_q):ttl()\n  local k = 0\n"
          "  if f:get() == false then k = k + 1 end\n"
          "  if f:set(1) == false then k = k + 2 end\n  ip:tos():set(k)\n" + TAIL,
          [_ip() / UDP(sport=1000, dport=2000) / b"x"], _no_such_function),
    Quirk("tftp-mode", 'TFTP `mode` returns "\\0octet\\0"',
          "mode:get() of an RRQ oopses the kernel",
          HEAD + TFTP + "  local m = t:mode():get()\n  local k = 3\n"
          '  if m == "\\0octet\\0" then k = 1 elseif m == "octet" then k = 2 end\n'
          "  ip:tos():set(k * 100 + #m)\n" + TAIL,
          [_ip() / UDP(sport=40000, dport=69) / TFTP_RRQ], _mode),
    Quirk("tcp-options", "TCP options cover the payload when there are none",
          "options():get() without options is an error (`requested size < 0` or "
          "`not enough memory`)",
          HEAD + "  ip:tos():set(#ip:data(packet_tcp):options():get())\n" + TAIL,
          [_ip() / TCP(sport=1000, dport=80, flags="PA", seq=1) / b"0123456789"],
          _tcp_options),
    Quirk("endless-loop", "an endless loop hangs the machine at once",
          "the packet never comes back: hang",
          "function process_packet(p)\n  while true do end\nend\n",
          [_ip() / UDP(sport=1000, dport=2000) / b"x"], _endless),
]


def run(vm, only=None) -> list[tuple]:
    """(quirk, observed, agrees, VMRun) per quirk, from one run_cases call."""
    from packetscript_lab.xtlua.vm import Case
    quirks = [q for q in QUIRKS if not only or q.name in only]
    cases = [Case(q.name, q.source, [bytes(p) for p in q.packets]) for q in quirks]
    out = []
    for q, run_ in zip(quirks, vm.run_cases(cases)):
        if run_.load_error:
            out.append((q, f"refused at load: {run_.load_error}", False, run_))
            continue
        observed, agrees = q.check(run_.results)
        out.append((q, observed, agrees, run_))
    return out


def main():
    import sys
    import time

    from packetscript_lab.xtlua.vm import XtLuaVM
    from packetscript_lab.xtlua.vm.build import load_build
    started = time.monotonic()
    rows = run(XtLuaVM(load_build()), sys.argv[1:])
    print("| README row | claim | real module | agrees |\n|---|---|---|---|")
    for q, observed, agrees, _ in rows:
        print(f"| {q.row} | {q.claim} | {observed} | {'yes' if agrees else 'no'} |")
    r = rows[0][3]
    print(f"\n{r.boots} boot(s) ({r.accel}), {time.monotonic() - started:.0f} s")
    for q, _, _, run_ in rows:
        for res in run_.results:
            if res.error or res.kmsg:
                print(f"{q.name}[{res.index}]: {res.verdict} {res.error or ''} {res.kmsg[-3:]}")


if __name__ == "__main__":
    main()
