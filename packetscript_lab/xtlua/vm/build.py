"""Build the real xt_LUA module and libxt_LUA.so against a Debian kernel kept in a cache.

Nothing is installed on the host: the kernel image, its headers, busybox-static and Debian's
xtables-addons source are fetched with `apt-get download` and unpacked with `dpkg -x` into
the cache (`$PACKETSCRIPT_CACHE`, default ~/.cache/packetscript-lab). The LUA extension comes
from the user's directory of OpenWrt patches (net/xtables-addons/patches in openwrt/packages):
only the parts of those patches that touch `extensions/LUA/` are applied, because Debian's
xtables-addons-source carries the kernel modules only (no configure.ac, Mbuild or userspace
libraries) and the LUA directory is built on its own with Kbuild.

    missing = prerequisites(patches_dir)     # [] when everything needed is here
    result = build(patches_dir)              # -> Build (paths, versions, patch report)
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Build", "BuildError", "cache_dir", "prerequisites", "build", "load_build",
           "kvm_available"]

HOST_TOOLS = {   # program -> Debian package that provides it
    "gcc": "gcc", "make": "make", "patch": "patch", "apt-get": "apt",
    "dpkg": "dpkg", "qemu-system-x86_64": "qemu-system-x86", "ip": "iproute2",
    "iptables-legacy": "iptables",
}
XTABLES_HEADER = "/usr/include/xtables.h"          # libxtables-dev
XTABLES_LIBDIR = "/usr/lib/x86_64-linux-gnu/xtables"
LUA_DIR = "extensions/LUA/"


class BuildError(RuntimeError):
    """Something the build needs is missing or a step failed; the message says what to do."""


@dataclass
class Build:
    kernel_release: str          # e.g. 6.1.0-57-amd64
    kernel_package: str          # e.g. linux-image-6.1.0-57-amd64 6.1.192-3
    xtables_addons: str          # Debian's xtables-addons-source version
    patches_dir: str
    patches: list = field(default_factory=list)    # [{"file", "applied", "skipped", "notes"}]
    module: str = ""             # xt_LUA.ko
    extension: str = ""          # libxt_LUA.so
    vmlinuz: str = ""
    modules_root: str = ""       # lib/modules/<release> of the unpacked kernel
    busybox: str = ""
    seconds: float = 0.0

    def describe(self) -> str:
        lines = [f"kernel        {self.kernel_package} ({self.kernel_release})",
                 f"xtables-addons {self.xtables_addons} (Debian xtables-addons-source)",
                 f"patches       {self.patches_dir}"]
        for p in self.patches:
            state = "applied" if p["applied"] else "skipped"
            lines.append(f"  {p['file']}: {state} ({p['notes']})")
        lines += [f"xt_LUA.ko     {self.module}", f"libxt_LUA.so  {self.extension}",
                  f"vmlinuz       {self.vmlinuz}"]
        return "\n".join(lines)


def cache_dir() -> Path:
    return Path(os.environ.get("PACKETSCRIPT_CACHE")
                or Path.home() / ".cache" / "packetscript-lab")


def kvm_available() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def prerequisites(patches_dir: str | None) -> list[str]:
    """What is missing for a build and a VM run, each with what to do about it."""
    missing = []
    if not patches_dir:
        missing.append("no patches directory: download OpenWrt's net/xtables-addons/patches "
                       "(openwrt/packages on GitHub; at least 200-add-lua-packetscript.patch "
                       "and 201-fix-lua-packetscript.patch) and pass it with --patches DIR")
    elif not Path(patches_dir).is_dir():
        missing.append(f"patches directory {patches_dir} does not exist")
    elif not _lua_patches(Path(patches_dir)):
        missing.append(f"{patches_dir} holds no patch that adds extensions/LUA "
                       "(expected OpenWrt's 200-add-lua-packetscript.patch)")
    packages = sorted({pkg for prog, pkg in HOST_TOOLS.items() if shutil.which(prog) is None})
    if not Path(XTABLES_HEADER).exists():
        packages.append("libxtables-dev")
    if packages:
        missing.append("host packages missing: apt-get install " + " ".join(packages))
    return missing


def _lua_patches(d: Path) -> list[Path]:
    return [p for p in sorted(d.iterdir())
            if p.suffix in (".patch", ".diff") and f"b/{LUA_DIR}" in p.read_text(errors="replace")]


# --- Debian packages ---------------------------------------------------------------------------

def _run(argv, cwd=None, log=None, env=None) -> str:
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(map(str, argv))}\n{res.stdout}{res.stderr}\n")
    if res.returncode != 0:
        raise BuildError(f"{' '.join(map(str, argv))} failed ({res.returncode}):\n"
                         f"{(res.stderr or res.stdout)[-3000:]}")
    return res.stdout


def _depends(package: str) -> list[str]:
    out = _run(["apt-cache", "depends", package])
    return [line.split(":", 1)[1].strip() for line in out.splitlines()
            if line.strip().startswith("Depends:")]


def _version(package: str) -> str:
    out = _run(["apt-cache", "policy", package])
    m = re.search(r"Candidate:\s*(\S+)", out)
    if not m or m.group(1) == "(none)":
        raise BuildError(f"apt knows no package {package}: run apt-get update "
                         "(Debian's main archive is needed)")
    return m.group(1)


def fetch_packages(cache: Path, log: Path) -> dict:
    """apt-get download the kernel, headers, busybox-static and xtables-addons-source."""
    image = next((d for d in _depends("linux-image-amd64") if d.startswith("linux-image-")), None)
    headers = next((d for d in _depends("linux-headers-amd64")
                    if d.startswith("linux-headers-")), None)
    if not image or not headers:
        raise BuildError("apt-cache cannot resolve linux-image-amd64/linux-headers-amd64: "
                         "run apt-get update")
    wanted = [image, headers, "xtables-addons-source", "busybox-static"]
    wanted += [d for d in _depends(headers) if d.startswith(("linux-headers-", "linux-kbuild-"))]
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    versions = {p: _version(p) for p in wanted}
    need = [p for p in wanted
            if not glob.glob(str(debs / f"{p}_{versions[p].replace(':', '%3a')}_*.deb"))]
    if need:
        _run(["apt-get", "download", *need], cwd=debs, log=log)
    root = cache / "root"
    stamp = root / ".unpacked.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != versions:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for p in wanted:
            deb = glob.glob(str(debs / f"{p}_{versions[p].replace(':', '%3a')}_*.deb"))[0]
            _run(["dpkg", "-x", deb, str(root)], log=log)
        stamp.write_text(json.dumps(versions))
    release = image.removeprefix("linux-image-")
    return {"image": image, "versions": versions, "release": release, "root": root}


def _headers_dir(root: Path, release: str) -> Path:
    """The unpacked headers' Makefile includes /usr/src/...-common; point it into the cache."""
    hdir = root / "usr/src" / f"linux-headers-{release}"
    mk = hdir / "Makefile"
    text = mk.read_text()
    m = re.search(r"include\s+(/usr/src/\S+)", text)
    if m:
        mk.write_text(text.replace(m.group(1), str(root) + m.group(1)))
    return hdir


