"""core/results.py: one name and one bit for each thing a result code says, the same in Lua
(through the runner's configuration) and in Python, on the one-packet and the batch paths."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from packetscript_lab import Judge, Script
from packetscript_lab.core import results

PACKET = bytes(IP(src="10.77.0.1", dst="10.77.0.2", ttl=64) / UDP(dport=9) / Raw(b"hi"))
SCRIPTS = {
    "prints": 'function process_packet(p) print("seen") return NF_ACCEPT end',
    "prints and changes": """function process_packet(p)
  print("seen"); p:data(packet_eth):data(packet_ip):ttl():set(7) return NF_ACCEPT end""",
    "changes the Ethernet header": """function process_packet(p)
  p:data(packet_eth):smac():set(1) return XT_CONTINUE end""",
    "fails": "function process_packet(p) error('no') end",
}


def test_every_flag_has_its_own_bit_above_the_verdict():
    flags = list(results.FLAGS.values())
    assert len(set(flags)) == len(flags)
    assert all(f & (f - 1) == 0 and f > results.VERDICT for f in flags)
    assert max(flags) < results.CODES <= 256          # a code is one byte
    assert results.lua_table()["verdict"] == results.VERDICT


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_one_packet_and_batch_paths_give_the_same_named_code(name):
    """Printing and changing the IP packet were one bit apart only by path; now a script
    that prints is never taken for one that changed the packet, and both paths agree."""
    script = Script(SCRIPTS[name])
    code, data = script.judge_ip(PACKET)
    assert not code & results.PRINTED, "judge_ip reads the printed lines, it does not pass the bit on"
    assert bool(code & results.CHANGED) == (data is not None) == (name == "prints and changes")
    assert bool(code & results.BODY_CHANGED) == (name == "prints and changes")
    assert bool(code & results.ETH_CHANGED) == (name == "changes the Ethernet header")
    assert bool(code & results.FAILED) == (name == "fails")
    assert script.output == (["seen"] if name.startswith("prints") else [])
    with Judge(SCRIPTS[name]) as judge:
        assert judge.judge_ip(PACKET) == (code, data)
    codes, _blob, _errors = script.run_many([script.eth_header + PACKET] * 2)
    assert [c & ~results.CHANGED for c in codes] == [code & ~results.CHANGED] * 2
