"""Kernel backend: detection, the install route, and LUA rules in a real namespace.

xt_LUA cannot be loaded on these machines, so the attach tests use the documented stand-in
(packetscript_lab.xtlua.standin): detection sees `LUA` and a `-j LUA --script` rule becomes a
real, counting, target-less iptables rule. The namespace, iptables and counters are real;
nothing is added to the host's own namespace.
"""
import os
import socket
import subprocess

import pytest

from packetscript_lab.examples import dnat
from packetscript_lab.xtlua import backend
from packetscript_lab.xtlua.backend import KernelModuleMissing, KernelRule, detect, rule_args
from packetscript_lab.xtlua.standin import StandInLuaTarget

pytestmark = pytest.mark.lab


@pytest.fixture
def netns():
    """A private network namespace with loopback up; `ns.sh(argv, check=False)` runs in it."""
    from packetscript_lab.lab.netns import NetNS
    try:
        ns = NetNS.create("kernel-backend-test")
        ns.sh(["ip", "link", "set", "lo", "up"])
    except OSError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"cannot create a network namespace: {exc} (CI is set: must run)")
        pytest.skip(f"cannot create a network namespace: {exc}")
    yield ns
    ns.close()


def runner(ns):
    return lambda argv: ns.sh(argv, check=False)


def host_rules():
    res = subprocess.run(["iptables-save"], capture_output=True, text=True)
    return [ln for ln in res.stdout.splitlines() if not ln.startswith(("#", ":"))]


def send_udp(ns, count, port=9000):
    def go():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(count):
                s.sendto(b"x" * 10, ("127.0.0.1", port))
    ns.run(go)


# --- without the module ----------------------------------------------------------------------

def test_detection_reports_the_missing_module_here(netns):
    found = detect(runner(netns))
    assert not found
    assert not found.kernel_target and not found.iptables_extension
    assert "ip_tables_targets" in found.detail


def test_missing_module_error_gives_the_install_route(netns):
    with pytest.raises(KernelModuleMissing) as err:
        backend.require(runner(netns))
    text = str(err.value)
    for needle in ("kmod-ipt-lua", "iptables-mod-lua", "xtables-addons", "nfqueue"):
        assert needle in text


def test_inserting_a_rule_without_the_module_changes_nothing(netns, tmp_path):
    script = tmp_path / "s.lua"
    script.write_text("function process_packet(p) return XT_CONTINUE end\n")
    rule = KernelRule(runner(netns), tag="psl:t", table="filter", chain="OUTPUT")
    with pytest.raises(KernelModuleMissing):
        rule.insert(str(script))
    assert "-j" not in netns.sh(["iptables", "-S", "OUTPUT"]).stdout


# --- the rule arguments ----------------------------------------------------------------------

def test_rule_args_are_the_modules_options():
    assert rule_args("POSTROUTING", "-d 10.77.2.100 -p udp", "/etc/ps/dnat.lua",
                     function="handler", state_id=3, tag="psl:dnat") == [
        "POSTROUTING", "-d", "10.77.2.100", "-p", "udp", "-m", "comment", "--comment", "psl:dnat",
        "-j", "LUA", "--script", "/etc/ps/dnat.lua", "--function", "handler", "--state", "3"]
    assert rule_args("INPUT", "", "/s.lua") == ["INPUT", "-j", "LUA", "--script", "/s.lua"]
    with pytest.raises(ValueError, match="0..8"):
        rule_args("INPUT", "", "/s.lua", state_id=9)


# --- with the stand-in -----------------------------------------------------------------------

@pytest.fixture
def lua_script(tmp_path):
    path = tmp_path / "cont.lua"
    path.write_text("function process_packet(p) return XT_CONTINUE end\n")
    return str(path)


def test_stand_in_is_detected(netns):
    assert detect(StandInLuaTarget(runner(netns)))


def test_attached_rule_counts_the_packets_the_script_sees(netns, lua_script):
    before = host_rules()
    run = StandInLuaTarget(runner(netns))
    rule = KernelRule(run, tag="psl:count", table="filter", chain="OUTPUT",
                      match="-o lo -p udp --dport 9000", function="process_packet", state_id=2)
    rule.insert(lua_script)
    own = rule.chain_of()
    jump = netns.sh(["iptables", "-S", "OUTPUT"]).stdout
    assert f'-o lo -p udp -m udp --dport 9000 -m comment --comment "psl:count:0:jump" -j {own}' in jump
    listing = netns.sh(["iptables", "-S", own]).stdout.splitlines()
    assert f"LUA --script {lua_script} --function process_packet --state 2" in listing[1]
    # the counting rule repeats no match: it counts whatever the script lets continue
    assert listing[2] == f'-A {own} -m comment --comment "psl:count:0:continue"'
    assert run.scripts == [lua_script]

    send_udp(netns, 5)
    send_udp(netns, 2, port=9001)                 # not matched
    stats = rule.counters()
    assert stats["seen"] == 5 and stats["bytes"] == 5 * 38
    assert stats["continued"] == 5 and stats["stopped"] == 0   # the stand-in continues
    rule.remove()
    assert "psl:count" not in netns.sh(["iptables", "-S"]).stdout
    assert "PSL-" not in netns.sh(["iptables", "-S"]).stdout
    assert host_rules() == before


