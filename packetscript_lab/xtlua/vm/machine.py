"""Boot the built kernel in QEMU with xt_LUA loaded and run a script over packets in it.

The VM is a plain QEMU guest with a small initramfs (busybox-static, the needed modules and
xt_LUA.ko). Its init mounts the host's root file system read-only over 9p and chroots into it,
so the guest uses the host's own python3, ip and iptables-legacy (with libxt_LUA.so added
through XTABLES_LIBDIR); a second 9p share, the job directory, is the only writable place the
guest sees of the host. The guest driver (`guest.py`) writes one result line per packet.

If the module hangs or crashes the guest, the run is cut at a deadline, the packet is
recorded as `hang` (or `crash` when the console shows an oops), and a new VM continues with
the next packet.

    vm = XtLuaVM(build)                    # build = packetscript_lab.xtlua.vm.build.load_build()
    run = vm.run(source, ip_packets)       # -> VMRun (per-packet results, boot seconds, memory)
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .build import Build, BuildError, XTABLES_LIBDIR, cache_dir, kvm_available

__all__ = ["XtLuaVM", "Case", "VMRun", "PacketResult", "GUEST_MAC", "ROUTER_MAC"]

GUEST_MAC, ROUTER_MAC = "02:77:00:00:00:01", "02:77:00:00:00:fe"   # c0 and r0 in guest.py
MODULES = ("9p", "9pnet_virtio", "virtio_pci", "veth", "iptable_mangle", "iptable_filter",
           "xt_comment")
MEMORY_MB = 256
KVM_PROBE_SECONDS = 10.0


class _SilentKvm(Exception):
    pass


_SILENT_KVM: list = []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class PacketResult:
    index: int
    verdict: str           # accept | drop | continue | not-seen | hang | crash
    data: bytes | None     # the IP packet that left the router (TTL decrement undone)
    error: str | None = None
    kmsg: list = field(default_factory=list)


@dataclass
class Case:
    name: str
    source: str
    packets: list            # IP packets (bytes)
    function: str | None = None
    state_id: int | None = None


@dataclass
class VMRun:
    results: list[PacketResult]
    boots: int
    boot_seconds: list[float]          # QEMU start to the guest's init being ready, per boot
    max_rss_mb: float                  # QEMU's resident memory, at most
    guest_memory: dict                 # MemTotal / MemAvailable inside the guest
    load_error: str | None = None      # iptables refused the rule (the script did not load)
    load_log: list = field(default_factory=list)
    accel: str = "kvm"
    note: str = ""


def _modinfo_depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    i = data.find(b"depends=")
    while i > 0 and data[i - 1] != 0:
        i = data.find(b"depends=", i + 1)
    if i < 0:
        return []
    value = data[i + 8:data.index(b"\0", i)].decode()
    return [d for d in value.split(",") if d]


def _module_closure(build: Build, names) -> list[Path]:
    """The .ko files for `names` and their dependencies, in loading order."""
    index = {}
    for ko in Path(build.modules_root).rglob("*.ko"):
        index[ko.stem.replace("-", "_")] = ko
    index["xt_LUA"] = Path(build.module)
    order: list[Path] = []

    def visit(name, trail=()):
        key = name.replace("-", "_")
        ko = index.get(key)
        if ko is None:
            builtin = Path(build.modules_root) / "modules.builtin"
            if builtin.exists() and f"/{name}.ko" in builtin.read_text().replace("-", "_"):
                return
            raise BuildError(f"module {name} not found in {build.modules_root}")
        if ko in order or key in trail:
            return
        for dep in _modinfo_depends(ko):
            visit(dep, trail + (key,))
        order.append(ko)
    for n in (*names, "xt_LUA"):
        visit(n)
    return order


def _cpio(entries) -> bytes:
    """A newc cpio archive of (name, mode, data) entries (directories have data None)."""
    out = io.BytesIO()
    ino = 1
    for name, mode, data in [*entries, ("TRAILER!!!", 0, b"")]:
        body = b"" if data is None else data
        nb = name.encode() + b"\0"
        head = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(nb), 0))
        out.write(head.encode() + nb)
        out.write(b"\0" * (-(110 + len(nb)) % 4))
        out.write(body)
        out.write(b"\0" * (-len(body) % 4))
        ino += 1
    return out.getvalue()


INIT = """#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /host
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
for m in $($B cat /modules/order); do $B insmod /modules/$m || echo "PSVM-INSMOD-FAILED $m"; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host || echo PSVM-NOROOT
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 job /host$psjob || echo PSVM-NOJOB
$B mount -t proc proc /host/proc
$B mount -t sysfs sys /host/sys
$B mount -t devtmpfs dev /host/dev
$B mount -t tmpfs tmp /host/tmp
$B mount -t tmpfs run /host/run
echo PSVM-READY
$B chroot /host /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin XTABLES_LIBDIR=$psxt \
    $pspython $psguest $psjob
