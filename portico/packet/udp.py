"""UDP (RFC 768)."""

from __future__ import annotations

from portico.packet.header import Field, Header


class UDP(Header):
    NAME = "udp"
    FIELDS = (
        Field("sport", 16),
        Field("dport", 16),
        Field("length", 16),
        Field("checksum", 16, kind="flags"),
    )
