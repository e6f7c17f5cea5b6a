"""The second line of defence: a wall-clock limit enforced from outside the Lua state.

Each hostile script below gets past the step budget (the time goes into C functions, or
the process dies) on the packets sent to UDP port 6666, and behaves on all others: it
rewrites their destination to 10.77.2.1 and accepts them. The packet that overran must get
the error verdict with a counted error, and the packets after it must be judged as usual,
by a fresh copy of the script. Real processes, real Lua runtimes.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

from packetscript_lab import Judge, ScriptError, replay
from packetscript_lab.cli import main

RUNTIMES = ["luajit", "5.1", "5.4"]

BEHAVE = """
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  local udp = ip and ip:data(packet_udp)
  if udp and udp:dport():get() == 6666 then
    %s
  end
  if ip then ip:daddr():set("10.77.2.1") end
  return NF_ACCEPT
end
"""

HOSTILE = {
    # Backtracking in the pattern matcher: each '.-' tries every length.
    "find-backtracking": "local s = string.rep('a', 3000); string.find(s, string.rep('a*', 12) .. 'b')",
    "match-dot-dash": "string.match(string.rep('x', 2000), ('.-'):rep(8) .. 'b')",
    "gsub-backtracking": "string.gsub(string.rep('ab', 1500), '(.-)(.-)(.-)(.-)(.-)c', '%1')",
}

# table.sort of a huge table: built by the top level (a few loop steps each), sorted in C.
SORT = """
big = {}
for i = 1, 3000000 do big[i] = (i * 7919) % 1000003 end
""" + BEHAVE % "table.sort(big); table.sort(big, function(a, b) return a > b end)"


def frames(ports):
    return [bytes(Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=4000, dport=p) / Raw(b"x" * 40))
            for p in ports]


def rewritten(frame: bytes) -> bytes:
    """What the script makes of a packet it accepts (checksums fixed, as the engine does)."""
    pkt = Ether(frame)
    pkt[IP].dst = "10.77.2.1"
    del pkt[IP].chksum
    del pkt[UDP].chksum
    return bytes(pkt)


def assert_judged(codes, blob, errors, packets, bad: set, why: str):
    """Every packet but the bad ones accepted and rewritten; the bad ones dropped with `why`."""
    at = 0
    for i, frame in enumerate(packets):
        out = blob[at:at + len(frame)] if blob is not None else frame
        at += len(frame)
        if i in bad:
            assert codes[i] == 8, (i, codes[i])           # drop (on_error) + failed
            assert why in errors[i].message, errors[i].message
            assert "restarted with fresh state" in errors[i].message
            assert out == frame
        else:
            assert codes[i] & 3 == 1 and codes[i] & 8 == 0, (i, codes[i], errors.get(i))
            assert out == rewritten(frame), i


@pytest.mark.parametrize("lua", RUNTIMES)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_c_function_that_runs_too_long_costs_one_packet(kind, lua):
    packets = frames([9000] * 5 + [6666] + [9000] * 5)
    with Judge(BEHAVE % HOSTILE[kind], lua=lua, name="hostile") as judge:
        started = time.monotonic()
        codes, blob, errors = judge.run_many(packets, [1000.0] * len(packets))
        took = time.monotonic() - started
        assert_judged(codes, blob, errors, packets, {5}, "time limit of 250 ms exceeded on one packet")
        assert set(errors) == {5}
        assert judge.error_count == 1 and judge.timeouts == 1 and judge.restarts == 2
        assert judge.crashes == 0 and judge.unjudged == 0
        # bounded: these patterns would run for hours; a packet's limit and two restarts
        # take a second or two (more while both cores are busy)
        assert took < 20, took
        # The fresh copy goes on judging, one packet at a time too.
        after = frames([9000, 9001])
        codes, blob, errors = judge.run_many(after)
        assert_judged(codes, blob, errors, after, set(), "")
        result = judge.run(frames([6666])[0])
        assert result.verdict == "drop" and "time limit" in str(result.error)
        assert judge.run(after[0]).data == rewritten(after[0])


@pytest.mark.parametrize("lua", RUNTIMES)
def test_sort_of_a_huge_table_is_cut_off(lua):
    packets = frames([9000, 6666, 9000])
    with Judge(SORT, lua=lua, budget=10_000_000, max_memory=None) as judge:
        codes, blob, errors = judge.run_many(packets)
        assert_judged(codes, blob, errors, packets, {1}, "time limit of 250 ms exceeded")
        assert judge.timeouts == 1 and judge.restarts >= 1


@pytest.mark.parametrize("lua", RUNTIMES)
def test_top_level_that_hangs_in_c_fails_to_compile(lua):
    source = "string.find(string.rep('a', 3000), string.rep('a*', 12) .. 'b')\n" + BEHAVE % ""
    started = time.monotonic()
    with pytest.raises(ScriptError, match="top level ran past the time limit of 1 s") as exc:
        Judge(source, lua=lua, name="slow.lua", batch_time_limit=1.0)
    assert exc.value.name == "slow.lua"
    assert time.monotonic() - started < 5


def test_compile_errors_read_as_scripts_own():
    with pytest.raises(ScriptError) as exc:
        Judge("function process_packet(p)\n  return +\nend\n", name="bad.lua")
    assert exc.value.name == "bad.lua" and exc.value.line == 2
    with pytest.raises(ValueError, match="unknown Lua runtime"):
        Judge(BEHAVE % "", lua="lua9")
    with pytest.raises(ValueError, match="time_limit"):
        Judge(BEHAVE % "", time_limit=0)


def test_allocation_storm_under_the_address_space_backstop():
    """No max_memory: the child's address-space limit stops the storm (as a Lua memory
    error, a time-out or the child's death); the next packets are judged."""
    storm = "local t = {} for i = 1, 400 do t[i] = string.rep('x', 1e6) .. i end"
    packets = frames([9000, 6666, 9000, 9000])
    with Judge(BEHAVE % storm, max_memory=None, memory_limit=100 << 20) as judge:
        codes, blob, errors = judge.run_many(packets)
        assert codes[1] == 8 and set(errors) == {1}
        assert codes[0] & 3 == codes[2] & 3 == codes[3] & 3 == 1
        assert blob[-len(packets[3]):] == rewritten(packets[3])


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def test_child_killed_mid_batch():
    """An out-of-memory killer (here a thread) SIGKILLs the script's process whenever it
    grows past 150 MB, which the packets to port 6666 make it do. Each such packet gets
    the error verdict; the others are judged, before and after, in the same call."""
    grow = ("local t = {} for i = 1, 300 do t[i] = string.rep('x', 1e6) .. i end "
            "string.find(string.rep('a', 3000), string.rep('a*', 12) .. 'b')")
    packets = frames([9000, 9000, 6666, 9000, 6666, 9000])
    stop, kills = threading.Event(), []

    def killer(judge):
        while not stop.is_set():
            pid = judge.pid
            if pid and _rss(pid) > 150 << 20:
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
            time.sleep(0.002)

    with Judge(BEHAVE % grow, max_memory=None, time_limit=5.0, batch_time_limit=20.0) as judge:
        watcher = threading.Thread(target=killer, args=(judge,), daemon=True)
        watcher.start()
        try:
            codes, blob, errors = judge.run_many(packets)
        finally:
            stop.set()
            watcher.join()
        assert len(kills) >= 2
        assert_judged(codes, blob, errors, packets, {2, 4}, "process died on this packet (killed by SIGKILL")
        assert judge.crashes == 2 and judge.restarts >= 2 and judge.timeouts == 0
        assert judge.run(packets[0]).data == rewritten(packets[0])