echo PSVM-DONE
$B poweroff -f
"""


def initramfs(build: Build, modules=MODULES) -> Path:
    """Build (once per build and module list) the initramfs: busybox, the modules in order,
    the init script."""
    name = "initramfs.cpio.gz" if tuple(modules) == MODULES else \
        f"initramfs-{hashlib.sha1(' '.join(modules).encode()).hexdigest()[:10]}.cpio.gz"
    target = Path(build.extension).parent.parent / name
    if target.exists():
        return target
    mods = _module_closure(build, modules)
    entries = [("bin", 0o40755, None), ("modules", 0o40755, None),
               ("bin/busybox", 0o100755, Path(build.busybox).read_bytes()),
               ("init", 0o100755, INIT.encode())]
    entries += [(f"modules/{ko.name}", 0o100644, ko.read_bytes()) for ko in mods]
    entries.append(("modules/order", 0o100644, "\n".join(ko.name for ko in mods).encode()))
    target.write_bytes(gzip.compress(_cpio(entries), 6))
    return target


class XtLuaVM:
    """Runs scripts through the real module in throw-away VMs (one boot per run)."""

    def __init__(self, build: Build, *, memory_mb: int = MEMORY_MB, accel: str | None = None,
                 boot_timeout: float = 60.0, packet_timeout: float = 8.0):
        if shutil.which("qemu-system-x86_64") is None:
            raise BuildError("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
        self.build, self.memory_mb = build, memory_mb
        accel = accel or os.environ.get("PACKETSCRIPT_VM_ACCEL")
        if accel not in (None, "kvm", "tcg"):
            raise ValueError(f"accel {accel!r}: choose kvm or tcg")
        self.forced_accel = accel is not None
        self.accel = accel or ("kvm" if kvm_available() and not _SILENT_KVM else "tcg")
        self.note = "" if self.accel == "kvm" or self.forced_accel else \
            "/dev/kvm is not usable here: running under TCG emulation (slower)"
        self.boot_timeout, self.packet_timeout = boot_timeout, packet_timeout
        self.initrd = initramfs(build)
        # The extension dir comes first so the host's own extensions still load after it.
        self.xtables_libdir = f"{Path(build.extension).parent}:{XTABLES_LIBDIR}"

    def _command(self, job: Path) -> list[str]:
        return qemu_argv(self.build, self.initrd, job, Path(__file__).with_name("guest.py"),
                         self.accel, self.memory_mb, self.xtables_libdir)

    def run(self, source: str, packets: list[bytes], *, function: str | None = None,
            state_id: int | None = None) -> VMRun:
        """One script over `packets` (IP packets) in the real module."""
        return self.run_cases([Case("script", source, packets, function, state_id)])[0]

    def run_cases(self, cases: list["Case"]) -> list[VMRun]:
        """Several scripts, one after the other, in as few boots as the module allows."""
        jobs = cache_dir() / "jobs"
        jobs.mkdir(parents=True, exist_ok=True)
        job = Path(tempfile.mkdtemp(prefix="run-", dir=jobs))   # not /tmp: the guest mounts over it
        try:
            return self._run(job, cases)
        finally:
            if not os.environ.get("PACKETSCRIPT_VM_KEEP"):
                shutil.rmtree(job, ignore_errors=True)

    def _run(self, job: Path, cases: list["Case"]) -> list[VMRun]:
        spec = []
        for i, case in enumerate(cases):
            (job / f"case{i}.lua").write_text(case.source)
            spec.append({"name": case.name, "script": str(job / f"case{i}.lua"),
                         "function": case.function, "state": case.state_id,
                         "packets": [p.hex() for p in case.packets]})
        results: dict[tuple, PacketResult] = {}
        load_error: dict[int, str] = {}
        load_log: dict[int, list] = {}
        boots, boot_seconds, max_rss, guest_mem = 0, [], 0.0, {}
        start = (0, 0)
        while True:
            (job / "job.json").write_text(json.dumps({"cases": spec, "start": list(start)}))
            (job / "results.jsonl").unlink(missing_ok=True)
            if (job / "console.log").exists():     # kept per boot: the hang's kernel log
                (job / "console.log").rename(job / f"console-{boots}.log")
            boots += 1
            try:
                outcome = self._boot(job)
            except _SilentKvm:
                # Nested KVM (e.g. inside a Firecracker VM) can hang the guest before its
                # first line; TCG emulation is slower but works there.
                _SILENT_KVM.append(True)      # remembered for later VMs of this process
                self.accel, self.note = "tcg", ("KVM guest printed nothing within "
                                                f"{KVM_PROBE_SECONDS:.0f} s; fell back to TCG")
                outcome = self._boot(job)
            boot_seconds.append(outcome["boot"])
            max_rss = max(max_rss, outcome["rss"])
            lines = outcome["lines"]
            sending = None
            for rec in lines:
                if "guest_error" in rec:
                    raise RuntimeError(f"the VM's driver failed: {rec['guest_error']}\n"
                                       + outcome["console"][-2000:])
                if rec.get("ready"):
                    guest_mem = rec.get("meminfo", guest_mem)
                if "setup_error" in rec:
                    load_error[rec["case"]] = rec["setup_error"]
                    load_log[rec["case"]] = rec.get("kmsg", [])
                if rec.get("loaded"):
                    load_log[rec["case"]] = rec.get("kmsg", [])
                if "sending" in rec:
                    sending = (rec["case"], rec["sending"])
                if "index" in rec:
                    results[(rec["case"], rec["index"])] = PacketResult(
                        rec["index"], rec["verdict"],
                        bytes.fromhex(rec["data"]) if rec["data"] else None,
                        rec.get("error"), rec.get("kmsg", []))
            if outcome["finished"]:
                break
            if sending is None or sending in results:
                raise RuntimeError("the VM stopped outside a packet:\n"
                                   + outcome["console"][-3000:])
            console = outcome["console"]
            kind = "crash" if ("Oops" in console or "BUG:" in console
                               or "Kernel panic" in console) else "hang"
            results[sending] = PacketResult(
                sending[1], kind, None,
                f"the VM {'crashed' if kind == 'crash' else 'hung'} on this packet; "
                "restarted for the next",
                [ln for ln in console.splitlines()
                 if "LUA" in ln or "BUG" in ln or "Oops" in ln or "RIP" in ln][-8:])
            c, i = sending
            start = (c, i + 1) if i + 1 < len(cases[c].packets) else (c + 1, 0)
            if start[0] >= len(cases):
                break
        runs = []
        for c, case in enumerate(cases):
            ordered = [results.get((c, i)) or PacketResult(i, "missing", None, "no result")
                       for i in range(len(case.packets))]
            if c in load_error:
                ordered = []
            runs.append(VMRun(ordered, boots, boot_seconds, max_rss, guest_mem,
                              load_error.get(c), load_log.get(c, []), self.accel, self.note))
        return runs

    def _boot(self, job: Path) -> dict:
        started = time.monotonic()
        proc = subprocess.Popen(self._command(job), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        console_file, results_file = job / "console.log", job / "results.jsonl"
        boot, rss, last_size = None, 0.0, -1
        deadline = started + self.boot_timeout
        try:
            while proc.poll() is None:
                now = time.monotonic()
                rss = max(rss, _rss_mb(proc.pid))
                if boot is None and console_file.exists() \
                        and b"PSVM-READY" in console_file.read_bytes():
                    boot = now - started
                    deadline = now + self.boot_timeout
                size = results_file.stat().st_size if results_file.exists() else 0
                if size != last_size:
                    last_size = size
                    deadline = max(deadline, now + self.packet_timeout)
                if now > deadline:
                    break
                if (self.accel == "kvm" and not self.forced_accel
                        and now - started > KVM_PROBE_SECONDS and not _size(console_file)):
                    raise _SilentKvm()
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                proc.kill()
            qemu_out = proc.communicate()[0].decode(errors="replace")
        console = console_file.read_text(errors="replace") if console_file.exists() else ""
        if boot is None and "PSVM-READY" not in console:
            raise RuntimeError(f"the VM did not boot ({self.accel}): {qemu_out.strip()[-1500:]}"
                               f"\n{console[-3000:]}")
        lines = []
        if results_file.exists():
            for ln in results_file.read_text().splitlines():
                try:
                    lines.append(json.loads(ln))
                except ValueError:
                    pass        # a line cut by the hang
        return {"boot": round(boot if boot is not None else 0.0, 3), "rss": rss,
                "lines": lines, "console": console, "finished": "PSVM-DONE" in console}


def qemu_argv(build: Build, initrd: Path, job: Path, guest: Path, accel: str, memory_mb: int,
              xtables_libdir: str) -> list[str]:
    """QEMU with the built kernel, `initrd`, the host's root (read-only) and `job` shared
    over 9p; the guest's init runs `guest` (a python file) with the job directory."""
    accel_args = ["-accel", "kvm"] if accel == "kvm" else ["-accel", "tcg,tb-size=64"]
    append = (f"console=ttyS0 quiet panic=-1 oops=panic psjob={job} "
              f"psxt={xtables_libdir} pspython={sys.executable} psguest={guest}")
    return ["qemu-system-x86_64", *accel_args, "-m", str(memory_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{job / 'console.log'}",
            "-kernel", build.vmlinuz, "-initrd", str(initrd), "-append", append,
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=job,path={job},security_model=none",
            "-device", "virtio-9p-pci,fsdev=job,mount_tag=job"]


def _rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
