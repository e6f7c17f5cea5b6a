"""queues=N in the live lab: one rule balanced over N queues (--queue-balance), one worker
and one copy of the script per queue, counted, replaced and detached as one run."""
from __future__ import annotations

import pytest
import json

from labutil import CONTINUE_ALL, cli, pair_lab, require_lab, wait_until  # noqa: F401
from packetscript_lab.lab.errors import LabError

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

SOURCES = [f"10.77.0.{i}" for i in range(100, 116)]   # 16 address pairs: both queues get some

ACCEPT = """
function process_packet(p)
  return NF_ACCEPT
end
"""

# A global counts this copy's packets; the error names the sender, so each worker's
# errors are told apart.
FAIL_BY_SOURCE = """
n = 0
function process_packet(p)
  n = n + 1
  print(n)
  local ip = p:data(packet_eth):data(packet_ip)
  error("from " .. ip:saddr():get())
end
"""


def _flows(per_source: int = 5):
    from scapy.layers.inet import IP, UDP
    return [IP(src=src, dst="10.77.0.2") / UDP(sport=4000 + i, dport=9000)
            for src in SOURCES for i in range(per_source)]


def _settled(h, total):
    return wait_until(lambda: (lambda s: s if s["rule_packets"] == total and s["in_flight"] == 0
                               and s["judged"] == total else None)(h.stats()),
                      what=f"{total} packets judged")


def test_two_queues_share_the_rule_and_count_as_one_run(pair_lab):
    lab = pair_lab
    h = lab.attach(ACCEPT, host="server", queues=2)
    assert h.info["queues"] == [0, 1]
    rules = lab.iptables("server", "-S INPUT")
    assert "--queue-balance 0:1" in rules and "--queue-cpu-fanout" not in rules
    sent = lab.send("client", _flows())
    s = _settled(h, sent)
    assert s["seen"] == s["accepted"] == sent == len(SOURCES) * 5
    assert s["passed_unjudged"] == 0 and s["queue_drops"] == 0
    assert s["queued_total"] == sent                       # both queues' counters, summed
    assert sum(s["by_queue"].values()) == sent
    assert all(n > 0 for n in s["by_queue"].values()), s["by_queue"]
    assert len(h.recent()) == sent                         # recent packets of both workers

    r = lab.udp_stream("client", "server", rate=500, duration=0.2)
    assert r["received"] == r["sent"]
    _settled(h, sent + r["sent"])


def test_a_global_is_per_queue_and_errors_of_both_workers_show(pair_lab):
    lab = pair_lab
    h = lab.attach(FAIL_BY_SOURCE, host="server", queues=2, on_error="accept")
    sent = lab.send("client", _flows(per_source=3))
    s = _settled(h, sent)
    errors = h.errors()
    assert sum(e["count"] for e in errors) == sent == s["errors"]
    assert {e["message"].split("from ")[-1] for e in errors} == set(SOURCES)
    assert all(n > 0 for n in s["by_queue"].values())
    # Each copy counted only its own queue's packets.
    assert max(int(line.split()[-1]) for line in h.output()) == max(s["by_queue"].values()) < sent


def test_replace_swaps_every_copy_and_detach_frees_every_queue(pair_lab):
    lab = pair_lab
    h = lab.attach(ACCEPT, host="server", queues=2)
    h.replace(ACCEPT.replace("NF_ACCEPT", "NF_DROP"))
    sent = lab.send("client", _flows())
    s = _settled(h, sent)
    assert s["dropped"] == sent and all(n > 0 for n in s["by_queue"].values())
    final = h.detach()
    assert final["judged"] == sent and final["rule_packets"] == sent
    assert "NFQUEUE" not in lab.iptables("server", "-S INPUT")
    # Every queue is free again: sixteen single-queue scripts fit.
    hs = [lab.attach(ACCEPT, host="server", name=f"s{i}", worker="python") for i in range(16)]
    assert sorted(x.info["queue"] for x in hs) == list(range(16))


def test_continue_goes_on_to_the_next_rule_from_either_queue(pair_lab):
    lab = pair_lab
    h = lab.attach(CONTINUE_ALL, host="server", queues=2)
    lab.iptables("server", "-A INPUT -p udp --dport 9000 -j DROP")
    sent = lab.send("client", _flows())
    s = _settled(h, sent)
    assert s["continued"] == sent and all(n > 0 for n in s["by_queue"].values())
    dropped = lab.iptables("server", "-L INPUT -n -v -x").splitlines()[-1]
    assert dropped.split()[0] == str(sent)      # each packet reached the DROP once


@pytest.mark.parametrize("queues", [0, 17, True, "2"])
def test_a_bad_number_of_queues_is_refused(pair_lab, queues):
    with pytest.raises(ValueError, match="queues must be a whole number of queues from 1 to 16"):
        pair_lab.attach(ACCEPT, host="server", queues=queues)
    assert "NFQUEUE" not in pair_lab.iptables("server", "-S INPUT")


def test_more_queues_than_are_free_is_refused(pair_lab):
    lab = pair_lab
    lab.attach(ACCEPT, host="server", name="wide", queues=15, worker="python")
    with pytest.raises(LabError, match="no 2 consecutive free queues"):
        lab.attach(ACCEPT, host="server", queues=2)
    assert lab.attach(ACCEPT, host="server", name="one").info["queue"] == 15


def test_the_command_line_spreads_a_run_over_queues(tmp_path):
    require_lab()
    script = tmp_path / "accept.lua"
    script.write_text(ACCEPT)
    res = cli("run", str(script), "--queues", "2", "--traffic",
              "udp client server:9000 rate=200 duration=0.5", "--json")
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)["stats"]
    # One address pair: the kernel's flow hash sends the whole conversation to one queue.
    assert stats["seen"] == stats["accepted"] == 100
    assert sorted(stats["by_queue"].values()) == [0, 100]
    res = cli("run", str(script), "--queues", "17")
    assert res.returncode == 2 and "queues must be a whole number of queues from 1 to 16" in res.stderr
