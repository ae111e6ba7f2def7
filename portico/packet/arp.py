"""ARP for IPv4 over Ethernet (RFC 826)."""

from __future__ import annotations

from portico.packet.header import Field, Header

REQUEST = 1
REPLY = 2


class ARP(Header):
    NAME = "arp"
    FIELDS = (
        Field("hwtype", 16, 1),
        Field("ptype", 16, 0x0800, kind="flags"),
        Field("hwlen", 8, 6),
        Field("plen", 8, 4),
        Field("op", 16, REQUEST),
        Field("sha", 48, 0, kind="mac"),
        Field("spa", 32, 0, kind="ipv4"),
        Field("tha", 48, 0, kind="mac"),
        Field("tpa", 32, 0, kind="ipv4"),
    )
