"""How layers stack: the dispatch tables, declared once for every parser.

Each binding says "when field F of layer L has value V, the next header is U",
as Scapy's ``bind_layers(UDP, VXLAN, dport=4789)`` does. From this one list come

* the lookup arrays the batch parser indexes (``ETHERTYPE_NEXT[ethertype]``,
  ``IP_PROTO_NEXT[proto]``, ``UDP_PORT_NEXT[dport]``): dispatch is a table,
  not a chain of ifs;
* the reverse map the scalar builder uses to fill a next-header field from the
  header that follows (``Ethernet / IPv4`` gets ethertype 0x0800).

Layer ids are stable numbers: the ``layers`` column of a Batch keeps one bit per
layer seen, outer layers in the low 16 bits and layers inside a tunnel in the
high 16 (``1 << (INNER + id)``).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Layer(IntEnum):
    ETHERNET = 0
    VLAN = 1
    ARP = 2
    IPV4 = 3
    IPV6 = 4
    IPV6_EXT = 5  # any IPv6 extension header
    ICMP = 6
    ICMPV6 = 7
    TCP = 8
    UDP = 9
    GRE = 10
    VXLAN = 11
    GENEVE = 12
    GTPU = 13
    FRAGMENT = 14  # an IP fragment (v4 or v6): the L4 header may be absent
    PAYLOAD = 15  # anything the parser does not decode further


NONE = 255  # "no next layer": stop parsing here
INNER = 16  # bit offset of inner layers in the ``layers`` bitmask


# Which selector each lower layer dispatches on, and the bindings over it.
ETHERTYPE = "ethertype"
IP_PROTO = "protocol"
UDP_DPORT = "dport"

BINDINGS: tuple[tuple[str, int, Layer], ...] = (
    (ETHERTYPE, 0x0800, Layer.IPV4),
    (ETHERTYPE, 0x86DD, Layer.IPV6),
    (ETHERTYPE, 0x0806, Layer.ARP),
    (ETHERTYPE, 0x8100, Layer.VLAN),  # 802.1Q C-tag
    (ETHERTYPE, 0x88A8, Layer.VLAN),  # 802.1ad S-tag (QinQ outer)
    (ETHERTYPE, 0x6558, Layer.ETHERNET),  # transparent Ethernet bridging (GRE, Geneve)
    (IP_PROTO, 1, Layer.ICMP),
    (IP_PROTO, 6, Layer.TCP),
    (IP_PROTO, 17, Layer.UDP),
    (IP_PROTO, 47, Layer.GRE),
    (IP_PROTO, 58, Layer.ICMPV6),
    (IP_PROTO, 4, Layer.IPV4),  # IP-in-IP
    (IP_PROTO, 41, Layer.IPV6),  # IPv6-in-IP
    (IP_PROTO, 0, Layer.IPV6_EXT),  # hop-by-hop options
    (IP_PROTO, 43, Layer.IPV6_EXT),  # routing
    (IP_PROTO, 44, Layer.IPV6_EXT),  # fragment
    (IP_PROTO, 60, Layer.IPV6_EXT),  # destination options
    (UDP_DPORT, 4789, Layer.VXLAN),
    (UDP_DPORT, 6081, Layer.GENEVE),
    (UDP_DPORT, 2152, Layer.GTPU),
)

IPV6_EXT_PROTOS = (0, 43, 44, 60)
IPV6_FRAGMENT_PROTO = 44


def _table(selector: str, size: int) -> np.ndarray:
    table = np.full(size, NONE, dtype=np.uint8)
    for sel, value, layer in BINDINGS:
        if sel == selector:
            table[value] = layer
    table.flags.writeable = False
    return table


ETHERTYPE_NEXT = _table(ETHERTYPE, 1 << 16)
IP_PROTO_NEXT = _table(IP_PROTO, 1 << 8)
UDP_PORT_NEXT = _table(UDP_DPORT, 1 << 16)

# Reverse map for the builder: (selector, upper layer) -> the value to write.
# The first binding listed wins (0x8100 for VLAN; the builder sets 0x88A8 for QinQ itself).
SELECTOR_VALUE: dict[tuple[str, Layer], int] = {}
for _sel, _value, _layer in BINDINGS:
    SELECTOR_VALUE.setdefault((_sel, _layer), _value)


def layer_names(mask: int) -> list[str]:
    """Names of the layers set in a ``layers`` bitmask, outer first ("inner-ipv4" for inner)."""
    names = [layer.name.lower() for layer in Layer if mask >> layer & 1]
    names += ["inner-" + layer.name.lower() for layer in Layer if mask >> (INNER + layer) & 1]
    return names
