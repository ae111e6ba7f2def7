"""Ethernet II (IEEE 802.3 with an ethertype): the outermost header of every frame."""

from __future__ import annotations

from portico.packet.header import Field, Header


class Ethernet(Header):
    NAME = "ethernet"
    FIELDS = (
        Field("dst", 48, 0xFFFFFFFFFFFF, kind="mac"),
        Field("src", 48, 0x020000000001, kind="mac"),
        Field("ethertype", 16, 0, kind="flags"),
    )
