"""XT_CONTINUE in the live lab: the rules after the script decide; when none follows in an
accepting chain, going on is accepting and the kernel does not traverse the chain again.

Observed with a counting rule placed before the script: NF_REPEAT makes it see each
packet twice, NF_ACCEPT once."""
import re

from labutil import CONTINUE_ALL, pair_lab  # noqa: F401  (fixture)

COUNTER = "-I INPUT 1 -p udp --dport 9000 -m comment --comment before-script"


def before_count(lab) -> int:
    out = lab.iptables("server", "-L INPUT -n -v -x")
    line = next(ln for ln in out.splitlines() if "before-script" in ln)
    return int(line.split()[0])


def test_continue_at_the_end_of_an_accepting_chain_is_accept(pair_lab):
    lab = pair_lab
    h = lab.attach(CONTINUE_ALL, host="server", chain="INPUT", match="-p udp --dport 9000")
    lab.iptables("server", COUNTER)          # a rule before the script's
    r = lab.udp_stream("client", "server", rate=500, duration=0.2)
    assert r["received"] == r["sent"] == 100
    assert before_count(lab) == 100          # each packet once: no second traversal
    assert h.stats()["continued"] == 100


def test_a_rule_after_the_script_decides_and_the_chain_is_traversed_again(pair_lab):
    lab = pair_lab
    h = lab.attach(CONTINUE_ALL, host="server", chain="INPUT", match="-p udp --dport 9000")
    lab.iptables("server", COUNTER)
    lab.iptables("server", "-A INPUT -p udp --dport 9000 -j DROP")
    r = lab.udp_stream("client", "server", rate=500, duration=0.2)
    assert r["received"] == 0                 # the DROP after the script decided
    assert before_count(lab) == 200           # NF_REPEAT: the rule before saw each twice
    assert h.stats()["continued"] == 100      # the script judged each packet once

    lab.iptables("server", "-D INPUT -p udp --dport 9000 -j DROP")
    r = lab.udp_stream("client", "server", rate=500, duration=0.2)
    assert r["received"] == 100 and before_count(lab) == 300


def test_a_drop_policy_keeps_the_second_traversal(pair_lab):
    lab = pair_lab
    lab.iptables("server", "-A INPUT -p udp --dport 9001 -j ACCEPT")   # other traffic
    h = lab.attach(CONTINUE_ALL, host="server", chain="INPUT", match="-p udp --dport 9000")
    lab.iptables("server", COUNTER)
    lab.iptables("server", "-P INPUT DROP")
    r = lab.udp_stream("client", "server", rate=500, duration=0.2)
    assert r["received"] == 0 and before_count(lab) == 200
    assert re.search(r"policy DROP", lab.iptables("server", "-L INPUT -n"))
    assert h.stats()["continued"] == 100
