"""Checksums, EtherTypes and address helpers, once for every part that builds or reads frames."""
from __future__ import annotations

import ipaddress
import struct

#: EtherTypes of the network layers the lab carries.
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
#: Bytes of an Ethernet header: destination MAC, source MAC, EtherType.
ETH_HLEN = 14
#: IP protocol numbers (IPv4 protocol, IPv6 next header) of the layers the lab carries.
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
#: ICMP and ICMPv6 message types of an echo (ping).
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
#: TCP flag bits by their letters, in tcpdump's order.
TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}


def tcp_flag_letters(bits: int) -> str:
    """``0x12`` as ``"SA"``; the empty string for none."""
    return "".join(c for c, m in TCP_FLAGS.items() if bits & m)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``: the one's complement of its 16-bit sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac_bytes(text: str) -> bytes:
    """``"02:00:00:00:00:01"`` as 6 bytes; a clear error for anything else."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"not a MAC address: {text!r} (write six hex bytes, e.g. 02:00:00:00:00:01)")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r} (write six hex bytes, e.g. 02:00:00:00:00:01)") from None


def address_bytes(text: str) -> bytes:
    """An IPv4 or IPv6 address as its 4 or 16 bytes."""
    return ipaddress.ip_address(text).packed


def pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    """The TCP/UDP/ICMPv6 checksum pseudo-header, IPv4 (RFC 793) or IPv6 (RFC 8200 §8.1)."""
    s, d = address_bytes(src), address_bytes(dst)
    if len(s) == 16:
        return s + d + struct.pack("!IxxxB", length, proto)
    return s + d + struct.pack("!BBH", 0, proto, length)


def checked_eth_header(header: bytes) -> bytes:
    """``header`` as bytes if it is an Ethernet header's length; a clear error if not."""
    if len(header) != ETH_HLEN:
        raise ValueError(f"an Ethernet header is {ETH_HLEN} bytes: destination MAC, source MAC, "
                         f"type (not {len(header)})")
    return bytes(header)


def ethertype(frame: bytes) -> int:
    """The EtherType of an Ethernet frame (its last two header bytes)."""
    return int.from_bytes(frame[ETH_HLEN - 2:ETH_HLEN], "big")


def eth_header(dst_mac: str | bytes, src_mac: str | bytes, ethertype: int = ETH_P_IP) -> bytes:
    """A 14-byte Ethernet header; MACs as text (``02:00:00:00:00:01``) or 6 bytes."""
    def six(mac):
        return mac_bytes(mac) if isinstance(mac, str) else bytes(mac)
    return six(dst_mac) + six(src_mac) + struct.pack("!H", ethertype)
