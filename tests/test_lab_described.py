"""Topologies from a description, built for real: a 3-LAN lab behind a firewall, reached
through it as described, and bad descriptions refused before anything is built."""
from __future__ import annotations

import json
import os

import pytest

from labutil import host_network_snapshot, require_lab
from packetscript_lab.lab import Lab
from packetscript_lab.lab.description import PRESETS, TopologyError, load
from packetscript_lab.lab.topology import describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_LANS = os.path.join(ROOT, "examples", "topologies", "two-lans.json")


def test_presets_keep_their_addresses():
    pair = describe("pair")
    assert [(h.name, h.ip, h.mac) for h in pair.values()] == [
        ("client", "10.77.0.1", "02:77:00:00:00:01"), ("server", "10.77.0.2", "02:77:00:00:00:02")]
    router = describe("router")
    assert list(router) == ["client", "router", "server"]
    assert [(i.ifname, i.ip, i.mac, i.peer_host) for i in router["router"].interfaces] == [
        ("eth0", "10.77.1.254", "02:77:01:00:00:fe", "client"),
        ("eth1", "10.77.2.254", "02:77:02:00:00:fe", "server")]
    assert load("router")["forward"] == ["router"]


def test_every_problem_is_listed_in_one_error():
    bad = {"lans": {"a": {"subnet": "192.168.1.0/24", "hosts": {"x": 1, "y": 2}},
                    "b": {"subnet": "10.77.5.0/24", "hosts": {"p": 1, "q": 1}, "gateway": "z"},
                    "c": {"subnet": "10.77.5.128/25", "hosts": {"p": 300, "r": 1}}},
           "rules": {"ghost": ["-A INPUT -j DROP"], "p": ["iptables -A INPUT"]},
           "routes": {"r": [{"to": "10.77.9.0/24", "via": "10.77.8.1"}]}}
    with pytest.raises(TopologyError) as info:
        load(bad)
    msg = str(info.value)
    for part in ("192.168.1.0/24 is outside the lab's addresses", "both have address 10.77.5.1",
                 "gateway 'z' is not one of its hosts", "overlaps lan 'b'",
                 "no host 'ghost'", "must start with one of", "via 10.77.8.1 is not on any of r's LANs"):
        assert part in msg, (part, msg)
    assert "nothing was built" in msg


def test_bad_description_fails_before_building(tmp_path):
    require_lab()
    before = host_network_snapshot()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"lans": {"a": {"subnet": "10.0.0.0/8", "hosts": {"x": 1, "y": 2}}}}))
    with pytest.raises(TopologyError, match="outside the lab's addresses"):
        Lab(str(path))
    with pytest.raises(TopologyError, match="not valid JSON"):
        (tmp_path / "broken.json").write_text("{lans: ")
        Lab(str(tmp_path / "broken.json"))
    assert host_network_snapshot() == before


def test_two_lans_behind_a_firewall_route_and_filter_as_described():
    require_lab()
    with Lab(TWO_LANS, sample_interval=0.2) as lab:
        assert lab.topology == "two-lans"
        assert set(lab.hosts) == {"alice", "bob", "carol", "fw", "web", "db", "mallory"}
        # Same LAN, through the bridge.
        assert lab.ping("alice", "carol", count=2)["received"] == 2
        # Inside -> DMZ and inside -> outside, forwarded by the firewall.
        assert lab.ping("bob", "db", count=2)["received"] == 2
        assert lab.ping("alice", "mallory", count=2)["received"] == 2
        # The firewall's default rules: outside reaches only the web server.
        assert lab.ping("mallory", "web", count=2)["received"] == 2
        assert lab.ping("mallory", "db", count=2, timeout=0.5)["received"] == 0
        assert lab.ping("mallory", "alice", count=2, timeout=0.5)["received"] == 0
        tcp = lab.tcp_echo("carol", "web", port=80, connections=2)
        assert tcp["ok"] == 2, tcp
        rules = lab.iptables_save("fw")
        assert ":FORWARD DROP" in rules and "-d 10.77.20.80/32 -p tcp" in rules
        # A script attached on the firewall sees the forwarded packets.
        h = lab.attach("function process_packet(p) return NF_DROP end", host="fw",
                       chain="FORWARD", match="-s 10.77.10.2", position=1)
        assert lab.ping("bob", "web", count=2, timeout=0.5)["received"] == 0
        assert lab.ping("alice", "web", count=2)["received"] == 2
        assert h.detach()["dropped"] >= 2


def test_drawing_shows_every_host_and_lan():
    from packetscript_lab.lab.drawing import draw
    fig = draw(TWO_LANS)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for word in ("alice", "mallory", "fw", "10.77.20.0/24", "eth2 .254", "forwards"):
        assert word in texts
    assert set(PRESETS) == {"pair", "router"}


def test_magic_up_draws_a_described_topology_and_refuses_a_bad_one(monkeypatch, tmp_path):
    from IPython.core.error import UsageError
    from IPython.utils.capture import capture_output

    import kernel_magic
    from test_magic import get_shell

    monkeypatch.setenv("PACKETSCRIPT_BACKEND", "replay")
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)
    try:
        with capture_output() as cap:
            shell.run_line_magic("packetscript", f"up --topology {TWO_LANS}")
        assert "10.77.30.66" in cap.stdout
        assert any("image/png" in o.data for o in cap.outputs)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"lans": {"a": {"subnet": "10.77.1.0/24", "hosts": {"x": 1}}}}))
        kernel_magic.unload_ipython_extension(shell)
        kernel_magic.load_ipython_extension(shell)
        with pytest.raises(UsageError, match="at least two members"):
            shell.run_line_magic("packetscript", f"up --topology {bad}")
    finally:
        kernel_magic.unload_ipython_extension(shell)
