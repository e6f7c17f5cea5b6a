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

Every command (the table of ``commands.py``) runs in its own thread, so a long capture
does not block a send.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import traceback

from ..core.netutil import mac_bytes
from . import iptables as ipt
from . import commands, programs, topology, traffic
from .accounting import account, parse_rule_counters, queue_rule_packets
from .attached import Attached, KernelRun, kernel_runner
from .fanout import Fan, Scripts, check_queues, take_queues
from .nfqueue import QueueWorker
from .nfqnative import NativeQueueWorker, wanted as native_wanted
from .errors import LabError
from .protocol import Connection, encode_error
from .stats import parse_nfqueue, parse_net_dev

MAX_QUEUES = 16


class ClientSession:
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


class World:
    def __init__(self, topo: str, sample_interval: float, iptables_program: str, budget=None):
        from .description import load
        self.budget = budget   # limits.PacketBudget when the course limits packets per second
        self.description = load(json.loads(topo) if topo.startswith("{") else topo)
        self.topology = self.description["name"]
        self.sample_interval = sample_interval
        self.iptables_program = iptables_program
        self.ipv6 = bool(self.description.get("ipv6"))
        ip6 = ipt.ip6tables_program(iptables_program) if self.ipv6 else None
        self.started = time.time()
        self.hosts, self.spaces, self.ifindex = topology.build(self.description, iptables_program, ip6)
        self.tables = {n: ipt.IPTables(ns, iptables_program, functools.partial(self._rules_changed, n))
                       for n, ns in self.spaces.items()}
        # A dual-stack lab's IPv6 rules: {IP version: {host: IPTables}}.
        self.tables_of = {4: self.tables}
        if ip6:
            self.tables_of[6] = {n: ipt.IPTables(ns, ip6, functools.partial(self._rules_changed, n))
                                 for n, ns in self.spaces.items()}
        self.attached: dict[str, Attached] = {}
        self.free_queues = list(range(MAX_QUEUES))
        self.lock = threading.Lock()
        # One reading of the kernel's counters at a time: readings that overtook each other
        # would look like counters that went back to zero (accounting.Tally).
        self.stats_lock = threading.RLock()
        self.captures: dict[int, traffic.Capture] = {}
        self.capture_seq = 0
        self.sessions: set[ClientSession] = set()
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
                    a.worker.continue_accepts = all(self.tables_of[v][host].ends_with_queue(
                        a.table, a.chain, a.queues) for v in a.versions)
                except LabError:
                    pass                 # reading failed: stay with NF_REPEAT

    @contextlib.contextmanager
    def changing_rules(self, host: str):
        """Around a change of ``host``'s rules (see _rules_changed)."""
        self._rules_changed(host, False)
        try:
            yield
        finally:
            self._rules_changed(host, True)

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
            return {v: parse_rule_counters(t[host].save_counters()) for v, t in self.tables_of.items()}
        except (OSError, LabError, ValueError):
            return None

    def handle_stats(self, a: Attached, queues: dict | None = None, rules: dict | None = None) -> dict:
        with self.stats_lock:
            return self._handle_stats(a, queues, rules)

    def _handle_stats(self, a: Attached, queues: dict | None, rules: dict | None) -> dict:
        if isinstance(a, KernelRun):
            return a.stats()
        # Read in this order (rule counter, queue, worker), so that a packet that moves on
        # between two reads is never taken for one that passed unjudged (accounting.py).
        if rules is None:
            rules = self._rule_counters(a.host)
        if queues is None:
            queues = self._kernel_stats(a.host)[0]
        tally = a.tally
        # One queue for both IP versions: its rule counters add up (each kept on its own).
        rule_packets = sum(tally.total(f"rule_packets{v}", None if rules is None else queue_rule_packets(
            rules.get(v, {}), a.table, a.chain, a.queues, ipt.mark_bit(a.queue_num)))
            for v in a.versions)
        # A rule balanced over several queues (queues=N): their counters add up.
        kept = dict.fromkeys(("queue_dropped", "user_dropped", "id_sequence"), 0)
        backlog = 0
        for qnum in a.queues:
            q = queues.get(qnum)   # None while no listener is bound: keep the last counts
            for k in kept:
                kept[k] += tally.total(f"{k}@{qnum}", None if q is None else q[k])
            backlog += q["queue_total"] if q is not None else 0
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
        if isinstance(a.worker, Fan):   # how the kernel spread the packets over the queues
            s["by_queue"] = {str(w.queue_num): w.counters.seen for w in a.worker.workers}
        s.update(a.replaced.judge_counts(a.script))
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
                             for h in {a.host for a in handles if not isinstance(a, KernelRun)}}
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

    def attach(self, sess: ClientSession, source: str | None, host: str, table: str = "filter",
               chain: str = "INPUT", match: str = "", name: str | None = None,
               backend: str = "nfqueue", on_overload: str = "accept", position: int | None = None,
               queue_len: int = 4096, ip: int | None = None, **options) -> dict:
        """Hook a script at ``host`` ``table``/``chain``: checked, named, then attached
        through a queue or as an xt_LUA rule; a failure leaves no name, rule or queue taken."""
        versions = self._check_attach(host, table, chain, backend, ip, on_overload, queue_len)
        # worker: "native" or "python" (NetfilterQueue) queue worker; default native on LuaJIT
        worker_choice = options.pop("worker", None)
        native_wanted(None, worker_choice)           # a bad choice fails before anything starts
        # keep: how many of the latest packets' bytes to keep for a recorded run (recording.py)
        keep = options.pop("keep", 0)
        # queues: how many queues (one worker and one copy of the script each) the rule
        # balances over (fanout.py)
        nqueues = check_queues(options.pop("queues", 1))
        if backend == "kernel" and nqueues != 1:
            raise LabError("queues=N spreads a script over NFQUEUE queues; the kernel backend "
                           "(xt_LUA) has none: leave queues at 1")
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= 100_000:
            raise ValueError(f"keep must be a number of packets from 0 to 100000, not {keep!r}")
        name = self._reserve_name(name)
        try:
            if backend == "kernel":
                return self._attach_kernel(sess, source, host, table, chain, match, name, options)
            a = self._attach_queue(sess, source, host, table, chain, match, name, backend,
                                   on_overload, position, queue_len, versions, keep, options,
                                   worker_choice, nqueues)
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

    def _check_attach(self, host: str, table: str, chain: str, backend: str, ip: int | None,
                      on_overload: str, queue_len) -> tuple[int, ...]:
        """The IP versions an attach hooks; a clear error for any argument out of place."""
        self.host(host)
        ipt.check_hook(table, chain)
        if backend == "kernel" and ip == 6:
            raise LabError("the xt_LUA module handles IPv4 only: attach IPv6 scripts through "
                           "NFQUEUE (backend='nfqueue')")
        # xt_LUA rules are iptables rules: the kernel backend sees IPv4 only.
        versions = ipt.ip_versions(ip, self.ipv6 and backend != "kernel")
        if on_overload not in ("accept", "drop"):
            raise ValueError("on_overload must be 'accept' (fail open) or 'drop'")
        if not isinstance(queue_len, int) or isinstance(queue_len, bool) or not 1 <= queue_len <= 65536:
            raise ValueError(f"queue_len must be a whole number of packets from 1 to 65536, "
                             f"not {queue_len!r}")
        if backend not in ("nfqueue", "kernel", "bare"):
            raise ValueError("backend must be 'nfqueue' or 'kernel'")
        return versions

    def _reserve_name(self, name: str | None) -> str:
        """``name``, or the first free ``scriptN``, held for an attach under way."""
        with self.lock:
            if name is None:
                i = 1
                while f"script{i}" in self.attached:
                    i += 1
                name = f"script{i}"
            if name in self.attached:
                raise LabError(f"a script named {name!r} is already attached; detach it or pick another name")
            self.attached[name] = None
        return name

    def _attach_queue(self, sess, source, host, table, chain, match, name, backend, on_overload,
                      position, queue_len, versions, keep, options, worker_choice,
                      nqueues: int = 1) -> Attached:
        """A queue worker judging ``source`` (none for the bare baseline) and its rules;
        with ``nqueues`` > 1 one worker and one copy of the script per queue (fanout.py)."""
        scripts = [None if backend == "bare" else self._compile(source, name, options)
                   for _ in range(nqueues)]
        try:
            return self._start_queues(sess, scripts, host, table, chain, match, name, backend,
                                      on_overload, position, queue_len, versions, keep,
                                      options, worker_choice)
        except BaseException:
            for s in scripts:
                if s is not None:
                    s.close()
            raise

    def _start_queues(self, sess, scripts, host, table, chain, match, name, backend, on_overload,
                      position, queue_len, versions, keep, options, worker_choice) -> Attached:
        with self.lock:
            qnums = take_queues(self.free_queues, len(scripts))
            if qnums is None:
                raise LabError(f"no {len(scripts)} consecutive free queues: at most {MAX_QUEUES} "
                               f"queues serve the attached scripts at once and "
                               f"{len(self.free_queues)} are free; detach a script or ask for "
                               f"fewer queues")
        # One mark bit for all the queues: the one rule tests it whichever queue judged.
        bit = ipt.mark_bit(qnums[0])
        egress = chain in ipt.EGRESS_CHAINS
        eth = topology.eth_headers(self.hosts[host], egress, self.ifindex[host])

        def on_event(ev, name=name):
            ev["script"] = name
            sess.send(ev)

        workers, threads = [], []
        try:
            for qnum, script in zip(qnums, scripts):
                worker_class = NativeQueueWorker if native_wanted(script, worker_choice) else QueueWorker
                workers.append(worker_class(qnum, bit, script, eth, egress, on_overload == "accept",
                                            on_event, error_verdict=options.get("on_error", "drop"),
                                            max_len=queue_len, ring=max(200, keep)))
                threads.append(self.spaces[host].thread(workers[-1].run, name=f"nfq-{name}"))
            for worker in workers:
                worker.wait_bound()
            rule = self._add_rules(host, table, ipt.queue_rule(chain, match, qnums, bit),
                                   position, versions)
        except BaseException:
            for worker in workers:
                worker.stop()
            for thread in threads:
                thread.join(2)
            with self.lock:
                self.free_queues.extend(qnums)
                self.free_queues.sort()
            raise
        if len(workers) == 1:
            worker, thread = workers[0], threads[0]
        else:
            worker = thread = Fan(workers, threads)
        a = Attached(name, host, table, chain, match, rule, qnums[0], worker, thread, options, sess,
                     backend)
        a.versions = versions
        a.queues = qnums
        return a

    def _add_rules(self, host: str, table: str, rule: list[str], position: int | None,
                   versions: tuple[int, ...]) -> list[str]:
        """The same rule (and queue) for each IP version; none of them if one fails."""
        added = []
        try:
            for v in versions:
                self._add_rule(v, host, table, rule, position, len(versions) > 1)
                added.append(v)
        except BaseException:
            for v in added:
                self.tables_of[v][host].delete(table, rule)
            raise
        return rule

    def _add_rule(self, version: int, host: str, table: str, rule: list[str],
                  position: int | None, both: bool) -> None:
        try:
            self.tables_of[version][host].add(table, rule, position)
        except ipt.RuleError as exc:
            if not both:
                raise
            raise ipt.RuleError(f"{exc}\nIn a dual-stack lab the rule is added for IPv4 and IPv6: "
                                "attach with ip=4 or ip=6 for one version only (a match that "
                                "names addresses needs the version of its addresses)") from None

    def _attach_kernel(self, sess, source, host, table, chain, match, name, options) -> dict:
        # Detection, the install route and the rules live in packetscript_lab.xtlua.backend.
        from packetscript_lab.xtlua import backend as kernel_backend

        run = kernel_runner(self.spaces[host])
        try:
            kernel_backend.require(run, self.iptables_program)
        except kernel_backend.KernelModuleMissing as exc:
            raise LabError(str(exc)) from None
        self._compile(source, name, {**options, "profile": "kernel"}).close()  # ScriptError before any rule
        rule = kernel_backend.KernelRule(run, tag=f"packetscript:{name}", table=table, chain=chain,
                                         match=match, function=options.get("function"),
                                         state_id=options.get("state_id"),
                                         program=self.iptables_program)
        a = KernelRun(name, host, table, chain, match, options, sess, rule,
                      functools.partial(self.changing_rules, host))
        a.load(source)
        with self.lock:
            self.attached[name] = a
        sess.handles.add(name)
        return a.info()

    def replace(self, name: str, source: str) -> dict:
        a = self.handle(name)
        if isinstance(a, KernelRun):
            self._compile(source, name, {**a.options, "profile": "kernel"}).close()
            with self.stats_lock:
                a.replace(source)
            return a.info()
        if a.worker is None or a.worker.script is None:
            raise LabError(f"script {name!r} ({a.backend} backend) cannot be replaced in place")
        if isinstance(a.worker, Fan):   # one copy per queue, all swapped
            copies = []
            try:
                for _ in a.worker.workers:
                    copies.append(self._compile(source, name, a.options))
            except BaseException:
                Scripts(copies).close()
                raise
            new = Scripts(copies)
        else:
            new = self._compile(source, name, a.options)  # compile errors leave the old one running
        old = a.worker.script
        a.worker.script = new  # one attribute store: the next packet sees the new script
        old.close()                # waits for a batch the worker may still be judging with it
        a.replaced.retire(old)
        return a.info()

    def detach(self, name: str) -> dict:
        a = self.handle(name)
        with self.lock:
            self.attached[name] = None  # no new commands on it while it goes
        final = None
        try:
            if isinstance(a, KernelRun):
                with self.stats_lock:
                    final = a.detach()
            else:
                self.handle_stats(a)   # the rule's last count, read while the rule still exists
                for v in a.versions:
                    self.tables_of[v][a.host].delete(a.table, a.rule)
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
                    self.free_queues.extend(a.queues)
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

    # -- traffic --

    def iface_of(self, host: str, iface: str | None) -> str:
        h = self.host(host)
        if iface is None:
            return h.ifname
        if iface not in {i.ifname for i in h.interfaces}:
            raise LabError(f"host {host!r} has no interface {iface!r}")
        return iface

    def _paced(self, rate: float, what: str):
        """The lab's packet budget (None when unlimited), after refusing a rate above it."""
        if self.budget is not None:
            self.budget.check_rate(rate, what)
        return self.budget

    def send(self, host: str, frames: list, iface: str | None = None, interval: float = 0.0) -> int:
        budget = self._paced(1 / interval if interval else 0, f"send(interval={interval})")
        return traffic.send_frames(self.spaces[host], self.iface_of(host, iface), frames, interval,
                                   budget=budget)

    def ping(self, src: str, dst: str, ip: int = 4, **kw) -> dict:
        self.host(src)
        interval = kw.get("interval", 0.2)
        budget = self._paced(1 / interval if interval else float("inf"), f"ping(interval={interval})")
        return traffic.ping(self.spaces[src], topology.resolve(self.hosts, dst, ip), budget=budget, **kw)

    def udp_stream(self, src: str, dst: str, receiver: str | None = None, ip: int = 4, **kw) -> dict:
        self.host(src)
        addr = topology.resolve(self.hosts, dst, ip)
        rx = receiver or self.host_by_addr(dst)
        self.host(rx)
        budget = self._paced(kw.get("rate", 100.0) or float("inf"),
                             f"a UDP stream (rate={kw.get('rate', 100.0)})")
        return traffic.udp_stream(self.spaces[src], self.spaces[rx], addr, budget=budget, **kw)

    def tcp_echo(self, src: str, dst: str, receiver: str | None = None, ip: int = 4, **kw) -> dict:
        self.host(src)
        addr = topology.resolve(self.hosts, dst, ip)
        rx = receiver or self.host_by_addr(dst)
        return traffic.tcp_echo(self.spaces[src], self.spaces[rx], addr, budget=self.budget, **kw)

    def udp_blast(self, src: str, dst: str, ip: int = 4, **kw) -> dict:
        self.host(src)
        return traffic.udp_blast(self.spaces[src], topology.resolve(self.hosts, dst, ip),
                                 budget=self.budget, **kw)

    def replay_pcap(self, host: str, path: str, iface: str | None = None, interval: float = 0.0,
                    rewrite_macs: bool = True) -> int:
        ifname = self.iface_of(host, iface)
        i = next(i for i in self.hosts[host].interfaces if i.ifname == ifname)
        frames = traffic.read_pcap(path, mac_bytes(i.mac), mac_bytes(i.peer_mac),
                                   rewrite_macs)
        budget = self._paced(1 / interval if interval else 0, f"replay_pcap(interval={interval})")
        return traffic.send_frames(self.spaces[host], ifname, frames, interval, budget=budget)

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
                "iptables": self.iptables_program, "interfaces": self.interfaces(), "ipv6": self.ipv6,
                "sample_interval": self.sample_interval,
                "max_pps": self.budget.rate if self.budget is not None else 0}

    def end_session(self, sess: ClientSession) -> None:
        for name in list(sess.handles):
            try:
                self.detach(name)
            except Exception:
                pass
        with self.lock:
            self.sessions.discard(sess)
        sess.close()


def serve_session(world: World, conn: Connection, daemon: bool) -> bool:
    """Handle one client until it disconnects. Returns True when the lab should end."""
    sess = ClientSession(conn)
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
            sess.send({"id": mid, "ok": commands.run(world, sess, cmd, msg.get("args") or {})})
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
    p.add_argument("--max-pps", type=int, default=0, help="packets/s the traffic commands may send")
    p.add_argument("--limits-source", default="the limits")
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
        from .limits import PacketBudget
        budget = PacketBudget(a.max_pps, source=a.limits_source) if a.max_pps else None
        world = World(a.topology, a.interval, a.iptables, budget)
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
