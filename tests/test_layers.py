"""No import runs up a floor (the floor plan: docs/CONTRACTS.md, "Layers").

Every import in the package and the extension, at module level or inside a function, is
read with ast; a module may import its own floor or lower ones only.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The first part of a module's name under packetscript_lab (or the extension) -> its floor.
FLOORS = {
    "core": 1, "xtlua": 1, "examples": 1,
    "script": 2, "judge": 2, "judge_child": 2, "runs": 2,
    "lab": 3, "backends": 3, "recording": 3, "__init__": 3,
    "cli": 4, "conformance": 4, "testing": 4, "__main__": 4,
}
EXTENSION = 5      # kernel_magic, the notebook extension: the top floor


def floor_of(module: str) -> int:
    """The floor of a dotted module name inside the project."""
    parts = module.split(".")
    if parts[0] == "kernel_magic":
        return EXTENSION
    return FLOORS[parts[1] if len(parts) > 1 else "__init__"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str):
    """(line, imported module) of every project import in ``path``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            # `from package import module` names a module; `from module import x` does not
            names = [f"{target}.{a.name}" for a in node.names] + [target]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ("packetscript_lab", "kernel_magic") and _is_module(name):
                yield node.lineno, name


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def sources():
    for top in ("packetscript_lab", "kernel_magic"):
        yield from sorted((ROOT / top).rglob("*.py"))


def test_every_module_has_a_floor():
    parts = [module_name(p).split(".") for p in sources()]
    unknown = {".".join(m) for m in parts
               if m[0] == "packetscript_lab" and len(m) > 1 and m[1] not in FLOORS}
    assert not unknown, f"give these modules a floor in FLOORS: {sorted(unknown)}"


def test_no_import_runs_up_a_floor():
    upward = []
    for path in sources():
        module = module_name(path)
        here = floor_of(module)
        for line, target in imports_of(path, module):
            if floor_of(target) > here:
                upward.append(f"{path.relative_to(ROOT)}:{line} (floor {here}) imports "
                              f"{target} (floor {floor_of(target)})")
    assert not upward, "imports that run up a floor:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The walk resolves relative imports: core reaching the lab would be caught."""
    core = ROOT / "packetscript_lab" / "core" / "flows.py"
    found = dict(imports_of(core, "packetscript_lab.core.flows"))
    assert all(floor_of(t) <= 1 for t in found.values())
    fake = tmp_path / "x.py"
    fake.write_text("from ..lab import client\n")
    targets = [t for _, t in imports_of(fake, "packetscript_lab.core.x")]
    assert "packetscript_lab.lab.client" in targets and floor_of("packetscript_lab.lab.client") == 3


def test_the_package_never_imports_the_notebook_extension():
    """kernel_magic sits on top: what the package needs from a notebook is handed down
    (testing.use_notebook), and packet facts such as frame builders live in core."""
    found = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for path in sorted((ROOT / "packetscript_lab").rglob("*.py"))
             for line, target in imports_of(path, module_name(path))
             if target.split(".")[0] == "kernel_magic"]
    assert not found, "the package imports the extension:\n" + "\n".join(found)
