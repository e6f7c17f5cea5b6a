"""Hostile scripts against the engine: each one fails on its packet with a counted error
and the error verdict, and the next packets are judged as usual. Nothing escapes as a
Python exception, on every runtime and in both profiles."""
import pytest

from engine_util import RUNTIMES, udp_frame
from packetscript_lab import Script

PROFILES = ("lab", "kernel")

# The packet after a hostile one: the script's normal behaviour, chosen by a UDP payload
# starting with "ok" (drop everything else so a wrong verdict shows).
NORMAL = """
local function normal(p)
  local udp = p:data(packet_eth):data(packet_ip):data(packet_udp)
  local d = udp and udp:data()
  if d and d:get_size() >= 2 and d:to_bytes()[0] == 111 then return NF_ACCEPT end
  return NF_DROP
end
"""


def hostile(body: str) -> str:
    """A script that runs ``body`` on packets whose payload starts with 'X', and is normal otherwise."""
    return NORMAL + f"""
function process_packet(p)
  local udp = p:data(packet_eth):data(packet_ip):data(packet_udp)
  if udp:data():to_bytes()[0] ~= 88 then return normal(p) end
{body}
  return NF_ACCEPT
end
"""


def assert_contained(s: Script, expect: str, packets: int = 3) -> None:
    """A hostile packet fails with ``expect`` in its error; normal packets after it pass."""
    before = s.error_count
    r = s.run(udp_frame(b"X hostile"))
    assert r.error is not None, "the hostile packet was judged without an error"
    assert r.verdict == "drop" and not r.modified
    assert expect in r.error.message, r.error.message
    assert s.error_count == before + 1
    for _ in range(packets):
        ok = s.run(udp_frame(b"ok fine"))
        assert ok.error is None and ok.verdict == "accept"
    # and the batch path agrees
    codes, _blob, errors = s.run_many([udp_frame(b"ok a"), udp_frame(b"X b"), udp_frame(b"ok c")])
    assert list(codes) == [1, 8, 1] and list(errors) == [1] and expect in errors[1].message


BUDGET = "budget of"
BUDGET_ESCAPES = {
    "shadowed tick name": "local __ps_tick = coroutine.running; while true do end",
    "global tick replaced, loop loaded": ("__ps_tick = function() end; __ps_ret = __ps_tick\n"
                                          "  local f = load('while true do end'); f()"),
    "comment inside a label": "goto top; ::--[[c]]top:: goto top",
    "escaped CR LF in a string": 'local s = "a\\\r\n  b"; while true do end',
    "\\z in a string": 'local s = "a\\z\n     b"; while true do end',
    "long bracket lookalike": 'local s = "[[" ; while true do end --]]',
    "budget caught by pcall": "while true do pcall(function() while true do end end) end",
    "budget caught, then accept": "pcall(function() while true do end end)",
    "budget caught by xpcall with a looping handler": (
        "xpcall(function() while true do end end, function() while true do end end)"),
    "budget caught by coroutine.resume": (
        "local co = coroutine.create(function() while true do end end); coroutine.resume(co)"),
    "recursion": "local function f() return f() end; f()",
    "repeat": "repeat until false",
    "numeric for to huge": "for i = 1, 2^53 do end",
}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("lua", RUNTIMES)
@pytest.mark.parametrize("name", list(BUDGET_ESCAPES))
def test_the_step_budget_cannot_be_dodged(lua, profile, name):
    body = BUDGET_ESCAPES[name]
    if lua == "5.1" and ("goto" in body or "\\z" in body):
        return                                   # no goto or \z in Lua 5.1: a syntax error there
    s = Script(hostile(body), lua=lua, profile=profile, budget=20_000)
    assert_contained(s, BUDGET)


@pytest.mark.parametrize("lua", RUNTIMES)
def test_the_budget_error_names_the_looping_line(lua):
    s = Script(hostile("local n = 0\n  while true do\n    n = n + 1\n  end"), lua=lua, budget=1000)
    r = s.run(udp_frame(b"X"))
    assert BUDGET in r.error.message and r.error.line in (13, 14, 15)


FORGERIES = {
    "budget error's metatable reused": (
        "local ok, e = pcall(function() while true do end end)\n"
        "  error(setmetatable({'forged', 1}, getmetatable(e)))", BUDGET),
    "table with a looping __tostring": (
        "error(setmetatable({}, {__tostring = function() while true do end end}))", "not a string"),
    "table shaped like the runner's errors": ("error({'forged message', 'not a line'})", "not a string"),
    "number": ("error(42)", "42"),
    "nil": ("error(nil)", "not a string"),
    "huge message": ("error(string.rep('x', 1e7))", "bytes"),
}


@pytest.mark.parametrize("lua", RUNTIMES)
@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_errors_are_ordinary_counted_errors(lua, name):
    body, expect = FORGERIES[name]
    s = Script(hostile(body), lua=lua, budget=20_000)
    assert_contained(s, expect)


