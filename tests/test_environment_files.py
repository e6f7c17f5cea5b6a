"""environment.yml, binder/environment.yml and pyproject.toml must ask for the same packages.

A package added to pyproject but not to the conda files would make Binder (or a conda
checkout) fail at import time, far from the change that caused it.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        req = Requirement(line)
        out[canonical(req.name)] = str(req.specifier)
    return out


def pip_section(path: Path) -> list[str]:
    """The entries under ``- pip:`` of a conda environment file (no YAML library needed)."""
    entries, indent = [], None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            if line.strip() == "- pip:":
                indent = depth
            continue
        if depth <= indent:
            break
        item = line.strip()
        assert item.startswith("- "), f"{path}: unexpected line in the pip section: {raw!r}"
        entries.append(item[2:].strip())
    assert indent is not None, f"{path} has no pip section"
    return entries


def pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def test_binder_environment_lists_exactly_the_project_dependencies():
    deps = requirements(pyproject()["dependencies"])
    binder = requirements(e for e in pip_section(ROOT / "binder" / "environment.yml")
                          if not e.startswith("-"))
    assert binder == deps


def test_top_level_environment_lists_dependencies_and_test_extras():
    project = pyproject()
    wanted = requirements(project["dependencies"])
    wanted.update(requirements(project.get("optional-dependencies", {}).get("test", [])))
    top = requirements(e for e in pip_section(ROOT / "environment.yml") if not e.startswith("-"))
    assert top == wanted


def test_both_environment_files_use_the_same_python():
    def python(path):
        m = re.search(r"^\s*-\s*python\s*=\s*([\d.]+)\s*$", path.read_text(), re.M)
        assert m, f"{path} pins no python version"
        return m.group(1)
    assert python(ROOT / "environment.yml") == python(ROOT / "binder" / "environment.yml")
    low = re.search(r">=\s*([\d.]+)", pyproject()["requires-python"]).group(1)
    assert tuple(map(int, python(ROOT / "environment.yml").split("."))) >= \
        tuple(map(int, low.split(".")))


def test_binder_installs_the_project_and_its_kernel():
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install" in post and " -e ." in post
    assert "python -m kernel_magic install" in post
    assert (ROOT / "binder" / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
