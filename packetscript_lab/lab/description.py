"""Lab topologies written as data, checked whole before anything is built.

A description is a JSON-compatible dict (or a .json / .yaml file holding one)::

    {"name": "two-lans",
     "lans": {                                  # in order; each host's interfaces follow it
        "inside":  {"subnet": "10.77.10.0/24", "gateway": "fw",
                    "hosts": {"alice": 1, "bob": 2, "fw": 254}},   # host -> last address octet(s)
        "outside": {"subnet": "10.77.30.0/24", "gateway": "fw",
                    "hosts": {"mallory": 66, "fw": 254}}},
     "routes": {"alice": [{"to": "10.77.99.0/24", "via": "10.77.10.254"}]},   # optional, extra
     "forward": ["fw"],                          # optional: gateways always forward
     "rules": {"fw": ["-P FORWARD DROP",         # optional: iptables arguments, applied in order
                      "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]},
     "ipv6": true,                               # optional: dual-stack (IPv6 addresses too)
     "rules6": {"fw": ["-P FORWARD DROP"]}}      # optional, with ipv6: ip6tables arguments

A LAN of two hosts is one veth pair; a LAN of more is a bridge in a namespace of its own with
one veth per member. A LAN's ``gateway`` forwards, and every other member gets a route to each
other subnet of the lab through it. Addresses, routes and rules stay inside 10.77.0.0/16: no host
gets a default route, so nothing can leave the lab. ``pair`` and ``router`` are two presets.

With ``"ipv6": true`` the lab is dual-stack: every LAN also gets an IPv6 /64 inside fd77::/16,
read off its IPv4 subnet (``10.77.A.B/n`` -> ``fd77:0:A:B::/64``, the numbers written as they
are), and each host the address whose last group is its address number written the same way
(``10.77.1.254`` -> ``fd77:0:1::254``). Gateways forward IPv6 too and routes are made for both.

``validate`` collects every problem and raises one ``TopologyError`` listing them all, so a
teacher fixes a description in one go and nothing is half built.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shlex

from .errors import LabError

LAB_NET = ipaddress.ip_network("10.77.0.0/16")
LAB_NET6 = ipaddress.ip_network("fd77::/16")
MAX_HOSTS = 12
MAX_INTERFACES = 8           # per host: eth0 .. eth7
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,14}$")
_RULE_START = ("-A", "-I", "-P", "-N", "-t")
_KEYS = {"name", "lans", "routes", "forward", "rules", "notes", "ipv6", "rules6"}
_LAN_KEYS = {"subnet", "hosts", "gateway"}

PRESETS: dict[str, dict] = {
    "pair": {
        "name": "pair",
        "lans": {"net": {"subnet": "10.77.0.0/24", "hosts": {"client": 1, "server": 2}}},
    },
    "router": {
        "name": "router",
        "lans": {
            "client-side": {"subnet": "10.77.1.0/24", "gateway": "router",
                            "hosts": {"client": 1, "router": 254}},
            "server-side": {"subnet": "10.77.2.0/24", "gateway": "router",
                            "hosts": {"router": 254, "server": 2}},
        },
    },
}


class TopologyError(LabError, ValueError):
    """A description that cannot be built; the message lists every problem found."""


def load(source) -> dict:
    """A preset name, a dict, or a path to a .json/.yaml file -> a checked description."""
    if isinstance(source, str) and source in PRESETS:
        return validate(PRESETS[source])
    if isinstance(source, dict):
        return validate(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise TopologyError(f"unknown topology {path!r}: not a preset ({', '.join(PRESETS)}) "
                                "and no such description file")
        with open(path) as f:
            text = f.read()
        if path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise TopologyError(f"{path} is YAML but PyYAML is not installed: "
                                    "`pip install pyyaml`, or write the description as JSON") from None
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise TopologyError(f"{path} is not valid YAML: {exc}") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TopologyError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise TopologyError(f"{path} must hold one mapping (name, lans, routes, rules)")
        data.setdefault("name", os.path.splitext(os.path.basename(path))[0])
        return validate(data)
    raise TopologyError(f"a topology is a preset name ({', '.join(PRESETS)}), a dict or a file path, "
                        f"not {type(source).__name__}")


def _net(text, where: str, problems: list[str], ipv6: bool = False):
    try:
        net = ipaddress.ip_network(str(text), strict=True)
    except ValueError as exc:
        problems.append(f"{where}: {text!r} is not a network ({exc})")
        return None
    if net.version == 6 and ipv6:
        if not net.subnet_of(LAB_NET6):
            problems.append(f"{where}: {net} is outside the lab's IPv6 addresses {LAB_NET6}")
            return None
        return net
    if net.version != 4 or not net.subnet_of(LAB_NET):
        extra = "" if ipv6 or net.version == 4 else " (IPv6 routes need \"ipv6\": true)"
        problems.append(f"{where}: {net} is outside the lab's addresses 10.77.0.0/16{extra}")
        return None
    return net


def _hex_of_decimal(n: int) -> int:
    """12 -> 0x12: an IPv6 group that reads like the IPv4 number it stands for."""
    return int(str(n), 16)


def subnet6_of(net4) -> ipaddress.IPv6Network:
    """The /64 a dual-stack LAN gets for its IPv4 subnet: 10.77.A.B/n -> fd77:0:A:B::/64."""
    a, b = ipaddress.ip_network(net4).network_address.packed[2:]
    return ipaddress.IPv6Network(((0xFD77 << 112) | (_hex_of_decimal(a) << 80)
                                  | (_hex_of_decimal(b) << 64), 64))


def ip6_of(net4, num: int) -> str:
    """A host's IPv6 address on a dual-stack LAN: number 254 on 10.77.1.0/24 -> fd77:0:1::254."""
    return str(subnet6_of(net4).network_address + _hex_of_decimal(num))