@pytest.mark.parametrize("lua", RUNTIMES)
def test_a_memory_storm_caught_by_pcall_does_not_take_the_process(lua):
    # Fills the runtime to its limit with distinct strings it keeps; the runtime is
    # restarted fresh (counted), and judging goes on.
    body = """
  keep = keep or {}
  for i = 1, 4000 do
    local ok, s = pcall(string.rep, tostring(i) .. "y", 100000)
    if not ok then break end
    keep[#keep + 1] = s
  end"""
    s = Script(hostile(body), lua=lua, max_memory=32 << 20)
    for _ in range(3):
        s.run(udp_frame(b"X storm"))
        assert s.run(udp_frame(b"ok after")).verdict == "accept"
    assert s.state_resets >= 1
    assert any("max_memory" in e.message for e in s.errors)


@pytest.mark.parametrize("lua", RUNTIMES)
def test_stopping_the_collector_in_the_kernel_profile_is_survived(lua):
    body = """
  collectgarbage("stop")
  local t = {}
  for i = 1, 5000 do t[i] = {i, i, i, i, i, i, i, i} end"""
    s = Script(hostile(body), lua=lua, profile="kernel", max_memory=16 << 20, budget=50_000)
    for _ in range(40):
        s.run(udp_frame(b"X garbage"))
    assert s.run(udp_frame(b"ok after")).verdict == "accept"


@pytest.mark.parametrize("lua", RUNTIMES)
def test_print_output_is_bounded_in_bytes(lua):
    s = Script(hostile("print(string.rep('p', 8 * 1024 * 1024))"), lua=lua)
    for _ in range(64):
        s.run(udp_frame(b"X print"))
    kept = sum(len(line) for line in s.output)
    assert 0 < kept < 2 * 1024 * 1024 and all(len(line) < 2000 for line in s.output)
    assert s.output[0].endswith("(8388608 bytes)")
    assert s.run(udp_frame(b"ok")).verdict == "accept"


@pytest.mark.parametrize("lua", RUNTIMES)
def test_a_bad_verdict_is_reported_at_the_line_that_returned_it(lua):
    src = ("function helper() return 7 end\n"          # 1
           "function process_packet(p)\n"              # 2
           "  local udp = p:data(packet_eth):data(packet_ip):data(packet_udp)\n"
           "  if udp:data():to_bytes()[0] == 88 then\n"
           "    return nil\n"                          # 5
           "  end\n"
           "  if udp:data():to_bytes()[0] == 89 then return helper() end\n"   # 7
           "  if udp:data():to_bytes()[0] == 90 then return NF_ACCEPT end\n"
           "end\n")                                    # 9
    s = Script(src, lua=lua)
    assert s.run(udp_frame(b"X")).error.line == 5
    r = s.run(udp_frame(b"Y"))
    assert r.error.line == 1 and "verdict 7" in r.error.message
    assert s.run(udp_frame(b"W")).error.line == 9       # fell off its end
    assert s.run(udp_frame(b"Z")).verdict == "accept"
    codes, _, errors = s.run_many([udp_frame(b"X"), udp_frame(b"Z")])
    assert errors[0].line == 5 and codes[1] == 1


@pytest.mark.parametrize("lua", RUNTIMES)
def test_the_protocol_table_cannot_be_overwritten_through_supported_protocols(lua):
    src = """
supported_protocols[7] = nil
supported_protocols[100] = "x"
register_dynamic_protbuf { name = "packet_mine", protocol_fields = { {"b", 0, 8} } }
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  return (packet_mine > 7 and ip:data(packet_udp)) and NF_ACCEPT or NF_DROP
end"""
    s = Script(src, lua=lua)
    assert s.run(udp_frame(b"x")).verdict == "accept"


@pytest.mark.parametrize("lua", RUNTIMES)
def test_instrumentation_keeps_odd_but_valid_code_working(lua):
    # Labels at the end of a block, a '(' right after a loop keyword, long strings and
    # comments with keywords inside, numerals with exponents, method definitions.
    src = r'''
local t = {}
function t:m(a, ...) return a + select("#", ...) end
local s = [==[ while true do end ]] ]==] -- [[ do ]]
--[[ repeat
until ]] local x = 1e+2 + 0x1p4 + .5
function process_packet(p)
  local n = 0
  for i = 1, 3 do
    (function() n = n + 1 end)()
  end
  repeat n = n + 1 until n > 5
  local q = "do \"end\" \\"
  if n == 6 and t:m(1, 2, 3) == 3 and #s > 10 and x == 116.5 and #q == 10 then return NF_ACCEPT end
  return NF_DROP
end'''
    if lua != "5.1":
        src = src.replace("repeat n = n + 1 until n > 5",
                          "repeat n = n + 1 until n > 5\n  for i = 1, 2 do\n"
                          "    if i == 1 then goto continue end\n    local y = i\n    ::continue::\n  end")
    assert Script(src, lua=lua).run(udp_frame()).verdict == "accept"
