"""Lab host addresses for the replay backend, where no lab is running.

They come from the lab's own topology table, so a script that tests
``ip:daddr():get() == "10.77.0.2"`` behaves the same on replayed and on live traffic.
"""
from __future__ import annotations


def replay_hosts(topology: str, ipv6: bool = False) -> dict:
    """Hosts of ``topology``; ``ipv6=True`` gives them their dual-stack IPv6 addresses too."""
    from packetscript_lab.lab.topology import describe
    return describe(topology, ipv6=ipv6)
