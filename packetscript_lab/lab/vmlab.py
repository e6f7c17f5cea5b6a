"""The whole lab inside a micro-VM with the real xt_LUA: ``Lab(backend="xtlua-vm")``.

The lab process (lab/process.py) runs in the guest, which boots the built kernel with
xt_LUA loaded and chroots into the host's root (read-only), so it is the same program with
the same packages; iptables there is iptables-legacy with libxt_LUA.so on XTABLES_LIBDIR.
The host's ``Lab`` keeps talking the lab protocol over one socket: its other end is a QEMU
virtio-serial port in the guest, where `xtlua/vm/labguest.py` hands the bytes to the lab process.

Lifetime: the VM is the lab process. ``Lab.close()`` ends the lab process, the guest
powers off and QEMU exits; if the notebook process dies (kill -9 included) its end of the
socket closes, the guest sees the port hang up and powers off, and QEMU also gets SIGKILL
from the kernel when its parent dies (PR_SET_PDEATHSIG) in case the guest is stuck.
"""
from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..xtlua.vm.build import Build, BuildError, cache_dir, kvm_available, load_build
from ..xtlua.vm.machine import _SILENT_KVM, KVM_PROBE_SECONDS, MODULES, _rss_mb, initramfs, qemu_argv
from .errors import LabError

__all__ = ["ENV_KERNEL_LAB", "LAB_MODULES", "MEMORY_MB", "LabVM", "NoBuild",
           "lab_backend_for_kernel", "require_build", "start"]

# What the lab needs beyond the batch runner's modules: the port to the host, NFQUEUE and
# the matches of its queue rules, nat/raw tables and IPv6 tables for dual-stack labs.
# crc32c_generic first: libcrc32c (under nf_conntrack and nf_nat) asks for it by a soft
# dependency, which the initramfs's insmod does not follow.
LAB_MODULES = ("crc32c_generic", *MODULES, "virtio_console", "nfnetlink_queue", "xt_NFQUEUE",
               "xt_mark", "xt_tcpudp", "xt_conntrack", "iptable_nat", "iptable_raw",
               "ip6table_filter", "ip6table_mangle")
MEMORY_MB = 512
PORT_NAME = "packetscript-lab"
SILENCE_SECONDS = 90.0   # a lab that sent nothing (not even a stats sample) for this long is hung
BOOT_TIMEOUT = 240.0     # QEMU start to the lab's "ready" under TCG emulation, at most
LABGUEST = Path(__file__).resolve().parents[1] / "xtlua" / "vm" / "labguest.py"
IPTABLES = "/usr/sbin/iptables-legacy"     # the LUA extension is a legacy xtables one
ENV_KERNEL_LAB = "PACKETSCRIPT_KERNEL_LAB"  # where a kernel-backend lab runs: auto, vm or host


class NoBuild(LabError):
    """No xt_LUA build exists for the VM lab; the message says how to make one."""


def require_build() -> Build:
    try:
        build = load_build()
    except BuildError:
        raise NoBuild("the xt_LUA lab VM needs a built module and none exists: run "
                      "`packetscript kernel build --patches DIR` (DIR: OpenWrt's "
                      "net/xtables-addons/patches), then start the lab again; see "
                      "docs/kernel.md") from None
    for path in (build.vmlinuz, build.module, build.extension):
        if not Path(path).exists():
            raise NoBuild(f"the xt_LUA build is incomplete ({path} is missing): run "
                          "`packetscript kernel build --patches DIR` again")
    return build


def _die_with_parent() -> None:
    # In the child between fork and exec: SIGKILL when the process that started it ends.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)          # PR_SET_PDEATHSIG
    os.setsid()                            # the notebook's interrupt must not reach it


_spawns: queue.SimpleQueue = queue.SimpleQueue()


def _spawner() -> None:
    while True:
        fn, box, done = _spawns.get()
        try:
            box.append(fn())
        except BaseException as exc:       # handed to the caller
            box.append(exc)
        done.set()


