"""``Lab``: the notebook-side object that starts and talks to one lab process.

The client holds no privileges and no namespaces. It starts the lab process under
``unshare`` (user+net+mount+pid namespaces when unprivileged, net+mount+pid as root), sends
commands over a socket pair from a writer thread and receives replies and events (stats
samples, errors) on a reader thread. When the client's end of the socket closes, including
when the notebook process dies (even by kill -9), the lab process exits and its whole
network world goes with it.

The lab process runs in a session of its own: an interrupt of the notebook kernel (SIGINT to
the kernel's whole process group) or a Ctrl-C in a terminal reaches only the client, which
ends what it was waiting for; the lab, its rules and its other scripts stay. For the same
reason only the writer thread writes to the socket: a KeyboardInterrupt, which Python raises
in the main thread, can never cut a message in half.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from ..core import flows
from . import commands, limits, programs
from .errors import LabError
from .protocol import Connection, decode_error
from .handle import AttachedScript
from .description import load as load_description
from .topology import TOPOLOGIES, Host

_PKG_ROOT = str(Path(__file__).resolve().parents[2])
LAB_BACKENDS = ("namespaces", "xtlua-vm")
REPLAY_HINT = ("The replay backend needs no privileges and runs the same scripts over a pcap: "
               "`packetscript replay SCRIPT.lua CAPTURE.pcap` or packetscript_lab.replay(script, packets).")


def lab_command(python: str | None = None) -> list[str]:
    """The ``unshare`` prefix that gives the lab process its own namespaces."""
    argv = [require_program("unshare")]
    if os.geteuid() != 0:
        argv += ["--user", "--map-root-user"]
    argv += ["--net", "--mount", "--pid", "--fork", "--kill-child"]
    return argv + [python or sys.executable, "-m", "packetscript_lab.lab.process"]


def require_program(name: str) -> str:
    """The full path of a program the lab runs, or a one-line LabError naming its package."""
    try:
        return programs.find(name)
    except programs.ProgramMissing as exc:
        raise LabError(f"cannot start the lab: {exc}. {REPLAY_HINT}") from None


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = programs.search_path(env.get("PATH", ""))   # iptables-save, modinfo, ...
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def explain_start_failure(log: str) -> str:
    """Turn the lab process's last words into a reason and a way out."""
    low = log.lower()
    why = log.strip().splitlines()[-1] if log.strip() else "the lab process exited without a message"
    if "unshare failed" in low or "operation not permitted" in low or "no space left" in low:
        reason = ("this machine does not let this user create namespaces (user namespaces may be "
                  "disabled: see /proc/sys/user/max_user_namespaces and "
                  "kernel.unprivileged_userns_clone / AppArmor's restrict_unprivileged_userns)")
    elif "iptables" in low and ("not found" in low or "no such file" in low):
        reason = "iptables is not installed"
    elif "netfilter" in low or "nfqueue" in low:
        reason = "NFQUEUE is not available in this kernel"
    else:
        reason = "the lab process could not set up its network"
    return f"cannot start the lab: {reason} ({why}). {REPLAY_HINT}"


class Capture:
    """A capture started with ``Lab.capture(..., wait=False)``; ``packets()`` collects it."""

    def __init__(self, lab: "Lab", cid: int, count, timeout, raw):
        self._lab, self._cid, self._count, self._timeout, self._raw = lab, cid, count, timeout, raw

    def packets(self) -> list:
        frames = self._lab._call("capture_collect", cid=self._cid, count=self._count,
                                 timeout=self._timeout)
        return frames if self._raw else _to_scapy(frames)


def _to_scapy(frames: list[bytes]) -> list:
    import scapy.layers.inet  # noqa: F401  (binds IP/TCP/UDP/ICMP under Ether)
    # IPv6/ICMPv6 under Ether: scapy.layers.inet happens to load it today, by no promise
    import scapy.layers.inet6  # noqa: F401
    from scapy.layers.l2 import Ether

    return [Ether(f) for f in frames]