# --- patches -----------------------------------------------------------------------------------

def _split_patch(text: str) -> list[tuple[str, str]]:
    """[(target path, file diff)] of a unified diff, so each file can be kept or left out."""
    parts, current, target = [], [], None
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            if target is not None:
                parts.append((target, "".join(current)))
            target = lines[i + 1][4:].split("\t")[0].strip()
            target = target.split("/", 1)[1] if "/" in target else target
            current = [line, lines[i + 1]]
            i += 2
            continue
        if target is not None:
            current.append(line)
        i += 1
    if target is not None:
        parts.append((target, "".join(current)))
    return parts


def apply_patches(src: Path, patches_dir: Path, log: Path) -> list[dict]:
    report = []
    for patch in sorted(patches_dir.iterdir()):
        if patch.suffix not in (".patch", ".diff"):
            continue
        files = _split_patch(patch.read_text(errors="replace"))
        keep = [(t, d) for t, d in files if t.startswith(LUA_DIR)]
        skipped = sorted({t for t, _ in files if not t.startswith(LUA_DIR)})
        if not keep:
            report.append({"file": patch.name, "applied": False, "skipped": skipped,
                           "notes": "touches no extensions/LUA file"})
            continue
        res = subprocess.run(["patch", "-p1", "-N", "--no-backup-if-mismatch", "-F2"],
                             input="".join(d for _, d in keep), cwd=src, capture_output=True,
                             text=True)
        with open(log, "a") as f:
            f.write(f"$ patch -p1 < {patch} (extensions/LUA only)\n{res.stdout}{res.stderr}\n")
        if res.returncode != 0:
            raise BuildError(f"{patch.name} does not apply to Debian's xtables-addons source:\n"
                             f"{res.stdout[-2000:]}{res.stderr[-500:]}")
        fuzz = [ln for ln in res.stdout.splitlines() if "fuzz" in ln or "offset" in ln]
        notes = f"{len(keep)} LUA file(s)"
        if fuzz:
            notes += "; " + "; ".join(fuzz)
        if skipped:
            notes += "; left out (not the LUA extension): " + ", ".join(skipped)
        report.append({"file": patch.name, "applied": True, "skipped": skipped, "notes": notes})
    return report