_spawner_lock = threading.Lock()
_spawner_thread: list = []


def _from_lasting_thread(fn):
    """Run fn (a Popen) in a thread that lives as long as this process: PR_SET_PDEATHSIG
    fires when the *thread* that forked ends, and a Lab may be made in a short-lived one."""
    with _spawner_lock:
        if not _spawner_thread:
            t = threading.Thread(target=_spawner, name="lab-vm-spawner", daemon=True)
            t.start()
            _spawner_thread.append(t)
    box: list = []
    done = threading.Event()
    _spawns.put((fn, box, done))
    done.wait()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


class LabVM:
    """One QEMU process running the lab; ``sock`` is the host's end of the lab protocol."""

    def __init__(self, build: Build, lab_argv: list[str], env: dict, *, memory_mb: int = MEMORY_MB,
                 accel: str | None = None, pass_fds: tuple = ()):
        if shutil.which("qemu-system-x86_64") is None:
            raise LabError("the xt_LUA lab VM needs QEMU: apt-get install qemu-system-x86")
        accel = accel or os.environ.get("PACKETSCRIPT_VM_ACCEL")
        if accel not in (None, "kvm", "tcg"):
            raise LabError(f"PACKETSCRIPT_VM_ACCEL={accel!r}: choose kvm or tcg")
        self.forced_accel = accel is not None
        self.accel = accel or ("kvm" if kvm_available() and not _SILENT_KVM else "tcg")
        self.build, self.memory_mb = build, memory_mb
        self.initrd = initramfs(build, LAB_MODULES)
        jobs = cache_dir() / "jobs"
        jobs.mkdir(parents=True, exist_ok=True)
        _remove_stale_jobs(jobs)
        self.job = Path(tempfile.mkdtemp(prefix="lab-", dir=jobs))  # not /tmp: the guest mounts over it
        (self.job / "lab.json").write_text(json.dumps({"argv": lab_argv, "env": env}))
        self.console = self.job / "console.log"
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.log_fd: int | None = None
        self.started = 0.0
        self.boot_seconds: float | None = None     # QEMU start to the guest's init
        self.ready_seconds: float | None = None    # QEMU start to the lab's "ready"
        self.rss_mb = 0.0
        self.guest_memory: dict = {}               # MemTotal/MemAvailable before the lab process
        self.start_timeout = BOOT_TIMEOUT
        self._pass_fds = pass_fds
        self._last_console = ""
        self._qemu_log: str | None = None

    def _argv(self, fd: int) -> list[str]:
        xt = f"{Path(self.build.extension).parent}:{'/usr/lib/x86_64-linux-gnu/xtables'}"
        return qemu_argv(self.build, self.initrd, self.job, LABGUEST,
                         self.accel, self.memory_mb, xt) + [
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=lab,fd={fd}",
            "-device", f"virtserialport,chardev=lab,name={PORT_NAME}"]

    def launch(self) -> socket.socket:
        """Start QEMU; falls back to TCG when a KVM guest stays silent (nested KVM)."""
        self._launch()
        if self.accel == "kvm" and not self.forced_accel:
            end = time.monotonic() + KVM_PROBE_SECONDS
            while time.monotonic() < end and self.proc.poll() is None \
                    and not os.fstat(self.log_fd).st_size:
                time.sleep(0.1)
            if not os.fstat(self.log_fd).st_size:
                # Nested KVM can hang a guest before its first line; remembered for later VMs
                self.stop()
                _SILENT_KVM.append(True)
                self.accel = "tcg"
                self._launch()
        return self.sock

    def _launch(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Created before QEMU opens it, so our read-only descriptor sees what it writes.
        self.console.write_bytes(b"")
        if self.log_fd is not None:
            os.close(self.log_fd)
        self.log_fd = os.open(self.console, os.O_RDONLY)
        self.started = time.monotonic()
        try:
            with open(self.job / "qemu.log", "wb") as qlog:
                argv = self._argv(theirs.fileno())
                self.proc = _from_lasting_thread(lambda: subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog,
                    pass_fds=(theirs.fileno(), *self._pass_fds), preexec_fn=_die_with_parent))
        except OSError as exc:
            ours.close()
            raise LabError(f"cannot start QEMU for the xt_LUA lab: {exc}") from None
        finally:
            theirs.close()
        self.sock = ours
        (self.job / "qemu.pid").write_text(str(self.proc.pid))
        threading.Thread(target=self._watch_boot, args=(self.proc,), daemon=True,
                         name="lab-vm-boot").start()

    def _watch_boot(self, proc) -> None:
        # When the guest's init is up: the boot time of the docs' table.
        while proc.poll() is None and self.boot_seconds is None:
            try:
                if b"PSVM-READY" in self.console.read_bytes():
                    self.boot_seconds = round(time.monotonic() - self.started, 2)
            except OSError:
                return
            time.sleep(0.2)

    def ready(self) -> None:
        """Record the start-up figures once the lab has answered."""
        now = time.monotonic()
        self.ready_seconds = round(now - self.started, 2)
        text = self.console.read_text(errors="replace")
        if "PSVM-READY" in text and self.boot_seconds is None:
            self.boot_seconds = self.ready_seconds   # upper bound when not seen earlier
        self.rss_mb = round(_rss_mb(self.proc.pid), 1) if self.proc else 0.0
        for word in text.split("PSVM-LAB-STARTED", 1)[-1].split("\n", 1)[0].split():
            key, _, value = word.partition("=")
            if key in ("mem_total_kb", "mem_available_kb") and value.isdigit():
                self.guest_memory[key] = int(value)

    def watch(self, last_heard, is_up) -> None:
        """Power off a guest whose lab has gone silent: a script error leaves xt_LUA's lock
        held and the next packet hangs the whole guest (docs/kernel.md), which would leave
        every Lab call waiting. Ending QEMU closes the socket, so they fail instead."""
        proc = self.proc

        def run():
            while proc.poll() is None:
                time.sleep(1.0)
                if is_up() and time.monotonic() - last_heard() > SILENCE_SECONDS \
                        and proc.poll() is None:
                    with open(self.console, "a") as f:   # the Lab's log: its errors quote it
                        f.write(f"\nPSVM-HUNG the VM's lab sent nothing for {SILENCE_SECONDS:.0f} s "
                                "(a script error in xt_LUA hangs the guest at the next packet); "
                                "the VM was powered off: start a new lab\n")
                    proc.kill()
                    return
        threading.Thread(target=run, name="lab-vm-watchdog", daemon=True).start()

    def explain_failure(self, log: str, err: dict | None, answered: bool, timeout: float) -> str:
        """Why the VM's lab did not come up, with its console's last lines."""
        if err is not None:
            why = f"the lab process in the VM failed: {err.get('message')}"
        elif not answered:
            why = (f"the VM's lab did not answer within {timeout:.0f} s ({self.accel}; "
                   "TCG emulation is slow: set PACKETSCRIPT_VM_ACCEL=kvm where KVM works)")
        else:
            why = "the VM ended before its lab was ready"
        tail = "\n".join((log or self._last_console).strip().splitlines()[-12:])
        qemu = self.qemu_errors()
        return (f"cannot start the xt_LUA lab VM: {why}."
                + (f"\nQEMU: {qemu}" if qemu else "") + (f"\nconsole:\n{tail}" if tail else ""))

    def script_time_limits(self) -> dict:
        """Judge time limits for scripts compiled or judged in this guest: under TCG
        emulation starting a Lua runtime alone takes seconds, so the defaults (0.25 s a
        packet, 3 s for a top level or batch) would refuse ordinary scripts."""
        return {"time_limit": 2.5, "batch_time_limit": 30.0} if self.accel == "tcg" else {}

    def info(self) -> dict:
        return {"accel": self.accel, "memory_mb": self.memory_mb,
                "boot_seconds": self.boot_seconds, "ready_seconds": self.ready_seconds,
                "qemu_rss_mb": self.rss_mb, **self.guest_memory, "kernel": self.build.kernel_release,
                "pid": self.proc.pid if self.proc else None}

    def qemu_errors(self) -> str:
        if self._qemu_log is not None:
            return self._qemu_log
        try:
            return (self.job / "qemu.log").read_text(errors="replace").strip()[-1500:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Wait for QEMU to end (the guest powers off after the lab), killing it at `timeout`."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def cleanup(self) -> str:
        """Remove the job directory; returns the console's last text for error messages."""
        text = self._last_console
        if self.log_fd is not None:
            try:
                size = os.fstat(self.log_fd).st_size
                text = os.pread(self.log_fd, 4000, max(0, size - 4000)).decode(errors="replace")
            except OSError:
                pass
            os.close(self.log_fd)
            self.log_fd = None
            self._last_console = text
            self._qemu_log = self.qemu_errors()
        if not os.environ.get("PACKETSCRIPT_VM_KEEP"):
            shutil.rmtree(self.job, ignore_errors=True)
        return text


def _remove_stale_jobs(jobs: Path) -> None:
    """Job directories of VM labs whose QEMU is gone (its client was killed, so nothing
    removed them): the QEMU that used one has the directory's path in its command line."""
    for d in jobs.glob("lab-*"):
        try:
            pid = int((d / "qemu.pid").read_text())
            alive = str(d).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            try:
                alive = time.time() - d.stat().st_mtime < 600   # starting now, or unknown
            except OSError:
                continue
        if not alive:
            shutil.rmtree(d, ignore_errors=True)


def guest_env() -> dict:
    """The lab process's environment in the guest: this package on PYTHONPATH and the
    PACKETSCRIPT_* settings, but never the stand-in (the guest has the real module)."""
    pkg_root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items()
           if k.startswith("PACKETSCRIPT_") and k != "PACKETSCRIPT_XT_LUA_STANDIN"}
    env["PYTHONPATH"] = pkg_root
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(topology: str, interval: float, extra: list[str], slot: int | None = None) -> LabVM:
    """Boot a VM whose lab process serves the returned LabVM's socket."""
    build = require_build()
    argv = [sys.executable, "-m", "packetscript_lab.lab.process", "--topology", topology,
            "--interval", str(interval), "--iptables", IPTABLES, *extra]
    vm = LabVM(build, argv, guest_env(), pass_fds=(slot,) if slot is not None else ())
    vm.launch()
    return vm


