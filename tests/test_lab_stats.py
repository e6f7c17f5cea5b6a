"""The ring of recent packets keeps the newest ones, whole batches at a time."""
from packetscript_lab.runs import Recent
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

ETH = bytes(Ether(src="02:77:00:00:00:01", dst="02:77:00:00:00:02", type=0x0800))[:14]


def packet(i: int) -> bytes:
    return bytes(IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=1000 + i, dport=9000))


def test_recent_keeps_the_newest_packets_in_order():
    r = Recent(size=5)
    for start in (0, 3, 6):                     # three batches of three packets
        ps = [packet(i) for i in range(start, start + 3)]
        r.add_batch(float(start), ps, [None] * 3, ["accept"] * 3, {}, [ETH] * 3)
    entries = r.entries()
    assert [e["summary"].split(":")[1].split()[0] for e in entries] == ["1004", "1005", "1006", "1007", "1008"]
    assert len(r.entries(limit=2)) == 2 and r.entries(limit=2)[-1] == entries[-1]


def test_recent_shows_changed_fields_and_errors_of_their_packet():
    r = Recent(size=10)
    before = packet(1)
    after = bytes(IP(src="10.77.0.1", dst="10.77.0.9") / UDP(sport=1001, dport=9000))
    r.add_batch(1.0, [before, packet(2)], [after, None], ["continue", "drop"], {1: "line 3: boom"},
                [ETH, ETH])
    first, second = r.entries()
    assert first["verdict"] == "continue" and "ip.daddr" in first["changed"] and first["error"] is None
    assert second["verdict"] == "drop" and second["changed"] == [] and second["error"] == "line 3: boom"
