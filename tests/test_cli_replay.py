"""``packetscript replay``: output, --json, --out, and errors on stderr with exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

from engine_util import rebuilt
from packetscript_lab.cli import main

SCRIPT = """-- drop UDP 9999, rewrite TCP destinations
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  local udp = ip:data(packet_udp)
  if udp and udp:dport():get() == 9999 then return NF_DROP end
  if ip:data(packet_tcp) then ip:daddr():set("10.77.2.1") end
  if udp and udp:dport():get() == 1 then error("port one") end
  print("seen " .. ip:saddr():get())
  return NF_ACCEPT
end
"""


def _packets():
    return [Ether() / IP(src="10.77.0.1") / UDP(dport=9999),
            Ether() / IP(src="10.77.0.2") / UDP(dport=53) / Raw(b"q"),
            Ether() / IP(src="10.77.0.3", dst="10.77.2.100") / TCP() / Raw(b"GET"),
            Ether() / IP(src="10.77.0.4") / UDP(dport=1),
            Ether(type=0x0806) / Raw(b"\x00" * 28)]


@pytest.fixture
def files(tmp_path):
    script = tmp_path / "filter.lua"
    script.write_text(SCRIPT)
    pcap = tmp_path / "in.pcap"
    wrpcap(str(pcap), _packets())
    return script, pcap, tmp_path


def test_json_output(files, capsys):
    script, pcap, _ = files
    assert main(["replay", str(script), str(pcap), "--json"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert set(obj) == {"packets", "verdicts", "errors", "modified", "pps", "restarts", "timeouts",
                        "crashes", "unjudged"}
    assert obj["packets"] == 5 and obj["errors"] == 1 and obj["modified"] == 1
    assert obj["verdicts"] == {"accept": 2, "drop": 2, "continue": 1}
    assert isinstance(obj["pps"], (int, float)) and obj["pps"] > 0
    assert "[print] seen 10.77.0.2" in err


def test_on_error_accept_and_out_file(files, capsys):
    script, pcap, tmp = files
    out_path = tmp / "out.pcap"
    assert main(["replay", str(script), str(pcap), "--json", "--on-error", "accept",
                 "--out", str(out_path)]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["verdicts"] == {"accept": 3, "drop": 1, "continue": 1} and obj["errors"] == 1
    pk = [Ether(bytes(p)) for p in _packets()]
    tcp = pk[2].copy()
    tcp[IP].dst = "10.77.2.1"
    want = [bytes(pk[1]), rebuilt(tcp), bytes(pk[3]), bytes(pk[4])]
    assert [bytes(p) for p in rdpcap(str(out_path))] == want


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_human_summary(files, capsys, monkeypatch, where):
    script, pcap, tmp = files
    if where == "relative":
        monkeypatch.chdir(tmp)
        script = script.name
    assert main(["replay", str(script), str(pcap), "--lua", "5.1", "--out", str(tmp / "o.pcap")]) == 0
    out = capsys.readouterr().out
    assert "5 packets" in out and "accept 2" in out and "drop 2" in out and "continue 1" in out
    assert "errors 1" in out and "wrote 3 packets" in out
    assert f"error x1: {script}:8: port one\n" in out


def test_no_fix_checksums_option(files, capsys):
    script, pcap, tmp = files
    out_path = tmp / "raw.pcap"
    assert main(["replay", str(script), str(pcap), "--json", "--no-fix-checksums",
                 "--out", str(out_path)]) == 0
    tcp_pkt = [p for p in rdpcap(str(out_path)) if TCP in p][0]
    orig = Ether(bytes(_packets()[2]))
    assert tcp_pkt[IP].dst == "10.77.2.1"
    assert tcp_pkt[TCP].chksum == orig[TCP].chksum            # stale, as the kernel leaves it


def _err(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code != 0 and out == ""
    return err


def test_corrupt_pcap(files, capsys):
    script, _, tmp = files
    bad = tmp / "bad.pcap"
    bad.write_bytes(b"garbage" * 20)
    err = _err(["replay", str(script), str(bad), "--json"], capsys)
    assert "bad.pcap" in err and "Traceback" not in err


def test_missing_pcap(files, capsys):
    script, _, tmp = files
    err = _err(["replay", str(script), str(tmp / "missing.pcap")], capsys)
    assert "missing.pcap" in err and "no such file" in err


def test_missing_script(files, capsys):
    _, pcap, tmp = files
    err = _err(["replay", str(tmp / "nope.lua"), str(pcap)], capsys)
    assert "nope.lua" in err


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_syntax_error_has_file_and_line(files, capsys, monkeypatch, where):
    _, pcap, tmp = files
    bad = tmp / "broken.lua"
    bad.write_text("function process_packet(p)\n  local x = \n  return NF_ACCEPT\nend\n")
    if where == "relative":
        monkeypatch.chdir(tmp)
        bad = bad.relative_to(tmp)
    err = _err(["replay", str(bad), str(pcap), "--json"], capsys)
    assert err.startswith(f"packetscript replay: {bad}:3: ") and err.count(":3:") == 1, err


def test_runtime_error_at_top_level(files, capsys):
    _, pcap, tmp = files
    bad = tmp / "top.lua"
    bad.write_text("x = 1\nlocal y = nil + 1\nfunction process_packet(p) return NF_ACCEPT end\n")
    err = _err(["replay", str(bad), str(pcap)], capsys)
    assert f"{bad}:2:" in err


def test_console_entry_point(files):
    """The real command: stdout holds exactly the JSON object."""
    script, pcap, _ = files
    res = subprocess.run([sys.executable, "-m", "packetscript_lab", "replay", str(script),
                          str(pcap), "--json"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    obj = json.loads(res.stdout)
    assert obj["packets"] == 5 and res.stdout.count("{") == 2        # object + verdicts
    res = subprocess.run([sys.executable, "-m", "packetscript_lab", "replay", str(script),
                          str(pcap) + ".nope"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no such file" in res.stderr and res.stdout == ""


FAIL_ALWAYS = "function process_packet(p)\n  error('no luck')\nend\n"


def test_exit_status_is_1_when_the_script_failed_on_every_packet(files, capsys):
    _, pcap, tmp = files
    script = tmp / "fail.lua"
    script.write_text(FAIL_ALWAYS)
    assert main(["replay", str(script), str(pcap), "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["errors"] == 5                       # the summary is still printed
    assert "failed on every one of the 5 packets" in err and f"{script}:2: " in err
    # A script that fails on some packets only is a successful replay (test_json_output),
    # and so is an empty capture.
    empty = tmp / "empty.pcap"
    wrpcap(str(empty), [])
    assert main(["replay", str(script), str(empty)]) == 0
    # The real command agrees, and says so in --help.
    res = subprocess.run([sys.executable, "-m", "packetscript_lab", "replay", str(script),
                          str(pcap)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "errors 5" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "packetscript_lab", "replay", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert "Exit status: 0 when" in res.stdout and "1 when the script failed on every packet" \
        in " ".join(res.stdout.split())


@pytest.mark.timeout(30)
def test_a_sparse_capture_fails_fast_with_exit_2(files, capsys):
    script, pcap, tmp = files
    sparse = tmp / "sparse.pcap"
    sparse.write_bytes(pcap.read_bytes())
    subprocess.run(["truncate", "-s", "1G", str(sparse)], check=True)
    err = _err(["replay", str(script), str(sparse), "--json"], capsys)
    size = 24 + sum(16 + len(p) for p in _packets())
    assert f"corrupt capture at packet 6 (byte offset {size})" in err and "sparse.pcap" in err
