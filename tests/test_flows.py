"""The traffic language (packetscript_lab.core.flows): parsing, mistakes and their fixes, and the
command line, the magic and the Python API reading the same strings the same way.

The live-lab side of each surface is in test_lab_flows.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError
from labutil import ACCEPT_ALL, cli

from packetscript_lab.cli import build_parser
from packetscript_lab.cli.run import choose_traffic
from packetscript_lab.core.flows import (DEFAULT_TRAFFIC, TrafficError, check_hosts,
                                         parse_traffic)
from test_magic import ip  # noqa: F401  (the replay-backend shell fixture)

ROOT = str(Path(__file__).resolve().parents[1])
HOSTS = {"client": None, "router": None, "server": None}


def test_defaults_and_keys():
    udp, ping, tcp, pcap = parse_traffic(
        "udp client server; ping client server rate=2 count=3; "
        "tcp client 10.77.2.100:8080 connections=1 to=server; pcap 'dir/my capture.pcap' from=router")
    assert (udp.port, udp.rate, udp.count, udp.payload_size()) == (9000, 100.0, None, 64)
    assert (ping.rate, ping.count, ping.port, ping.payload_size()) == (2.0, 3, None, 56)
    assert (tcp.dst, tcp.port, tcp.connections, tcp.receiver) == ("10.77.2.100", 8080, 1, "server")
    assert (pcap.path, pcap.src, pcap.rate) == ("dir/my capture.pcap", "router", None)
    assert udp.packet_count(1.5) == 150 and ping.packet_count(10) == 3
    assert str(udp) == "udp client → server:9000" and str(pcap) == "pcap my capture.pcap from router"


def test_duration_bounds_a_flow_inside_a_longer_run():
    (udp,) = parse_traffic("udp client server rate=200 duration=0.5")
    assert udp.packet_count(10) == 100 and udp.seconds(10) == 0.5
    (default,) = parse_traffic(DEFAULT_TRAFFIC)
    assert default.packet_count(3) == 300


@pytest.mark.parametrize("spec, message", [
    ("", "empty traffic spec; e.g. 'udp client server:9000 rate=100'"),
    (" ; ;; ", "empty"),
    ("quic client server", "unknown flow kind 'quic'; use udp, tcp, ping, pcap"),
    ("upd client server", r"unknown flow kind 'upd' \(did you mean 'udp'\?\)"),
    ("udp client server rat=5", r"'rat=5' is not a udp option \(did you mean 'rate'\?\); "
                                "udp flows take rate, count, duration, size, sport, to"),
    ("ping client server connections=2", "'connections=2' is not a ping option; ping flows take"),
    ("tcp client server duraton=1", r"\(did you mean 'duration'\?\)|is not a tcp option"),
    ("udp client server size", "'size' is not key=value"),
    ("udp client", "expected 'udp SRC DST'"),
    ("pcap", "expected 'pcap FILE'"),
    ("udp client server:99999", "out of range"),
    ("ping client server:80", "ping has no port"),
    ("udp client server rate=0", "rate must be positive"),
    ("udp client server rate=fast", "rate 'fast' is not a number"),
    ("udp client server rate=50000", "more than the lab generates"),
    ("udp client server count=3 duration=1", "count= or duration=, not both"),
    ("udp client server rate=1 rate=2", "rate= is given twice"),
    ("udp client server size=4", "at least 8 bytes"),
    ("udp client 8.8.8.8:53", "not a lab address"),
    ("udp client 192.168.0.1", "not a lab address"),
    ("udp client server to=my-host", "neither a lab host name nor a lab address"),
    ("udp 'client server", "No closing quotation"),
])
def test_mistakes_say_what_is_wrong(spec, message):
    with pytest.raises(TrafficError, match=message):
        parse_traffic(spec)


@pytest.mark.parametrize("old, new", [
    ("udp rate=200 duration=3", "udp client server:9000 rate=200 duration=3"),
    ("udp dst=10.77.2.100 port=9001 receiver=server",
     "udp client 10.77.2.100:9001 to=server"),
    ("ping count=5 interval=0.1", "ping client server count=5 rate=10"),
    ("tcp src=client connections=2", "tcp client server:7000 connections=2"),
    ("pcap path=trace.pcap host=client", "pcap trace.pcap from=client"),
    ("udp", "udp client server:9000"),
    ("udp router 10.77.2.2 port=9001 rate=5", "udp router 10.77.2.2:9001 rate=5"),
    ("udp client server:9000 receiver=server", "udp client server:9000 to=server"),
])
def test_the_old_command_line_spelling_is_answered_with_the_new_one(old, new):
    with pytest.raises(TrafficError) as err:
        parse_traffic(old)
    assert f"write {new!r}" in str(err.value)
    parse_traffic(new)                      # and what it suggests is valid


def test_hosts_are_checked_with_a_suggestion():
    check_hosts(parse_traffic(f"udp client 10.77.2.100 to=server; pcap {__file__}"), HOSTS)
    with pytest.raises(TrafficError, match="pcap nowhere.pcap: no such file"):
        check_hosts(parse_traffic("pcap nowhere.pcap"), HOSTS)
    with pytest.raises(TrafficError, match=r"no host 'sever' in this lab \(did you mean "
                                           r"'server'\?\) \(hosts: client, router, server\)"):
        check_hosts(parse_traffic("ping client sever"), HOSTS)
    with pytest.raises(TrafficError, match="no host 'mars'"):
        check_hosts(parse_traffic("udp client 10.77.2.100 to=mars"), HOSTS)
    with pytest.raises(TrafficError, match="two udp flows to server port 9000 at the same "
                                           "time; give each its own port"):
        check_hosts(parse_traffic("udp client server; udp router server:9000"), HOSTS)
    check_hosts(parse_traffic("udp client server; tcp client server:9000"), HOSTS)


# --- the three surfaces read the same strings ----------------------------------------------

GOOD = ["udp client server:9000 rate=200 count=20",
        "udp client server duration=0.2 size=100 sport=5000; ping client server count=2 rate=20",
        "tcp client server:7001 connections=1 size=40",
        "udp client 10.77.0.2:9000 count=3 to=server"]
BAD = ["udp client server rat=5", "upd client server", "udp rate=200 duration=3",
       "udp client 8.8.8.8"]


@pytest.mark.parametrize("spec", GOOD)
def test_cli_and_magic_accept_what_the_parser_accepts(ip, spec):  # noqa: F811
    args = build_parser().parse_args(["run", "x.lua", "--traffic", spec])
    assert choose_traffic(args) == parse_traffic(spec)
    ip.run_cell_magic("packetscript", f"ok --duration 0.2 --no-dashboard --traffic '{spec}'",
                      ACCEPT_ALL)


@pytest.mark.parametrize("spec", BAD)
def test_cli_and_magic_refuse_with_the_parsers_words(ip, spec, tmp_path):  # noqa: F811
    with pytest.raises(TrafficError) as err:
        parse_traffic(spec)
    words = str(err.value)
    script = tmp_path / "accept.lua"
    script.write_text(ACCEPT_ALL)
    res = cli("run", str(script), "--traffic", spec)       # refused before any lab starts
    assert res.returncode == 2 and f"packetscript run: --traffic: {words}" in res.stderr
    with pytest.raises(UsageError) as usage:
        ip.run_cell_magic("packetscript", f"bad --duration 0.2 --traffic '{spec}'", ACCEPT_ALL)
    assert str(usage.value) == f"--traffic: {words}"


def test_cli_traffic_choice():
    parse = build_parser().parse_args
    assert choose_traffic(parse(["run", "x.lua", "--no-traffic"])) == []
    two = choose_traffic(parse(["run", "x.lua", "--traffic", "udp client server",
                                "--traffic", "ping client server; tcp client server"]))
    assert [f.kind for f in two] == ["udp", "ping", "tcp"]
    with pytest.raises(Exception, match="at most 1000000 are generated"):
        choose_traffic(parse(["run", "x.lua", "--traffic", "udp client server rate=20000",
                              "--duration", "3600"]))
    with pytest.raises(Exception, match="--traffic or --no-traffic, not both"):
        choose_traffic(parse(["run", "x.lua", "--no-traffic", "--traffic", "udp client server"]))


def test_cli_without_traffic_says_it_generates_the_default(capsys):
    args = build_parser().parse_args(["run", "x.lua", "--duration", "2"])
    assert choose_traffic(args) == parse_traffic(DEFAULT_TRAFFIC)
    out = capsys.readouterr().out
    assert out.strip() == ("no --traffic given: generating the default 'udp client server:9000 "
                           "rate=100' for 2 s (--traffic FLOWS for others, --no-traffic for "
                           "none; see docs/lab.md#traffic-language)")


def test_help_texts_point_to_the_one_description():
    res = cli("run", "--help")
    assert "docs/lab.md#traffic-language" in " ".join(res.stdout.split())
    lab_md = (Path(ROOT) / "docs" / "lab.md").read_text()
    assert "## Traffic language" in lab_md
    for doc in ("README.md", "docs/jupyter.md"):
        assert "lab.md#traffic-language" in (Path(ROOT) / doc).read_text(), doc
