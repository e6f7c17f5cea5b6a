"""The README's first commands run verbatim, as a reader types them after the bootstrap:
from a directory holding the checkout's examples, with the environment activated.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.M | re.S)


def activated(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """``command`` in bash after ``source .venv/bin/activate`` of the environment running
    the tests (the one scripts/bootstrap.sh made)."""
    activate = Path(sys.prefix) / "bin" / "activate"
    assert activate.exists(), f"{activate} is missing: run the tests from a virtual environment"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return subprocess.run(["bash", "-c", f'source "{activate}" && {command}'], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def checkout_like(tmp_path):
    """A working directory where the README's relative paths resolve as in the checkout."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def _without_timing(text: str) -> str:
    return re.sub(r"in [\d.]+ s \([\d,]+ packets/s\)", "in T s (R packets/s)", text)


def test_the_console_examples_print_what_the_readme_shows(checkout_like):
    sessions = [b for b in blocks("console") if b.startswith("$ packetscript ")]
    assert sessions, "README.md shows no `$ packetscript ...` session"
    for session in sessions:
        command, *shown = session.rstrip("\n").split("\n")
        res = activated(command[2:], checkout_like)
        assert res.returncode == 0, res.stderr
        assert _without_timing(res.stdout).rstrip("\n").split("\n") == \
            [_without_timing(line) for line in shown]


def test_the_commands_after_the_bootstrap_run(checkout_like):
    after = next(b for b in blocks("sh") if b.startswith("source .venv/bin/activate"))
    lines = after.strip().splitlines()
    assert lines[1:3] == ["packetscript demo",
                          "packetscript replay examples/dnat.lua examples/udp-to-10.77.2.100.pcap "
                          "--out rewritten.pcap"]
    res = activated(f"command -v packetscript && {lines[2]}", checkout_like)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == str(Path(sys.prefix) / "bin" / "packetscript")
    assert (checkout_like / "rewritten.pcap").stat().st_size > 0


@pytest.mark.lab
def test_the_python_example_runs(checkout_like):
    from labutil import require_lab

    require_lab()
    (code,) = [b for b in blocks("python") if "from packetscript_lab import Lab" in b]
    res = subprocess.run([sys.executable, "-c", code], cwd=checkout_like, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    received, stats = res.stdout.split(" ", 1)
    assert received == "200"                           # every datagram reached the server
    assert "'modified': 200" in stats and "'continued': 200" in stats


def test_the_dnat_example_file_is_the_one_the_package_offers():
    """examples/dnat.lua (for the README's commands) and packetscript_lab.examples.dnat()
    (for code and tests) are the same script: one cannot change without the other."""
    from packetscript_lab.examples import dnat
    assert (ROOT / "examples" / "dnat.lua").read_text().endswith(dnat())
