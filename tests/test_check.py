"""The kernel portability checker (check_source) on the Lua corpus, one test per rule."""
import re
from pathlib import Path

import pytest

from packetscript_lab.xtlua.checker import check_source
from packetscript_lab.xtlua.rules import RULES

CORPUS = Path(__file__).parent / "lua_corpus"
PORTABLE = sorted((CORPUS / "portable").glob("*.lua"))
NONPORTABLE = sorted((CORPUS / "nonportable").glob("*.lua"))


def expected(path):
    """The `-- expect: RULE LINE` lines at the top of a corpus script."""
    out = set()
    for m in re.finditer(r"^-- expect: (\S+) (\S+)$", path.read_text(), re.M):
        out.add((m.group(1), None if m.group(2) == "-" else int(m.group(2))))
    return out


def found(report):
    return {(f.rule, f.line) for f in report.findings}


def rules_of(source, **kw):
    return {f.rule for f in check_source(source, **kw).findings}


@pytest.mark.parametrize("path", PORTABLE, ids=lambda p: p.name)
def test_portable_scripts_get_a_clean_report(path):
    report = check_source(Path(path).read_text(), "kernel")
    assert report.findings == [], str(report)
    assert report.portable and report.clean and report.exit_status == 0


@pytest.mark.parametrize("path", NONPORTABLE, ids=lambda p: p.name)
def test_nonportable_scripts_report_exactly_their_problems(path):
    want = expected(path)
    assert want, f"{path.name} has no expect lines"
    report = check_source(Path(path).read_text(), "kernel")
    assert found(report) == want, str(report)
    for f in report.findings:
        assert f.message and f.fix and f.severity == RULES[f.rule].severity
    assert report.exit_status == (3 if report.errors else 4)


def test_every_rule_is_exercised_by_the_corpus_or_a_test_here():
    covered = {rule for p in NONPORTABLE for rule, _ in expected(p)}
    covered |= {"syntax", "script-size", "nul-byte", "function-name", "state-id"}  # below
    assert covered == set(RULES)


# --- one test per finding -----------------------------------------------------------------

def _one(path_name, rule):
    report = check_source((CORPUS / "nonportable" / path_name).read_text(), "kernel")
    hits = [f for f in report.findings if f.rule == rule]
    assert hits, str(report)
    return hits


def test_library_string_names_the_line_and_the_byte_workaround():
    (f,) = _one("library_string.lua", "library")
    assert f.line == 5 and "`string.format` is used" in f.message and "to_bytes" in f.fix


def test_library_table_math_os_each_reported():
    hits = _one("library_table_math_os.lua", "library")
    assert [(f.line, f.message.split("`")[1]) for f in hits] == [
        (6, "table.insert"), (7, "math.max"), (8, "os.time")]


def test_a_local_named_like_a_library_is_not_a_library_use():
    src = ("local string = {}\nfunction process_packet(p)\n  string.x = 1\n"
           "  local t = {math = 1}\n  return t.math\nend\n")
    assert rules_of(src) == set()


def test_string_method_call_is_an_error():
    (f,) = _one("string_method.lua", "string-method")
    assert f.line == 6 and ":sub()" in f.message


def test_float_literal_is_an_error():
    (f,) = _one("float_literal.lua", "float-literal")
    assert f.line == 3 and "0.5" in f.message and f.severity == "error"


def test_division_is_a_warning_that_explains_truncation():
    (f,) = _one("division.lua", "division")
    assert f.severity == "warning" and "-7/2 is -3" in f.message


def test_power_is_an_error_saying_it_multiplies():
    (f,) = _one("power.lua", "power")
    assert f.line == 5 and "multiplies" in f.message


def test_lua53_syntax_is_reported_per_line():
    hits = _one("lua54_syntax.lua", "lua51-syntax")
    assert [f.line for f in hits] == [5, 6]
    assert rules_of("goto done\n::done::\nfunction process_packet(p) return 1 end\n") \
        == {"lua51-syntax"}


def test_script_over_32_kib_is_an_error():
    body = "function process_packet(p)\n  return NF_ACCEPT\nend\n"
    big = body + "-- " + "x" * 32768 + "\n"
    assert "script-size" in rules_of(big)
    assert "script-size" not in rules_of(body + "-- " + "x" * 32000 + "\n")


def test_nul_byte_is_an_error_at_its_line():
    report = check_source("x = 1\nfunction process_packet(p) return 1 end -- \0\n")
    assert [(f.rule, f.line) for f in report.findings] == [("nul-byte", 2)]


def test_function_name_over_256_bytes_is_an_error():
    name = "f" * 257
    src = f"function {name}(p) return NF_ACCEPT end\n"
    assert rules_of(src, function=name) == {"function-name"}
    ok = "f" * 256
    assert rules_of(f"function {ok}(p) return NF_ACCEPT end\n", function=ok) == set()


def test_state_id_over_8_is_an_error():
    src = "function process_packet(p) return NF_ACCEPT end\n"
    assert rules_of(src, state_id=9) == {"state-id"}
    assert rules_of(src, state_id=8) == set()
    assert rules_of(src, state_id=None) == set()


