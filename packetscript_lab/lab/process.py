"""The lab process: owns the lab's namespaces, rules, queue workers and traffic.

Started by the client (``client.py``) inside new namespaces, as
``unshare [--user --map-root-user] --net --mount --pid --fork --kill-child python -m
packetscript_lab.lab.process ...``. It is PID 1 of its PID namespace: when it exits, every
process it started dies, and its network namespaces (held only by its descriptors) vanish
with their links and rules. It runs in a session of its own, so the client's interrupts
(a Jupyter kernel interrupt signals the kernel's whole process group) do not reach it. It
serves one client over an inherited socket (``--fd``) and exits when that socket closes,
which happens however the client ends, kill -9 included; or it serves clients on an inherited listening socket
(``--listen-fd``, daemon mode for ``packetscript lab up``) until told to shut down.

Every command runs in its own thread, so a long capture does not block a send.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback

from . import iptables as ipt
from . import programs, topology, traffic
from .accounting import Tally, account, parse_rule_counters, queue_rule_packets
from .nfqueue import QueueWorker
from .nfqnative import NativeQueueWorker, wanted as native_wanted
from .protocol import Connection, LabError, encode_error
from .stats import parse_nfqueue, parse_net_dev

MAX_QUEUES = 16
JUDGE_COUNTS = ("restarts", "timeouts", "crashes", "unjudged")


class Session:
    """One connected client: its outgoing messages and the scripts it attached."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = False
        self.handles: set[str] = set()
        threading.Thread(target=self._writer, name="lab-writer", daemon=True).start()

    def send(self, msg: dict) -> None:
        if not self.closed:
            self.outbox.put(msg)

    def _writer(self) -> None:
        # The only thread that writes to the socket: workers never block on a slow client.
        while True:
            msg = self.outbox.get()
            if msg is None:
                return
            try:
                self.conn.send(msg)
            except OSError:
                self.closed = True
                return

    def close(self) -> None:
        self.closed = True
        self.outbox.put(None)


class Attached:
    """Lab-side state of one attached script."""

    def __init__(self, name, host, table, chain, match, rule, queue_num, worker, thread,
                 options, session, backend):
        self.name, self.host, self.table, self.chain, self.match = name, host, table, chain, match
        self.rule, self.queue_num, self.worker, self.thread = rule, queue_num, worker, thread
        self.options, self.session, self.backend = options, session, backend
        self.past_errors: list[dict] = []
        self.internal_errors: list[dict] = []
        self.kernel_rule = None   # packetscript_lab.xtlua.backend.KernelRule (kernel backend)
        self.kernel_past: dict = {}  # counts of the rules that earlier replace() calls removed
        self.tally = Tally()         # the kernel's counters of its rule and queue, kept cumulative
        self.judge_past = dict.fromkeys(JUDGE_COUNTS, 0)  # wall-clock counts of replaced scripts

    def judge_counts(self) -> dict:
        """The wall-clock line's counts (restarts, timeouts, crashes, unjudged), all
        scripts this handle ran included."""
        script = self.worker.script if self.worker is not None else None
        now = script.counts() if script is not None else {}
        return {k: self.judge_past[k] + now.get(k, 0) for k in JUDGE_COUNTS}

    def info(self) -> dict:
        return {"name": self.name, "host": self.host, "table": self.table, "chain": self.chain,
                "match": self.match, "queue": self.queue_num, "backend": self.backend,
                "mark": ipt.mark_bit(self.queue_num) if self.queue_num is not None else None}


def _errors_of(script) -> list[dict]:
    """The engine's first errors (ScriptRuntimeError) as {"message", "line", "count"} dicts."""
    return [{"message": e.message, "line": e.line, "count": e.count} for e in script.errors]


def _insert_kernel_script(insert, source: str) -> None:
    """Give the kernel the script through a file that lives only while the rule is added:
    iptables copies the text into the rule, so nothing is left behind."""
    with tempfile.NamedTemporaryFile("w", prefix="packetscript-", suffix=".lua") as f:
        f.write(source)
        f.flush()
        try:
            insert(f.name)
        except RuntimeError as exc:
            raise LabError(f"the kernel module refused the script: {exc}") from None


