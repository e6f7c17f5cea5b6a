"""The lab's commands: the one table both ends of the socket read.

The lab process runs a command through ``run`` (its handler, called with the lab's world,
the client's session and the command's arguments); the client sends only names in the
table (``check``), and its plain forwarders (``Lab.ping``, ``Lab.status`` ...) are made by
``forwarder`` from the handlers below, so their parameters, defaults and docs are written
once. A name outside the table is refused on both sides with a LabError that lists them.

This module imports nothing of the lab process: the client loads it without pyroute2's
namespaces or NFQUEUE.
"""
from __future__ import annotations

import inspect

from .errors import LabError

SESSION_COMMANDS = ("close", "shutdown")   # answered by the session loop itself (process.py)


# --- one run (the lab side of lab.client.AttachedScript) ---------------------------------

def attach(world, sess, **args) -> dict:
    return world.attach(sess, **args)


def replace(world, sess, name: str, source: str) -> dict:
    return world.replace(name, source)


def detach(world, sess, name: str) -> dict:
    return world.detach(name)


def stats(world, sess, name: str) -> dict:
    return world.handle_stats(world.handle(name))


def recent(world, sess, name: str, limit: int | None = None) -> list[dict]:
    return world.handle(name).recent(limit)


def recorded(world, sess, name: str) -> list[tuple]:
    return world.handle(name).recorded()


def errors(world, sess, name: str) -> list[dict]:
    return world.handle(name).errors()


def output(world, sess, name: str) -> list[str]:
    return world.handle(name).output()


# --- traffic -------------------------------------------------------------------------------

def send(world, sess, host: str, frames: list, iface: str | None = None,
         interval: float = 0.0) -> int:
    return world.send(host, frames, iface, interval)


# The generators take ``ip=6`` to reach a host by its IPv6 address (dual-stack labs); a
# ``dst`` written as an address goes by that address's version.

def ping(world, sess, src: str, dst: str, count: int = 3, interval: float = 0.2,
         timeout: float = 1.0, size: int = 56, ip: int = 4) -> dict:
    """ICMP echo from ``src`` to ``dst`` (a host or a lab address): sent, received and the
    round-trip times in milliseconds of the answered ones."""
    return world.ping(src, dst, count=count, interval=interval, timeout=timeout, size=size, ip=ip)


def udp_stream(world, sess, src: str, dst: str, port: int = 9000, rate: float = 100.0,
               duration: float = 2.0, size: int = 64, count: int | None = None,
               receiver: str | None = None, sport: int = 0, ip: int = 4) -> dict:
    """Numbered datagrams at ``rate``/s for ``duration`` s; ``receiver`` is the host that
    listens (default: the owner of ``dst``, which must then be a lab address)."""
    return world.udp_stream(src, dst, receiver=receiver, port=port, rate=rate,
                            duration=duration, size=size, count=count, sport=sport, ip=ip)


def udp_blast(world, sess, src: str, dst: str, port: int = 9000, count: int = 20000,
              size: int = 64, ip: int = 4) -> dict:
    """Send ``count`` datagrams as fast as a separate sender process can (load tests)."""
    return world.udp_blast(src, dst, port=port, count=count, size=size, ip=ip)


def tcp_echo(world, sess, src: str, dst: str, port: int = 7000, connections: int = 3,
             payload: bytes = b"hello packetscript", receiver: str | None = None,
             timeout: float = 2.0, ip: int = 4) -> dict:
    """``connections`` TCP round trips from ``src`` to an echo server on ``dst``'s host."""
    return world.tcp_echo(src, dst, receiver=receiver, port=port, connections=connections,
                          payload=payload, timeout=timeout, ip=ip)


def replay_pcap(world, sess, host: str, path: str, iface: str | None = None,
                interval: float = 0.0, rewrite_macs: bool = True) -> int:
    return world.replay_pcap(host, path, iface, interval, rewrite_macs)


def capture_start(world, sess, host: str, bpf: str | None = None,
                  iface: str | None = None) -> int:
    return world.capture_start(host, bpf, iface)


def capture_collect(world, sess, cid: int, count: int | None = None,
                    timeout: float = 2.0) -> list[bytes]:
    return world.capture_collect(cid, count, timeout)


# --- inspection ----------------------------------------------------------------------------

def iptables(world, sess, host: str, args: list[str]) -> str:
    world.host(host)
    return world.tables[host].run(args)


def iptables_save(world, sess, host: str) -> str:
    """The rules of ``host`` as iptables-save prints them."""
    world.host(host)
    return world.tables[host].save()


def ip6tables(world, sess, host: str, args: list[str]) -> str:
    return _tables6(world, host).run(args)


def ip6tables_save(world, sess, host: str) -> str:
    """The IPv6 rules of ``host`` (a dual-stack lab) as ip6tables-save prints them."""
    return _tables6(world, host).save()


def _tables6(world, host: str):
    world.host(host)
    if 6 not in world.tables_of:
        raise LabError("this lab is IPv4 only: it has no ip6tables rules (start it with ipv6=True)")
    return world.tables_of[6][host]


def interfaces(world, sess) -> dict:
    """Per host and interface: rx/tx packets, bytes, errors and drops."""
    return world.interfaces()


def status(world, sess) -> dict:
    """The lab's topology, hosts, attached scripts, interfaces and process."""
    return world.status()


COMMANDS = {f.__name__: f for f in (
    attach, replace, detach, stats, recent, recorded, errors, output,
    send, ping, udp_stream, udp_blast, tcp_echo, replay_pcap, capture_start, capture_collect,
    iptables, iptables_save, ip6tables, ip6tables_save, interfaces, status)}


def check(cmd: str) -> None:
    """Refuse a name that is not a lab command (the client calls this before sending)."""
    if cmd not in COMMANDS and cmd not in SESSION_COMMANDS:
        raise LabError(f"unknown lab command {cmd!r}; the lab's commands are "
                       f"{', '.join([*COMMANDS, *SESSION_COMMANDS])}")


def run(world, sess, cmd: str, args: dict):
    """Run one command in the lab process."""
    check(cmd)
    if cmd in SESSION_COMMANDS:
        raise LabError(f"{cmd!r} ends a session; the session loop answers it")
    return COMMANDS[cmd](world, sess, **args)


def forwarder(cmd: str):
    """A ``Lab`` method that sends ``cmd`` with its arguments, with the handler's
    parameters, defaults and doc (arguments it does not take are a TypeError here)."""
    handler = COMMANDS[cmd]
    params = list(inspect.signature(handler).parameters.values())[2:]   # world, sess
    sig = inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                             *params], return_annotation=inspect.signature(handler).return_annotation)

    def method(self, *args, **kwargs):
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"Lab.{cmd}(): {exc}") from None
        bound.apply_defaults()
        bound.arguments.pop("self")
        return self._call(cmd, **bound.arguments)

    method.__name__ = method.__qualname__ = cmd
    method.__doc__ = handler.__doc__
    method.__signature__ = sig
    return method