def host_has_module() -> bool:
    """xt_LUA loaded or loadable on this machine, and iptables' LUA extension present
    (read-only checks: nothing is loaded or added)."""
    from packetscript_lab.xtlua import backend

    def run(argv):
        return subprocess.run(argv, capture_output=True, text=True, timeout=10)
    return bool(backend.detect(run))


def lab_backend_for_kernel() -> str:
    """The Lab backend a kernel-backend script needs here: "namespaces" when this machine
    has the module (or the tests' stand-in is on), else "xtlua-vm" when a build exists;
    NoBuild (what to run) when neither. PACKETSCRIPT_KERNEL_LAB=vm|host decides instead."""
    choice = os.environ.get(ENV_KERNEL_LAB, "auto").strip().lower() or "auto"
    if choice not in ("auto", "vm", "host"):
        raise LabError(f"{ENV_KERNEL_LAB}={choice!r}: choose auto, vm (the xt_LUA lab VM) or "
                       "host (this machine's own module)")
    if choice == "host" or (choice == "auto" and (
            os.environ.get("PACKETSCRIPT_XT_LUA_STANDIN") == "1" or host_has_module())):
        return "namespaces"
    try:
        require_build()
    except NoBuild:
        if choice == "vm":
            raise
        raise NoBuild("the xt_LUA module is not loadable on this machine and no build for "
                      "the lab VM exists: run `packetscript kernel build --patches DIR` (DIR: "
                      "OpenWrt's net/xtables-addons/patches) once, then run the cell again; "
                      "or use --backend nfqueue (same script, in userspace)") from None
    return "xtlua-vm"