class World:
    def __init__(self, topo: str, sample_interval: float, iptables_program: str):
        from .description import load
        self.description = load(json.loads(topo) if topo.startswith("{") else topo)
        self.topology = self.description["name"]
        self.sample_interval = sample_interval
        self.iptables_program = iptables_program
        self.started = time.time()
        self.hosts, self.spaces, self.ifindex = topology.build(self.description, iptables_program)
        self.tables = {n: ipt.IPTables(ns, iptables_program, functools.partial(self._rules_changed, n))
                       for n, ns in self.spaces.items()}
        self.attached: dict[str, Attached] = {}
        self.free_queues = list(range(MAX_QUEUES))
        self.lock = threading.Lock()
        # One reading of the kernel's counters at a time: readings that overtook each other
        # would look like counters that went back to zero (accounting.Tally).
        self.stats_lock = threading.RLock()
        self.captures: dict[int, traffic.Capture] = {}
        self.capture_seq = 0
        self.sessions: set[Session] = set()
        threading.Thread(target=self._sampler, name="lab-sampler", daemon=True).start()

    # -- helpers --

    def host(self, name: str) -> topology.Host:
        if name not in self.hosts:
            raise LabError(f"no host {name!r} in the {self.topology} topology; "
                           f"hosts are {', '.join(self.hosts)}")
        return self.hosts[name]

    def host_by_addr(self, name_or_ip: str) -> str:
        if name_or_ip in self.hosts:
            return name_or_ip
        h = topology.host_of_ip(self.hosts, name_or_ip)
        if h is None:
            raise LabError(f"{name_or_ip!r} is neither a lab host nor one of their addresses")
        return h

    def _rules_changed(self, host: str, done: bool) -> None:
        """Keep each worker's shortcut for XT_CONTINUE true: before any change to a host's
        rules the workers go back to NF_REPEAT (always right); afterwards each learns again
        whether its rule ends an accepting chain (docs/lab.md, Verdicts)."""
        with self.lock:
            mine = [a for a in self.attached.values()
                    if a is not None and a.host == host and a.worker is not None]
        for a in mine:
            a.worker.continue_accepts = False
        if done:
            for a in mine:
                try:
                    a.worker.continue_accepts = self.tables[host].ends_with_queue(
                        a.table, a.chain, a.queue_num)
                except LabError:
                    pass                 # reading failed: stay with NF_REPEAT

    def handle(self, name: str) -> Attached:
        if self.attached.get(name) is None:
            raise LabError(f"no script named {name!r} is attached")
        return self.attached[name]

    def _kernel_stats(self, host: str) -> tuple[dict, dict]:
        def read():
            try:
                with open("/proc/thread-self/net/netfilter/nfnetlink_queue") as f:
                    q = f.read()
            except FileNotFoundError:
                q = ""
            with open("/proc/thread-self/net/dev") as f:
                d = f.read()
            return q, d

        q, d = self.spaces[host].run(read)
        return parse_nfqueue(q), parse_net_dev(d)

    def _rule_counters(self, host: str) -> dict | None:
        """The host's rules with their counters, or None when they cannot be read now
        (the last counts read are then kept)."""
        try:
            return parse_rule_counters(self.tables[host].save_counters())
        except (OSError, LabError, ValueError):
            return None

    def handle_stats(self, a: Attached, queues: dict | None = None, rules: dict | None = None) -> dict:
        with self.stats_lock:
            return self._handle_stats(a, queues, rules)

    def _handle_stats(self, a: Attached, queues: dict | None, rules: dict | None) -> dict:
        if a.kernel_rule is not None:
            # The rule counters: packets that reached the script, and those that went on
            # (XT_CONTINUE); "stopped" is accepted + dropped, which counters cannot tell
            # apart. Changed bytes and script errors stay in the kernel (its log).
            c = a.kernel_rule.counters()
            stats = {k: c[k] + a.kernel_past.get(k, 0) for k in ("seen", "bytes", "continued", "stopped")}
            stats["queue_drops"] = 0
            # The module judges every packet in line: nothing waits, nothing passes unjudged.
            stats.update(account(stats["seen"], stats["seen"], 0, 0))
            return stats
        # Read in this order (rule counter, queue, worker), so that a packet that moves on
        # between two reads is never taken for one that passed unjudged (accounting.py).
        if rules is None:
            rules = self._rule_counters(a.host)
        if queues is None:
            queues = self._kernel_stats(a.host)[0]
        tally = a.tally
        matched = None if rules is None else queue_rule_packets(
            rules, a.table, a.chain, a.queue_num, ipt.mark_bit(a.queue_num))
        rule_packets = tally.total("rule_packets", matched)
        q = queues.get(a.queue_num)   # None while no listener is bound: keep the last counts
        kept = {k: tally.total(k, None if q is None else q[k])
                for k in ("queue_dropped", "user_dropped", "id_sequence")}
        backlog = q["queue_total"] if q is not None else 0
        s = a.worker.counters.snapshot() if a.worker else {}
        s["queue_dropped"] = kept["queue_dropped"]
        s["user_dropped"] = kept["user_dropped"]
        s["queue_drops"] = s["queue_dropped"] + s["user_dropped"]
        s["queued_total"] = kept["id_sequence"]  # packets ever handed to this queue
        s["queue_backlog"] = backlog
        s.update(account(rule_packets, s.get("seen", 0) + s.get("internal_errors", 0),
                         s["queue_drops"], backlog))
        if a.worker:
            s["first_t"], s["last_t"] = a.worker.first_t, a.worker.last_t
            s["worker"] = getattr(a.worker, "kind", "netfilterqueue")
        s.update(a.judge_counts())
        return s

    def interfaces(self) -> dict:
        return {h: self._kernel_stats(h)[1] for h in self.hosts}

    def _sampler(self) -> None:
        while True:
            time.sleep(self.sample_interval)
            try:
                with self.lock:
                    handles = [a for a in self.attached.values() if a is not None]
                    sessions = list(self.sessions)
                if not sessions:
                    continue
                with self.stats_lock:
                    # Rule counters first, then the queues, then the workers (handle_stats).
                    rules = {h: self._rule_counters(h)
                             for h in {a.host for a in handles if a.kernel_rule is None}}
                    per_host = {h: self._kernel_stats(h) for h in self.hosts}
                    t = time.time()
                    samples = [(sess, {a.name: self.handle_stats(a, per_host[a.host][0],
                                                                  rules.get(a.host))
                                       for a in handles if a.session is sess})
                               for sess in sessions]
                for sess, mine in samples:
                    sess.send({"event": "sample", "t": t, "handles": mine,
                               "ifaces": {h: v[1] for h, v in per_host.items()}})
            except Exception as exc:
                for sess in list(self.sessions):
                    sess.send({"event": "error", "where": "sampler", "message": repr(exc)})

    # -- scripts --

    def _compile(self, source: str, name: str, options: dict):
        """The script in its own watched process (Judge): a script that hangs in a C
        function or kills its runtime costs a packet's verdict, never this process."""
        from packetscript_lab.judge import Judge

        return Judge(source, name=name, **options)

    def attach(self, sess: Session, source: str | None, host: str, table: str = "filter",
               chain: str = "INPUT", match: str = "", name: str | None = None,
               backend: str = "nfqueue", on_overload: str = "accept", position: int | None = None,
               queue_len: int = 4096, **options) -> dict:
        self.host(host)
        ipt.check_hook(table, chain)
        if on_overload not in ("accept", "drop"):
            raise ValueError("on_overload must be 'accept' (fail open) or 'drop'")
        if not isinstance(queue_len, int) or isinstance(queue_len, bool) or not 1 <= queue_len <= 65536:
            raise ValueError(f"queue_len must be a whole number of packets from 1 to 65536, "
                             f"not {queue_len!r}")
        if backend not in ("nfqueue", "kernel", "bare"):
            raise ValueError("backend must be 'nfqueue' or 'kernel'")
        # keep: how many of the latest packets' bytes to keep for a recorded run (recording.py)
        # worker: "native" or "python" (NetfilterQueue) queue worker; default native on LuaJIT
        worker_choice = options.pop("worker", None)
        native_wanted(None, worker_choice)           # a bad choice fails before anything starts
        keep = options.pop("keep", 0)
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= 100_000:
            raise ValueError(f"keep must be a number of packets from 0 to 100000, not {keep!r}")
        with self.lock:
            if name is None:
                i = 1
                while f"script{i}" in self.attached:
                    i += 1
                name = f"script{i}"
            if name in self.attached:
                raise LabError(f"a script named {name!r} is already attached; detach it or pick another name")
            self.attached[name] = None  # reserve the name
        try:
            if backend == "kernel":
                return self._attach_kernel(sess, source, host, table, chain, match, name, options)
            script = None if backend == "bare" else self._compile(source, name, options)
            with self.lock:
                if not self.free_queues:
                    raise LabError(f"at most {MAX_QUEUES} scripts can be attached at once")
                qnum = self.free_queues.pop(0)
            bit = ipt.mark_bit(qnum)
            egress = chain in ipt.EGRESS_CHAINS
            eth = topology.eth_headers(self.hosts[host], egress, self.ifindex[host])

            def on_event(ev, name=name):
                ev["script"] = name
                sess.send(ev)

            worker_class = NativeQueueWorker if native_wanted(script, worker_choice) else QueueWorker
            worker = worker_class(qnum, bit, script, eth, egress, on_overload == "accept", on_event,
                                 error_verdict=options.get("on_error", "drop"), max_len=queue_len,
                                 ring=max(200, keep))
            thread = self.spaces[host].thread(worker.run, name=f"nfq-{name}")
            try:
                worker.wait_bound()
                rule = ipt.queue_rule(chain, match, qnum, bit)
                self.tables[host].add(table, rule, position)
            except BaseException:
                worker.stop()
                thread.join(2)
                with self.lock:
                    self.free_queues.append(qnum)
                raise
            a = Attached(name, host, table, chain, match, rule, qnum, worker, thread, options, sess,
                         backend)
            with self.lock:
                self.attached[name] = a
            self._rules_changed(host, True)
            sess.handles.add(name)
            return a.info()
        except BaseException:
            with self.lock:
                if self.attached.get(name) is None:
                    self.attached.pop(name, None)
            raise

    def _kernel_runner(self, host: str):
        """Runs programs in the host's namespace for the kernel backend. Tests set
        PACKETSCRIPT_XT_LUA_STANDIN=1 to go through the stand-in for the xt_LUA module,
        which cannot be loaded on machines without loadable modules (kernel/standin.py)."""
        def run(argv):
            return self.spaces[host].sh(argv, check=False)

        if os.environ.get("PACKETSCRIPT_XT_LUA_STANDIN") == "1":
            from packetscript_lab.xtlua.standin import StandInLuaTarget

            return StandInLuaTarget(run)
        return run

    def _attach_kernel(self, sess, source, host, table, chain, match, name, options) -> dict:
        # Detection, the install route and the rules live in packetscript_lab.xtlua.backend.
        from packetscript_lab.xtlua import backend as kernel_backend

        run = self._kernel_runner(host)
        try:
            kernel_backend.require(run, self.iptables_program)
        except kernel_backend.KernelModuleMissing as exc:
            raise LabError(str(exc)) from None
        self._compile(source, name, {**options, "profile": "kernel"}).close()  # ScriptError before any rule
        rule = kernel_backend.KernelRule(run, tag=f"packetscript:{name}", table=table, chain=chain,
                                         match=match, function=options.get("function"),
                                         state_id=options.get("state_id"),
                                         program=self.iptables_program)
        self._rules_changed(host, False)
        try:
            _insert_kernel_script(rule.insert, source)
        finally:
            self._rules_changed(host, True)
        a = Attached(name, host, table, chain, match, None, None, None, None, options, sess, "kernel")
        a.kernel_rule = rule
        with self.lock:
            self.attached[name] = a
        sess.handles.add(name)
        return a.info()

    def replace(self, name: str, source: str) -> dict:
        a = self.handle(name)
        if a.kernel_rule is not None:
            self._compile(source, name, {**a.options, "profile": "kernel"}).close()
            before = self.handle_stats(a)
            self._rules_changed(a.host, False)
            try:
                _insert_kernel_script(a.kernel_rule.replace, source)
            finally:
                self._rules_changed(a.host, True)
            a.kernel_past = before   # the new rules count from zero; the handle's counts go on
            return a.info()
        if a.worker is None or a.worker.script is None:
            raise LabError(f"script {name!r} ({a.backend} backend) cannot be replaced in place")
        new = self._compile(source, name, a.options)  # compile errors leave the old one running
        old = a.worker.script
        a.worker.script = new  # one attribute store: the next packet sees the new script
        a.past_errors.extend(_errors_of(old))
        old.close()                # waits for a batch the worker may still be judging with it
        for key, value in old.counts().items():
            a.judge_past[key] += value
        return a.info()

    def detach(self, name: str) -> dict:
        a = self.handle(name)
        with self.lock:
            self.attached[name] = None  # no new commands on it while it goes
        final = self.handle_stats(a) if a.kernel_rule is not None else None
        if a.worker is not None:
            self.handle_stats(a)   # the rule's last count, read while the rule still exists
        try:
            if a.kernel_rule is not None:
                self._rules_changed(a.host, False)
                try:
                    a.kernel_rule.remove()
                finally:
                    self._rules_changed(a.host, True)
            else:
                self.tables[a.host].delete(a.table, a.rule)
        finally:
            if a.worker is not None:
                a.worker.drain()
                # Counted before the worker unbinds: the queue's counters go with its binding.
                final = self._drained_stats(a)
                a.worker.stop()
                a.thread.join(5)
                if a.worker.script is not None:
                    a.worker.script.close()
                with self.lock:
                    self.free_queues.append(a.queue_num)
                    self.free_queues.sort()
            with self.lock:
                self.attached.pop(name, None)
            a.session.handles.discard(name)
        return final

    def _drained_stats(self, a: Attached, limit: float = 10.0, stall: float = 1.0) -> dict:
        """Stats once the queue is empty: packets still queued when the worker unbinds are
        dropped by the kernel unjudged. Waits while the worker makes progress, at most
        ``limit`` seconds; whatever is left is reported as ``in_flight``."""
        end = time.monotonic() + limit
        s = self.handle_stats(a, rules={})   # rules={}: the rule is gone, keep its last count
        progress_at, judged = time.monotonic(), s["judged"]
        while s["in_flight"] and time.monotonic() < end and time.monotonic() - progress_at < stall:
            time.sleep(0.05)
            s = self.handle_stats(a, rules={})
            if s["judged"] != judged:
                progress_at, judged = time.monotonic(), s["judged"]
        return s

    def errors(self, name: str) -> list[dict]:
        a = self.handle(name)
        script = a.worker.script if a.worker else None
        return a.past_errors + (_errors_of(script) if script is not None else [])

    def output(self, name: str) -> list[str]:
        a = self.handle(name)
        script = a.worker.script if a.worker else None
        return list(getattr(script, "output", []) or [])

    # -- traffic --

    def iface_of(self, host: str, iface: str | None) -> str:
        h = self.host(host)
        if iface is None:
            return h.ifname
        if iface not in {i.ifname for i in h.interfaces}:
            raise LabError(f"host {host!r} has no interface {iface!r}")
        return iface

    def send(self, host: str, frames: list, iface: str | None = None, interval: float = 0.0) -> int:
        return traffic.send_frames(self.spaces[host], self.iface_of(host, iface), frames, interval)

    def ping(self, src: str, dst: str, **kw) -> dict:
        self.host(src)
        return traffic.ping(self.spaces[src], topology.resolve(self.hosts, dst), **kw)

    def udp_stream(self, src: str, dst: str, receiver: str | None = None, **kw) -> dict:
        self.host(src)
        addr = topology.resolve(self.hosts, dst)
        rx = receiver or self.host_by_addr(dst)
        self.host(rx)
        return traffic.udp_stream(self.spaces[src], self.spaces[rx], addr, **kw)

    def tcp_echo(self, src: str, dst: str, receiver: str | None = None, **kw) -> dict:
        self.host(src)
        addr = topology.resolve(self.hosts, dst)
        rx = receiver or self.host_by_addr(dst)
        return traffic.tcp_echo(self.spaces[src], self.spaces[rx], addr, **kw)

    def udp_blast(self, src: str, dst: str, **kw) -> dict:
        self.host(src)
        return traffic.udp_blast(self.spaces[src], topology.resolve(self.hosts, dst), **kw)

    def replay_pcap(self, host: str, path: str, iface: str | None = None, interval: float = 0.0,
                    rewrite_macs: bool = True) -> int:
        ifname = self.iface_of(host, iface)
        i = next(i for i in self.hosts[host].interfaces if i.ifname == ifname)
        frames = traffic.read_pcap(path, topology._mac_bytes(i.mac), topology._mac_bytes(i.peer_mac),
                                   rewrite_macs)
        return traffic.send_frames(self.spaces[host], ifname, frames, interval)

    def capture_start(self, host: str, bpf: str | None = None, iface: str | None = None) -> int:
        h = self.host(host)
        names = [self.iface_of(host, iface)] if iface else [i.ifname for i in h.interfaces]
        cap = traffic.Capture(self.spaces[host], names, bpf)
        with self.lock:
            self.capture_seq += 1
            self.captures[self.capture_seq] = cap
            return self.capture_seq

    def capture_collect(self, cid: int, count: int | None = None, timeout: float = 2.0) -> list[bytes]:
        with self.lock:
            cap = self.captures.pop(cid, None)
        if cap is None:
            raise LabError(f"no capture {cid}")
        return cap.collect(count, timeout)

    def status(self) -> dict:
        with self.lock:
            attached = {n: a.info() for n, a in self.attached.items() if a is not None}
        return {"topology": self.topology, "description": self.description, "hosts": self.hosts, "attached": attached,
                "pid": os.getpid(), "uid_in_lab": os.getuid(), "uptime": time.time() - self.started,
                "iptables": self.iptables_program, "interfaces": self.interfaces(),
                "sample_interval": self.sample_interval}

    def end_session(self, sess: Session) -> None:
        for name in list(sess.handles):
            try:
                self.detach(name)
            except Exception:
                pass
        with self.lock:
            self.sessions.discard(sess)
        sess.close()