# --- the build ---------------------------------------------------------------------------------

def _patch_hash(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.iterdir()):
        if p.suffix in (".patch", ".diff"):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def build(patches_dir: str, *, force: bool = False, progress=print) -> Build:
    import time
    missing = prerequisites(patches_dir)
    if missing:
        raise BuildError("cannot build xt_LUA:\n- " + "\n- ".join(missing))
    started = time.monotonic()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "build.log"
    pdir = Path(patches_dir).resolve()
    progress("fetching Debian packages (apt-get download, unpacked into the cache)...")
    pk = fetch_packages(cache, log)
    release, root = pk["release"], pk["root"]
    out = cache / "build" / f"{release}-{_patch_hash(pdir)}"
    record = out / "build.json"
    if record.exists() and not force:
        shutil.copyfile(record, cache / "latest-build.json")     # the one runs will use
        return load_build(record)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tarfile.open(root / "usr/src/xtables-addons.tar.bz2") as tar:
        tar.extractall(out / "src")
    src = out / "src/modules/xtables-addons"
    progress(f"applying the LUA parts of {pdir}...")
    report = apply_patches(src, pdir, log)
    lua = src / "extensions/LUA"
    if not (lua / "xt_LUA_target.c").exists():
        raise BuildError(f"after the patches of {pdir} there is no extensions/LUA/xt_LUA_target.c")
    progress(f"building xt_LUA.ko against {release} (a minute or so)...")
    hdir = _headers_dir(root, release)
    _run(["make", "-C", str(hdir), f"M={lua}", f"-j{os.cpu_count() or 1}", "modules"], log=log)
    progress("building libxt_LUA.so...")
    ext_dir = out / "xtables"
    ext_dir.mkdir()
    _run(["gcc", "-O2", "-shared", "-fPIC", f"-I{lua}", f"-I{lua.parent}", "-o",
          str(ext_dir / "libxt_LUA.so"), str(lua / "libxt_LUA.c")], log=log)
    mods = root / "lib/modules" / release
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    result = Build(kernel_release=release,
                   kernel_package=f"{pk['image']} {pk['versions'][pk['image']]}",
                   xtables_addons=pk["versions"]["xtables-addons-source"],
                   patches_dir=str(pdir), patches=report, module=str(lua / "xt_LUA.ko"),
                   extension=str(ext_dir / "libxt_LUA.so"), vmlinuz=str(vmlinuz),
                   modules_root=str(mods), busybox=str(root / "bin/busybox"),
                   seconds=round(time.monotonic() - started, 1))
    record.write_text(json.dumps(asdict(result), indent=1))
    (cache / "latest-build.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def load_build(path: str | Path | None = None) -> Build:
    """The last build (or the one recorded at `path`); BuildError when there is none."""
    path = Path(path) if path else cache_dir() / "latest-build.json"
    if not path.exists():
        raise BuildError("xt_LUA has not been built yet: run `packetscript kernel build "
                         "--patches DIR` first")
    return Build(**json.loads(path.read_text()))
