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
