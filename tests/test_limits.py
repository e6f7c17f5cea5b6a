"""Where the course's limits come from: defaults, the course's file (binding: the environment
can only make it stricter), the environment; and the errors of a bad setting."""
from __future__ import annotations

import json
import os

import pytest

from packetscript_lab.lab import limits
from packetscript_lab.lab.protocol import LabError

STUDENT_UID = 1000


def course_file(tmp_path, data) -> "os.PathLike":
    path = tmp_path / "limits.json"
    path.write_text(json.dumps(data))
    path.chmod(0o644)
    return path


def test_defaults_bind_ordinary_accounts_only(tmp_path):
    none = tmp_path / "absent.json"
    student, root = limits.current({}, none, uid=STUDENT_UID), limits.current({}, none, uid=0)
    assert (student.max_labs, student.max_pps) == (limits.DEFAULT_MAX_LABS, 0)
    assert (root.max_labs, root.max_pps) == (0, 0)
    env = {"PACKETSCRIPT_MAX_LABS": "9", "PACKETSCRIPT_MAX_PPS": "700"}
    got = limits.current(env, none, uid=STUDENT_UID)
    assert (got.max_labs, got.max_pps, got.source) == (9, 700, "the environment")


def test_a_course_file_binds_and_the_environment_only_lowers_it(tmp_path):
    if os.geteuid() != 0:        # a binding limits file is root's
        if os.environ.get("CI"):
            pytest.fail("this test needs root to own a course limits file (CI is set: it must run)")
        pytest.skip("a binding limits file is root's: run as root")
    path = course_file(tmp_path, {"max_labs": 2, "max_pps": 5000})
    raised = limits.current({"PACKETSCRIPT_MAX_LABS": "50", "PACKETSCRIPT_MAX_PPS": "0"}, path,
                            uid=STUDENT_UID)
    assert (raised.max_labs, raised.max_pps) == (2, 5000)      # neither raised nor lifted
    lowered = limits.current({"PACKETSCRIPT_MAX_PPS": "100"}, path, uid=STUDENT_UID)
    assert (lowered.max_labs, lowered.max_pps) == (2, 100)
    assert "ask your teacher" in lowered.how_to_change("max_labs")
    path.chmod(0o666)                                          # anyone could have written it
    with pytest.raises(LabError, match="writable by root only"):
        limits.current({}, path, uid=STUDENT_UID)


def test_bad_settings_are_errors_that_say_what_is_wrong(tmp_path):
    none = tmp_path / "absent.json"
    with pytest.raises(LabError, match="PACKETSCRIPT_MAX_PPS must be a whole number, 0 for no limit"):
        limits.current({"PACKETSCRIPT_MAX_PPS": "fast"}, none, uid=STUDENT_UID)
    if os.geteuid() == 0:
        with pytest.raises(LabError, match="keys max_labs, max_pps"):
            limits.current({}, course_file(tmp_path, {"labs": 2}), uid=STUDENT_UID)


def test_a_rate_above_the_limit_is_refused():
    budget = limits.PacketBudget(1000, source="the environment")
    with pytest.raises(limits.LabLimitError, match="at most 1000 packets/s .*PACKETSCRIPT_MAX_PPS"):
        budget.check_rate(1500, "a UDP stream (rate=1500)")
    budget.check_rate(1000, "a UDP stream (rate=1000)")
