"""The protocol table (core/protocols.py) is the one source: the engine, the field names of
logs and the portability check all follow it."""
from __future__ import annotations

import pytest

from engine_util import RUNTIMES, udp_frame
from packetscript_lab import Script
from packetscript_lab.core.protocols import BY_NAME, PROTOCOLS
from packetscript_lab.core.fields import changed_fields
from packetscript_lab.xtlua.checker import FIELDS


@pytest.mark.parametrize("lua", RUNTIMES)
def test_engine_offers_every_protocol_and_field_of_the_table(lua):
    lines = []
    for p in PROTOCOLS:
        names = ", ".join(f'"{f.name}"' for f in p.fields)
        lines.append(f'check({p.name}, "{p.name}", {p.id}, {{{names}}})')
    src = """
local out = {}
function check(id, name, want_id, fields)
  local seg = p:raw(0, 1)
  local missing = {}
  for _, f in ipairs(fields) do
    local proto_seg = PROTOS[name]
    if type(proto_seg[f]) ~= "function" then missing[#missing + 1] = f end
  end
  out[#out + 1] = name .. "=" .. tostring(id == want_id and supported_protocols[id] == name) .. ":" .. table.concat(missing, ",")
end
"""
    body = ("function process_packet(p)\n"
            "PROTOS = {}\n"
            + "\n".join(f'PROTOS["{q.name}"] = p:raw(0, 1):data({q.name}) or p:raw(0, 1)' for q in PROTOCOLS)
            + src.replace("function check", "local function check") + "\n".join(lines)
            + "\nprint(table.concat(out, ' '))\nreturn NF_ACCEPT\nend\n")
    s = Script(body, lua=lua)
    r = s.run(udp_frame())
    assert r.error is None, r.error
    got = s.output[0].split(" ")
    assert got == [f"{p.name}=true:" for p in PROTOCOLS]


def test_field_names_and_checker_read_the_table():
    f = udp_frame()
    changed = bytearray(f)
    ip = BY_NAME["packet_ip"]
    a, b = ip.field("ttl").byte_range
    changed[14 + a] ^= 1
    assert changed_fields(f, bytes(changed)) == ["ip.ttl"]
    assert FIELDS["ip"] == {fd.name for fd in ip.fields}
    assert "ip6" not in FIELDS                   # beyond xt_LUA: flagged, not listed


ADDED_FIELD = r'''
import dataclasses
import importlib.util
import sys

# The package's __init__ imports the engine at once; hold it back so that the table can be
# changed before any consumer reads it, as an edit of core/protocols.py would.
package = importlib.util.module_from_spec(importlib.util.find_spec("packetscript_lab"))
sys.modules["packetscript_lab"] = package           # its body is not run
import packetscript_lab.core.protocols as P

# One field added to one protocol in the table, before any consumer is imported.
udp = P.BY_NAME["packet_udp"]
at = [f.name for f in udp.fields].index("length") + 1
grown = dataclasses.replace(udp, fields=udp.fields[:at] + (P.F("length_hi", 32, 8, "int"),)
                            + udp.fields[at:])
P.PROTOCOLS = tuple(grown if p is udp else p for p in P.PROTOCOLS)
P.BY_NAME["packet_udp"], P.BY_ID[udp.id] = grown, grown

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from packetscript_lab.script import Script
from packetscript_lab.core.fields import field_value
from packetscript_lab.xtlua.checker import FIELDS

frame = bytes(Ether() / IP() / UDP() / (b"x" * 300))
s = Script("""function process_packet(p)
  local u = p:data(packet_eth):data(packet_ip):data(packet_udp)
  print(u:length_hi():get())
  return NF_ACCEPT
end""")
r = s.run(frame)
assert r.error is None, r.error
print(s.output[0], frame[14 + 20 + 4], field_value(frame, "udp.length/length_hi") is not None,
      "length_hi" in FIELDS["udp"])
'''


def test_a_field_added_to_the_table_reaches_engine_field_names_and_checker(tmp_path):
    """Adding a field is one table entry: the Lua engine offers it, the field names of logs
    and the portability check know it, with no other change."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "added_field.py"
    script.write_text(ADDED_FIELD)
    here = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(here.parent), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    from_lua, in_frame, named, checked = out.stdout.split()
    assert from_lua == in_frame == "1" and named == checked == "True"
