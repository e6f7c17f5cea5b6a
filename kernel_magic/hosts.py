"""Lab host addresses for the replay backend, where no lab is running.

They come from the lab's own topology table, so a script that tests
``ip:daddr():get() == "10.77.0.2"`` behaves the same on replayed and on live traffic.
"""
from __future__ import annotations


def replay_hosts(topology: str, ipv6: bool = False) -> dict:
    """Hosts of ``topology``; ``ipv6=True`` gives them their dual-stack IPv6 addresses too."""
    from packetscript_lab.lab.topology import describe
    return describe(topology, ipv6=ipv6)


def link_macs(src, dst) -> tuple[str, str]:
    """(source MAC, destination MAC) of a frame from ``src`` as it arrives at ``dst``:
    across a router the last hop is the router's interface facing ``dst``."""
    iface = dst.interfaces[0] if getattr(dst, "interfaces", None) else None
    if iface is None:
        return src.mac, dst.mac
    if dst is src:
        return src.mac, src.mac
    for i in dst.interfaces:
        if i.peer_ip == src.ip:
            return i.peer_mac, dst.mac
    return iface.peer_mac, dst.mac
