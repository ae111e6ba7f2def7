"""IEEE 802.1Q VLAN tag, also the 802.1ad S-tag of QinQ.

The tag's TPID (0x8100 for a C-tag, 0x88A8 for an S-tag) is the ethertype of the
header before it; what is declared here is the TCI and the ethertype that follows.
"""

from __future__ import annotations

from portico.packet.header import Field, Header

TPID_CTAG = 0x8100
TPID_STAG = 0x88A8


class Dot1Q(Header):
    NAME = "vlan"
    FIELDS = (
        Field("pcp", 3),
        Field("dei", 1),
        Field("vid", 12),
        Field("ethertype", 16, 0, kind="flags"),
    )
