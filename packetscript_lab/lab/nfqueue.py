"""The NetfilterQueue worker: one queue, one thread, one script at a time.

The callback is the hot path: it reads the payload, runs the script, gives the verdict and
bumps integer counters. Everything else (summaries, changed fields, samples) happens
elsewhere. NetfilterQueue swallows exceptions raised in a callback, so the callback catches
everything itself, still gives a verdict, counts the failure and reports it as an event.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
import warnings
from typing import Any, Callable

from netfilterqueue import NetfilterQueue

from packetscript_lab.core.netutil import ETH_P_IPV6
from packetscript_lab.core.results import (ACCEPT_CODE, BODY_CHANGED, BY_CODE, CONTINUE_CODE,
                                           DROP_CODE, ETH_CHANGED, VERDICT)
from packetscript_lab.runs import Counters, Recent

from .worker import WorkerLifecycle

_IPV6_TYPE = struct.pack("!H", ETH_P_IPV6)   # the synthetic header of an IPv6 packet

# nfnetlink_queue configuration message (linux/netfilter/nfnetlink_queue.h)
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_CONFIG = 2
_NFQA_CFG_MASK = 4
_NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x1
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLMSG_ERROR = 0x2


def set_queue_flags(nfq_fd: int, queue_num: int, flags: int, mask: int) -> None:
    """Set NFQA_CFG_FLAGS on a bound queue through the queue's own netlink socket.

    NetfilterQueue 1.1 does not expose ``nfq_set_queue_flags``, and the kernel accepts a
    queue's configuration only from the socket that bound it, so the message is written to
    that socket (``NetfilterQueue.get_fd()``). Call this before any packet can be queued:
    the acknowledgement is read from the same socket.
    """
    # netlink attribute headers are host order, payloads big-endian
    attrs = (struct.pack("=HH", 8, _NFQA_CFG_MASK) + struct.pack("!I", mask)
             + struct.pack("=HH", 8, _NFQA_CFG_FLAGS) + struct.pack("!I", flags))
    nfgen = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", queue_num)
    body = nfgen + attrs
    seq = int(time.monotonic() * 1000) & 0x7FFFFFFF
    hdr = struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_CONFIG,
                      _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
    s = socket.socket(fileno=os.dup(nfq_fd))
    try:
        s.settimeout(2.0)
        s.sendto(hdr + body, (0, 0))
        while True:
            reply = s.recv(65536)
            off = 0
            while off + 16 <= len(reply):
                mlen, mtype, _flags, mseq, _pid = struct.unpack_from("=IHHII", reply, off)
                if mtype == _NLMSG_ERROR and mseq == seq:
                    (err,) = struct.unpack_from("=i", reply, off + 16)
                    if err != 0:
                        raise OSError(-err, f"setting queue {queue_num} flags: {os.strerror(-err)}")
                    return
                off += (mlen + 3) & ~3
    finally:
        s.close()


class QueueWorker(WorkerLifecycle):
    """Binds queue ``queue_num`` in the calling thread's namespace and judges its packets.

    ``script`` is a packetscript_lab.Judge (a Script in its own watched process; batches go
    through ``run_many``, and a packet that hangs it comes back with the error verdict), or
    None for the bare baseline that accepts everything (used by the benchmark).
    """

    def __init__(self, queue_num: int, mark_bit: int, script: Any, eth_by_ifindex: dict[int, bytes],
                 use_outdev: bool, fail_open: bool, on_event: Callable[[dict], None],
                 error_verdict: str = "drop", max_len: int = 4096, ring: int = 200):
        self.queue_num = queue_num
        self.mark_bit = mark_bit
        self.script = script
        self.eth_by_ifindex = eth_by_ifindex
        self.use_outdev = use_outdev
        self.fail_open = fail_open
        self.on_event = on_event
        self.error_verdict = error_verdict
        self.max_len = max_len
        self.counters = Counters()
        self.recent = Recent(ring)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._bind_error: BaseException | None = None
        self._nfq: NetfilterQueue | None = None
        self._errors_reported = 0
        self.first_t = 0.0  # wall time of the first and the latest judged packet
        self.last_t = 0.0
        self._eth = next(iter(eth_by_ifindex.values()), b"\0" * 12 + b"\x08\x00")
        self._pending: list = []   # (packet, payload, ifindex) waiting for a verdict
        # True while this queue's rule ends a chain whose policy is ACCEPT: XT_CONTINUE is
        # then NF_ACCEPT (the lab keeps it up to date whenever the host's rules change).
        self.continue_accepts = False

    # -- lifecycle (bind runs in the worker thread, inside the host's namespace) --

    def run(self) -> None:
        try:
            nfq = NetfilterQueue()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # rcvbuf capped: not fatal
                nfq.bind(self.queue_num, self._callback_bare if self.script is None else self._callback,
                         max_len=self.max_len)
            if self.fail_open:
                set_queue_flags(nfq.get_fd(), self.queue_num, NFQA_CFG_F_FAIL_OPEN,
                                NFQA_CFG_F_FAIL_OPEN)
            self._nfq = nfq
        except BaseException as exc:
            self._bind_error = exc
            self._ready.set()
            return
        self._ready.set()
        fd = nfq.get_fd()
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([fd], [], [], 0.1)
                if r:
                    nfq.run(block=False)
            except OSError as exc:
                if exc.errno not in (errno.EINTR, errno.ENOBUFS):
                    self._event_error("queue", f"{type(exc).__name__}: {exc}")
                    time.sleep(0.05)
            except BaseException as exc:
                self._event_error("queue", f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)
            finally:
                self._flush()
        nfq.unbind()

    # -- the hot path --

    # Packets that arrive together are judged together: the callback only collects them
    # (NetfilterQueue lets a verdict follow the callback), and the batch crosses into Lua
    # once when the socket has no more messages or the batch is full. A lone packet is
    # judged as soon as recv() finds nothing behind it, so latency stays that of one packet.
    BATCH = 64

    def _callback(self, pkt) -> None:
        try:
            self._pending.append((pkt, pkt.get_payload(), pkt.outdev if self.use_outdev else pkt.indev))
        except BaseException as exc:
            self._fail([(pkt, b"", 0)], exc)
            return
        if len(self._pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._judge(batch)
        except BaseException as exc:
            self._fail(batch, exc)

    def _judge(self, batch) -> None:
        c = self.counters
        script = self.script  # read once: a swap takes effect between batches
        eth_of, default = self.eth_by_ifindex, self._eth
        # The synthetic header's EtherType follows the IP version of each packet (a
        # dual-stack lab queues both to one worker).
        eths = [eth_of.get(idx, default) for _, _, idx in batch]
        datas = [data for _, data, _ in batch]
        eths = [eth[:12] + _IPV6_TYPE if data and data[0] >> 4 == 6 else eth
                for eth, data in zip(eths, datas)]
        frames = [eth + data for eth, data in zip(eths, datas)]
        now = time.monotonic() * 1000
        codes, blob, errors = script.run_many(frames, [now] * len(frames))
        t = time.time()
        if not self.first_t:
            self.first_t = t
        self.last_t = t

        # The new IP packets go back with the verdicts; a change to the synthetic Ethernet
        # header is counted, not sent.
        outs = [None] * len(batch)
        mark_bit, offset, continue_accepts = self.mark_bit, 0, self.continue_accepts
        for i, ((pkt, data, _), code) in enumerate(zip(batch, codes)):
            n = len(data) + 14
            if code & BODY_CHANGED:
                outs[i] = new = blob[offset + 14:offset + n]
                pkt.set_payload(new)
            offset += n
            v = code & VERDICT
            if v == ACCEPT_CODE or (v == CONTINUE_CODE and continue_accepts):
                pkt.accept()
            elif v == DROP_CODE:
                pkt.drop()
            else:
                pkt.set_mark(pkt.get_mark() | mark_bit)
                pkt.repeat()

        verdicts = [code & VERDICT for code in codes]
        c.seen += len(batch)
        c.bytes += sum(map(len, datas))
        c.modified += len(outs) - outs.count(None)
        c.dropped += verdicts.count(DROP_CODE)
        c.accepted += verdicts.count(ACCEPT_CODE)
        c.continued += verdicts.count(CONTINUE_CODE)
        c.errors += len(errors)
        c.eth_modified += sum(1 for code in codes if code & ETH_CHANGED)
        self.recent.add_batch(t, datas, outs, [BY_CODE[v] for v in verdicts], errors, eths)
        for error in errors.values():
            self._script_error(error)

    def _fail(self, batch, exc) -> None:
        """An internal failure (not the script's): count it and still give every verdict."""
        self.counters.internal_errors += len(batch)
        self._event_error("callback", f"{type(exc).__name__}: {exc}")
        for pkt, _, _ in batch:
            try:
                pkt.accept() if self.error_verdict == "accept" else pkt.drop()
            except BaseException:
                pass  # a verdict was already given

    def _callback_bare(self, pkt) -> None:
        c = self.counters
        c.seen += 1
        c.bytes += pkt.get_payload_len()
        c.accepted += 1
        pkt.accept()
        t = time.time()
        if not self.first_t:
            self.first_t = t
        self.last_t = t

