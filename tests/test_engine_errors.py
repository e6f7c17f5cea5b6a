"""Script errors: compile errors with their line, runtime errors per packet, the step
budget, bad verdicts, and what happens to the packet then."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from engine_util import RUNTIMES, tcp_frame, udp_frame
from packetscript_lab import Script, ScriptError

pytestmark = pytest.mark.parametrize("lua", RUNTIMES)

FRAME = udp_frame()


# ------------------------------------------------------------------ compile time
def test_syntax_error_line(lua):
    src = "x = 1\n\nfunction process_packet(p)\n  if x then\n  return NF_ACCEPT\nend\n"  # missing end
    with pytest.raises(ScriptError) as exc:
        Script(src, lua=lua, name="cell")
    err = exc.value
    assert err.line == 7 and "'end' expected" in err.message, err   # reported at <eof>
    assert str(err) == f"cell:{err.line}: {err.message}" and err.message
    src2 = "function process_packet(p)\n  local x = = 1\n  return NF_ACCEPT\nend\n"
    with pytest.raises(ScriptError) as exc:
        Script(src2, lua=lua, name="f.lua")
    assert exc.value.line == 2 and str(exc.value).startswith("f.lua:2: ")
    with pytest.raises(ScriptError) as exc:
        Script(src2, lua=lua, name="cell", line_offset=10)
    assert exc.value.line == 12 and str(exc.value).startswith("cell:12: ")


def test_long_script_name_keeps_file_and_line(lua):
    # Lua shortens long chunk names in its messages (LUA_IDSIZE): the reported line and
    # message must not depend on how long the name (a path, for the CLI) is.
    name = "/home/someone/projects/packet-filters/experiments/2024/filter_udp_ports.lua"
    with pytest.raises(ScriptError) as exc:
        Script("function process_packet(p)\n  local x = = 1\nend\n", lua=lua, name=name)
    assert exc.value.line == 2 and str(exc.value) == f"{name}:2: {exc.value.message}"
    assert "packet-filters" not in exc.value.message
    s = Script("function process_packet(p)\n  error('bad port')\nend\n", lua=lua, name=name)
    r = s.run(FRAME)
    assert r.error.line == 2 and r.error.message == "bad port"


def test_top_level_error_and_missing_function(lua):
    with pytest.raises(ScriptError) as exc:
        Script("local a = 1\nerror('boom at load')\n", lua=lua, name="s", line_offset=3)
    assert exc.value.line == 5 and "boom at load" in exc.value.message
    with pytest.raises(ScriptError) as exc:
        Script("function process(p) return NF_ACCEPT end", lua=lua)
    assert "process_packet" in str(exc.value)
    s = Script("function process(p) return NF_ACCEPT end", lua=lua, function="process")
    assert s.run(FRAME).verdict == "accept"


def test_bad_options(lua):
    for kw in ({"lua": "5.2"}, {"profile": "root"}, {"on_error": "continue"}, {"budget": -1}):
        kw.setdefault("lua", lua)
        with pytest.raises(ValueError):
            Script("function process_packet(p) return NF_ACCEPT end", **kw)


# ------------------------------------------------------------------ run time
ERRSRC = """function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  ip:ttl():set(1)
  if ip:protocol():get() == 17 then
    error("udp not allowed")
  end
  local x = nil
  return x.field
end
"""


@pytest.mark.parametrize("on_error", ["drop", "accept"])
def test_runtime_error_line_count_and_verdict(lua, on_error):
    s = Script(ERRSRC, lua=lua, on_error=on_error, line_offset=1)
    for i in range(3):
        r = s.run(FRAME)
        assert r.verdict == on_error and not r.modified and r.data == FRAME
        assert r.error.line == 6 and "udp not allowed" in r.error.message
    r = s.run(tcp_frame())
    assert r.verdict == on_error and r.error.line == 9 and r.data == tcp_frame()
    assert s.error_count == 4
    assert [(e.line, e.count) for e in s.errors] == [(6, 3), (9, 1)]
    assert "udp not allowed" in str(s.errors[0]) and str(s.errors[0]).startswith("line 6")


def test_api_error_points_at_script_line(lua):
    src = "function process_packet(p)\n  local a = p:to_bytes()\n\n  return a[#a]\nend\n"
    s = Script(src, lua=lua)
    r = s.run(FRAME)
    assert r.error.line == 4 and "out of range" in r.error.message and r.verdict == "drop"


def test_error_discards_byte_changes(lua):
    src = """function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  ip:daddr():set("10.77.9.9")
  p:data(packet_eth):dmac():set(0)
  if ip:ttl():get() < 100 then error("late failure") end
  return NF_ACCEPT
end"""
    s = Script(src, lua=lua, on_error="accept")
    r = s.run(FRAME)
    assert r.verdict == "accept" and r.error and r.data == FRAME and not r.modified
    ok = udp_frame(ttl=200)
    r = s.run(ok)
    assert r.error is None and Ether(r.data)[IP].dst == "10.77.9.9"


def test_error_caught_by_pcall_is_not_a_failure(lua):
    src = """function process_packet(p)
  local ok, msg = pcall(function() return p:raw(0, 99999):get() end)
  local ok2, msg2 = pcall(function() return p:data(packet_eth):data(77) end)
  if ok2 then return NF_DROP end
  return NF_ACCEPT