def test_output_errors_and_counts_outlast_restarts():
    source = "seen = 0\n" + (BEHAVE % HOSTILE["match-dot-dash"]).replace(
        "local ip =", "seen = seen + 1; print('seen ' .. seen)\n  local ip =")
    with Judge(source) as judge:
        for _ in range(3):
            judge.run_many(frames([9000, 6666]))
        # What a killed process printed is lost with it; the re-runs' prints are kept, and
        # each fresh process starts the script's state again (seen = 0).
        assert judge.output == ["seen 1"] * 3
        assert judge.error_count == 3 and judge.errors[0].count == 3
        assert judge.timeouts == 3
        judge.close()
        assert judge.error_count == 3 and judge.counts()["timeouts"] == 3
        # After close every packet gets the error verdict, counted, and nothing is run.
        codes, _, errors = judge.run_many(frames([9000]))
        assert codes == b"\x08" and "closed" in errors[0].message and judge.unjudged == 1


def test_batch_time_limit_bounds_a_script_that_hangs_on_every_packet():
    packets = frames([6666] * 40)
    with Judge(BEHAVE % HOSTILE["match-dot-dash"], time_limit=0.1, batch_time_limit=0.6) as judge:
        started = time.monotonic()
        codes, _, errors = judge.run_many(packets)
        took = time.monotonic() - started
        assert codes == b"\x08" * 40 and len(errors) == 40
        assert judge.unjudged > 0 and judge.unjudged + judge.timeouts == 40
        assert any("not judged: the batch ran past its time limit" in e.message for e in judge.errors)
        assert took < 5, took
        # A good packet afterwards is still judged.
        assert judge.run(frames([9000])[0]).verdict == "accept"


def test_process_goes_with_the_judge():
    judge = Judge(BEHAVE % "")
    pid = judge.pid
    assert os.path.exists(f"/proc/{pid}")
    judge.close()
    assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid)


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except OSError:
        return True


