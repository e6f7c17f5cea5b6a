"""Netfilter's built-in tables and their chains, for the lab's rules and exported xt_LUA rules."""

#: Built-in chains per table (IPv4 and IPv6 alike); user-defined chains come on top.
TABLES = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
