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


# --- system packages: scripts/bootstrap.sh, binder/apt.txt and the README's admin line ------

# Debian packages whose files the code loads or runs at run time, and who needs them.
RUNTIME_PACKAGES = {
    "libpcap0.8": "scapy loads libpcap to compile BPF capture filters (Lab.capture(bpf=...))",
    "libnetfilter-queue-dev": "NetfilterQueue links against libnetfilter_queue (and builds with its headers)",
    "iptables": "the lab's rules",
}


def bootstrap_packages() -> list[str]:
    text = (ROOT / "scripts" / "bootstrap.sh").read_text()
    m = re.search(r"^apt_packages=\(([^)]*)\)", text, re.M)
    assert m, "scripts/bootstrap.sh has no apt_packages=(...) line"
    return m.group(1).split()


def apt_txt_packages() -> list[str]:
    lines = (ROOT / "binder" / "apt.txt").read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def test_bootstrap_and_binder_install_every_library_the_code_loads():
    for pkg, why in RUNTIME_PACKAGES.items():
        assert pkg in bootstrap_packages(), f"scripts/bootstrap.sh must install {pkg}: {why}"
        assert pkg in apt_txt_packages(), f"binder/apt.txt must list {pkg}: {why}"


def test_binder_apt_txt_lists_nothing_bootstrap_lacks():
    # build-essential is Ubuntu's compiler meta-package; bootstrap installs gcc and python3-dev
    extra = set(apt_txt_packages()) - set(bootstrap_packages()) - {"build-essential"}
    assert not extra, f"binder/apt.txt lists {sorted(extra)}, which scripts/bootstrap.sh does not install"


def test_readme_names_the_packages_an_administrator_installs():
    readme = (ROOT / "README.md").read_text()
    lines = [ln.split() for ln in readme.splitlines() if ln.startswith("apt-get install ")]
    assert len(lines) == 1, "README.md should show one `apt-get install ...` line for administrators"
    assert lines[0][2:] == bootstrap_packages()


def test_libpcap_is_installed_where_the_tests_run():
    """What bootstrap installs is there: scapy finds libpcap and compiles a filter with it."""
    from scapy.arch.common import compile_filter

    assert compile_filter("udp port 9000", linktype=1).bf_len > 0