def _dispatch(world: World, sess: Session, cmd: str, args: dict):
    if cmd == "attach":
        return world.attach(sess, **args)
    if cmd == "replace":
        return world.replace(args["name"], args["source"])
    if cmd == "detach":
        return world.detach(args["name"])
    if cmd == "stats":
        return world.handle_stats(world.handle(args["name"]))
    if cmd == "recent":
        worker = world.handle(args["name"]).worker
        return worker.recent.entries(args.get("limit")) if worker else []
    if cmd == "recorded":
        # The kept packets as the script saw them (Ethernet frames) and what it did, for a record.
        worker = world.handle(args["name"]).worker
        if worker is None:
            return []
        return [(t, eth + before, None if after is None else eth + after, verdict,
                 None if error is None else str(error))
                for t, before, after, verdict, error, eth in worker.recent.items()]
    if cmd == "errors":
        return world.errors(args["name"])
    if cmd == "output":
        return world.output(args["name"])
    if cmd == "iptables":
        world.host(args["host"])
        return world.tables[args["host"]].run(args["args"])
    if cmd == "iptables_save":
        world.host(args["host"])
        return world.tables[args["host"]].save()
    if cmd == "interfaces":
        return world.interfaces()
    if cmd == "status":
        return world.status()
    if cmd == "ping":
        return world.ping(**args)
    if cmd in ("send", "udp_stream", "udp_blast", "tcp_echo", "replay_pcap", "capture_start", "capture_collect"):
        return getattr(world, cmd)(**args)
    raise LabError(f"unknown lab command {cmd!r}")