def test_a_script_that_rewrites_what_its_match_names_is_counted(netns, lua_script):
    # A DNAT attached with `-d ADDR` rewrites the address its match names. Stand-in for the
    # rewrite: a real MARK rule after the LUA rule, with the attach matching on mark 0.
    run = StandInLuaTarget(runner(netns))
    rule = KernelRule(run, tag="psl:nat", table="mangle", chain="OUTPUT",
                      match="-o lo -p udp -m mark --mark 0")
    rule.insert(lua_script)
    netns.sh(["iptables", "-t", "mangle", "-I", rule.chain_of(), "2", "-j", "MARK", "--set-mark", "7"])
    send_udp(netns, 4)
    stats = rule.counters()
    assert stats["seen"] == 4 and stats["continued"] == 4 and stats["stopped"] == 0
    rule.remove()
    assert "PSL-" not in netns.sh(["iptables", "-t", "mangle", "-S"]).stdout


def test_replace_swaps_the_script_in_place(netns, lua_script, tmp_path):
    run = StandInLuaTarget(runner(netns))
    netns.sh(["iptables", "-A", "OUTPUT", "-o", "lo", "-m", "comment", "--comment", "first"])
    rule = KernelRule(run, tag="psl:swap", table="filter", chain="OUTPUT", match="-o lo -p udp")
    rule.insert(lua_script)
    netns.sh(["iptables", "-A", "OUTPUT", "-o", "lo", "-m", "comment", "--comment", "last"])
    send_udp(netns, 3)
    newer = tmp_path / "new.lua"
    newer.write_text("function process_packet(p) return NF_ACCEPT end\n")
    rule.replace(str(newer))
    rules = [ln for ln in netns.sh(["iptables", "-S", "OUTPUT"]).stdout.splitlines()
             if ln.startswith("-A")]
    assert len(rules) == 3
    assert "first" in rules[0] and "last" in rules[2]      # same place in the chain
    assert rules[1].endswith(f"-j {rule.chain_of()}") and rule.chain_of() == rule.chain_of(1)
    everything = netns.sh(["iptables", "-S"]).stdout
    assert str(newer) in everything and lua_script not in everything
    assert rule.chain_of(0) not in everything              # the old script's chain is gone
    assert rule.counters()["seen"] == 0                    # the new script's own counters
    send_udp(netns, 2)
    assert rule.counters()["seen"] == 2
    rule.remove()


def test_stand_in_refuses_what_iptables_refuses(netns, tmp_path):
    run = StandInLuaTarget(runner(netns))
    rule = KernelRule(run, tag="psl:bad", table="filter", chain="OUTPUT")
    with pytest.raises(RuntimeError, match="Cannot open script"):
        rule.insert(str(tmp_path / "missing.lua"))
    big = tmp_path / "big.lua"
    big.write_text("-- " + "x" * 40000 + "\n")
    with pytest.raises(RuntimeError, match="size of the script is too big"):
        rule.insert(str(big))
    assert "psl:bad" not in netns.sh(["iptables", "-S"]).stdout
    assert "PSL-" not in netns.sh(["iptables", "-S"]).stdout     # nothing left half made


from labutil import pair_lab  # noqa: E402,F401  (fixture)


def test_lab_attach_with_the_kernel_backend_says_what_to_install(pair_lab):
    from packetscript_lab import LabError
    with pytest.raises(LabError) as err:
        pair_lab.attach("function process_packet(p) return NF_ACCEPT end", backend="kernel")
    assert "kmod-ipt-lua" in str(err.value) and "iptables-mod-lua" in str(err.value)
    assert pair_lab.attached == {}


KERNEL_DNAT = dnat("10.77.0.2")


from labutil import standin_pair_lab  # noqa: E402,F401  (fixture)


def test_lab_attach_kernel_counts_from_the_rule_and_replaces_and_detaches(standin_pair_lab):
    lab = standin_pair_lab
    h = lab.attach(KERNEL_DNAT, host="server", chain="INPUT", match="-p udp --dport 9000",
                   name="k", backend="kernel", function="process_packet", state_id=3)
    rules = lab.iptables_save("server")
    assert "--script" in rules and "--function process_packet" in rules and "--state 3" in rules
    sent = lab.udp_stream("client", "server", port=9000, rate=400, duration=0.25)
    stats = h.stats()
    # The stand-in behaves like a script that always continues: every datagram arrives,
    # and the rule counters account for each one.
    assert sent["received"] == sent["sent"] > 0
    assert stats["seen"] == sent["sent"] and stats["continued"] == stats["seen"]
    assert stats["stopped"] == 0 and stats["bytes"] > 0

    h.replace(KERNEL_DNAT.replace("10.77.0.2", "10.77.0.1"))
    assert lab.iptables_save("server").count("-j LUA") == 0  # the stand-in's rules carry no target
    assert lab.iptables_save("server").count("packetscript:k:1:lua") == 1
    assert "packetscript:k:0" not in lab.iptables_save("server")

    final = h.detach()
    assert final["seen"] >= stats["seen"]
    assert "packetscript:k" not in lab.iptables_save("server")
    assert "PSL-" not in lab.iptables_save("server")
    assert lab.attached == {}


def test_lab_attach_kernel_refuses_a_broken_script_before_any_rule(standin_pair_lab):
    from packetscript_lab import ScriptError

    lab = standin_pair_lab
    with pytest.raises(ScriptError) as err:
        lab.attach("function process_packet(p)\n  return = 1\nend", host="server",
                   backend="kernel", name="broken")
    assert err.value.line == 2
    assert "packetscript:broken" not in lab.iptables_save("server")
