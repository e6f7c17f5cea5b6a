"""`packetscript check`: exit status, text and JSON output, compile errors."""
import json
import subprocess
import sys
from pathlib import Path

CORPUS = Path(__file__).parent / "lua_corpus"


def check(*args):
    return subprocess.run([sys.executable, "-m", "packetscript_lab", "check", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_portable_script_exits_0_with_a_clean_report():
    res = check(CORPUS / "portable" / "counter.lua", "--profile", "kernel")
    assert res.returncode == 0, res.stderr
    assert "no findings" in res.stdout


def test_error_findings_exit_3_with_line_reason_and_fix():
    path = CORPUS / "nonportable" / "power.lua"
    res = check(path, "--profile", "kernel")
    assert res.returncode == 3
    assert f"{path}:5: error [power]" in res.stdout
    assert "fix:" in res.stdout


def test_warnings_only_exit_4():
    res = check(CORPUS / "nonportable" / "stale_ttl.lua", "--profile", "kernel")
    assert res.returncode == 4
    assert "warning [stale-checksum]" in res.stdout


def test_lab_profile_is_the_default_and_ignores_kernel_rules():
    assert check(CORPUS / "nonportable" / "power.lua").returncode == 0


def test_json_is_exactly_one_object():
    res = check(CORPUS / "nonportable" / "library_table_math_os.lua", "--profile", "kernel",
                "--json")
    assert res.returncode == 3
    data = json.loads(res.stdout)          # fails on anything but one JSON document
    assert data["portable"] is False
    assert [(f["rule"], f["line"]) for f in data["findings"]] == [
        ("library", 6), ("library", 7), ("library", 8)]


def test_state_option_is_checked():
    res = check(CORPUS / "portable" / "counter.lua", "--profile", "kernel", "--state", "12",
                "--json")
    assert res.returncode == 3
    assert [f["rule"] for f in json.loads(res.stdout)["findings"]] == ["state-id"]


def test_compile_error_prints_file_line_message_and_exits_1(tmp_path):
    bad = tmp_path / "bad.lua"
    bad.write_text("function process_packet(p)\n  return (\nend\n")
    res = check(bad, "--profile", "kernel")
    assert res.returncode == 1
    assert res.stderr.startswith(f"{bad}:3: ")


def test_lua_option_picks_the_compiler():
    path = CORPUS / "nonportable" / "lua54_syntax.lua"
    assert check(path, "--profile", "kernel").returncode == 1        # LuaJIT cannot parse //
    res = check(path, "--profile", "kernel", "--lua", "5.4", "--json")
    assert res.returncode == 3
    assert {f["rule"] for f in json.loads(res.stdout)["findings"]} == {"lua51-syntax"}


def test_missing_file_is_a_usage_error():
    res = check("/nonexistent/script.lua")
    assert res.returncode == 2 and "cannot read" in res.stderr
