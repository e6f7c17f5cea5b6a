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

Dual-stack on request (``Lab(..., ipv6=True)``, ``"ipv6": true`` in a description): each
interface also gets an IPv6 address in fd77::/16 (description.py: pair fd77::1 and fd77::2;
router fd77:0:1::1, fd77:0:1::254, fd77:0:2::254, fd77:0:2::2, with fd77:0:2::100 unassigned).
Duplicate address detection, router solicitations and router advertisements are off, and
neighbours are static, so the first packet goes through and captures hold only the traffic
sent (and the MLD reports of the addresses as they come up). Without it IPv6 is disabled.
"""
from __future__ import annotations

import shlex
import socket
import time
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from ..core.netutil import eth_header
from .description import PRESETS, TopologyError, all_routes, load, mac_of
from .netns import NetNS
from .protocol import LabError

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
    ip6: str | None = None        # dual-stack labs only
    peer_ip6: str | None = None


@dataclass
class Host:
    """A lab host as the notebook sees it (picklable, no namespace handle)."""

    name: str
    ip: str
    mac: str
    ifname: str
    interfaces: list[Interface] = field(default_factory=list)
    ip6: str | None = None        # dual-stack labs only

    def __repr__(self) -> str:
        ip6 = f", ip6={self.ip6!r}" if self.ip6 else ""
        return f"Host({self.name!r}, ip={self.ip!r}{ip6}, mac={self.mac!r}, ifname={self.ifname!r})"


def _resolve(topology) -> dict:
    return topology if isinstance(topology, dict) and "hosts" in topology and "forward" in topology \
        else load(topology)


def dual_stack(topology) -> dict:
    """The description of ``topology`` with IPv6 addresses too (description.py)."""
    return load({**_resolve(topology), "ipv6": True})


def describe(topology="pair", ipv6: bool = False) -> dict[str, Host]:
    """The hosts of a topology (a preset name, a description dict or file) with their
    addresses, without creating anything; ``ipv6=True`` as if it were dual-stack.
    Raises TopologyError for a bad description."""
    desc = dual_stack(topology) if ipv6 else _resolve(topology)
    hosts: dict[str, Host] = {}
    for name, ifaces in desc["hosts"].items():
        for n, i in enumerate(ifaces):
            members = desc["lans"][i["lan"]]["hosts"]
            gw = desc["lans"][i["lan"]].get("gateway")
            # The neighbour whose MAC synthetic Ethernet headers carry: the LAN's gateway,
            # else the first other member (a two-host LAN: the other end of the veth).
            peer = gw if gw and gw != name else next(h for h in members if h != name)
            pj = next(j for j in desc["hosts"][peer] if j["lan"] == i["lan"])
            iface = Interface(f"eth{n}", i["ip"], i["prefix"], mac_of(i["ip"]), peer, pj["ip"],
                              mac_of(pj["ip"]), i.get("ip6"), pj.get("ip6"))
            if name not in hosts:
                hosts[name] = Host(name, i["ip"], iface.mac, iface.ifname, ip6=i.get("ip6"))
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


# IPv6 settings of a dual-stack host, made before its links exist so that they inherit
# them: no DAD (addresses usable at once), no router solicitations or advertisements.
_IPV6_ON = {"disable_ipv6": "0", "accept_dad": "0", "dad_transmits": "0",
            "router_solicitations": "0", "accept_ra": "0"}
IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40


def build(topology="pair", iptables: str = "iptables", ip6tables: str | None = None
          ) -> tuple[dict[str, Host], dict[str, NetNS], dict[str, dict[str, int]]]:
    """Create the namespaces, links, addresses, routes, neighbours and default rules of a
    topology (checked whole first: a bad description raises before anything exists).
    ``ip6tables`` applies a dual-stack description's ``rules6``.

    Returns the hosts, their namespaces and each host's interface indexes by name.
    """
    desc = _resolve(topology)
    ipv6 = bool(desc.get("ipv6"))
    hosts = describe(desc)
    spaces = {name: NetNS.create(name) for name in hosts}
    _set_sysctls(desc, spaces, ipv6)
    for lan, spec in desc["lans"].items():
        _link_lan(desc, lan, list(spec["hosts"]), hosts, spaces)
    indexes = _configure_hosts(desc, hosts, spaces, ipv6)
    if ipv6:
        for name, ns in spaces.items():
            _wait_ipv6_ready(ns, name)
    _default_rules(desc, spaces, iptables, ip6tables)
    return hosts, spaces, indexes


def _set_sysctls(desc: dict, spaces: dict[str, NetNS], ipv6: bool) -> None:
    for ns in spaces.values():
        # Without IPv6: no router solicitations or DAD packets in captures and counters.
        for scope in ("all", "default"):
            if ipv6:
                for key, value in _IPV6_ON.items():
                    ns.write_sysctl(f"net.ipv6.conf.{scope}.{key}", value)
            else:
                ns.write_sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", "1")
    for name in desc["forward"]:
        spaces[name].write_sysctl("net.ipv4.ip_forward", "1")
        if ipv6:
            spaces[name].write_sysctl("net.ipv6.conf.all.forwarding", "1")


def _ifname_on(desc: dict, host: str, lan: str) -> str:
    return next(f"eth{n}" for n, i in enumerate(desc["hosts"][host]) if i["lan"] == lan)


def _add_veth(ns: NetNS, ia: str, maca: str | None, ib: str, macb: str | None, peer_fd: int) -> None:
    def go() -> None:
        with IPRoute() as ipr:
            peer = {"ifname": ib, "net_ns_fd": peer_fd}
            if macb:
                peer["address"] = macb
            kw = {"address": maca} if maca else {}
            ipr.link("add", ifname=ia, kind="veth", peer=peer, **kw)
    ns.run(go)


def _link_lan(desc: dict, lan: str, members: list[str], hosts: dict[str, Host],
              spaces: dict[str, NetNS]) -> None:
    """A LAN of two hosts is one veth pair; a larger one, a bridge in a namespace of its own."""
    if len(members) == 2:
        a, b = members
        ia, ib = _ifname_on(desc, a, lan), _ifname_on(desc, b, lan)
        _add_veth(spaces[a], ia, _iface(hosts[a], ia).mac, ib, _iface(hosts[b], ib).mac,
                  spaces[b].fd)
        return
    switch = NetNS.create(f"lan-{lan}")
    _SWITCHES.append(switch)
    switch.write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
    switch.write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    for n, m in enumerate(members):
        im = _ifname_on(desc, m, lan)
        _add_veth(spaces[m], im, _iface(hosts[m], im).mac, f"port{n}", None, switch.fd)

    def bridge(count=len(members)) -> None:
        with IPRoute() as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            br = ipr.link_lookup(ifname="br0")[0]
            for n in range(count):
                port = ipr.link_lookup(ifname=f"port{n}")[0]
                ipr.link("set", index=port, master=br, state="up")
            ipr.link("set", index=br, state="up")

    switch.run(bridge)


def _configure_hosts(desc: dict, hosts: dict[str, Host], spaces: dict[str, NetNS],
                     ipv6: bool) -> dict[str, dict[str, int]]:
    """Addresses, static neighbours and routes of every host; its interface indexes."""
    routes = all_routes(desc)
    routes6 = all_routes(desc, 6) if ipv6 else {}
    indexes: dict[str, dict[str, int]] = {}
    for name, host in hosts.items():
        lan_of = {f"eth{n}": i["lan"] for n, i in enumerate(desc["hosts"][name])}
        # Static neighbours for every other member of each LAN: no ARP (or neighbour
        # discovery) in captures.
        keys = ("ip", "ip6") if ipv6 else ("ip",)
        neighbours = {ifname: [(j[k], mac_of(j["ip"]))
                               for other, js in desc["hosts"].items() if other != name
                               for j in js if j["lan"] == lan for k in keys]
                      for ifname, lan in lan_of.items()}
        indexes[name] = spaces[name].run(_configure, host, routes[name] + routes6.get(name, []),
                                         neighbours)
    return indexes


def _configure(host: Host, routes: list, neighbours: dict) -> dict[str, int]:
    """Run inside the host's namespace: bring its links up, addressed and routed."""
    idx = {}
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        for iface in host.interfaces:
            i = ipr.link_lookup(ifname=iface.ifname)[0]
            idx[iface.ifname] = i
            ipr.addr("add", index=i, address=iface.ip, prefixlen=iface.prefix)
            if iface.ip6:
                ipr.addr("add", index=i, address=iface.ip6, prefixlen=64,
                         flags=IFA_F_NODAD)
            ipr.link("set", index=i, state="up")
            for ip, mac in neighbours[iface.ifname]:
                ipr.neigh("add", dst=ip, lladdr=mac, ifindex=i, state="permanent",
                          family=socket.AF_INET6 if ":" in ip else socket.AF_INET)
        for dst, gw in routes:
            ipr.route("add", dst=dst, gateway=gw,
                      family=socket.AF_INET6 if ":" in dst else socket.AF_INET)
    return idx