# ---------------------------------------------------------------------- replay and its CLI
@pytest.mark.parametrize("lua", RUNTIMES)
def test_replay_counts_the_packet_that_overran(tmp_path, lua):
    packets = frames([9000] * 3 + [6666] + [9000] * 3)
    pcap = tmp_path / "in.pcap"
    wrpcap(str(pcap), [Ether(f) for f in packets])
    result = replay(BEHAVE % HOSTILE["find-backtracking"], str(pcap), lua=lua, name="hostile")
    assert result.packets == 7 and result.errors == 1
    assert result.verdicts == {"accept": 6, "drop": 1, "continue": 0}
    assert result.timeouts == 1 and result.restarts == 2 and result.crashes == 0
    assert [bytes(p) for p in result.output] == [rewritten(f) for i, f in enumerate(packets) if i != 3]
    assert "time limit of 250 ms exceeded" in result.script_errors[0].message
    assert result.as_dict()["timeouts"] == result.timeouts
    assert result.script.pid is None                     # replay() closed the judge it made


def test_cli_replay_reports_the_time_limit(tmp_path, capsys):
    packets = frames([9000, 6666, 9000])
    pcap, out, script = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "hostile.lua"
    wrpcap(str(pcap), [Ether(f) for f in packets])
    script.write_text(BEHAVE % HOSTILE["match-dot-dash"])
    assert main(["replay", str(script), str(pcap), "--out", str(out), "--time-limit", "0.2"]) == 0
    text = capsys.readouterr().out
    assert "accept 2   drop 1" in text and "errors 1" in text
    assert f"{script}:?: time limit of 200 ms exceeded on one packet" in text
    assert ("watchdog: 1 packets ran past the time limit, 0 killed the script's process, "
            "0 were not judged; the script restarted 2 times with fresh state") in text
    assert [bytes(p) for p in rdpcap(str(out))] == [rewritten(packets[0]), rewritten(packets[2])]


def test_cli_replay_top_level_hang_is_an_error(tmp_path, capsys):
    pcap, script = tmp_path / "in.pcap", tmp_path / "slow.lua"
    wrpcap(str(pcap), [Ether(f) for f in frames([9000])])
    script.write_text("string.match(string.rep('x', 2000), ('.-'):rep(8) .. 'b')\n" + BEHAVE % "")
    status = main(["replay", str(script), str(pcap), "--batch-time-limit", "0.5"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"{script}: the top level ran past the time limit of 500 ms" in err


def test_replay_reads_ahead_and_still_blames_the_right_packet():
    """replay() hands a batch to the judge and reads the next meanwhile (submit/collect):
    a hang in the second batch costs that packet only, and the order of results holds."""
    ports = [9000 + i % 7 for i in range(5000)]
    ports[4500] = 6666
    distinct = sorted(set(ports))
    made = dict(zip(distinct, frames(distinct)))      # scapy is slow: build each frame once
    after = {port: rewritten(frame) for port, frame in made.items()}
    packets = [made[p] for p in ports]
    with Judge(BEHAVE % HOSTILE["match-dot-dash"]) as judge:
        result = replay(judge, packets)
        assert result.packets == 5000 and result.errors == 1 and result.timeouts == 1
        assert result.verdicts == {"accept": 4999, "drop": 1, "continue": 0}
        expected = [after[p] for i, p in enumerate(ports) if i != 4500]
        assert result.output == expected
        # One batch at a time through submit/collect.
        judge.submit(packets[:3])
        with pytest.raises(RuntimeError, match="collect"):
            judge.submit(packets[:3])
        codes, blob, errors = judge.collect()
        assert [c & 7 for c in codes] == [5, 5, 5] and not errors


def test_cli_check_top_level_hang_is_a_compile_error(tmp_path, capsys):
    from packetscript_lab.cli.check import EXIT_COMPILE

    script = tmp_path / "slow.lua"
    script.write_text("string.find(string.rep('a', 3000), string.rep('a*', 12) .. 'b')\n" + BEHAVE % "")
    started = time.monotonic()
    assert main(["check", str(script)]) == EXIT_COMPILE
    assert f"{script}: the top level ran past the time limit of 3 s" in capsys.readouterr().err
    assert time.monotonic() - started < 10


def test_script_process_does_not_outlive_a_killed_parent():
    """Even a parent killed with SIGKILL (no clean-up runs) leaves no script process behind,
    however long its script would still run."""
    import subprocess
    import sys

    code = ("from packetscript_lab import Judge\n"
            f"j = Judge({BEHAVE % HOSTILE['match-dot-dash']!r}, time_limit=60, batch_time_limit=60)\n"
            "print(j.pid, flush=True)\n"
            f"j.submit([{frames([6666])[0]!r}])\n"
            "print('submitted', flush=True)\nimport signal\nsignal.pause()\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "submitted"
        assert _rss(pid) > 0                          # the child is busy in string.match
    finally:
        parent.kill()
        parent.wait()
    end = time.monotonic() + 10
    while time.monotonic() < end and not _zombie_or_gone(pid):
        time.sleep(0.02)
    assert _zombie_or_gone(pid)
