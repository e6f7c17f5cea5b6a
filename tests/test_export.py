"""`packetscript export`: the deployment commands, and the scripts it refuses."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from packetscript_lab.xtlua.export import NotExportable, export_script

CORPUS = Path(__file__).parent / "lua_corpus"
DNAT = (CORPUS / "nonportable" / "dnat_blog.lua").read_text()
COUNTER = (CORPUS / "portable" / "counter.lua").read_text()


def export_cli(*args):
    return subprocess.run([sys.executable, "-m", "packetscript_lab", "export", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_iptables_rule_has_the_modules_options():
    plan = export_script(DNAT, name="dnat.lua", chain="POSTROUTING", match="-d 10.77.2.100",
                         function="process_packet", state_id=3)
    assert plan.iptables_command() == (
        "iptables -t mangle -A POSTROUTING -d 10.77.2.100 -m comment --comment packetscript:dnat "
        "-j LUA --script /etc/packetscript/dnat.lua --function process_packet --state 3")


def test_output_warns_that_iptables_save_drops_function_and_state():
    text = export_script(COUNTER, name="c.lua", chain="FORWARD", function="process_packet",
                         state_id=1).render()
    assert "iptables-save" in text and "--function and --state are lost" in text


def test_output_has_the_openwrt_packages_and_include():
    text = export_script(COUNTER, name="counter.lua", chain="FORWARD", match="-p udp",
                         path="/etc/ps/counter.lua").render()
    assert "opkg install kmod-ipt-lua iptables-mod-lua" in text
    assert "uci set firewall.packetscript_counter.type=script" in text
    assert "uci set firewall.packetscript_counter.fw4_compatible=1" in text
    assert "/etc/firewall.user" in text
    assert "--script /etc/ps/counter.lua" in text


def test_warnings_are_carried_as_comments():
    text = export_script(DNAT, name="dnat.lua", chain="POSTROUTING").render()
    assert "# Checked for the kernel profile: no errors, 1 warning(s):" in text
    assert "#   line 8: [stale-checksum]" in text


def test_the_script_file_section_writes_the_script_exactly(tmp_path):
    tricky = COUNTER + "-- PACKETSCRIPT_EOF $HOME `date` 'quotes' \\n\n"
    target = tmp_path / "etc" / "t.lua"
    text = export_script(tricky, name="t.lua", chain="INPUT", path=str(target)).render()
    section = text.split("## 1.")[1].split("## 2a.")[0].split("\n", 1)[1]   # after the heading
    subprocess.run(["sh", "-e", "-c", section], check=True)
    assert target.read_text() == tricky


def test_refuses_a_script_with_kernel_errors():
    with pytest.raises(NotExportable) as err:
        export_script((CORPUS / "nonportable" / "power.lua").read_text(), name="power.lua",
                      chain="INPUT")
    assert [f.rule for f in err.value.report.errors] == ["power"]


@pytest.mark.parametrize("kw, message", [
    ({"table": "broute"}, "unknown table"),
    ({"table": "nat", "chain": "FORWARD"}, "no built-in chain"),
    ({"state_id": 9}, "0..8"),
    ({"path": "/" + "x" * 300}, "256"),
])
def test_refuses_options_iptables_would_refuse(kw, message):
    args = {"name": "c.lua", "chain": "INPUT", **kw}
    with pytest.raises(ValueError, match=message):
        export_script(COUNTER, **args)


def test_cli_prints_the_commands_and_exits_0():
    res = export_cli(CORPUS / "portable" / "drop_udp_port.lua", "--chain", "INPUT",
                     "--match", "-p udp", "--table", "filter")
    assert res.returncode == 0, res.stderr
    assert ("iptables -t filter -A INPUT -p udp -m comment --comment "
            "packetscript:drop_udp_port -j LUA --script /etc/packetscript/drop_udp_port.lua"
            in res.stdout)


def test_cli_refuses_with_findings_and_exit_3():
    res = export_cli(CORPUS / "nonportable" / "library_string.lua", "--chain", "INPUT")
    assert res.returncode == 3
    assert res.stdout == ""
    assert "library_string.lua:5: error [library]" in res.stderr


def test_cli_bad_option_is_a_usage_error():
    res = export_cli(CORPUS / "portable" / "counter.lua", "--chain", "INPUT", "--state", "12")
    assert res.returncode == 2 and "0..8" in res.stderr


# --- the generated delete command against real iptables ------------------------------------

@pytest.mark.lab
def test_delete_command_removes_every_tagged_rule_in_a_namespace():
    """Runs the export's delete loop with real iptables in a private namespace.

    The tagged rules use -j RETURN in place of -j LUA (the module cannot be loaded here); the
    delete command finds rules by their comment only, so the target does not matter.
    """
    plan = export_script(COUNTER, name="counter.lua", chain="OUTPUT", table="filter")
    tag = plan.tag
    setup = (f"iptables -A OUTPUT -m comment --comment keep-me; "
             f"iptables -A OUTPUT -p udp -m comment --comment {tag} -j RETURN; "
             f"iptables -A OUTPUT -m comment --comment other; "
             f"iptables -A OUTPUT -p tcp -m comment --comment {tag} -j RETURN; ")
    script = setup + plan.delete_command() + "; iptables -S OUTPUT"
    res = subprocess.run(["unshare", "--net", "sh", "-e", "-c", script],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0 and "unshare" in res.stderr:
        if os.environ.get("CI"):
            pytest.fail(res.stderr)
        pytest.skip(res.stderr)
    assert res.returncode == 0, res.stderr
    rules = [ln for ln in res.stdout.splitlines() if ln.startswith("-A")]
    assert len(rules) == 2 and "keep-me" in rules[0] and "other" in rules[1]
