"""Faithful mode: the kernel's integer arithmetic, checked on the real Lua runtimes."""
import pytest

from packetscript_lab.xtlua.faithful import FAITHFUL_PRELUDE, FaithfulError, transform

RUNTIMES = ("luajit", "5.1", "5.4")


# --- the source rewrite ------------------------------------------------------------------

def test_rewrite_keeps_every_line_in_place():
    src = ("local a = 7/2 -- a comment with / and ^ and %\n"
           "local s = \"a/b%c^d\" .. [[ x/y ]]\n"
           "local b = (a +\n  1) % 3\n"
           "c = 2 ^\n  3\n")
    out = transform(src)
    assert out.count("\n") == src.count("\n")
    lines = out.splitlines()
    assert lines[0].startswith("local a = (__ps_idiv(7,2))")
    assert "-- a comment with / and ^ and %" in lines[0]          # comments untouched
    assert lines[1] == src.splitlines()[1]                          # strings untouched
    assert lines[2].startswith("local b = (__ps_imod((a +")
    assert lines[3].strip() == "1) , 3))"
    assert lines[4] == "c = ((2 ) * ("


def test_script_without_arithmetic_is_returned_unchanged():
    src = "function process_packet(p)\n  return NF_ACCEPT\nend\n"
    assert transform(src) is src


@pytest.mark.parametrize("literal", ["1.5", "3.", ".5", "1e3", "0x1p4"])
def test_float_literals_are_errors_with_their_line(literal):
    with pytest.raises(FaithfulError) as err:
        transform(f"x = 1\n\ny = {literal}\n")
    assert err.value.line == 3
    assert literal in err.value.message


def test_hex_integers_are_not_floats():
    assert transform("x = 0x10 / 0xE\n") == "x = (__ps_idiv(0x10 , 0xE))\n"


# --- the helpers on each runtime (lupa directly: no packet needed) --------------------------

CASES = {          # expression -> what the kernel's C long arithmetic gives
    "7 / 2": 3, "-7 / 2": -3, "7 / -2": -3, "-7 / -2": 3, "1 / 3": 0,
    "7 % 2": 1, "-7 % 2": -1, "7 % -2": 1, "-7 % -2": -1,
    "2 ^ 8": 16, "2 ^ 8 ^ 2": 32, "-2 ^ 2": -4,
    "100 / 7 * 7 + 100 % 7": 100, "10 / 3 / 2": 1, "#'abcd' / 3": 1,
    "1 + 7 / 2 * 3": 10, "-7 / 2 ^ 1": -3, "2 * 7 % 4": 2, "(1 - 8) % 3": -1,
    "10 - 2 ^ 3 / 3": 8, "2 ^ -3": -6, "({10})[1] / 4": 2, "tonumber('9') / 2": 4,
}


def _lua(runtime):
    import lupa.lua51, lupa.lua54, lupa.luajit21
    module = {"luajit": lupa.luajit21, "5.1": lupa.lua51, "5.4": lupa.lua54}[runtime]
    lua = module.LuaRuntime()
    lua.execute(FAITHFUL_PRELUDE)
    return lua


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_kernel_arithmetic_on_every_runtime(runtime):
    lua = _lua(runtime)
    got = {}
    for expr in CASES:
        lua.execute(transform(f"result = {expr}\n"))
        got[expr] = lua.eval("result")
        # integers print as integers, as with the kernel's %ld
        assert lua.eval("tostring(result)") == str(CASES[expr]), expr
    assert got == CASES


# --- through the engine --------------------------------------------------------------------

def _frame(ttl=64):
    from scapy.all import IP, UDP, Ether, raw
    return raw(Ether() / IP(src="10.77.0.1", dst="10.77.0.2", ttl=ttl) / UDP(sport=1, dport=9000)
               / b"hello")


TTL_SCRIPT = """function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  ip:ttl():set({expr})
  return NF_ACCEPT
end
"""


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("expr, ttl", [("7/2", 3), ("2^8", 16), ("-7/2 + 10", 7),
                                       ("-7 % 3 + 5", 4), ("ip:ttl():get() / 3", 21)])
def test_faithful_script_sets_the_kernels_ttl(runtime, expr, ttl):
    from packetscript_lab import Script
    s = Script(TTL_SCRIPT.format(expr=expr), lua=runtime, profile="kernel", faithful=True)
    r = s.run(_frame())
    assert r.error is None
    assert r.data[14 + 8] == ttl


def test_without_faithful_the_lab_computes_with_floats():
    from packetscript_lab import Script
    s = Script("function process_packet(p)\n print(-7/2, 2^8)\n return NF_ACCEPT\nend\n",
               profile="kernel")
    s.run(_frame())
    assert s.output == ["-3.5\t256"]


def test_faithful_prints_integers():
    from packetscript_lab import Script
    s = Script("function process_packet(p)\n print(-7/2, 2^8)\n return NF_ACCEPT\nend\n",
               lua="5.4", profile="kernel", faithful=True)
    s.run(_frame())
    assert s.output == ["-3\t16"]


def test_division_by_zero_fails_the_packet_at_the_users_line():
    from packetscript_lab import Script
    s = Script("function process_packet(p)\n  local z = 0\n  return 7 / z\nend\n",
               profile="kernel", faithful=True)
    r = s.run(_frame())
    assert r.verdict == "drop"
    assert "division by zero" in r.error.message
    assert r.error.line == 3


def test_arithmetic_on_nil_names_the_users_line():
    from packetscript_lab import Script
    s = Script("function process_packet(p)\n\n  return missing % 2\nend\n",
               profile="kernel", faithful=True)
    r = s.run(_frame())
    assert "arithmetic on a nil value" in r.error.message
    assert r.error.line == 3


def test_float_literal_refuses_to_compile_in_faithful_mode():
    from packetscript_lab import Script, ScriptError
    with pytest.raises((ScriptError, FaithfulError)) as err:
        Script("x = 1\nrate = 0.25\nfunction process_packet(p) return NF_ACCEPT end\n",
               profile="kernel", faithful=True)
    assert getattr(err.value, "line", None) == 2
    # the same script is fine in the lab
    Script("x = 1\nrate = 0.25\nfunction process_packet(p) return NF_ACCEPT end\n",
           profile="kernel")
