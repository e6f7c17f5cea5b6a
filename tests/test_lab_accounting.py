"""Live lab: every packet that hits a script's queue rule is accounted for.

A deliberately slow script (a legal busy loop, well under the step budget) behind a short
queue meets a bounded UDP burst: the queue overflows, and the packets it could not hold
must show up as passed unjudged (fail open) or as kernel drops (fail closed), so that
rule_packets == judged + passed_unjudged + queue_drops once the queue is empty.
"""
from __future__ import annotations

import time

import pytest
from labutil import ACCEPT_ALL, SLOW, assert_accounted, pair_lab, settled  # noqa: F401

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

BURST = 3000


def test_fail_open_counts_the_packets_that_passed_unjudged(pair_lab):
    lab = pair_lab
    h = lab.attach(SLOW, host="server", match="-p udp --dport 9000", on_overload="accept",
                   queue_len=32)
    sent = lab.udp_blast("client", "server", port=9000, count=BURST)["sent"]
    assert sent == BURST
    s = settled(h)
    assert_accounted(s, BURST)
    assert s["passed_unjudged"] > 0 and s["queue_drops"] == 0
    assert s["judged"] == s["seen"] == s["accepted"]
    # The samples streamed from the lab carry the same keys.
    end = time.monotonic() + 10
    while not (h.series() and h.series()[-1]["rule_packets"] == BURST):
        assert time.monotonic() < end, h.series()[-1:]
        time.sleep(0.1)
    assert h.series()[-1]["passed_unjudged"] == s["passed_unjudged"]
    final = h.detach()
    assert_accounted(final, BURST)
    assert final["passed_unjudged"] == s["passed_unjudged"]


def test_fail_closed_counts_the_kernel_drops(pair_lab):
    lab = pair_lab
    h = lab.attach(SLOW, host="server", match="-p udp --dport 9000", on_overload="drop",
                   queue_len=32)
    lab.udp_blast("client", "server", port=9000, count=BURST)
    s = settled(h)
    assert_accounted(s, BURST)
    assert s["queue_drops"] > 0 and s["passed_unjudged"] == 0
    # The drops stay in the totals after detach, when the queue itself is gone.
    final = h.detach()
    assert_accounted(final, BURST)
    assert final["queue_drops"] == s["queue_drops"]


def test_a_judge_that_keeps_up_leaves_nothing_unjudged(pair_lab):
    lab = pair_lab
    h = lab.attach(ACCEPT_ALL, host="server", match="-p udp --dport 9000")
    r = lab.udp_stream("client", "server", port=9000, rate=500, count=200)
    assert r["received"] == r["sent"] == 200
    s = settled(h)
    assert_accounted(s, 200)
    assert s["judged"] == 200 and s["passed_unjudged"] == s["queue_drops"] == 0


def test_totals_survive_a_hot_swap_and_detach(pair_lab):
    lab = pair_lab
    h = lab.attach(SLOW, host="server", match="-p udp --dport 9000", on_overload="accept",
                   queue_len=32)
    lab.udp_blast("client", "server", port=9000, count=BURST)
    first = settled(h)
    h.replace(SLOW.replace("NF_ACCEPT", "NF_DROP"))
    lab.udp_blast("client", "server", port=9000, count=BURST)
    second = settled(h)
    assert_accounted(second, 2 * BURST)
    assert second["passed_unjudged"] > first["passed_unjudged"] > 0
    assert second["dropped"] > 0 and second["accepted"] == first["accepted"]
    final = h.detach()
    assert_accounted(final, 2 * BURST)
    assert h.stats() == final
    # A script attached afterwards reuses the queue number and starts from zero.
    again = lab.attach(ACCEPT_ALL, host="server", match="-p udp --dport 9000")
    lab.udp_stream("client", "server", port=9000, rate=500, count=50)
    assert_accounted(settled(again), 50)


def test_queue_len_is_checked(pair_lab):
    with pytest.raises(ValueError, match="queue_len"):
        pair_lab.attach(ACCEPT_ALL, host="server", queue_len=0)


def test_detach_during_a_backlog_still_accounts_for_every_packet(pair_lab):
    lab = pair_lab
    h = lab.attach(SLOW, host="server", match="-p udp --dport 9000", on_overload="drop",
                   queue_len=512)
    lab.udp_blast("client", "server", port=9000, count=BURST)
    final = h.detach()                       # at once: the queue still holds packets
    assert_accounted(final, BURST)
    assert final["in_flight"] == 0 and final["judged"] >= 1
    assert final["queue_drops"] == BURST - final["judged"]
