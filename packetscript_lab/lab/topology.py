"""The lab's fixed topologies: hosts, veth pairs, addresses, MACs and routes.

Addresses are in 10.77.0.0/16 and exist only inside the lab's namespaces. No host gets a
default route, so nothing can leave the lab: a packet to any other address has no route.
Neighbour entries are static, so there is no ARP traffic in captures and latency figures.

pair:    client 10.77.0.1 (02:77:00:00:00:01) eth0 <-> eth0 server 10.77.0.2 (02:77:00:00:00:02)

router:  client 10.77.1.1 (02:77:01:00:00:01) eth0 <-> eth0 router 10.77.1.254 (02:77:01:00:00:fe)
         router 10.77.2.254 (02:77:02:00:00:fe) eth1 <-> eth0 server 10.77.2.2 (02:77:02:00:00:02)
         router forwards; client reaches 10.77.2.0/24 via 10.77.1.254, server 10.77.1.0/24
         via 10.77.2.254. 10.77.2.100 is a lab address assigned to nobody (a DNAT target).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pyroute2 import IPRoute

from .netns import NetNS

TOPOLOGIES = ("pair", "router")


@dataclass
class Interface:
    ifname: str
    ip: str
    prefix: int
    mac: str
    peer_host: str
    peer_ip: str
    peer_mac: str


@dataclass
class Host:
    """A lab host as the notebook sees it (picklable, no namespace handle)."""

    name: str
    ip: str
    mac: str
    ifname: str
    interfaces: list[Interface] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ip={self.ip!r}, mac={self.mac!r}, ifname={self.ifname!r})"


# (host_a, if_a, ip_a, mac_a, host_b, if_b, ip_b, mac_b, prefix)
_LINKS = {
    "pair": [
        ("client", "eth0", "10.77.0.1", "02:77:00:00:00:01",
         "server", "eth0", "10.77.0.2", "02:77:00:00:00:02", 24),
    ],
    "router": [
        ("client", "eth0", "10.77.1.1", "02:77:01:00:00:01",
         "router", "eth0", "10.77.1.254", "02:77:01:00:00:fe", 24),
        ("router", "eth1", "10.77.2.254", "02:77:02:00:00:fe",
         "server", "eth0", "10.77.2.2", "02:77:02:00:00:02", 24),
    ],
}
# (host, destination, gateway)
_ROUTES = {
    "pair": [],
    "router": [("client", "10.77.2.0/24", "10.77.1.254"),
               ("server", "10.77.1.0/24", "10.77.2.254")],
}
_FORWARDING = {"pair": (), "router": ("router",)}


def describe(topology: str) -> dict[str, Host]:
    """The hosts of a topology with their addresses, without creating anything."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}; choose one of {', '.join(TOPOLOGIES)}")
    hosts: dict[str, Host] = {}
    for ha, ia, ipa, maca, hb, ib, ipb, macb, prefix in _LINKS[topology]:
        for h, i, ip, mac, ph, pip, pmac in ((ha, ia, ipa, maca, hb, ipb, macb),
                                             (hb, ib, ipb, macb, ha, ipa, maca)):
            iface = Interface(i, ip, prefix, mac, ph, pip, pmac)
            if h not in hosts:
                hosts[h] = Host(h, ip, mac, i)
            hosts[h].interfaces.append(iface)
    order = ["client", "router", "server"]
    return {n: hosts[n] for n in order if n in hosts}


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def eth_headers(host: Host, egress: bool, ifindex: dict[str, int]) -> dict[int, bytes]:
    """Synthetic Ethernet headers per interface index for packets of one hook.

    Ingress hooks see frames as they arrived (peer -> this host); egress hooks see them as
    they will leave (this host -> peer). The EtherType is IPv4.
    """
    out = {}
    for iface in host.interfaces:
        local, peer = _mac_bytes(iface.mac), _mac_bytes(iface.peer_mac)
        dst, src = (peer, local) if egress else (local, peer)
        out[ifindex[iface.ifname]] = dst + src + b"\x08\x00"
    return out


def build(topology: str) -> tuple[dict[str, Host], dict[str, NetNS], dict[str, dict[str, int]]]:
    """Create the namespaces, links, addresses, routes and neighbours of a topology.

    Returns the hosts, their namespaces and each host's interface indexes by name.
    """
    hosts = describe(topology)
    spaces = {name: NetNS.create(name) for name in hosts}
    for ns in spaces.values():
        # No IPv6: no router solicitations or DAD packets in captures and counters.
        ns.write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
        ns.write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    for name in _FORWARDING[topology]:
        spaces[name].write_sysctl("net.ipv4.ip_forward", "1")

    for ha, ia, _ipa, maca, hb, ib, _ipb, macb, _p in _LINKS[topology]:
        peer_fd = spaces[hb].fd

        def add_veth(ia=ia, maca=maca, ib=ib, macb=macb, peer_fd=peer_fd) -> None:
            with IPRoute() as ipr:
                ipr.link("add", ifname=ia, kind="veth", address=maca,
                         peer={"ifname": ib, "address": macb, "net_ns_fd": peer_fd})

        spaces[ha].run(add_veth)

    indexes: dict[str, dict[str, int]] = {}
    for name, host in hosts.items():
        routes = [(dst, gw) for h, dst, gw in _ROUTES[topology] if h == name]

        def configure(host=host, routes=routes) -> dict[str, int]:
            idx = {}
            with IPRoute() as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
                for iface in host.interfaces:
                    i = ipr.link_lookup(ifname=iface.ifname)[0]
                    idx[iface.ifname] = i
                    ipr.addr("add", index=i, address=iface.ip, prefixlen=iface.prefix)
                    ipr.link("set", index=i, state="up")
                    ipr.neigh("add", dst=iface.peer_ip, lladdr=iface.peer_mac, ifindex=i,
                              state="permanent")
                for dst, gw in routes:
                    ipr.route("add", dst=dst, gateway=gw)
            return idx

        indexes[name] = spaces[name].run(configure)
    return hosts, spaces, indexes


def host_of_ip(hosts: dict[str, Host], ip: str) -> str | None:
    for h in hosts.values():
        if any(i.ip == ip for i in h.interfaces):
            return h.name
    return None


def resolve(hosts: dict[str, Host], name_or_ip: str) -> str:
    """A host name or an address -> an address (a host name gives its primary address)."""
    if name_or_ip in hosts:
        return hosts[name_or_ip].ip
    return name_or_ip
