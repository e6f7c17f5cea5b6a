"""IPv6 in the live lab: dual-stack topologies, scripts attached to IPv6 traffic through
ip6tables NFQUEUE rules, the traffic language over IPv6, and the accounting identity for v6.
Real namespaces, real ip6tables, real NFQUEUE; the received packets are checked with scapy."""
from __future__ import annotations

import json
import os

import pytest
from labutil import SLOW, assert_accounted, cli, require_lab, settled

from packetscript_lab import LabError, Script
from packetscript_lab.core.flows import TrafficError, parse_traffic
from packetscript_lab.lab import Lab
from packetscript_lab.lab.description import TopologyError, load

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

DROP_V6_9000 = """
function process_packet(p)
  local ip6 = p:data(packet_eth):data(packet_ip6)
  local udp = ip6 and ip6:data(packet_udp)
  if udp and udp:dport():get() == 9000 then return NF_DROP end
  return NF_ACCEPT
end
"""

# On the router, before routing: to fd77:0:2::2 (the server) with hop limit 7; datagrams to
# port 9001 also get a new payload of the same length.
REWRITE_V6 = """
function process_packet(p)
  local ip6 = p:data(packet_eth):data(packet_ip6)
  if not ip6 then return NF_ACCEPT end
  ip6:hop_limit():set(7)
  ip6:daddr():set("fd77:0:2::2")
  local udp = ip6:data(packet_udp)
  if udp and udp:dport():get() == 9001 then udp:data():set("HELLO IPV6 WORLD") end
  return XT_CONTINUE
end
"""


@pytest.fixture
def pair6():
    require_lab()
    with Lab("pair", sample_interval=0.2, ipv6=True) as lab:
        yield lab


@pytest.fixture
def router6():
    require_lab()
    with Lab("router", sample_interval=0.2, ipv6=True) as lab:
        yield lab


# ------------------------------------------------------------------ topologies
def test_dual_stack_pair_pings_over_ipv6_at_once(pair6):
    lab = pair6
    assert (lab.hosts["client"].ip6, lab.hosts["server"].ip6) == ("fd77::1", "fd77::2")
    # No duplicate address detection: the very first echo request is answered.
    first = lab.ping("client", "server", ip=6, count=1, timeout=1.0)
    assert (first["received"], first["lost"]) == (1, [])
    assert lab.ping("client", "server", ip=6, count=5, interval=0.01)["received"] == 5
    assert lab.ping("client", "server", count=3, interval=0.01)["received"] == 3   # IPv4 still
    assert lab.tcp_echo("client", "server", ip=6, connections=2)["ok"] == 2
    assert "NFQUEUE" not in lab.ip6tables_save("server")
    with pytest.raises(LabError, match="xt_LUA module handles IPv4 only"):
        lab.attach(DROP_V6_9000, backend="kernel", ip=6)


def test_dual_stack_router_forwards_ipv6(router6):
    lab = router6
    ip6 = {n: [i.ip6 for i in h.interfaces] for n, h in lab.hosts.items()}
    assert ip6 == {"client": ["fd77:0:1::1"], "router": ["fd77:0:1::254", "fd77:0:2::254"],
                   "server": ["fd77:0:2::2"]}
    r = lab.ping("client", "server", ip=6, count=3, interval=0.01)
    assert (r["received"], r["lost"]) == (3, [])
    u = lab.udp_stream("client", "server", ip=6, count=50, rate=1000)
    assert u["received"] == u["sent"] == 50
    assert lab.ping("client", "server", count=2, interval=0.01)["received"] == 2


def test_ipv4_only_lab_says_how_to_get_ipv6():
    require_lab()
    with Lab("pair") as lab:
        assert lab.hosts["server"].ip6 is None
        with pytest.raises(LabError, match=r"server has no IPv6 address.*ipv6=True"):
            lab.ping("client", "server", ip=6)
        with pytest.raises(LabError, match=r"IPv4 only.*ipv6=True"):
            lab.attach(DROP_V6_9000, ip=6)
        with pytest.raises(LabError, match="IPv4 only"):
            lab.ip6tables_save("server")


