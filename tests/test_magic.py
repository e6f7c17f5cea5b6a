"""The %%packetscript magic through a real IPython shell, real Lua, on the replay backend.

Nothing here needs privileges: PACKETSCRIPT_BACKEND=replay makes the magic skip the lab,
as on Binder. The live lab is exercised in test_magic_lab.py.
"""
from __future__ import annotations

import os
import re
import time

import pytest
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

import kernel_magic
from packetscript_lab.examples import dnat

DROP_UDP = """\
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return NF_ACCEPT end
  if ip:protocol():get() == 17 then return NF_DROP end
  return NF_ACCEPT
end
"""

ACCEPT_ALL = """\
function process_packet(p)
  return NF_ACCEPT
end
"""

DNAT = dnat("10.77.0.9")


def get_shell():
    """IPython's test shell (start_ipython() returns it only the first time)."""
    from IPython.core.interactiveshell import InteractiveShell
    return start_ipython() or InteractiveShell.instance()


@pytest.fixture
def ip(monkeypatch):
    monkeypatch.setenv("PACKETSCRIPT_BACKEND", "replay")
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)   # a fresh session for every test
    yield shell
    kernel_magic.unload_ipython_extension(shell)


def cell(ip, line, body):
    with capture_output() as cap:
        ip.run_cell_magic("packetscript", line, body)
    return cap


def summary_of(cap):
    """The counters of the summary table written at the end of a run, as a dict."""
    texts = [o.data.get("text/plain", "") for o in cap.outputs]
    for text in texts:
        m = re.search(r"packetscript '(\S+)' on (\w+), [\d.]+ s: (.*)", text)
        if m:
            counts = dict((k, int(v)) for k, v in re.findall(r"(\w+) (\d+)", m.group(3)))
            return {"name": m.group(1), "backend": m.group(2), **counts}
    raise AssertionError(f"no summary among the outputs: {texts}")


def pngs(cap):
    return [o for o in cap.outputs if "image/png" in o.data]


def test_duration_run_writes_figure_and_summary(ip):
    cap = cell(ip, "drop_udp --duration 1", DROP_UDP)
    s = summary_of(cap)
    # default traffic: UDP to server:9000 at 100 packets/s for the duration
    assert s["backend"] == "replay"
    assert s["seen"] == 100 and s["dropped"] == 100 and s["accepted"] == 0
    png = pngs(cap)
    assert len(png) == 1 and png[0].data["image/png"]


def test_fallback_is_announced_once(ip):
    first = cell(ip, "--duration 0.3 --no-dashboard", ACCEPT_ALL)
    second = cell(ip, "--duration 0.3 --no-dashboard", ACCEPT_ALL)
    assert "replay backend" in first.stdout and "PACKETSCRIPT_BACKEND=replay" in first.stdout
    assert "replay backend" not in second.stdout


def test_traffic_option_shapes_the_replayed_packets(ip):
    cap = cell(ip, 'mix --duration 1 --no-dashboard --traffic '
                   '"udp client server:9000 rate=50; tcp client server:7000 connections=2"',
               DROP_UDP)
    s = summary_of(cap)
    assert s["dropped"] == 50           # the UDP datagrams
    assert s["accepted"] == 8           # 2 connections x SYN, ACK, data, FIN


def test_modified_packets_and_changed_fields(ip):
    cell(ip, "dnat --duration 0.5 --no-dashboard --traffic 'udp client server count=5'", DNAT)
    run = kernel_magic.get_session().runs["dnat"]
    view = run.view()
    assert view["stats"]["continued"] == 5 and view["stats"]["modified"] == 5
    assert all("ip.daddr" in r["changed"] and r["verdict"] == "continue"
               for r in view["recent"])
    # what the dashboard shows: the value before and after, checksums named once
    assert view["recent"][0]["changes"] == ["ip.daddr 10.77.0.2 → 10.77.0.9",
                                            "checksums updated (ip.check, udp.check)"]


def test_syntax_error_names_the_cell_line(ip):
    body = "function process_packet(p)\n  local x = = 1\n  return NF_ACCEPT\nend\n"
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("packetscript", "broken", body)
    text = str(err.value)
    assert "cell line 3" in text                  # line 1 is the %%packetscript line
    assert "local x = = 1" in text