def validate(desc: dict) -> dict:
    """Check a description whole; return a normalised copy with every address worked out.

    The result adds ``hosts``: {name: [{"lan", "ip", "prefix"} ...]} in interface order.
    Every part is checked and every problem listed before one TopologyError names them all.
    """
    problems: list[str] = []
    d = copy.deepcopy(desc)
    if not isinstance(d, dict):
        raise TopologyError("a topology description is a mapping with 'lans' (and optionally "
                            "'name', 'routes', 'forward', 'rules')")
    name, ipv6 = _name_and_stack(d, problems)
    lans = d.get("lans")
    if not isinstance(lans, dict) or not lans:
        raise TopologyError("the description needs 'lans': a mapping of LAN name -> "
                            "{subnet, hosts: {host: address number}, gateway?}")
    hosts, nets = _lans(lans, ipv6, problems)
    forward = _forward(d, lans, hosts, problems)
    routes = _routes(d, hosts, nets, ipv6, problems)
    rules = _rules(d, "rules", hosts, problems)
    rules6 = _rules(d, "rules6", hosts, problems)

    if problems:
        raise TopologyError("the topology description has problems (nothing was built):\n  - "
                            + "\n  - ".join(problems))

    out = {"name": name, "lans": lans, "routes": routes, "forward": forward, "rules": rules,
           "hosts": hosts}
    if ipv6:
        out.update(ipv6=True, rules6=rules6)
    if "notes" in d:
        out["notes"] = d["notes"]
    return out


def _name_and_stack(d: dict, problems: list[str]) -> tuple[str, bool]:
    """The description's keys, its name and whether it is dual-stack."""
    unknown = set(d) - _KEYS - {"hosts"}
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)}; a description has {sorted(_KEYS)}")
    name = d.get("name", "custom")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]{1,40}$", name):
        problems.append(f"name {name!r} must be 1-40 letters, digits, '.', '_' or '-'")
    ipv6 = d.get("ipv6", False)
    if not isinstance(ipv6, bool):
        problems.append(f"'ipv6' must be true (a dual-stack lab) or false, not {ipv6!r}")
        ipv6 = False
    if "rules6" in d and not ipv6:
        problems.append("'rules6' (ip6tables rules) needs \"ipv6\": true")
    return name, ipv6