def test_description_dual_stack_with_ipv6_routes_and_rules6():
    desc = {"name": "v6", "ipv6": True,
            "lans": {"a": {"subnet": "10.77.10.0/24", "gateway": "fw", "hosts": {"alice": 1, "fw": 254}},
                     "b": {"subnet": "10.77.30.0/24", "gateway": "fw", "hosts": {"bob": 7, "fw": 254}}},
            "routes": {"alice": [{"to": "fd77:0:99::/64", "via": "fd77:0:10::254"}]},
            "rules6": {"fw": ["-A FORWARD -p udp --dport 9999 -j DROP"]}}
    d = load(desc)
    assert [i["ip6"] for i in d["hosts"]["fw"]] == ["fd77:0:10::254", "fd77:0:30::254"]
    assert d["hosts"]["bob"][0]["ip6"] == "fd77:0:30::7"
    with pytest.raises(TopologyError) as err:
        load({**desc, "ipv6": False})
    assert "'rules6' (ip6tables rules) needs" in str(err.value)
    assert "IPv6 routes need" in str(err.value)
    with pytest.raises(TopologyError, match=r"fd00::/64 is outside the lab's IPv6 addresses"):
        load({**desc, "routes": {"alice": [{"to": "fd00::/64", "via": "fd77:0:10::254"}]}})
    with pytest.raises(TopologyError, match="'ipv6' must be true"):
        load({**desc, "ipv6": "yes"})
    require_lab()
    with Lab(desc) as lab:
        r = lab.udp_stream("alice", "bob", ip=6, port=9998, count=10, rate=1000)
        assert r["received"] == 10
        r = lab.udp_stream("alice", "bob", ip=6, port=9999, count=10, rate=1000)
        assert r["received"] == 0                      # the description's ip6tables rule
        assert "--dport 9999 -j DROP" in lab.ip6tables_save("fw")


# ------------------------------------------------------------------ scripts on IPv6
def test_script_drops_exactly_the_ipv6_udp_it_picks(pair6):
    lab = pair6
    h = lab.attach(DROP_V6_9000, host="server", chain="INPUT", match="-p udp")
    assert h.info["ip"] == [4, 6]
    assert "NFQUEUE" in lab.ip6tables_save("server") and "NFQUEUE" in lab.iptables_save("server")
    rows = lab.traffic("udp client server:9000 ip=6 count=40 rate=400; "
                       "udp client server:9001 ip=6 count=30 rate=400; "
                       "udp client server:9000 count=20 rate=400")
    assert [r["flow"] for r in rows] == ["udp client → server:9000 ip=6",
                                        "udp client → server:9001 ip=6", "udp client → server:9000"]
    assert [(r["sent"], r["received"]) for r in rows] == [(40, 0), (30, 30), (20, 20)]
    s = settled(h)
    assert (s["seen"], s["dropped"], s["accepted"]) == (90, 40, 50)
    assert_accounted(s, 90)
    assert s["passed_unjudged"] == 0
    final = h.detach()
    assert_accounted(final, 90)
    assert "NFQUEUE" not in lab.ip6tables_save("server")
    # A match with IPv4 addresses cannot be an ip6tables rule: the error says what to do,
    # and nothing is left behind.
    with pytest.raises(LabError, match=r"(?s)not found.*attach with ip=4 or ip=6"):
        lab.attach(DROP_V6_9000, match="-p udp -d 10.77.0.2")
    assert "NFQUEUE" not in lab.iptables_save("server") + lab.ip6tables_save("server")
    assert lab.attach(DROP_V6_9000, match="-p udp -d 10.77.0.2", ip=4).info["ip"] == [4]