def serve_session(world: World, conn: Connection, daemon: bool) -> bool:
    """Handle one client until it disconnects. Returns True when the lab should end."""
    sess = Session(conn)
    with world.lock:
        world.sessions.add(sess)
    sess.send({"event": "ready", "hosts": world.hosts, "topology": world.topology,
               "description": world.description,
               "pid": os.getpid(), "daemon": daemon})
    shutdown = threading.Event()

    def run(msg: dict) -> None:
        mid, cmd = msg.get("id"), msg.get("cmd")
        try:
            if cmd in ("close", "shutdown"):
                sess.send({"id": mid, "ok": True})
                if cmd == "shutdown" or not daemon:
                    shutdown.set()
                return
            sess.send({"id": mid, "ok": _dispatch(world, sess, cmd, msg.get("args") or {})})
        except BaseException as exc:
            sess.send({"id": mid, "err": encode_error(exc)})

    while not shutdown.is_set():
        msg = conn.recv()
        if msg is None:
            break
        threading.Thread(target=run, args=(msg,), name=f"cmd-{msg.get('cmd')}", daemon=True).start()
        if msg.get("cmd") == "shutdown" or (msg.get("cmd") == "close" and not daemon):
            shutdown.wait(2)
    if daemon and not shutdown.is_set():
        world.end_session(sess)
        return False
    # Let the writer flush the last reply before the process goes.
    deadline = time.monotonic() + 1
    while not sess.outbox.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