end"""
    s = Script(src, lua=lua)
    r = s.run(FRAME)
    assert r.verdict == "accept" and r.error is None and s.error_count == 0


@pytest.mark.parametrize("value,word", [("nil", "nil"), ("", "nil"), ("'accept'", "string"),
                                        ("{}", "table"), ("true", "boolean")])
def test_non_number_return(lua, value, word):
    s = Script(f"function process_packet(p)\n  return {value}\nend\n", lua=lua, on_error="accept")
    r = s.run(FRAME)
    assert r.verdict == "accept" and r.error is not None
    assert "verdict" in r.error.message and word in r.error.message
    assert s.error_count == 1


@pytest.mark.parametrize("value", ["2", "3", "5", "42", "-2", "0.5"])
def test_unsupported_verdict_number(lua, value):
    src = ("function process_packet(p)\n  p:data(packet_eth):dmac():set(1)\n"
           f"  return {value}\nend\n")
    s = Script(src, lua=lua)
    r = s.run(FRAME)
    assert r.verdict == "drop" and r.error is not None and "not supported" in r.error.message
    assert r.data == FRAME and not r.modified


def test_error_object_with_failing_tostring(lua):
    # an error value whose __tostring itself fails must still count as a failed packet
    src = """function process_packet(p)
  error(setmetatable({}, {__tostring = function() error("nested") end}))
end"""
    for profile in ("lab", "kernel"):
        s = Script(src, lua=lua, profile=profile)
        r = s.run(FRAME)
        assert r.verdict == "drop" and r.error is not None, profile
        assert s.error_count == 1
        assert s.run(FRAME).verdict == "drop"


def test_non_string_error_values(lua):
    for val, word in (("nil", "nil"), ("{}", "table"), ("42", "42")):
        s = Script(f"function process_packet(p)\n  error({val})\nend", lua=lua)
        r = s.run(FRAME)
        assert r.error is not None and word in r.error.message and r.error.line == 2


# ------------------------------------------------------------------ budget
LOOPS = {
    "while": "while true do x = x + 1 end",
    "repeat": "repeat x = x + 1 until false",
    "numeric for": "for i = 1, math.huge do x = x + 1 end",
    "recursion": "local function f(n) return f(n + 1) + 1 end f(1)",
    "tail call": "local function f(n) x = n return f(n + 1) end f(1)",
    "mutual": "local g; local function f() return g() end; g = function() return f() end; f()",
    "loaded chunk": "load('while true do end')()",
    "pcall loop": "while true do pcall(function() while true do end end) end",
    "coroutine": "coroutine.wrap(function() while true do end end)()",
}
GOTO = "::top:: x = x + 1 goto top"


@pytest.mark.parametrize("kind", list(LOOPS) + ["goto"])
def test_budget_stops_endless_loops(lua, kind):
    if kind == "goto" and lua == "5.1":
        # Lua 5.1 has no goto: the same source is a syntax error there.
        with pytest.raises(ScriptError):
            Script(f"function process_packet(p)\n  {GOTO}\nend", lua=lua)
        return
    code = GOTO if kind == "goto" else LOOPS[kind]
    src = f"""x = 0
packets = 0
function process_packet(p)
  packets = packets + 1
  if packets == 1 then
    {code}
  end
  return NF_ACCEPT
end"""
    s = Script(src, lua=lua, budget=5000, on_error="accept")
    r = s.run(FRAME)
    assert r.error is not None and "budget" in r.error.message, r.error
    assert r.verdict == "accept"
    r = s.run(FRAME)                                # the next packet runs normally
    assert r.error is None and r.verdict == "accept"
    assert s.error_count == 1


def test_budget_allows_bounded_work(lua):
    src = """function process_packet(p)
  local s = 0
  local a = p:to_bytes()
  for i = 0, #a - 1 do s = s + a[i] end
  for j = 1, 1000 do s = s + 1 end
  return NF_ACCEPT
end"""
    s = Script(src, lua=lua, budget=5000)
    for _ in range(5):
        assert s.run(FRAME).error is None
    s = Script(src, lua=lua, budget=100)
    assert "budget" in s.run(FRAME).error.message
    # budget 0: no limit
    assert Script(src.replace("1000", "200000"), lua=lua, budget=0).run(FRAME).error is None


def test_budget_counts_per_packet(lua):
    src = "function process_packet(p)\n  for i = 1, 300 do end\n  return NF_ACCEPT\nend"
    s = Script(src, lua=lua, budget=400)
    assert all(s.run(FRAME).error is None for _ in range(10))


def test_top_level_endless_loop_is_script_error(lua):
    with pytest.raises(ScriptError) as exc:
        Script("while true do end\nfunction process_packet(p) return NF_ACCEPT end",
               lua=lua, budget=1000)
    assert "budget" in exc.value.message and exc.value.line == 1