def test_lua_line_references_inside_messages_count_cell_lines(ip):
    with pytest.raises(UsageError, match=r"cell line 4: 'end' expected \(to close 'function' at line 2\)"):
        ip.run_cell_magic("packetscript", "", "function process_packet(p)\n  return 1\n")


def test_usage_error_is_shown_without_traceback(ip, capsys):
    with capture_output() as cap:
        result = ip.run_cell("%%packetscript --budget -5\n" + ACCEPT_ALL)
    assert isinstance(result.error_in_exec, UsageError)
    assert "UsageError" in cap.stderr and "--budget" in cap.stderr
    assert "Traceback" not in cap.stderr + cap.stdout


def test_runtime_errors_are_reported_with_their_cell_line(ip):
    body = ("function process_packet(p)\n"
            "  local t = nil\n"
            "  return t.verdict\n"
            "end\n")
    cap = cell(ip, "oops --duration 0.5 --no-dashboard --traffic 'udp client server count=7'",
               body)
    s = summary_of(cap)
    assert s["errors"] == 7 and s["dropped"] == 7      # PacketScript drops on error
    text = "\n".join(o.data.get("text/plain", "") for o in cap.outputs)
    assert "cell line 4" in text and "return t.verdict" in text


def test_a_wrong_return_value_is_reported_at_its_return(ip):
    body = ("function process_packet(p)\n"
            "  local ip = p:data(packet_eth):data(packet_ip)\n"
            "  if ip then\n"
            "    return nil\n"                    # cell line 5
            "  end\n"
            "  return NF_ACCEPT\n"
            "end\n")
    cap = cell(ip, "nil --duration 0.5 --no-dashboard --traffic 'udp client server count=3'", body)
    assert summary_of(cap)["errors"] == 3
    text = "\n".join(o.data.get("text/plain", "") for o in cap.outputs)
    assert "cell line 5" in text and "return nil" in text and "cell line 8" not in text


def test_on_error_accept(ip):
    body = "function process_packet(p)\n  error('no')\nend\n"
    cap = cell(ip, "--on-error accept --duration 0.3 --no-dashboard "
                   "--traffic 'udp client server count=4'", body)
    s = summary_of(cap)
    assert s["errors"] == 4 and s["accepted"] == 4


