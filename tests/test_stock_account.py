"""The live lab as an ordinary account meets it: stock PATH (no sbin), stock environment, no
privileges. The lab finds iptables in /usr/sbin itself, or names the missing program and its
package in one line; `packetscript demo` announces only a lab it can use.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
import stockuser
from labutil import require_lab

from packetscript_lab.cli import main as cli_main
from packetscript_lab.lab import Lab, LabError, programs

pytestmark = pytest.mark.timeout(180)


def _skip_if_userns_refused(res):
    if res.returncode != 0 and "namespaces" in res.stderr and not os.environ.get("CI"):
        pytest.skip(f"unprivileged user namespaces refused here: {res.stderr.strip()[-300:]}")


ATTACH = textwrap.dedent("""
    import json, os
    import packetscript_lab
    from packetscript_lab import Lab
    with Lab("pair") as lab:
        h = lab.attach("function process_packet(p) return NF_DROP end", host="server",
                       match="-p udp --dport 9000")
        hit = lab.udp_stream("client", "server", port=9000, rate=500, duration=0.2)
        miss = lab.udp_stream("client", "server", port=9001, rate=500, duration=0.2)
        print(json.dumps({"uid": os.getuid(), "path": os.environ["PATH"],
                          "package": packetscript_lab.__file__, "hit": hit["received"],
                          "miss": miss["received"], "dropped": h.stats()["dropped"]}))
""")


@pytest.mark.lab
def test_lab_attach_works_for_an_ordinary_account_with_a_stock_path(tmp_path):
    require_lab()
    account = stockuser.student()
    res = stockuser.run([sys.executable, "-c", ATTACH], tmp_path / "stage")
    _skip_if_userns_refused(res)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["uid"] == account.pw_uid != 0
    assert out["path"] == stockuser.STOCK_PATH                    # no sbin given to it
    assert out["package"].startswith(str(stockuser.ROOT))         # this checkout, via the venv
    assert (out["hit"], out["miss"], out["dropped"]) == (0, 100, 100)


@pytest.mark.lab
def test_demo_runs_live_for_an_ordinary_account_with_a_stock_path(tmp_path):
    require_lab()
    res = stockuser.run([stockuser.venv_program("packetscript"), "demo", "--duration", "1"],
                        tmp_path / "stage")
    _skip_if_userns_refused(res)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "cannot run here" not in res.stderr, res.stderr
    assert "Lab up: client 10.77.0.1 <-> server 10.77.0.2" in res.stdout
    assert "script: seen 100, accepted 67, dropped 33, modified 67, errors 0" in res.stdout


@pytest.fixture
def no_sbin(tmp_path, monkeypatch):
    """A machine where only unshare is installed: PATH has it, no sbin directory has more."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "unshare").symlink_to(programs.find("unshare"))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(programs, "SBIN_DIRS", (str(tmp_path / "empty-sbin"),))


def test_a_missing_program_is_named_with_its_package_in_one_line(no_sbin):
    with pytest.raises(LabError) as info:
        Lab("pair")
    msg = str(info.value)
    assert "\n" not in msg
    assert "'iptables' is not installed" in msg and "apt-get install iptables" in msg
    assert "packetscript replay" in msg                          # and what still works
    with pytest.raises(programs.ProgramMissing, match=r"'tc' .*apt-get install iproute2$"):
        programs.find("tc")


def test_demo_does_not_announce_a_lab_it_cannot_use(no_sbin, capsys):
    assert cli_main(["demo"]) == 0
    out, err = capsys.readouterr()
    assert "Lab up" not in out
    assert "The live lab cannot run here: cannot start the lab: the program 'iptables' is " \
           "not installed" in err
    assert "replayed 300 UDP datagrams client -> server: accept 200, drop 100" in out


def test_the_sbin_directories_are_searched_after_path(monkeypatch):
    monkeypatch.setenv("PATH", stockuser.STOCK_PATH)
    assert programs.search_path() == stockuser.STOCK_PATH + ":/usr/local/sbin:/usr/sbin:/sbin"
    assert os.path.dirname(programs.find("iptables")) in ("/usr/sbin", "/sbin", "/usr/local/sbin")