def test_rewritten_hop_limit_daddr_and_payload_reach_the_server(router6):
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    lab = router6
    h = lab.attach(REWRITE_V6, host="router", table="mangle", chain="PREROUTING",
                   match="-p udp -d fd77:0:2::100", ip=6)
    assert h.info["ip"] == [6]
    # A stream to an address nobody has arrives at the server's socket: the destination was
    # rewritten and the UDP checksum fixed (the server's kernel drops bad checksums).
    cap = lab.capture("server", bpf="ip6 and udp", timeout=3.0, count=21, wait=False)
    r = lab.udp_stream("client", "fd77:0:2::100", port=9000, rate=500, count=20, receiver="server")
    assert r["received"] == r["sent"] == 20
    sent = IPv6(dst="fd77:0:2::100", hlim=64, tc=0x20, fl=0x12345) / UDP(sport=5000, dport=9001) \
        / Raw(b"hello ipv6 world")
    assert lab.send("client", sent) == 1
    pkts = cap.packets()
    assert len(pkts) == 21
    for p in pkts:
        assert p.type == 0x86DD
        assert (p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == ("fd77:0:1::1", "fd77:0:2::2", 6)
    got = pkts[-1][IPv6]
    # Field by field against scapy's own packet with the same changes (checksum computed
    # by scapy): the router took one off the hop limit the script set.
    want = IPv6(bytes(IPv6(src="fd77:0:1::1", dst="fd77:0:2::2", hlim=6, tc=0x20, fl=0x12345)
                      / UDP(sport=5000, dport=9001) / Raw(b"HELLO IPV6 WORLD")))
    for layer in (IPv6, UDP):
        for name in [f.name for f in layer.fields_desc]:
            assert getattr(got[layer], name) == getattr(want[layer], name), name
    assert bytes(got) == bytes(want)
    s = settled(h)
    assert (s["seen"], s["continued"], s["modified"]) == (21, 21, 21)
    assert_accounted(s, 21)
    changed = h.recent(1)[0]["changed"]
    assert "ip6.daddr" in changed and "ip6.hop_limit" in changed


def test_ipv6_accounting_under_overload(pair6):
    """A slow script behind a short queue, an IPv6 burst, then both versions at once: what
    the queue could not hold passed unjudged, and the rule counters of iptables and
    ip6tables add up to every packet."""
    lab = pair6
    h = lab.attach(SLOW, host="server", match="-p udp --dport 9000", queue_len=32)
    burst = 1500
    assert lab.udp_blast("client", "server", ip=6, count=burst)["sent"] == burst
    s = settled(h)
    assert_accounted(s, burst)
    assert s["passed_unjudged"] > 0 and s["queue_drops"] == 0
    assert lab.udp_blast("client", "server", count=burst)["sent"] == burst
    s = settled(h)
    assert_accounted(s, 2 * burst)
    assert_accounted(h.detach(), 2 * burst)


def test_ipv6_only_rule_leaves_ipv4_alone(pair6):
    lab = pair6
    h = lab.attach(DROP_V6_9000.replace("udp and udp:dport():get() == 9000", "true"),
                   host="server", match="-p udp --dport 9000", ip=6)
    assert "NFQUEUE" not in lab.iptables_save("server")
    r4 = lab.udp_stream("client", "server", count=20, rate=1000)
    r6 = lab.udp_stream("client", "server", ip=6, count=20, rate=1000)
    assert (r4["received"], r6["received"]) == (20, 0)
    s = settled(h)
    assert (s["seen"], s["dropped"]) == (20, 20)
    assert_accounted(s, 20)


# ------------------------------------------------------------------ traffic language
def test_traffic_language_spells_ipv6():
    f, = parse_traffic("udp client server:9000 ip=6 count=3")
    assert (f.ip, str(f)) == (6, "udp client → server:9000 ip=6")
    f, = parse_traffic("udp client [fd77:0:2::100]:9000 to=server")
    assert (f.dst, f.port, f.ip, f.receiver) == ("fd77:0:2::100", 9000, 6, "server")
    f, = parse_traffic("ping client fd77::2")
    assert (f.dst, f.ip) == ("fd77::2", 6)
    with pytest.raises(TrafficError, match="not a lab address"):
        parse_traffic("udp client [2001:db8::1]:9000")
    with pytest.raises(TrafficError, match="IP version is 4 or 6"):
        parse_traffic("ping client server ip=5")
    with pytest.raises(TrafficError, match="is an IPv4 address"):
        parse_traffic("ping client 10.77.0.2 ip=6")


def test_replay_frames_of_ipv6_flows_carry_ipv6():
    """The same flows, built as frames for the replay backend, reach packet_ip6 with the
    hosts' dual-stack addresses and valid checksums."""
    from scapy.layers.inet import TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest
    from scapy.layers.l2 import Ether

    from kernel_magic.hosts import replay_hosts
    from packetscript_lab.backends.flow_frames import build_packets

    hosts = replay_hosts("router", ipv6=True)
    frames = build_packets(parse_traffic("udp client server:9000 ip=6 count=2; "
                                         "ping client server ip=6 count=1; "
                                         "tcp client server ip=6 connections=1"), hosts, 1.0)
    assert len(frames) == 7
    s = Script("function process_packet(p)\n local ip6 = p:data(packet_eth):data(packet_ip6)\n"
               " print(ip6:saddr():get() .. ' ' .. ip6:daddr():get() .. ' ' .. ip6:next_header():get())\n"
               " return NF_ACCEPT\nend\n")
    for _, frame in frames:
        assert s.run(frame).error is None
        pkt = Ether(frame)
        for layer, key in ((UDP, "chksum"), (TCP, "chksum"), (ICMPv6EchoRequest, "cksum")):
            if layer in pkt:
                again = Ether(frame)
                delattr(again[layer], key)
                assert getattr(Ether(bytes(again))[layer], key) == getattr(pkt[layer], key)
    assert sorted(set(s.output)) == ["fd77:0:1::1 fd77:0:2::2 17", "fd77:0:1::1 fd77:0:2::2 58",
                                     "fd77:0:1::1 fd77:0:2::2 6"]
    with pytest.raises(TrafficError, match=r"no IPv6 address; start the lab dual-stack"):
        build_packets(parse_traffic("udp client server ip=6"), replay_hosts("pair"), 1.0)


# ------------------------------------------------------------------ command line
def test_cli_run_ipv6(tmp_path):
    require_lab()
    script = tmp_path / "drop6.lua"
    script.write_text(DROP_V6_9000)
    res = cli("run", str(script), "--ipv6", "--match", "-p udp",
              "--traffic", "udp client server:9000 ip=6 count=30 rate=300; "
                           "udp client server:9000 count=10 rate=300", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [(r["sent"], r["received"]) for r in out["traffic"]] == [(30, 0), (10, 10)]
    s = out["stats"]
    assert (s["seen"], s["dropped"], s["rule_packets"]) == (40, 30, 40)


# ------------------------------------------------------------------ notebook magic
MAGIC_TRAFFIC = "udp client server:9000 ip=6 count=20 rate=100; udp client server:9000 count=10 rate=100"


@pytest.mark.parametrize("backend", ["nfqueue", "replay"])
def test_magic_up_ipv6_runs_ipv6_flows(monkeypatch, backend):
    """`%packetscript up --ipv6`, then a cell over IPv4 and IPv6 flows: live through NFQUEUE,
    and on the replay backend over the same flows made into frames."""
    import kernel_magic
    from IPython.utils.capture import capture_output
    from test_magic import get_shell

    if backend == "replay":
        monkeypatch.setenv("PACKETSCRIPT_BACKEND", "replay")
    else:
        require_lab()
        monkeypatch.delenv("PACKETSCRIPT_BACKEND", raising=False)
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)
    try:
        with capture_output() as cap:
            shell.run_line_magic("packetscript", "up --ipv6")
        assert "fd77::2" in cap.stdout
        s = kernel_magic.run(DROP_V6_9000, "drop6", duration=1.0, display=False,
                             traffic=MAGIC_TRAFFIC, match="-p udp")
        assert s.backend == backend
        assert (s.count("seen"), s.count("dropped"), s.count("accepted")) == (30, 20, 10)
    finally:
        kernel_magic.unload_ipython_extension(shell)


def test_cli_lab_up_ipv6_and_run_against_it(tmp_path):
    require_lab()
    name = f"v6test{os.getpid()}"
    script = tmp_path / "drop6.lua"
    script.write_text(DROP_V6_9000)
    up = cli("lab", "up", "--name", name, "--topology", "router", "--ipv6", "--json")
    try:
        assert up.returncode == 0, up.stderr
        hosts = json.loads(up.stdout)["hosts"]
        assert (hosts["server"]["ip6"], hosts["router"]["interfaces"][1]["ip6"]) == \
            ("fd77:0:2::2", "fd77:0:2::254")
        res = cli("run", str(script), "--lab", name, "--ipv6", "--ip", "6", "--match", "-p udp",
                  "--traffic", "ping client server ip=6 count=2 rate=20; "
                               "udp client server:9000 ip=6 count=15 rate=300", "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert [r["received"] for r in out["traffic"]] == [2, 0]
        assert (out["stats"]["seen"], out["stats"]["dropped"]) == (15, 15)
    finally:
        assert cli("lab", "down", "--name", name).returncode == 0
    plain = cli("lab", "up", "--name", name, "--json")
    try:
        res = cli("run", str(script), "--lab", name, "--ipv6", "--no-traffic", "--duration", "0.1")
        assert res.returncode == 2 and "is IPv4 only: start it with `packetscript lab up --ipv6`" \
            in res.stderr
    finally:
        assert plain.returncode == 0 and cli("lab", "down", "--name", name).returncode == 0
