"""Conformance: the same packets through several backends, and the packets where they differ."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from packetscript_lab.conformance import compare

SCRIPT = """function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  local udp = ip:data(packet_udp)
  if udp and udp:dport():get() == 53 then return NF_DROP end
  if udp then ip:ttl():set(ip:ttl():get() / 2) end
  if ip:protocol():get() == 1 then return NF_ACCEPT end
  return XT_CONTINUE
end
"""


def packets():
    return [IP(ttl=9) / UDP(dport=9000) / b"a", IP() / UDP(dport=53) / b"b",
            IP(ttl=64) / TCP(dport=80), IP() / ICMP()]


# --- without a lab --------------------------------------------------------------------------

def test_replay_and_faithful_differ_only_where_the_kernel_would():
    res = compare(SCRIPT, packets(), backends=("replay", "faithful"))
    assert [r.outcomes["replay"].verdict for r in res.rows] == ["continue", "drop", "continue",
                                                               "accept"]
    assert [r.index for r in res.differences] == [0]
    (row,) = res.differences
    # ttl 9 / 2 is 4 either way; only the lab fixes the IP checksum afterwards
    assert row.outcomes["replay"].data[8] == row.outcomes["faithful"].data[8] == 4
    assert row.reasons == ["bytes replay≠faithful (ip.check)"]
    text = str(res)
    assert "1 of 4 packet(s) differ" in text and "ip.check" in text
    assert "<table>" in res._repr_html_()


def test_ethernet_frames_and_pcaps_are_accepted(tmp_path):
    from scapy.utils import wrpcap
    path = tmp_path / "in.pcap"
    wrpcap(str(path), [Ether() / p for p in packets()])
    res = compare(SCRIPT, str(path), backends=("replay",))
    assert len(res.rows) == 4 and res.ok


def test_non_ipv4_and_unknown_backends_are_refused():
    with pytest.raises(ValueError, match="IPv4"):
        compare(SCRIPT, [Ether(type=0x0806) / (b"\x00" * 28)], backends=("replay",))
    with pytest.raises(ValueError, match="backend"):
        compare(SCRIPT, packets(), backends=("replay", "ebpf"))


# --- replay against NFQUEUE in a real lab -----------------------------------------------------

from labutil import pair_lab  # noqa: E402,F401  (fixture)


@pytest.mark.lab
def test_replay_and_nfqueue_agree_packet_by_packet(pair_lab):
    res = compare(SCRIPT, packets(), backends=("replay", "nfqueue"), lab=pair_lab)
    assert res.differences == [], str(res)
    nfq = [r.outcomes["nfqueue"] for r in res.rows]
    assert [o.verdict for o in nfq] == ["continue", "drop", "continue", "accept"]
    assert nfq[0].data[8] == 4 and nfq[1].data is None      # rewritten on the wire / dropped


@pytest.mark.lab
def test_a_difference_between_replay_and_the_live_path_is_shown(pair_lab):
    # Sent through the client's stack, an IP id of 0 is filled in by the kernel before the
    # hook, so the live script never sees 0 while replay does: the rows say so.
    src = """function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if ip:id():get() == 0 then return NF_DROP end
  return NF_ACCEPT
end
"""
    client, server = pair_lab.hosts["client"].ip, pair_lab.hosts["server"].ip
    pkts = [IP(src=client, dst=server, id=0) / UDP(dport=9000) / b"x",
            IP(src=client, dst=server, id=7) / UDP(dport=9000) / b"y"]
    res = compare(src, pkts, backends=("replay", "nfqueue"), lab=pair_lab, readdress=False)
    assert [r.index for r in res.differences] == [0]
    assert res.differences[0].reasons == ["verdict replay=drop nfqueue=accept"]
    assert res.rows[1].outcomes["nfqueue"].data == bytes(pkts[1])


@pytest.mark.lab
def test_kernel_backend_is_listed_as_unavailable_with_the_reason(pair_lab):
    res = compare(SCRIPT, packets()[:1], backends=("replay", "nfqueue", "kernel"), lab=pair_lab)
    assert "kernel" in res.unavailable and "nfqueue" not in res.unavailable
    assert "kernel: not run:" in str(res)
    assert res.ok
