"""The sample course (examples/course) through nbgrader: generate the students' version,
autograde two submissions with the hidden tests, write their feedback."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from labutil import require_lab

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "examples" / "course"
ASSIGNMENT = "packet-filters"
NOTEBOOK = f"{ASSIGNMENT}.ipynb"


def nbgrader(course: Path, *args) -> str:
    exe = Path(sys.executable).with_name("nbgrader")
    env = dict(os.environ, PACKETSCRIPT_BACKEND="replay")   # student cells replay; hidden live checks build labs
    env["PATH"] = f"{exe.parent}{os.pathsep}{env.get('PATH', '')}"
    res = subprocess.run([str(exe), *args], cwd=course, capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def cells(path: Path) -> dict[str, str]:
    nb = nbformat.read(path, 4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if "nbgrader" in c.metadata}


def test_release_version_in_the_repository_is_what_nbgrader_generates(tmp_path):
    course = tmp_path / "course"
    shutil.copytree(COURSE, course)
    shutil.rmtree(course / "release")
    nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")
    released = cells(course / "release" / ASSIGNMENT / NOTEBOOK)
    assert released == cells(COURSE / "release" / ASSIGNMENT / NOTEBOOK)
    text = "\n".join(released.values())
    assert "HIDDEN" not in text and "stranger" not in text and "live=True" not in text
    assert "BEGIN SOLUTION" not in text and "conns" not in text
    assert released["firewall"].count("return NF_ACCEPT  -- YOUR CODE HERE") == 1


def test_generate_autograde_feedback(tmp_path):
    require_lab()      # the hidden NAT check runs live
    course = tmp_path / "course"
    shutil.copytree(COURSE, course)
    shutil.rmtree(course / "release")
    nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")
    answers = {gid: re.sub(r"\s*-- (BEGIN|END) SOLUTION", "", src)
               for gid, src in cells(COURSE / "source" / ASSIGNMENT / NOTEBOOK).items()
               if "BEGIN SOLUTION" in src}
    assert set(answers) == {"firewall", "nat", "limiter"}
    # alice solves everything; bob only the NAT and hands in the rest as released.
    for student, solved in (("alice", set(answers)), ("bob", {"nat"})):
        nb = nbformat.read(course / "release" / ASSIGNMENT / NOTEBOOK, 4)
        for c in nb.cells:
            gid = c.metadata.get("nbgrader", {}).get("grade_id")
            if gid in solved:
                c.source = answers[gid]
        (course / "submitted" / student / ASSIGNMENT).mkdir(parents=True)
        nbformat.write(nb, course / "submitted" / student / ASSIGNMENT / NOTEBOOK)
    nbgrader(course, "autograde", ASSIGNMENT, "--create", "--force")

    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: {g.name: g.score for g in gb.find_submission(ASSIGNMENT, s).notebooks[0].grades}
                  for s in ("alice", "bob")}
    assert scores["alice"] == {"test_firewall": 2.0, "test_nat": 2.0, "test_limiter": 2.0}
    assert scores["bob"] == {"test_firewall": 0.0, "test_nat": 2.0, "test_limiter": 0.0}

    nbgrader(course, "generate_feedback", ASSIGNMENT, "--force")
    html = (course / "feedback" / "bob" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    assert "firewall: 2 of 4 packets got the wrong verdict" in html
    assert "your script returned accept, expected drop" in html
    assert "the receivers got 40 of 40 packets; expected between 14 and 16" in html
    alice = (course / "feedback" / "alice" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    assert "ExerciseFailure" not in alice
