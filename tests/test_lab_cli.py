"""Live lab through the command line: `packetscript run` and `packetscript lab up|status|down`."""
from __future__ import annotations

import json
import os

import pytest
from labutil import DROP_9000, cli, host_network_snapshot, require_lab, slow_script

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]


def test_run_drop_script_with_traffic(tmp_path):
    require_lab()
    script = tmp_path / "drop.lua"
    script.write_text(DROP_9000)
    res = cli("run", str(script), "--host", "server", "--chain", "INPUT",
              "--match", "-p udp --dport 9000", "--traffic", "udp client server:9000 rate=200 duration=0.5",
              "--traffic", "udp client server:9001 rate=200 duration=0.5", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["stats"]["dropped"] == out["stats"]["seen"] == 100
    hit, miss = out["traffic"]
    assert hit["received"] == 0 and miss["received"] == 100


def test_run_reports_user_mistakes(tmp_path):
    script = tmp_path / "bad.lua"
    script.write_text("function process_packet(p)\n  return (\nend\n")
    assert cli("run", str(tmp_path / "missing.lua")).returncode == 2
    res = cli("run", str(script), "--traffic", "udp client server speed=3")
    assert res.returncode == 2 and "'speed=3' is not a udp option" in res.stderr
    res = cli("run", str(script), "--traffic", "udp rate=200 duration=3")     # the old spelling
    assert res.returncode == 2 and \
        "write 'udp client server:9000 rate=200 duration=3'" in res.stderr
    require_lab()
    res = cli("run", str(script))
    assert res.returncode == 2 and "bad.lua" in res.stderr


def test_lab_up_status_down():
    require_lab()
    name = f"test{os.getpid()}"
    before = host_network_snapshot()
    up = cli("lab", "up", "--name", name, "--topology", "router", "--json")
    try:
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout)["topology"] == "router"
        assert cli("lab", "up", "--name", name).returncode == 2  # already running
        st = cli("lab", "status", "--name", name, "--json")
        assert st.returncode == 0 and json.loads(st.stdout)["running"] is True
    finally:
        down = cli("lab", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    st = cli("lab", "status", "--name", name, "--json")
    assert st.returncode == 1 and json.loads(st.stdout)["running"] is False
    assert host_network_snapshot() == before


SLOW = slow_script(50000)


def test_run_accounts_for_packets_that_passed_unjudged(tmp_path):
    require_lab()
    script = tmp_path / "slow.lua"
    script.write_text(SLOW)
    args = ("run", str(script), "--queue-len", "8", "--on-overload", "accept",
            "--traffic", "udp client server:9000 rate=4000 duration=0.5")
    res = cli(*args, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    s, sent = out["stats"], out["traffic"][0]["sent"]
    assert s["rule_packets"] == sent
    assert s["judged"] + s["passed_unjudged"] + s["queue_drops"] + s["in_flight"] == sent
    assert s["passed_unjudged"] > 0 and out["traffic"][0]["received"] == sent  # fail open
    text = cli(*args)
    assert text.returncode == 0, text.stderr
    assert "passed unjudged" in text.stdout and f"rule matched {sent} = judged" in text.stdout
