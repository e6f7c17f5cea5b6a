"""The real xt_LUA module, built from the user's OpenWrt patches and run in a QEMU guest.

Opt-in group (deselected by default, so CI keeps the stand-in):

    PACKETSCRIPT_XTLUA_PATCHES=/path/to/openwrt/net/xtables-addons/patches \
        .venv/bin/python -m pytest -m xtlua_vm tests/test_xtlua_vm.py

The first two tests need nothing and run everywhere.
"""
import os
import subprocess
import sys

import pytest
from scapy.layers.inet import ICMP, IP, UDP

from packetscript_lab.xtlua.vm import prerequisites

PATCHES = os.environ.get("PACKETSCRIPT_XTLUA_PATCHES")


def test_build_without_patches_directory_says_what_to_download():
    missing = prerequisites(None)
    assert any("200-add-lua-packetscript.patch" in m and "--patches" in m for m in missing)


def test_kernel_build_cli_refuses_a_directory_without_the_lua_patch(tmp_path):
    (tmp_path / "100-other.patch").write_text("--- a/x\n+++ b/x\n")
    res = subprocess.run([sys.executable, "-m", "packetscript_lab", "kernel", "build",
                          "--patches", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "no patch that adds extensions/LUA" in res.stderr


def _udp(ttl, i):
    return bytes(IP(src="10.77.0.1", dst="10.77.0.2", ttl=ttl, id=0x5000 + i)
                 / UDP(sport=1000, dport=2000) / b"hello")


SET_TTL = """
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if ip:protocol():get() == 1 then return NF_DROP end
  ip:ttl():set(ip:ttl():get() / 2)
  return XT_CONTINUE
end
"""
ACCEPT = "function process_packet(p) return NF_ACCEPT end"


@pytest.fixture(scope="module")
def vm_runs():
    if not PATCHES:
        pytest.fail("set PACKETSCRIPT_XTLUA_PATCHES to OpenWrt's net/xtables-addons/patches")
    from packetscript_lab.xtlua.vm import Case, XtLuaVM, build
    b = build(PATCHES, progress=lambda m: None)
    packets = [_udp(64, 0), _udp(7, 1),
               bytes(IP(src="10.77.0.1", dst="10.77.0.2", id=0x5009) / ICMP())]
    cases = [Case("set-ttl", SET_TTL, packets), Case("accept", ACCEPT, packets[:1]),
             Case("no-entry", "x = 1", packets[:1])]
    return dict(zip(("set-ttl", "accept", "no-entry"), XtLuaVM(b).run_cases(cases))), packets


@pytest.mark.xtlua_vm
def test_real_module_changes_bytes_and_gives_each_packet_its_verdict(vm_runs):
    runs, packets = vm_runs
    r = runs["set-ttl"].results
    assert [x.verdict for x in r] == ["continue", "continue", "drop"]
    assert r[0].data[8] == 32 and r[1].data[8] == 3      # integer division in the kernel
    assert r[0].data[10:12] == packets[0][10:12]         # and no checksum fix-up
    assert runs["accept"].results[0].verdict == "accept"
    assert runs["set-ttl"].boot_seconds[0] > 0 and runs["set-ttl"].max_rss_mb > 0


@pytest.mark.xtlua_vm
def test_real_module_drops_when_the_entry_function_is_missing(vm_runs):
    runs, _ = vm_runs
    first = runs["no-entry"].results[0]
    assert first.verdict in ("drop", "hang", "crash")
    assert first.error


@pytest.mark.xtlua_vm
def test_faithful_mode_agrees_with_the_real_module_on_a_portable_script():
    from pathlib import Path

    from packetscript_lab.conformance import compare_many
    src = (Path(__file__).parent / "lua_corpus/portable/ttl_with_checksum.lua").read_text()
    res = compare_many({"ttl": src}, [_udp(5, 0), _udp(64, 1)],
                       backends=("faithful", "xtlua-vm"))["ttl"]
    assert res.ok, str(res)
