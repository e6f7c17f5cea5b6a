"""One traffic spec, three surfaces, a real lab: ``Lab.traffic``, ``packetscript run --traffic``
and ``%%packetscript --traffic`` drive the same flows and see the same numbers.

The script drops what its rule matches (udp to port 9000); ping and tcp pass by the rule.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from labutil import DROP_9000, PYTHON, pair_lab, require_lab  # noqa: F401

import kernel_magic
from packetscript_lab.core.flows import TrafficError
from test_magic_lab import ip  # noqa: F401  (a shell with the magic on the live lab)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]
ROOT = str(Path(__file__).resolve().parents[1])
SPEC = ("udp client server:9000 rate=200 count=40; udp client server:9001 rate=200 count=30; "
        "ping client server count=3 rate=20; tcp client server connections=2")
RULE = "-p udp --dport 9000"


def check_rows(rows: list[dict]) -> None:
    dropped, passed, ping, tcp = rows
    assert dropped["flow"] == "udp client → server:9000"
    assert (dropped["sent"], dropped["received"]) == (40, 0)          # the script dropped them
    assert (passed["sent"], passed["received"]) == (30, 30)           # not matched by the rule
    assert (ping["flow"], ping["sent"], ping["received"]) == ("ping client → server", 3, 3)
    assert (tcp["flow"], tcp["ok"]) == ("tcp client → server:7000", 2)
    assert not any("error" in r for r in rows), rows


def test_python_api(pair_lab):  # noqa: F811
    h = pair_lab.attach(DROP_9000, match=RULE)
    rows = pair_lab.traffic(SPEC)
    check_rows(rows)
    assert h.stats()["dropped"] == h.stats()["seen"] == 40


def test_python_api_mistakes_send_nothing(pair_lab):  # noqa: F811
    h = pair_lab.attach(DROP_9000, match=RULE)
    with pytest.raises(TrafficError, match=r"no host 'sever' in this lab \(did you mean"):
        pair_lab.traffic("udp client server count=5; udp client sever:9001")
    with pytest.raises(TrafficError, match="not a udp option"):
        pair_lab.traffic("udp client server cnt=5")
    assert h.stats()["seen"] == 0
    (row,) = pair_lab.traffic("udp client server duration=0.2 rate=100")   # 20 packets
    assert row["sent"] == 20 and h.stats()["seen"] == 20


def test_python_api_pcap_flow(pair_lab, tmp_path):  # noqa: F811
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap
    path = tmp_path / "five.pcap"
    wrpcap(str(path), [Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=9000) / b"x"] * 5)
    h = pair_lab.attach(DROP_9000, match=RULE)
    (row,) = pair_lab.traffic(f"pcap '{path}' from=client rate=100")
    assert row == {"flow": "pcap five.pcap from client", "sent": 5}
    deadline = time.monotonic() + 5         # sent is not yet judged: wait for the verdicts
    while h.stats()["dropped"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.stats()["dropped"] == h.stats()["seen"] == 5


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([PYTHON, "-m", "packetscript_lab", *args], capture_output=True,
                          text=True, env=env, timeout=90)


def test_command_line(tmp_path):
    require_lab()
    script = tmp_path / "drop.lua"
    script.write_text(DROP_9000)
    res = cli("run", str(script), "--match", RULE, "--traffic", SPEC, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    check_rows(out["traffic"])
    assert [r["kind"] for r in out["traffic"]] == ["udp", "udp", "ping", "tcp"]
    assert out["stats"]["dropped"] == out["stats"]["seen"] == 40


def test_command_line_without_traffic_generates_the_default_and_says_so(tmp_path):
    require_lab()
    script = tmp_path / "drop.lua"
    script.write_text(DROP_9000)
    res = cli("run", str(script), "--duration", "0.5")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("no --traffic given: generating the default 'udp client "
                               "server:9000 rate=100' for 0.5 s")
    assert "udp client → server:9000: sent 50, received 0" in res.stdout
    assert "dropped      50" in res.stdout
    quiet = cli("run", str(script), "--duration", "0.5", "--no-traffic", "--json")
    assert quiet.returncode == 0, quiet.stderr
    out = json.loads(quiet.stdout)
    assert out["traffic"] == [] and out["stats"]["seen"] == 0


def test_notebook_magic(ip):  # noqa: F811
    s = kernel_magic.run(DROP_9000, "flows", duration=1.0, display=False, traffic=SPEC,
                         match=RULE)
    check_rows(s.traffic)
    assert s.backend == "nfqueue" and s.count("dropped") == s.count("seen") == 40