def _default_rules(desc: dict, spaces: dict[str, NetNS], iptables: str,
                   ip6tables: str | None) -> None:
    for key, program in (("rules", iptables), ("rules6", ip6tables)):
        for name, rules in desc.get(key, {}).items():
            for rule in rules:
                res = spaces[name].sh([program, "-w", *shlex.split(rule)], check=False)
                if res.returncode != 0:
                    raise TopologyError(f"default rule of {name} {rule!r} was refused by {program}: "
                                        f"{(res.stderr or res.stdout).strip()}")


def _wait_ipv6_ready(ns: NetNS, name: str, timeout: float = 5.0) -> None:
    """Wait until no IPv6 address of the host is tentative: before that the kernel will not
    send from it, and the first packets of a test would fail."""
    def tentative() -> list[str]:
        with IPRoute() as ipr:
            return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET6)
                    if (a.get_attr("IFA_FLAGS") or a["flags"]) & IFA_F_TENTATIVE]

    end = time.monotonic() + timeout
    while left := ns.run(tentative):
        if time.monotonic() > end:
            raise TopologyError(f"the IPv6 addresses {', '.join(left)} of {name} stayed "
                                f"tentative for {timeout:g}s")
        time.sleep(0.02)


def _iface(host: Host, ifname: str) -> Interface:
    return next(i for i in host.interfaces if i.ifname == ifname)


def host_of_ip(hosts: dict[str, Host], ip: str) -> str | None:
    for h in hosts.values():
        if any(ip in (i.ip, i.ip6) for i in h.interfaces):
            return h.name
    return None


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


def resolve(hosts: dict[str, Host], name_or_ip: str, ip: int = 4) -> str:
    """A host name or an address -> an address (a host name gives its primary address of IP
    version ``ip``)."""
    if name_or_ip in hosts:
        if ip == 6:
            if hosts[name_or_ip].ip6 is None:
                raise LabError(f"{name_or_ip} has no IPv6 address: this lab is IPv4 only; "
                                    "start it dual-stack (Lab(..., ipv6=True), --ipv6)")
            return hosts[name_or_ip].ip6
        return hosts[name_or_ip].ip
    return name_or_ip