@pytest.mark.parametrize("line, message", [
    ("--budget 0", "--budget"),
    ("--duration -1", "--duration"),
    ("--pcap /nonexistent.pcap", "no such file"),
    ("--traffic 'smtp client server'", "unknown flow kind"),
    ("--traffic 'udp client server rate=fast'", "not a number"),
    ("--backend carrier-pigeon", "invalid choice"),
    ("--frobnicate", "unknown option --frobnicate: %%packetscript? lists every option"),
    ("--durration 2", "unknown option --durration: did you mean --duration? %%packetscript?"),
    ("--backend nfqueue --pace fast", "--pace sets how the replay backend plays packets"),
    ("--pace slow", "invalid choice"),
    ("'bad name!'", "script name"),
    ("--backend replay --match '-p tcp'", "replay backend has no iptables"),
    ("--pcap x.pcap --traffic 'udp client server'", "either --pcap or --traffic"),
    ("--queues 0", "--queues must be a number of queues from 1 to 16, not 0"),
    ("--backend replay --queues 2", "the replay backend has none"),
])
def test_option_mistakes_are_usage_errors(ip, line, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.pcap").write_bytes(b"")
    with pytest.raises(UsageError, match=re.escape(message)):
        ip.run_cell_magic("packetscript", line, ACCEPT_ALL)


def test_unknown_host_in_traffic(ip):
    with pytest.raises(UsageError, match="no host 'mars'"):
        ip.run_cell_magic("packetscript", "--duration 0.2 --traffic 'udp client mars'",
                          ACCEPT_ALL)


def test_empty_cell(ip):
    with pytest.raises(UsageError, match="empty"):
        ip.run_cell_magic("packetscript", "", "   \n")


def test_help_is_the_docstring():
    shell = get_shell()
    kernel_magic.load_ipython_extension(shell)
    try:
        doc = shell.find_cell_magic("packetscript").__doc__
        assert "%%packetscript [--backend" in doc
        for option in ("--backend", "--duration", "--traffic", "--on-error", "--no-dashboard"):
            assert option in doc
        assert "status" in shell.find_line_magic("packetscript").__doc__
    finally:
        kernel_magic.unload_ipython_extension(shell)


def test_rerun_replaces_the_running_script_without_losing_packets(ip):
    traffic = "--traffic 'udp client server:9000 rate=200 count=1000'"   # 5 s of packets
    cell(ip, f"live {traffic}", ACCEPT_ALL)           # open-ended: returns at once
    run = kernel_magic.get_session().runs["live"]
    handle = run.handle
    deadline = time.monotonic() + 10
    while handle.stats()["seen"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    cap = cell(ip, f"live {traffic}", DROP_UDP)
    assert "replaced in place" in cap.stdout
    assert kernel_magic.get_session().runs["live"] is run and run.handle is handle
    assert handle.played_all.wait(30)
    with capture_output() as cap:
        ip.run_line_magic("packetscript", "stop live")
    s = summary_of(cap)
    assert s["seen"] == 1000                           # every packet judged exactly once
    assert s["accepted"] + s["dropped"] == 1000
    assert 0 < s["accepted"] < 1000 and s["dropped"] > 0


def test_rerun_with_other_options_reattaches(ip):
    cell(ip, "x --traffic 'udp client server count=10'", ACCEPT_ALL)
    old = kernel_magic.get_session().runs["x"]
    cap = cell(ip, "x --on-error accept --traffic 'udp client server count=10'", ACCEPT_ALL)
    assert "not in place" in cap.stdout
    assert not old.active and kernel_magic.get_session().runs["x"] is not old
    ip.run_line_magic("packetscript", "stop x")


def test_open_ended_run_stops_on_the_stop_button(ip):
    cell(ip, "btn --traffic 'udp client server count=20 rate=200'", ACCEPT_ALL)
    run = kernel_magic.get_session().runs["btn"]
    assert run.handle.played_all.wait(5)
    dashboard = run.dashboard
    dashboard.stop_button.click()
    assert not run.active and run.end_reason == "stopped"
    assert run.summary().count("accepted") == 20
    # the live widgets are gone: the cell's figure and table took their place
    assert dashboard.widget.comm is None and run.dashboard is None


def test_dashboard_shows_counts_errors_and_recent_packets(ip):
    body = ("function process_packet(p)\n"
            "  local ip = p:data(packet_eth):data(packet_ip)\n"
            "  if ip:daddr():get() == '10.77.0.2' then error('boom') end\n"
            "  return NF_ACCEPT\n"
            "end\n")
    cell(ip, "dash --traffic 'udp client server count=10 rate=500'", body)
    run = kernel_magic.get_session().runs["dash"]
    assert run.handle.played_all.wait(5)
    kernel_magic.get_session().pump.tick()
    d = run.dashboard
    assert ">10<" in d.counters.value                   # seen = errors = dropped = 10
    assert "boom" in d.errors.value and "cell line 4" in d.errors.value
    assert "UDP 10.77.0.1" in d.recent.value and "drop" in d.recent.value
    d.update(run.view(), with_plot=True)
    assert d.plot.value[:8] == b"\x89PNG\r\n\x1a\n"
    ip.run_line_magic("packetscript", "stop dash")


def test_send_feeds_running_replay_scripts(ip):
    cell(ip, "s --traffic 'udp client server count=1'", DROP_UDP)
    run = kernel_magic.get_session().runs["s"]
    assert run.handle.played_all.wait(5)
    with capture_output() as cap:
        ip.run_line_magic("packetscript", "send ping client server count=3")
    assert "sent 3 packets" in cap.stdout
    assert run.handle.played_all.wait(5)              # set once the packets are counted
    stats = run.view()["stats"]
    assert stats["seen"] == 4 and stats["accepted"] == 3 and stats["dropped"] == 1
    with capture_output() as cap:
        ip.run_line_magic("packetscript", "list")
    assert re.search(r"s\s+replay\s+running.*seen 4", cap.stdout)


def test_line_magic_mistakes(ip):
    for line, message in [("stop nobody", "no script named"), ("fly", "unknown command"),
                          ("stpo x", "did you mean 'stop'"),
                          ("send", "usage"), ("send udp client server", "no running script"),
                          ("up --topology ring", "unknown topology"), ("", "Manage")]:
        with pytest.raises(UsageError, match=message):
            ip.run_line_magic("packetscript", line)


def test_pcap_replay_ethernet_and_raw_ip(ip, tmp_path):
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapNgWriter, wrpcap

    udp = [IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=9000) / b"x" for _ in range(6)]
    tcp = [IP(src="10.77.0.1", dst="10.77.0.2") / TCP(dport=80) for _ in range(4)]
    wrpcap(str(tmp_path / "eth.pcap"), [Ether() / p for p in udp + tcp])
    wrpcap(str(tmp_path / "raw.pcap"), udp + tcp)
    with PcapNgWriter(str(tmp_path / "ng.pcap")) as w:
        for p in udp + tcp:
            w.write(Ether() / p)
    for name in ("eth", "raw", "ng"):
        cap = cell(ip, f"{name} --pcap {tmp_path / name}.pcap --duration 0.5 --no-dashboard",
                   DROP_UDP)
        s = summary_of(cap)
        assert (s["seen"], s["dropped"], s["accepted"]) == (10, 6, 4), name


def test_a_corrupt_pcap_is_a_usage_error_naming_the_packet(ip, tmp_path):
    import struct

    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap, wrpcapng

    pkts = [Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=9000) for _ in range(3)]
    wrpcapng(str(tmp_path / "ng.pcapng"), pkts)
    data = bytearray((tmp_path / "ng.pcapng").read_bytes())
    off, epbs = 0, []
    while off < len(data):                    # the Enhanced Packet Blocks
        block_type, block_len = struct.unpack_from("<II", data, off)
        epbs += [off] if block_type == 6 else []
        off += block_len
    struct.pack_into("<I", data, epbs[1] + 8, 3)    # packet 2 names interface 3
    (tmp_path / "ng.pcapng").write_bytes(bytes(data))
    with pytest.raises(UsageError, match="corrupt capture at packet 2 .*names interface 3"):
        ip.run_cell_magic("packetscript", f"--pcap {tmp_path / 'ng.pcapng'}", ACCEPT_ALL)
    wrpcap(str(tmp_path / "sparse.pcap"), pkts)
    with open(tmp_path / "sparse.pcap", "r+b") as f:
        f.truncate(1 << 30)
    with pytest.raises(UsageError, match="corrupt capture at packet 4"):
        ip.run_cell_magic("packetscript", f"--pcap {tmp_path / 'sparse.pcap'}", ACCEPT_ALL)


