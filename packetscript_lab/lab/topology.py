"""Lab topologies built from descriptions (description.py): hosts, veth pairs, bridges,
addresses, MACs, routes and default rules. The two presets:

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

import shlex

from pyroute2 import IPRoute

from ..core.netutil import eth_header
from .description import PRESETS, TopologyError, all_routes, mac_of
from .netns import NetNS

TOPOLOGIES = tuple(PRESETS)   # the presets; any description (description.py) builds too


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


def _resolve(topology) -> dict:
    from .description import load
    return topology if isinstance(topology, dict) and "hosts" in topology and "forward" in topology \
        else load(topology)


def describe(topology="pair") -> dict[str, Host]:
    """The hosts of a topology (a preset name, a description dict or file) with their
    addresses, without creating anything. Raises TopologyError for a bad description."""
    desc = _resolve(topology)
    hosts: dict[str, Host] = {}
    for name, ifaces in desc["hosts"].items():
        for n, i in enumerate(ifaces):
            members = desc["lans"][i["lan"]]["hosts"]
            gw = desc["lans"][i["lan"]].get("gateway")
            # The neighbour whose MAC synthetic Ethernet headers carry: the LAN's gateway,
            # else the first other member (a two-host LAN: the other end of the veth).
            peer = gw if gw and gw != name else next(h for h in members if h != name)
            peer_ip = next(j["ip"] for j in desc["hosts"][peer] if j["lan"] == i["lan"])
            iface = Interface(f"eth{n}", i["ip"], i["prefix"], mac_of(i["ip"]), peer, peer_ip,
                              mac_of(peer_ip))
            if name not in hosts:
                hosts[name] = Host(name, i["ip"], iface.mac, iface.ifname)
            hosts[name].interfaces.append(iface)
    return hosts


def eth_headers(host: Host, egress: bool, ifindex: dict[str, int]) -> dict[int, bytes]:
    """Synthetic Ethernet headers per interface index for packets of one hook.

    Ingress hooks see frames as they arrived (peer -> this host); egress hooks see them as
    they will leave (this host -> peer). The EtherType is IPv4.
    """
    out = {}
    for iface in host.interfaces:
        dst, src = (iface.peer_mac, iface.mac) if egress else (iface.mac, iface.peer_mac)
        out[ifindex[iface.ifname]] = eth_header(dst, src)
    return out


# Bridges of LANs with more than two members live in namespaces of their own, held open
# here for the life of the lab process (which is the life of the lab).
_SWITCHES: list[NetNS] = []


def build(topology="pair", iptables: str = "iptables"
          ) -> tuple[dict[str, Host], dict[str, NetNS], dict[str, dict[str, int]]]:
    """Create the namespaces, links, addresses, routes, neighbours and default rules of a
    topology (checked whole first: a bad description raises before anything exists).

    Returns the hosts, their namespaces and each host's interface indexes by name.
    """
    desc = _resolve(topology)
    hosts = describe(desc)
    spaces = {name: NetNS.create(name) for name in hosts}
    for ns in spaces.values():
        # No IPv6: no router solicitations or DAD packets in captures and counters.
        ns.write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
        ns.write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    for name in desc["forward"]:
        spaces[name].write_sysctl("net.ipv4.ip_forward", "1")

    def ifname_on(host: str, lan: str) -> str:
        return next(f"eth{n}" for n, i in enumerate(desc["hosts"][host]) if i["lan"] == lan)

    def add_veth(ns: NetNS, ia: str, maca: str | None, ib: str, macb: str | None, peer_fd: int) -> None:
        def go() -> None:
            with IPRoute() as ipr:
                peer = {"ifname": ib, "net_ns_fd": peer_fd}
                if macb:
                    peer["address"] = macb
                kw = {"address": maca} if maca else {}
                ipr.link("add", ifname=ia, kind="veth", peer=peer, **kw)
        ns.run(go)

    for lan, spec in desc["lans"].items():
        members = list(spec["hosts"])
        if len(members) == 2:
            a, b = members
            ia, ib = ifname_on(a, lan), ifname_on(b, lan)
            add_veth(spaces[a], ia, _iface(hosts[a], ia).mac, ib, _iface(hosts[b], ib).mac,
                     spaces[b].fd)
            continue
        switch = NetNS.create(f"lan-{lan}")
        _SWITCHES.append(switch)
        switch.write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
        switch.write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        for n, m in enumerate(members):
            im = ifname_on(m, lan)
            add_veth(spaces[m], im, _iface(hosts[m], im).mac, f"port{n}", None, switch.fd)

        def bridge(count=len(members)) -> None:
            with IPRoute() as ipr:
                ipr.link("add", ifname="br0", kind="bridge")
                br = ipr.link_lookup(ifname="br0")[0]
                for n in range(count):
                    port = ipr.link_lookup(ifname=f"port{n}")[0]
                    ipr.link("set", index=port, master=br, state="up")
                ipr.link("set", index=br, state="up")

        switch.run(bridge)

    routes = all_routes(desc)
    indexes: dict[str, dict[str, int]] = {}
    for name, host in hosts.items():
        lan_of = {f"eth{n}": i["lan"] for n, i in enumerate(desc["hosts"][name])}
        # Static neighbours for every other member of each LAN: no ARP in captures.
        neighbours = {ifname: [(j["ip"], mac_of(j["ip"]))
                               for other, js in desc["hosts"].items() if other != name
                               for j in js if j["lan"] == lan]
                      for ifname, lan in lan_of.items()}

        def configure(host=host, routes=routes[name], neighbours=neighbours) -> dict[str, int]:
            idx = {}
            with IPRoute() as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
                for iface in host.interfaces:
                    i = ipr.link_lookup(ifname=iface.ifname)[0]
                    idx[iface.ifname] = i
                    ipr.addr("add", index=i, address=iface.ip, prefixlen=iface.prefix)
                    ipr.link("set", index=i, state="up")
                    for ip, mac in neighbours[iface.ifname]:
                        ipr.neigh("add", dst=ip, lladdr=mac, ifindex=i, state="permanent")
                for dst, gw in routes:
                    ipr.route("add", dst=dst, gateway=gw)
            return idx

        indexes[name] = spaces[name].run(configure)
    for name, rules in desc["rules"].items():
        for rule in rules:
            res = spaces[name].sh([iptables, "-w", *shlex.split(rule)], check=False)
            if res.returncode != 0:
                raise TopologyError(f"default rule of {name} {rule!r} was refused by {iptables}: "
                                    f"{(res.stderr or res.stdout).strip()}")
    return hosts, spaces, indexes


def _iface(host: Host, ifname: str) -> Interface:
    return next(i for i in host.interfaces if i.ifname == ifname)


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
