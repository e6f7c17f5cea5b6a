"""Recorded runs: a pcapng of what the script saw with verdicts, changed fields and errors as
packet comments (read back with Debian's tshark), the script, options and versions, and
`packetscript replay --verify` catching a record that no longer matches."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from labutil import require_lab
from packetscript_lab import replay
from packetscript_lab.lab import Lab
from packetscript_lab.recording import RecordError, verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DNAT_LUA = os.path.join(ROOT, "examples", "dnat.lua")
PCAP = os.path.join(ROOT, "examples", "udp-to-10.77.2.100.pcap")

# Every third packet fails, odd ones are dropped, the rest get a new TTL; get_random feeds
# a global, so a record only verifies if the random seed was recorded with it.
MIXED = """\
n = 0
function process_packet(p)
  n = n + 1
  local ip = p:data(packet_eth):data(packet_ip)
  if n % 3 == 0 then error("third packet " .. n) end
  if n % 2 == 1 then return NF_DROP end
  ip:ttl():set(1 + nf.get_random() % 200)
  return NF_ACCEPT
end
"""


def tshark(*args) -> list[str]:
    exe = shutil.which("tshark")
    if exe is None:
        msg = "tshark is not installed (Debian: apt-get install tshark)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [ln for ln in res.stdout.splitlines() if ln]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "packetscript_lab", *args], capture_output=True,
                          text=True, timeout=120)


def test_replay_record_opens_in_tshark_and_verifies(tmp_path):
    rec = tmp_path / "rec"
    res = cli("replay", DNAT_LUA, PCAP, "--record", str(rec))
    assert res.returncode == 0, res.stderr
    assert "recorded in" in res.stdout
    assert sorted(os.listdir(rec)) == ["left.pcapng", "record.json", "script.lua", "seen.pcapng"]
    rows = tshark("-r", str(rec / "seen.pcapng"), "-T", "fields", "-e", "frame.comment",
                  "-e", "ip.dst")
    assert len(rows) == 1000
    assert rows[0] == "#1 verdict=continue changed=ip.check,ip.daddr,udp.check\t10.77.2.100"
    left = tshark("-r", str(rec / "left.pcapng"), "-T", "fields", "-e", "ip.dst", "-e", "frame.comment")
    assert left[0] == "10.77.2.2\tfrom #1 verdict=continue"
    meta = json.loads((rec / "record.json").read_text())
    assert meta["summary"]["verdicts"]["continue"] == 1000
    for key in ("python", "lupa", "lua", "kernel", "iptables"):
        assert meta["versions"][key]
    assert meta["versions"]["lua"].startswith("LuaJIT")
    assert meta["options"]["lua"] == "luajit" and meta["options"]["seed"]
    assert (rec / "script.lua").read_text() == open(DNAT_LUA).read()
    res = cli("replay", "--verify", str(rec))
    assert res.returncode == 0, res.stderr
    assert "all 1000 packets got the recorded verdicts and bytes" in res.stdout


def test_verdicts_errors_and_random_numbers_are_recorded_and_replayed(tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    pkts = [Ether(src="02:77:00:00:00:01", dst="02:77:00:00:00:02") /
            IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=1000 + i, dport=9000) / b"x"
            for i in range(12)]
    rec = tmp_path / "mixed"
    result = replay(MIXED, pkts, record=rec)
    assert result.packets == 12 and result.errors == 4
    assert result.verdicts == {"drop": 8, "accept": 4, "continue": 0}
    assert len(result.output) == 4 and result.record == rec
    drops = tshark("-r", str(rec / "seen.pcapng"), "-Y", 'frame.comment contains "drop"',
                   "-T", "fields", "-e", "frame.number")
    assert [int(n) for n in drops] == [1, 3, 5, 6, 7, 9, 11, 12]
    errors = tshark("-r", str(rec / "seen.pcapng"), "-Y", 'frame.comment contains "error="',
                    "-T", "fields", "-e", "frame.comment")
    assert len(errors) == 4 and "third packet 3" in errors[0]
    changed = tshark("-r", str(rec / "seen.pcapng"), "-Y", 'frame.comment contains "ip.ttl"')
    assert len(changed) == 4
    assert verify(rec).ok


def test_verify_reports_each_packet_that_differs(tmp_path):
    rec = tmp_path / "rec"
    assert cli("replay", DNAT_LUA, PCAP, "--record", str(rec)).returncode == 0
    meta = json.loads((rec / "record.json").read_text())
    meta["packets"][4]["verdict"] = "drop"                  # the record says 5 was dropped
    meta["packets"][9]["sha256_after"] = "0" * 64           # and 10 left with other bytes
    (rec / "record.json").write_text(json.dumps(meta))
    res = cli("replay", "--verify", str(rec))
    assert res.returncode == 1
    assert "2 of 1000 packets differ from the record" in res.stdout
    assert "packet #5: verdict continue, recorded drop" in res.stdout
    assert "packet #10: bytes differ from the recorded output" in res.stdout
    # A script that is not the recorded one is refused, not replayed.
    (rec / "script.lua").write_text("function process_packet(p) return NF_DROP end\n")
    res = cli("replay", "--verify", str(rec))
    assert res.returncode == 2 and "is not the recorded script" in res.stderr


def test_record_refuses_a_used_directory_and_verify_a_non_record(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    res = cli("replay", DNAT_LUA, PCAP, "--record", str(tmp_path / "used"))
    assert res.returncode == 2 and "not empty" in res.stderr
    assert os.listdir(tmp_path / "used") == ["notes.txt"]
    with pytest.raises(RecordError, match="is not a record"):
        verify(tmp_path / "used")


def test_live_run_is_recorded_and_verifies(tmp_path):
    require_lab()
    rec = tmp_path / "live"
    with Lab("pair", sample_interval=0.2) as lab:
        h = lab.attach(MIXED, host="server", chain="INPUT", match="-p udp --dport 9000",
                       record=1000)
        r = lab.udp_stream("client", "server", port=9000, rate=200, count=30)
        assert r["sent"] == 30
        path = h.record(rec, traffic={"flows": "udp client server:9000 count=30"})
        stats = h.detach()
    assert stats["seen"] == 30
    meta = json.loads((path / "record.json").read_text())
    assert meta["backend"] == "nfqueue" and meta["hook"]["host"] == "server"
    assert meta["topology"]["name"] == "pair"
    assert meta["summary"] == {"packets": 30, "verdicts": {"drop": 20, "accept": 10, "continue": 0},
                               "modified": 10, "errors": 10}
    comments = tshark("-r", str(path / "seen.pcapng"), "-T", "fields", "-e", "frame.comment",
                      "-e", "udp.dstport")
    assert comments[0] == "#1 verdict=drop\t9000"
    assert comments[1].startswith("#2 verdict=accept changed=ip.ttl,ip.check")
    assert len(tshark("-r", str(path / "left.pcapng"))) == 10
    res = cli("replay", "--verify", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


def test_run_command_records(tmp_path):
    require_lab()
    script = tmp_path / "mixed.lua"
    script.write_text(MIXED)
    rec = tmp_path / "run"
    res = cli("run", str(script), "--traffic", "udp client server:9000 count=12 rate=200",
              "--record", str(rec), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["record"] == str(rec)
    meta = json.loads((rec / "record.json").read_text())
    assert meta["summary"]["packets"] == 12
    assert len(meta["traffic"]["flows"]) == 1 and meta["traffic"]["results"][0]["sent"] == 12
    assert cli("replay", "--verify", str(rec)).returncode == 0


def test_cell_record_on_the_replay_backend(tmp_path, monkeypatch):
    from IPython.utils.capture import capture_output

    import kernel_magic
    from test_magic import get_shell

    monkeypatch.setenv("PACKETSCRIPT_BACKEND", "replay")
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)
    rec = tmp_path / "cell"
    try:
        with capture_output() as cap:
            shell.run_cell_magic("packetscript", f"mixed --duration 1 --no-dashboard --record {rec} "
                                 "--traffic 'udp client server:9000 count=9'", MIXED)
        text = " ".join(o.data.get("text/plain", "") for o in cap.outputs)
        assert f"recorded in {rec}" in text, text
        with capture_output():
            with pytest.raises(Exception, match="not empty"):
                shell.run_cell_magic("packetscript", f"again --record {rec}", MIXED)
    finally:
        kernel_magic.unload_ipython_extension(shell)
    meta = json.loads((rec / "record.json").read_text())
    assert meta["backend"] == "replay"
    assert meta["summary"]["packets"] == 9 and meta["summary"]["errors"] == 3
    assert verify(rec).ok
