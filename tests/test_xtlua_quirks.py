"""README's xt_LUA column, row by row, against the real module (bench/xtlua_quirks.py).

Opt-in (deselected by default; one VM run of about 2.5 minutes under TCG, 2-3 boots: the
oops and the endless loop each cost a restart):

    PACKETSCRIPT_XTLUA_PATCHES=DIR .venv/bin/python -m pytest -m xtlua_vm tests/test_xtlua_quirks.py
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "xtlua_quirks", Path(__file__).parent.parent / "bench" / "xtlua_quirks.py")
quirks = importlib.util.module_from_spec(_spec)
sys.modules["xtlua_quirks"] = quirks      # dataclasses look their module up there
_spec.loader.exec_module(quirks)


@pytest.fixture(scope="module")
def measured():
    patches = os.environ.get("PACKETSCRIPT_XTLUA_PATCHES")
    if not patches:
        pytest.fail("set PACKETSCRIPT_XTLUA_PATCHES to OpenWrt's net/xtables-addons/patches")
    from packetscript_lab.xtlua.vm import XtLuaVM, build
    return {q.name: (observed, agrees) for q, observed, agrees, _ in
            quirks.run(XtLuaVM(build(patches, progress=lambda m: None)))}


@pytest.mark.xtlua_vm
@pytest.mark.parametrize("name", [q.name for q in quirks.QUIRKS])
def test_real_module_behaves_as_the_readme_says(measured, name):
    observed, agrees = measured[name]
    claim = next(q.claim for q in quirks.QUIRKS if q.name == name)
    assert agrees, f"{name}: expected {claim}; the module did: {observed}"