def test_entry_function_must_be_a_global():
    (f,) = _one("entry_missing.lua", "entry-missing")
    assert "local" in f.message
    assert rules_of("function handler(p) return 1 end\n") == {"entry-missing"}
    assert rules_of("function handler(p) return 1 end\n", function="handler") == set()


def test_field_kept_after_another_field_access():
    (f,) = _one("field_kept.lua", "field-kept")
    assert f.line == 8 and "line 6" in f.message and "ip:ttl():get" in f.fix


def test_field_kept_in_a_loop():
    (f,) = _one("field_kept_loop.lua", "field-kept")
    assert f.line == 9 and "loop" in f.message


def test_field_kept_in_a_global():
    (f,) = _one("field_kept_global.lua", "field-kept")
    assert f.line == 10 and "global" in f.message


def test_field_object_used_right_away_is_fine():
    src = ("function process_packet(p)\n  local ip = p:data(packet_eth):data(packet_ip)\n"
           "  local ttl = ip:ttl()\n  if ttl:get() < 2 then return NF_DROP end\n"
           "  return XT_CONTINUE\nend\n")
    assert rules_of(src) == set()


def test_stale_checksum_for_ttl():
    (f,) = _one("stale_ttl.lua", "stale-checksum")
    assert f.line == 6 and "IP header checksum" in f.message and "-j TTL" in f.fix


def test_stale_checksum_for_udp_port():
    (f,) = _one("stale_ports.lua", "stale-checksum")
    assert "udp.dport" in f.message and "UDP checksum" in f.message


def test_stale_checksum_for_address_without_skb():
    (f,) = _one("dnat_blog.lua", "stale-checksum")
    assert "daddr" in f.message and "TCP or UDP" in f.message


def test_setting_the_checksum_yourself_silences_the_warning():
    assert check_source((CORPUS / "portable" / "ttl_with_checksum.lua").read_text()).clean
    src = ("function process_packet(p)\n  local udp = p:data(packet_eth):data(packet_ip)"
           ":data(packet_udp)\n  udp:sport():set(53)\n  udp:check():set(0)\n"
           "  return XT_CONTINUE\nend\n")
    assert rules_of(src) == set()


@pytest.mark.parametrize("chain, field", [
    ("data(packet_ip)", "tos"), ("data(packet_ip)", "id"), ("data(packet_ip)", "tot_len"),
    ("data(packet_ip):data(packet_tcp)", "sport"), ("data(packet_ip):data(packet_tcp)", "seq"),
    ("data(packet_ip):data(packet_udp)", "length"),
])
def test_stale_checksum_for_other_header_fields(chain, field):
    src = (f"function process_packet(p)\n  p:data(packet_eth):{chain}:{field}():set(1)\n"
           "  return XT_CONTINUE\nend\n")
    report = check_source(src)
    assert [(f.rule, f.line) for f in report.findings] == [("stale-checksum", 2)]


def test_skb_passed_to_address_setter_is_an_error():
    (f,) = _one("skb_address.lua", "skb-address")
    assert f.line == 6 and "64-bit" in f.message and f.severity == "error"


def test_second_dynamic_protocol_is_an_error():
    (f,) = _one("two_dynamic.lua", "dynamic-protocols")
    assert f.line == 11


def test_dynamic_setter_is_an_error():
    (f,) = _one("dynamic_setter.lua", "dynamic-protocol-bug")
    assert f.line == 8 and "setter" in f.message


def test_unparseable_script_gives_a_syntax_finding_not_an_exception():
    report = check_source("function process_packet(p)\n  return (\nend\n")
    assert [f.rule for f in report.findings] == ["syntax"]
    assert not report.portable


# --- profiles -------------------------------------------------------------------------------

def test_lab_profile_allows_the_string_library_but_not_io():
    src = ("function process_packet(p)\n  local s = string.format('%d', 1)\n"
           "  io.write(s)\n  return NF_ACCEPT\nend\n")
    report = check_source(src, "lab")
    assert [(f.rule, f.line) for f in report.findings] == [("library", 3)]
    assert {f.rule for f in check_source(src, "kernel").findings} == {"library"}
    assert len(check_source(src, "kernel").findings) == 2


def test_lab_profile_ignores_kernel_only_rules():
    path = CORPUS / "nonportable" / "stale_ttl.lua"
    assert check_source(Path(path).read_text(), "lab").clean


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="profile"):
        check_source("", "openwrt")


def test_report_json_shape():
    import json
    report = check_source((CORPUS / "nonportable" / "power.lua").read_text())
    data = json.loads(report.to_json())
    assert data["portable"] is False and data["profile"] == "kernel"
    assert data["findings"][0].keys() >= {"line", "rule", "message", "fix", "severity"}
    assert "<table>" in report._repr_html_()


def test_docs_list_every_rule():
    doc = (Path(__file__).parents[1] / "docs" / "kernel.md").read_text()
    for rule in RULES.values():
        assert f"| `{rule.id}` | {rule.severity} |" in doc, rule.id