def test_not_a_pcap(ip, tmp_path):
    path = tmp_path / "notes.pcap"
    path.write_text("hello")
    with pytest.raises(UsageError, match="not a pcap"):
        ip.run_cell_magic("packetscript", f"--pcap {path}", ACCEPT_ALL)


def test_cells_are_cached_by_source_and_options(ip):
    from kernel_magic import options as opts
    cache = kernel_magic.get_session().cache
    bad = "function process_packet(p)\n  return (\nend\n"
    for _ in range(2):
        with pytest.raises(UsageError, match="cell line"):
            ip.run_cell_magic("packetscript", "c", bad)
    entry = cache.get(bad, opts.RunOptions(name="c"))
    assert entry is not None and entry.error and entry.compiles == 0
    cell(ip, "c --duration 0.2 --no-dashboard", ACCEPT_ALL)
    cell(ip, "c --duration 0.2 --no-dashboard", ACCEPT_ALL)
    cell(ip, "c --duration 0.2 --no-dashboard --profile kernel", ACCEPT_ALL)
    assert cache.get(ACCEPT_ALL, opts.RunOptions(name="c")).compiles == 2
    assert cache.get(ACCEPT_ALL, opts.RunOptions(name="c", profile="kernel")).compiles == 1


def test_kernel_profile_reports_portability_with_cell_lines(ip):
    body = ("function process_packet(p)\n"
            "  local s = string.format('%d', 1)\n"
            "  return NF_ACCEPT\n"
            "end\n")
    cap = cell(ip, "k --profile kernel --duration 0.2 --no-dashboard "
                   "--traffic 'udp client server count=2'", body)
    assert "Kernel portability" in cap.stdout
    assert "cell line 3" in cap.stdout and "string.format" in cap.stdout
    s = summary_of(cap)
    assert s["errors"] == 2                # no string library under the kernel profile