def _lans(lans: dict, ipv6: bool, problems: list[str]):
    """(hosts: {host: [interface]}, nets: {lan: subnet}) of the LANs, within the lab's limits."""
    hosts: dict[str, list[dict]] = {}
    nets: dict[str, ipaddress.IPv4Network] = {}
    for lan, spec in lans.items():
        where = f"lan {lan!r}"
        if not isinstance(spec, dict):
            problems.append(f"{where} must be a mapping with subnet and hosts")
            continue
        extra = set(spec) - _LAN_KEYS
        if extra:
            problems.append(f"{where}: unknown keys {sorted(extra)}; a LAN has {sorted(_LAN_KEYS)}")
        net = _net(spec.get("subnet"), where, problems)
        members = spec.get("hosts")
        if not isinstance(members, dict) or len(members) < 2:
            problems.append(f"{where} needs 'hosts' with at least two members (host: address number)")
            continue
        if net is None:
            continue
        for other, onet in nets.items():
            if net.overlaps(onet):
                problems.append(f"{where}: subnet {net} overlaps lan {other!r} ({onet})")
        nets[lan] = net
        for host, iface in _members(lan, net, members, ipv6, problems):
            hosts.setdefault(host, []).append(iface)
        gw = spec.get("gateway")
        if gw is not None and gw not in members:
            problems.append(f"{where}: gateway {gw!r} is not one of its hosts ({', '.join(members)})")

    if len(hosts) > MAX_HOSTS:
        problems.append(f"{len(hosts)} hosts; a lab has at most {MAX_HOSTS}")
    for host, ifaces in hosts.items():
        if len(ifaces) > MAX_INTERFACES:
            problems.append(f"host {host} is on {len(ifaces)} LANs; at most {MAX_INTERFACES}")
    return hosts, nets


def _members(lan: str, net, members: dict, ipv6: bool, problems: list[str]):
    """(host, interface) of each well-formed member of one LAN, addresses worked out."""
    where = f"lan {lan!r}"
    used: dict[str, str] = {}
    for host, num in members.items():
        if not isinstance(host, str) or not _NAME.match(host):
            problems.append(f"{where}: host name {host!r} must start with a lower-case letter "
                            "and have at most 15 letters, digits, '-' or '_'")
            continue
        if isinstance(num, bool) or not isinstance(num, int):
            problems.append(f"{where}: {host}'s address number must be an integer, not {num!r}")
            continue
        if not 0 < num < net.num_addresses - 1:
            problems.append(f"{where}: {host}'s address number {num} is not a host address of "
                            f"{net} (1..{net.num_addresses - 2})")
            continue
        ip = str(net.network_address + num)
        if ip in used:
            problems.append(f"{where}: {host} and {used[ip]} both have address {ip}")
            continue
        used[ip] = host
        iface = {"lan": lan, "ip": ip, "prefix": net.prefixlen}
        if ipv6:
            iface.update(ip6=ip6_of(net, num), prefix6=64)
        yield host, iface


def _forward(d: dict, lans: dict, hosts: dict, problems: list[str]) -> list[str]:
    """The hosts that forward: those listed, then every LAN's gateway."""
    forward = d.get("forward", [])
    if not isinstance(forward, list) or any(h not in hosts for h in forward):
        problems.append(f"'forward' must list hosts of the lab ({', '.join(hosts)}), got {forward!r}")
        forward = []
    gateways = [s.get("gateway") for s in lans.values() if isinstance(s, dict) and s.get("gateway")]
    return list(dict.fromkeys([*forward, *[g for g in gateways if g in hosts]]))


