"""VXLAN (RFC 7348): an Ethernet frame inside UDP port 4789, named by a 24-bit VNI."""

from __future__ import annotations

from portico.packet.header import Field, Header

FLAG_VNI_VALID = 0x08


class VXLAN(Header):
    NAME = "vxlan"
    FIELDS = (
        Field("flags", 8, FLAG_VNI_VALID, kind="flags"),
        Field("reserved1", 24),
        Field("vni", 24),
        Field("reserved2", 8),
    )