def test_python_run_api_for_sweeps(ip):
    with capture_output() as cap:
        results = [kernel_magic.run(DROP_UDP, "sweep", duration=0.5, display=False,
                                    traffic=f"udp client server:9000 rate={rate}")
                   for rate in (20, 60)]
    assert [r.count("dropped") for r in results] == [10, 30]
    assert not pngs(cap)
    with pytest.raises(TypeError, match="unknown option"):
        kernel_magic.run(DROP_UDP, duration=0.1, colour="blue")


def test_interrupting_a_duration_run_still_writes_the_summary(ip):
    import signal
    import threading

    def waiting_with_packets_seen():
        run = kernel_magic.get_session().runs.get("long")
        return run is not None and run.blocking and run.handle.stats()["seen"] > 0

    def interrupt_once_running():
        deadline = time.monotonic() + 10
        while not waiting_with_packets_seen() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)      # what Kernel > Interrupt does
    threading.Thread(target=interrupt_once_running, daemon=True).start()
    started = time.monotonic()
    cap = cell(ip, "long --duration 30 --no-dashboard", ACCEPT_ALL)
    assert time.monotonic() - started < 5
    s = summary_of(cap)
    assert 0 < s["seen"] < 3000 and s["accepted"] == s["seen"]
    assert "run ended: interrupted" in "\n".join(o.data["text/plain"] for o in cap.outputs)
    assert not kernel_magic.get_session().runs["long"].active


def test_iptables_options_on_the_replay_fallback_are_named_in_the_summary(ip):
    cap = cell(ip, "opts --host server --chain INPUT --duration 0.2 --no-dashboard", ACCEPT_ALL)
    text = "\n".join(o.data["text/plain"] for o in cap.outputs)
    assert "--host, --chain: iptables options, not applied on the replay backend" in text


HANG = "string.match(string.rep('x', 2000), ('.-'):rep(8) .. 'b')"


def test_cell_whose_top_level_hangs_in_c_fails_without_hanging_the_kernel(ip):
    started = time.monotonic()
    with pytest.raises(UsageError, match="top level ran past the time limit of 3 s"):
        ip.run_cell_magic("packetscript", "hang", HANG + "\n" + ACCEPT_ALL)
    assert time.monotonic() - started < 10


def test_packets_that_hang_in_c_cost_their_verdict_and_the_run_goes_on(ip):
    body = ("function process_packet(p)\n"
            "  local ip = p:data(packet_eth):data(packet_ip)\n"
            "  if ip and ip:id():get() %% 4 == 0 then %s end\n"
            "  return NF_ACCEPT\n"
            "end\n") % HANG
    cap = cell(ip, "slow --duration 1 --no-dashboard --traffic 'udp client server count=8'", body)
    s = summary_of(cap)
    stats = kernel_magic.get_session().runs["slow"].handle.stats()
    assert s["seen"] == 8 and s["errors"] == stats["timeouts"] >= 1
    assert s["dropped"] == s["errors"] and s["accepted"] == 8 - s["errors"]
    assert stats["restarts"] >= stats["timeouts"]
    text = "\n".join(o.data.get("text/plain", "") for o in cap.outputs)
    assert "time limit of 250 ms exceeded on one packet" in text


def test_pcap_replay_ends_when_the_capture_ends(ip, tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    packets = []
    for i in range(20):                          # one second of traffic, as recorded
        p = Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=9000) / b"x"
        p.time = 1000.0 + i * 0.05
        packets.append(p)
    path = tmp_path / "second.pcap"
    wrpcap(str(path), packets)
    spread = {}
    for pace in ("recorded", "fast"):
        cap = cell(ip, f"cap --backend replay --pcap {path} --pace {pace}", DROP_UDP)
        s = summary_of(cap)                      # no --duration, yet the cell ended by itself
        assert (s["seen"], s["dropped"]) == (20, 20), pace
        run = kernel_magic.get_session().runs["cap"]
        assert not run.active and run.end_reason == "capture played to the end"
        assert len(pngs(cap)) == 1               # one figure, not a dashboard plus a copy
        judged = [r["t"] for r in run.view()["recent"]]
        spread[pace] = max(judged) - min(judged)
    # recorded: judged as the packets were spaced (0.95 s); fast: back to back
    assert spread["recorded"] >= 0.9 > spread["fast"]