def _routes(d: dict, hosts: dict, nets: dict, ipv6: bool, problems: list[str]) -> dict:
    """The static routes, each via an address on one of its host's LANs."""
    routes = d.get("routes", {})
    if not isinstance(routes, dict):
        problems.append("'routes' must map a host to a list of {to, via}")
        return {}
    for host, lst in routes.items():
        if host not in hosts:
            problems.append(f"routes: no host {host!r} in the lab")
            continue
        if not isinstance(lst, list):
            problems.append(f"routes of {host}: a list of {{to, via}}, got {lst!r}")
            continue
        for r in lst:
            _check_route(host, r, hosts, nets, ipv6, problems)
    return routes


def _check_route(host: str, r, hosts: dict, nets: dict, ipv6: bool, problems: list[str]) -> None:
    if not isinstance(r, dict) or set(r) != {"to", "via"}:
        problems.append(f"routes of {host}: each route is {{'to': subnet, 'via': address}}, got {r!r}")
        return
    to = _net(r["to"], f"routes of {host}", problems, ipv6)
    try:
        via = ipaddress.ip_address(str(r["via"]))
    except ValueError:
        problems.append(f"routes of {host}: via {r['via']!r} is not an address")
        return
    if to is not None and to.version != via.version:
        problems.append(f"routes of {host}: {to} via {via} mixes IPv4 and IPv6")
        return
    on = [nets[i["lan"]] if via.version == 4 else subnet6_of(nets[i["lan"]])
          for i in hosts[host] if i["lan"] in nets]
    if not any(via in net for net in on):
        problems.append(f"routes of {host}: via {via} is not on any of {host}'s LANs")


def _rules(d: dict, key: str, hosts: dict, problems: list[str]) -> dict:
    """The ``rules`` (iptables) or ``rules6`` (ip6tables) of a description, checked."""
    rules = d.get(key, {})
    if not isinstance(rules, dict):
        problems.append(f"'{key}' must map a host to a list of {_PROGRAM[key]} argument strings")
        return {}
    for host, lst in rules.items():
        if host not in hosts:
            problems.append(f"{key}: no host {host!r} in the lab")
            continue
        if not isinstance(lst, list) or not all(isinstance(r, str) for r in lst):
            problems.append(f"{key} of {host}: a list of strings such as '-A FORWARD -j DROP'")
            continue
        for r in lst:
            try:
                argv = shlex.split(r)
            except ValueError as exc:
                problems.append(f"{key} of {host}: {r!r} cannot be split ({exc})")
                continue
            if not argv or argv[0] not in _RULE_START:
                problems.append(f"{key} of {host}: {r!r} must start with one of {', '.join(_RULE_START)}")
    return rules


_PROGRAM = {"rules": "iptables", "rules6": "ip6tables"}


def all_routes(desc: dict, version: int = 4) -> dict[str, list[tuple[str, str]]]:
    """Each host's routes of one IP version: through its LAN's gateway to every subnet it is
    not on, then the description's own routes."""
    key = "ip" if version == 4 else "ip6"
    nets = {lan: spec["subnet"] if version == 4 else str(subnet6_of(spec["subnet"]))
            for lan, spec in desc["lans"].items()}
    out: dict[str, list[tuple[str, str]]] = {h: [] for h in desc["hosts"]}
    for host, ifaces in desc["hosts"].items():
        mine = {i["lan"] for i in ifaces}
        for i in ifaces:
            gw = desc["lans"][i["lan"]].get("gateway")
            if gw is None or gw == host:
                continue
            gw_ip = next(g[key] for g in desc["hosts"][gw] if g["lan"] == i["lan"])
            for lan, subnet in nets.items():
                if lan not in mine and all(subnet != d for d, _ in out[host]):
                    out[host].append((subnet, gw_ip))
        for r in desc["routes"].get(host, []):
            to = ipaddress.ip_network(r["to"])
            if to.version == version:
                out[host].append((str(to), str(r["via"])))
    return out


def mac_of(ip: str) -> str:
    """02:77:<third octet>:00:00:<fourth octet>, the scheme of the built-in topologies."""
    a = ipaddress.ip_address(ip).packed
    return f"02:77:{a[2]:02x}:00:00:{a[3]:02x}"
