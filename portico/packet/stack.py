"""Which header class is which layer: the bridge between ``layers`` and the formats.

``portico.packet.layers`` names layers by number so the batch parser's tables
stay plain arrays; the scalar builder and decoder need the classes. This table
is the one place they meet. All IPv6 extension headers are one layer; which
class a given protocol number announces is ``ipv6.EXTENSION_HEADERS``.
"""

from __future__ import annotations

from portico.packet.arp import ARP
from portico.packet.ethernet import Ethernet
from portico.packet.geneve import Geneve
from portico.packet.gre import GRE
from portico.packet.gtpu import GTPU
from portico.packet.header import Header
from portico.packet.icmp import ICMP
from portico.packet.icmpv6 import ICMPv6
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import IPv6, IPv6ExtHeader, IPv6Fragment
from portico.packet.layers import Layer
from portico.packet.tcp import TCP
from portico.packet.udp import UDP
from portico.packet.vlan import Dot1Q
from portico.packet.vxlan import VXLAN

HEADER_OF_LAYER: dict[Layer, type[Header]] = {
    Layer.ETHERNET: Ethernet,
    Layer.VLAN: Dot1Q,
    Layer.ARP: ARP,
    Layer.IPV4: IPv4,
    Layer.IPV6: IPv6,
    Layer.ICMP: ICMP,
    Layer.ICMPV6: ICMPv6,
    Layer.TCP: TCP,
    Layer.UDP: UDP,
    Layer.GRE: GRE,
    Layer.VXLAN: VXLAN,
    Layer.GENEVE: Geneve,
    Layer.GTPU: GTPU,
}

_EXTENSIONS: tuple[type[Header], ...] = (IPv6ExtHeader, IPv6Fragment)


def layer_of(cls: type[Header]) -> Layer | None:
    """The layer a header class belongs to (subclasses count as their base)."""
    for base in cls.__mro__:
        if base in _EXTENSIONS:
            return Layer.IPV6_EXT
        for layer, header in HEADER_OF_LAYER.items():
            if header is base:
                return layer
    return None