class Lab:
    """A private lab network in its own process; see docs/lab.md."""

    def __init__(self, topology="pair", sample_interval: float = 0.5, *,
                 ipv6: bool = False, iptables: str = "iptables", start_timeout: float = 30.0,
                 backend: str = "namespaces", _connect: str | None = None):
        # A preset name, a description dict or a .json/.yaml file: checked whole here, so a
        # bad description fails with one TopologyError before any process or namespace exists.
        # ipv6=True makes it dual-stack (as "ipv6": true in the description does).
        # backend: "namespaces" (namespaces on this machine) or "xtlua-vm" (the same lab
        # process inside a QEMU guest with the real xt_LUA module: vmlab.py).
        if backend not in LAB_BACKENDS:
            raise LabError(f"backend {backend!r}: choose one of {', '.join(LAB_BACKENDS)}")
        if not isinstance(ipv6, bool):
            raise LabError(f"ipv6 must be True (a dual-stack lab) or False, not {ipv6!r}")
        self.description = load_description(topology)
        if ipv6:
            self.description = load_description({**self.description, "ipv6": True})
        self.topology = self.description["name"]
        self.sample_interval = sample_interval
        self.attached: dict[str, AttachedScript] = {}
        self.events: collections.deque = collections.deque(maxlen=1000)
        self._series: dict[str, collections.deque] = {}
        self._ifaces: collections.deque = collections.deque(maxlen=2000)
        self._pending: dict[int, list] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._ready_msg: dict | None = None
        self._closed = False
        self._proc: subprocess.Popen | None = None
        self._log_fd: int | None = None
        self._last_log = ""
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.backend = backend
        self.vm = None            # the LabVM of an "xtlua-vm" lab (figures: self.vm.info())
        if _connect is not None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(_connect)
            except OSError as exc:
                s.close()
                raise LabError(f"no lab is running at {_connect.lstrip(chr(0))!r} ({exc}); "
                               "start one with `packetscript lab up`") from None
            self._conn = Connection(s)
        elif backend == "xtlua-vm":
            self._start_vm()
            start_timeout = max(start_timeout, self.vm.start_timeout)
        else:
            self._start(iptables)
        threading.Thread(target=self._reader, name="lab-reader", daemon=True).start()
        threading.Thread(target=self._writer, name="lab-writer", daemon=True).start()
        try:
            ready = self._ready.wait(start_timeout)
        except KeyboardInterrupt:          # interrupted while it starts: it must not linger
            self._shutdown_process()
            raise
        if not ready or self._ready_msg is None or self._ready_msg.get("event") != "ready":
            err = self._ready_msg.get("error") if self._ready_msg else None
            log = self.log()
            self._shutdown_process()
            if self.vm is not None:
                raise LabError(self.vm.explain_failure(log, err, ready, start_timeout))
            if err is not None:
                raise LabError(explain_start_failure(log + "\n" + err["message"]))
            raise LabError(explain_start_failure(log))
        self.hosts: dict[str, Host] = self._ready_msg["hosts"]
        self.topology = self._ready_msg["topology"]
        self.description = self._ready_msg.get("description", self.description)
        if self.vm is not None:
            self.vm.ready()

    # -- process --

    def _topology_arg(self) -> str:
        return self.topology if self.topology in TOPOLOGIES and self.description == \
            load_description(self.topology) else json.dumps(self.description)

    def _start_vm(self) -> None:
        from . import vmlab
        slot, extra = limits.for_new_lab()     # QEMU holds the account's lab slot
        try:
            self.vm = vmlab.start(self._topology_arg(), self.sample_interval, extra, slot)
        finally:
            if slot is not None:
                os.close(slot)
        self._proc, self._log_fd = self.vm.proc, self.vm.log_fd
        self._conn = Connection(self.vm.sock)
        self._heard = time.monotonic()
        self.vm.watch(lambda: self._heard, lambda: self._ready_msg is not None)

    def _start(self, iptables: str) -> None:
        argv = lab_command()
        iptables = require_program(iptables)   # an ordinary account's PATH has no /usr/sbin
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # The log file is unlinked at once and read through our descriptor: nothing stays
        # on disk whichever way either process ends.
        fd, path = tempfile.mkstemp(prefix="packetscript-lab-", suffix=".log")
        os.unlink(path)
        self._log_fd = fd
        topo = self._topology_arg()
        argv += ["--fd", str(child.fileno()), "--topology", topo,
                 "--interval", str(self.sample_interval), "--iptables", iptables]
        try:
            # The course's limits (limits.py): the lab process keeps this account's slot.
            slot, extra = limits.for_new_lab()
        except LabError:
            child.close()
            parent.close()
            raise
        try:
            # A session of its own: the kernel's interrupt (SIGINT to its process group) must
            # not reach the lab. It still ends with us: it exits when this socket closes.
            self._proc = subprocess.Popen(argv + extra, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                          pass_fds=(child.fileno(),) + ((slot,) if slot is not None else ()),
                                          env=child_env(), close_fds=True, start_new_session=True)
        except OSError as exc:
            raise LabError(f"cannot start the lab process: {exc}. {REPLAY_HINT}") from None
        finally:
            child.close()
            if slot is not None:
                os.close(slot)
        self._conn = Connection(parent)

    def log(self) -> str:
        """The lab process's stderr (tracebacks of failures end up here)."""
        if self._log_fd is None:
            return self._last_log
        try:
            size = os.fstat(self._log_fd).st_size
            return os.pread(self._log_fd, 4000, max(0, size - 4000)).decode(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        """PID of the ``unshare`` process started for this lab (None for a connected lab)."""
        return self._proc.pid if self._proc else None

    @property
    def lab_pid(self) -> int | None:
        """Host PID of the lab process itself (PID 1 of the lab's PID namespace)."""
        if not self._proc:
            return None
        try:
            kids = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text().split()
            return int(kids[0]) if kids else None
        except OSError:
            return None

    def _reader(self) -> None:
        while True:
            msg = self._conn.recv()
            if msg is None:
                break
            self._heard = time.monotonic()      # the VM lab's watchdog reads it
            if "id" in msg:
                with self._lock:
                    slot = self._pending.pop(msg["id"], None)
                if slot is not None:
                    slot[1] = msg
                    slot[0].set()
                continue
            ev = msg.get("event")
            if ev in ("ready", "fatal"):
                self._ready_msg = msg
                self._ready.set()
            elif ev == "sample":
                for name, s in msg["handles"].items():
                    s = dict(s, t=msg["t"])
                    self._series.setdefault(name, collections.deque(maxlen=20000)).append(s)
                self._ifaces.append({"t": msg["t"], **msg["ifaces"]})
            else:
                self.events.append(msg)
        self._closed = True
        self._ready.set()
        with self._lock:
            pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot[1] = {"err": {"type": "LabError", "message": "the lab process has ended"
                               + (f": {self.log().strip().splitlines()[-1]}" if self.log().strip() else "")}}
            slot[0].set()

    def _writer(self) -> None:
        # The only thread that writes to the socket (see the module's docstring).
        while True:
            item = self._outbox.get()
            if item is None:
                return
            mid, data = item
            try:
                self._conn.send_encoded(data)
            except OSError:
                with self._lock:
                    slot = self._pending.pop(mid, None)
                if slot is not None:
                    slot[1] = {"err": {"type": "LabError", "message": "the lab process has ended"}}
                    slot[0].set()

    def _call(self, cmd: str, _timeout: float | None = None, **args: Any) -> Any:
        if self._closed:
            raise LabError("this lab is closed")
        commands.check(cmd)
        mid = next(self._ids)
        data = Connection.encode({"id": mid, "cmd": cmd, "args": args})
        slot: list = [threading.Event(), None]
        with self._lock:
            self._pending[mid] = slot
        self._outbox.put((mid, data))
        if not slot[0].wait(_timeout):
            raise LabError(f"the lab did not answer {cmd!r} within {_timeout}s")
        reply = slot[1]
        if "err" in reply:
            raise decode_error(reply["err"])
        return reply["ok"]

    # -- lifecycle --

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """End the lab process (or, for a connected daemon lab, this session and its scripts)."""
        if not self._closed:
            try:
                self._call("close", _timeout=5)
            except LabError:
                pass
            self._closed = True
        self._shutdown_process()

    def _shutdown_process(self) -> None:
        self._closed = True
        self._outbox.put(None)
        try:
            self._conn.close()
        except Exception:
            pass
        if self.vm is not None:
            # the guest powers off once its lab process has ended; QEMU is killed otherwise
            self.vm.stop(10)
            self._last_log = self.vm.cleanup()
            self._log_fd = None
            return
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._log_fd is not None:
            # keep the text for error messages written after the process ended
            self._last_log = self.log()
            os.close(self._log_fd)
            self._log_fd = None

    @property
    def closed(self) -> bool:
        return self._closed

    # -- scripts --

    def attach(self, source: str, host: str = "server", table: str = "filter", chain: str = "INPUT",
               match: str = "-p udp --dport 9000", name: str | None = None, backend: str = "nfqueue",
               lua: str = "luajit", profile: str = "lab", on_error: str = "drop",
               budget: int = 1_000_000, fix_checksums: bool = True, on_overload: str = "accept",
               position: int | None = None, queue_len: int = 4096, record: int = 0,
               ip: int | None = None, queues: int = 1, **script_options: Any) -> AttachedScript:
        """Compile ``source`` and attach it to ``table``/``chain`` of ``host`` for ``match``.

        Raises ScriptError for compile errors, LabError for a bad hook or rule. ``on_overload``
        is the queue's policy when the worker falls behind: "accept" (fail open) or "drop";
        ``queue_len`` is how many packets may wait for a verdict before that policy applies.
        ``position`` inserts the rule at that 1-based position instead of appending it.
        ``record=N`` keeps the latest N packets' bytes for ``handle.record(DIR)``.
        ``ip`` is the IP version whose packets the rule takes: 4 or 6, or None for every
        version the lab has (IPv4, and IPv6 in a dual-stack lab, through the same queue).
        ``queues=N`` spreads the rule over N queues (``--queue-balance``, by address pair),
        one worker and one copy of the script each: a global is per queue (docs/lab.md).
        """
        if self.vm is not None:      # an emulated guest is slower: the time limits scale
            script_options = {**self.vm.script_time_limits(), **script_options}
        opts = dict(lua=lua, profile=profile, on_error=on_error, budget=budget,
                    fix_checksums=fix_checksums, **script_options)
        if record:
            # A recorded run keeps the latest `record` packets and a known random seed.
            if opts.get("seed") is None:
                import random
                opts["seed"] = random.randrange(1, 2**31)
            opts["keep"] = record
        info = self._call("attach", source=source, host=host, table=table, chain=chain,
                          match=match, name=name, backend=backend, on_overload=on_overload,
                          position=position, queue_len=queue_len, ip=ip, queues=queues, **opts)
        if record:
            opts.pop("worker", None)     # how the lab ran it, not an option of the script
            info = {**info, "keep": opts.pop("keep"), "source": source, "options": opts}
        h = AttachedScript(self, info)
        self.attached[h.name] = h
        return h

    def _attach_bare(self, host: str, table: str, chain: str, match: str, name: str = "bare",
                     on_overload: str = "accept", queues: int = 1) -> AttachedScript:
        """A baseline queue whose callback only accepts (for benchmarks)."""
        info = self._call("attach", source=None, host=host, table=table, chain=chain, match=match,
                          name=name, backend="bare", on_overload=on_overload, queues=queues)
        h = AttachedScript(self, info)
        self.attached[h.name] = h
        return h

    # -- traffic --

    def _frames(self, host: str, packets: Iterable) -> list[tuple[str, bytes]]:
        h = self.hosts[host]
        iface = h.interfaces[0]
        out = []
        if not isinstance(packets, (list, tuple)):
            try:
                packets = list(packets)
            except TypeError:
                packets = [packets]
        for p in packets:
            if isinstance(p, (bytes, bytearray)):
                out.append(("l3" if p[0] >> 4 in (4, 6) else "l2", bytes(p)))
                continue
            from scapy.layers.inet import IP
            from scapy.layers.inet6 import IPv6
            from scapy.layers.l2 import Ether

            p = p.copy()
            # Fill in lab addresses so scapy never resolves anything on the notebook's host.
            if p.haslayer(IP) and "src" not in p[IP].fields:
                p[IP].src = h.ip
            if p.haslayer(IPv6) and "src" not in p[IPv6].fields:
                if h.ip6 is None:
                    raise LabError(f"{host} has no IPv6 address: start the lab with ipv6=True")
                p[IPv6].src = h.ip6
            if isinstance(p, Ether):
                if "dst" not in p.fields:
                    p.dst = iface.peer_mac
                if "src" not in p.fields:
                    p.src = iface.mac
                out.append(("l2", bytes(p)))
            else:
                out.append(("l3", bytes(p)))
        return out

    def send(self, host: str, packets, iface: str | None = None, interval: float = 0.0) -> int:
        """Send scapy packets (or raw bytes) from ``host``: IP packets are routed by the host,
        Ethernet frames go out on ``iface`` (default: its first interface)."""
        if host not in self.hosts:
            raise LabError(f"no host {host!r}; hosts are {', '.join(self.hosts)}")
        return self._call("send", host=host, frames=self._frames(host, packets), iface=iface,
                          interval=interval)

    # The generators take ``ip=6`` to reach a host by its IPv6 address (dual-stack labs); a
    # ``dst`` written as an address goes by that address's version.
    ping = commands.forwarder("ping")
    udp_stream = commands.forwarder("udp_stream")
    udp_blast = commands.forwarder("udp_blast")
    tcp_echo = commands.forwarder("tcp_echo")

    def traffic(self, spec: str, seconds: float | None = None) -> list[dict]:
        """Run the flows of ``spec`` (the traffic language, docs/lab.md#traffic-language) at the
        same time and wait for them: one result row per flow, ``{"flow": ..., **result}`` or
        with ``"error"``. Flows without ``count=``/``duration=`` last ``seconds`` (default 5).
        A spec that cannot be understood raises ``TrafficError`` (a ``ValueError``)."""
        parsed = flows.parse_traffic(spec)
        flows.check_hosts(parsed, self.hosts)
        return flows.drive(self, parsed, flows.DEFAULT_SECONDS if seconds is None else seconds)

    def replay_pcap(self, host: str, path: str, iface: str | None = None, interval: float = 0.0,
                    rewrite_macs: bool = True) -> int:
        """Put a pcap's packets on the wire from ``host`` (Ethernet frames get the hop's MACs)."""
        return self._call("replay_pcap", host=host, path=os.path.abspath(path), iface=iface,
                          interval=interval, rewrite_macs=rewrite_macs)

    def capture(self, host: str, count: int | None = None, timeout: float = 2.0,
                bpf: str | None = None, iface: str | None = None, wait: bool = True,
                raw: bool = False):
        """Frames arriving at ``host`` (after the verdicts and rewrites of earlier hops).

        With ``wait=False`` the capture is started and a ``Capture`` is returned at once;
        send traffic, then call its ``packets()``.
        """
        cid = self._call("capture_start", host=host, bpf=bpf, iface=iface)
        cap = Capture(self, cid, count, timeout, raw)
        return cap if not wait else cap.packets()

    # -- inspection --

    def iptables(self, host: str, args: str | list[str]) -> str:
        """Run iptables with ``args`` inside a lab host (e.g. "-A INPUT -p udp -j DROP")."""
        import shlex

        argv = shlex.split(args) if isinstance(args, str) else list(args)
        return self._call("iptables", host=host, args=argv)

    iptables_save = commands.forwarder("iptables_save")
    ip6tables_save = commands.forwarder("ip6tables_save")
    interfaces = commands.forwarder("interfaces")

    def ip6tables(self, host: str, args: str | list[str]) -> str:
        """Run ip6tables with ``args`` inside a host of a dual-stack lab."""
        import shlex

        argv = shlex.split(args) if isinstance(args, str) else list(args)
        return self._call("ip6tables", host=host, args=argv)

    def interface_series(self) -> list[dict]:
        return list(self._ifaces)

    def draw(self):
        """A matplotlib figure of this lab's hosts, LANs and addresses (shows in a notebook)."""
        from .drawing import draw
        return draw(self.description)

    status = commands.forwarder("status")


def connect(address: str) -> Lab:
    """Connect to a lab started with ``packetscript lab up`` (see ``daemon.py``)."""
    return Lab(_connect=address)
