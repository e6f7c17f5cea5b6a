"""`--record DIR` on a live %%packetscript cell (NFQUEUE in a real lab, the magic in process):
the record holds what the lab's script saw and did, and `packetscript replay --verify` replays
it to the same verdicts and bytes."""
from __future__ import annotations

import json

import pytest
from IPython.utils.capture import capture_output

from test_magic_lab import ip  # noqa: F401  (the live-lab shell fixture)
from test_recording import MIXED, cli, tshark

pytestmark = pytest.mark.lab


def test_a_live_cell_is_recorded_and_the_record_verifies(ip, tmp_path):  # noqa: F811
    rec = tmp_path / "live-cell"
    with capture_output() as cap:
        ip.run_cell_magic("packetscript", f"mixed --duration 2 --no-dashboard --record {rec} "
                          "--traffic 'udp client server:9000 count=15 rate=100'", MIXED)
    text = " ".join(o.data.get("text/plain", "") for o in cap.outputs) + cap.stdout
    assert f"recorded in {rec}" in text, text
    meta = json.loads((rec / "record.json").read_text())
    assert meta["backend"] == "nfqueue" and meta["hook"]["host"] == "server"
    # 15 datagrams: every third fails (error verdict, drop), odd ones dropped, the rest accepted
    # with a new TTL drawn from nf.get_random(), which only replays with the recorded seed.
    assert meta["summary"] == {"packets": 15, "verdicts": {"drop": 10, "accept": 5, "continue": 0},
                               "modified": 5, "errors": 5}
    assert meta["traffic"]["flows"] == "udp client server:9000 count=15 rate=100"
    comments = tshark("-r", str(rec / "seen.pcapng"), "-T", "fields", "-e", "frame.comment")
    assert len(comments) == 15 and comments[2].startswith("#3 verdict=drop error=")
    res = cli("replay", "--verify", str(rec))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all 15 packets got the recorded verdicts and bytes" in res.stdout
    # A record whose packet was judged otherwise fails the verification.
    meta["packets"][1]["verdict"] = "drop"
    (rec / "record.json").write_text(json.dumps(meta))
    res = cli("replay", "--verify", str(rec))
    assert res.returncode != 0 and "packet #2: verdict accept, recorded drop" in res.stdout