def _peer_is_owner(sock: socket.socket) -> bool:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="packetscript_lab.lab.process")
    p.add_argument("--fd", type=int, help="connected socket to one client")
    p.add_argument("--listen-fd", type=int, help="listening socket (daemon mode)")
    p.add_argument("--topology", default="pair")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--iptables", default="iptables")
    a = p.parse_args(argv)

    # Nothing may write to the client through stdout; stray output goes to the log.
    os.dup2(2, 1)
    # iptables-save, modinfo ... live in sbin, which an ordinary account's PATH lacks.
    os.environ["PATH"] = programs.search_path()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: os._exit(0))  # PID 1 ignores signals without handlers

    sock = socket.socket(fileno=a.listen_fd if a.listen_fd is not None else a.fd)
    from packetscript_lab.judge import keep_process_ready
    keep_process_ready()   # replace() then costs a compile, not a Python start-up
    try:
        world = World(a.topology, a.interval, a.iptables)
    except BaseException as exc:
        traceback.print_exc()
        msg = {"event": "fatal", "error": encode_error(exc)}
        if a.listen_fd is None:
            Connection(sock).send(msg)
        return 1

    if a.listen_fd is None:
        serve_session(world, Connection(sock), daemon=False)
        os._exit(0)
    # Daemon: one session at a time per connection, each in its own thread.
    sys.stdout.flush()
    ended = threading.Event()

    def serve(c: socket.socket) -> None:
        if serve_session(world, Connection(c), daemon=True):
            ended.set()

    sock.settimeout(0.5)
    while not ended.is_set():
        try:
            c, _ = sock.accept()
        except socket.timeout:
            continue
        c.settimeout(None)
        if not _peer_is_owner(c):
            c.close()
            continue
        threading.Thread(target=serve, args=(c,), name="lab-session", daemon=True).start()
    time.sleep(0.2)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
