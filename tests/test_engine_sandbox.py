"""What a script can reach: the lab and kernel profiles, loading code, print capture."""
from __future__ import annotations

import pytest

from engine_util import RUNTIMES, lua_values, run, udp_frame
from packetscript_lab import Script, ScriptError

pytestmark = pytest.mark.parametrize("lua", RUNTIMES)

FRAME = udp_frame()


def values(exprs, lua, profile):
    return lua_values(FRAME, exprs, prelude=False, lua=lua, profile=profile)


def test_lab_profile_libraries(lua):
    vals = values(["type(string)", "type(table)", "type(math)", "type(coroutine)",
                   "type(io)", "type(os)", "type(require)", "type(debug)", "type(package)",
                   "type(dofile)", "type(loadfile)", "type(string.dump)", "type(_G.io)",
                   "rawget(_G, 'os')", "type(collectgarbage)"], lua, "lab")
    assert vals[:4] == ["table"] * 4
    assert vals[4:14] == ["nil"] * 10
    r, s = run("print(('abc'):upper(), string.rep('ab', 2), table.concat({1, 2}, ','),"
               " math.max(3, 9), math.floor(7 / 2))", FRAME, prelude=False, lua=lua)
    assert s.output == ["ABC\tabab\t1,2\t9\t3"]


def test_kernel_profile_libraries(lua):
    vals = values(["type(string)", "type(table)", "type(math)", "type(io)", "type(os)",
                   "type(coroutine)", "type(require)", "type(debug)",
                   "pcall(function() return ('abc'):upper() end)",
                   "pcall(function() return ('abc'):len() end)",
                   "#'abc' .. 'd'", "tostring(12) .. tonumber('7')"], lua, "kernel")
    assert vals == ["nil"] * 5 + ["table"] + ["nil"] * 2 + ["false", "false", "3d", "127"]


def test_kernel_profile_packet_script(lua):
    # A script in the kernel's dialect: no string library, byte-by-byte matching.
    src = """
GET = {71, 69, 84, 32}
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  local udp = ip and ip:data(packet_udp)
  if not udp then return NF_ACCEPT end
  local d = udp:data():get()
  if #d < 4 then return NF_ACCEPT end
  for i = 1, 4 do if d[i - 1] ~= GET[i] then return NF_ACCEPT end end
  print("GET from " .. ip:saddr():get())
  return NF_DROP
end"""
    s = Script(src, lua=lua, profile="kernel")
    assert s.run(udp_frame(b"GET /x")).verdict == "drop"
    assert s.run(udp_frame(b"PUT /x")).verdict == "accept"
    assert s.output == ["GET from 10.77.0.1"] and s.error_count == 0


@pytest.mark.parametrize("profile", ["lab", "kernel"])
def test_no_bytecode_loading(lua, profile):
    vals = values(["load('\\27LuaQ')", "loadstring and loadstring('\\27LuaR') or 'n/a'",
                   "load('return 1 + 1')()"], lua, profile)
    assert vals[0] == "nil" and vals[1] in ("nil", "n/a") and vals[2] == "2"
    r, s = run("local f, err = load('\\27LuaQ'); print(err)", FRAME, prelude=False, lua=lua,
               profile=profile)
    assert "bytecode" in s.output[0]


@pytest.mark.parametrize("profile", ["lab", "kernel"])
def test_loaded_code_is_sandboxed(lua, profile):
    vals = values(["load('return type(io)')()", "load('return type(debug)')()",
                   "load('return NF_ACCEPT')()"], lua, profile)
    assert vals == ["nil", "nil", "1"]


def test_no_escape_through_metatables_or_env(lua):
    vals = values(["type(getmetatable('').__index.dump)", "type(getfenv)", "type(setfenv)",
                   "_G == _G._G", "type(_G.__ps_tick)"], lua, "lab")
    # getfenv/setfenv exist where the language has them, limited to the script's own
    # functions (tests/test_conformance_reference.py): never the engine's globals
    fenv = "nil" if lua == "5.4" else "function"
    assert vals[:4] == ["nil", fenv, fenv, "true"]
    if lua != "5.4":
        assert values(["getfenv(print).debug", "getfenv(p.raw).io", "pcall(setfenv, p.raw, {})"],
                      lua, "lab") == ["nil", "nil", "false"]
    # even if the script meddles with its globals, the engine keeps working
    s = Script("""
function process_packet(p)
  string = nil; table = nil; math = nil; tostring = nil; error = nil; pcall = nil
  setmetatable(_G, {__index = function() error("no") end})
  return NF_ACCEPT
end""", lua=lua)
    assert s.run(FRAME).verdict == "accept" and s.run(FRAME).verdict == "accept"


@pytest.mark.parametrize("profile", ["lab", "kernel"])
def test_print_captured(lua, profile):
    src = """print("loaded")
function process_packet(p)
  print("len", #p:to_bytes(), nil, true)
  print()
  return NF_ACCEPT
end"""
    s = Script(src, lua=lua, profile=profile)
    s.run(FRAME)
    assert s.output == ["loaded", f"len\t{len(FRAME)}\tnil\ttrue", ""]


def test_print_output_is_bounded(lua):
    s = Script("function process_packet(p) for i = 1, 700 do print(i) end return NF_ACCEPT end",
               lua=lua)
    s.run(FRAME)
    s.run(FRAME)
    assert len(s.output) == 1000 and s.output[:2] == ["1", "2"] and s.output[-1] == "300"


def test_two_scripts_do_not_share_globals(lua):
    a = Script("n = 0 function process_packet(p) n = n + 1 print(n) return NF_ACCEPT end", lua=lua)
    b = Script("function process_packet(p) print(n) return NF_ACCEPT end", lua=lua)
    a.run(FRAME); a.run(FRAME); b.run(FRAME)
    assert a.output == ["1", "2"] and b.output == ["nil"]


def test_script_cannot_break_checksum_fixup(lua):
    # redefining globals the engine relies on must not affect it
    src = """
string, table, math = nil, nil, nil
function process_packet(p)
  p:data(packet_eth):data(packet_ip):ttl():set(1)
  return NF_ACCEPT
end"""
    from engine_util import assert_checksums_valid
    r = Script(src, lua=lua).run(FRAME)
    assert r.error is None and r.modified
    assert_checksums_valid(r.data, ("IP", "UDP"))


def test_syntax_checked_with_sandbox_loader(lua):
    with pytest.raises(ScriptError):
        Script("\27Lua", lua=lua)
