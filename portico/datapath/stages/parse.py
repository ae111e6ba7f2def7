"""parse: fill a Batch's header columns for every row, in one compiled pass.

Theory of operation. One Numba kernel walks each packet from the Ethernet
header inwards: VLAN tags (802.1Q, QinQ), then ARP, IPv4 or IPv6 (with its
extension headers and fragments), then TCP, UDP, ICMP, ICMPv6 or GRE, and,
behind a tunnel (VXLAN, Geneve, GTP-U, GRE), the inner Ethernet/IP/transport
headers. Which header comes next is looked up in the tables of
``portico.packet.layers`` (``ETHERTYPE_NEXT[ethertype]`` and friends); the
field positions come from the header declarations in ``portico.packet``.

Each row ends either parsed, with its offsets and fields set, or with a
``drop`` reason from ``ParseDrop`` and the fields of the layers it got through.
Nothing raises, whatever the bytes: every read is bounded first by the captured
length and then by the lengths the headers themselves claim (IPv4 total
length, IPv6 payload length, UDP length), so trailing Ethernet padding is
ignored and a header that claims more than the frame holds is a drop.
Problems in the packet inside a tunnel get the same reasons, prefixed
"inner-" (code + ``INNER_DROP``).

The kernel writes every column it owns for every row, so parsing is
idempotent: a stage that rewrote headers may parse again.

Ports of ICMP echo: the identifier is stored as both ``sport`` and ``dport``,
the way connection trackers key echo flows.

ICMP errors: the packet an error quotes goes into the ``inner_*`` columns
(its addresses, protocol and ports, as far as the quote holds them; see
``parse_quote``), so NAT and the firewall can find the flow it is about.

Example::

    batch = Batch.from_packets(packets)
    parse(batch)
    batch.meta["dport"][: batch.count]
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numba import njit

from portico import drops
from portico.batch import Batch
from portico.packet import layers
from portico.packet.ethernet import Ethernet
from portico.packet.geneve import Geneve
from portico.packet.gtpu import GTPU
from portico.packet.icmp import ICMP
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import IPv6, IPv6Fragment
from portico.packet.layers import Layer
from portico.packet.tcp import TCP
from portico.packet.udp import UDP
from portico.packet.vxlan import VXLAN


class ParseDrop(IntEnum):
    TRUNCATED_ETHERNET = 1
    TRUNCATED_VLAN = 2
    TOO_MANY_VLANS = 3  # more than two tags
    TRUNCATED_ARP = 4
    TRUNCATED_IPV4 = 5
    BAD_IP_VERSION = 6  # version nibble disagrees with the ethertype
    BAD_IHL = 7  # IHL below 5 or past the total length
    BAD_IPV4_LENGTH = 8  # total length beyond the frame
    TRUNCATED_IPV6 = 9
    BAD_IPV6_LENGTH = 10  # payload length beyond the frame
    BAD_EXT_HEADER = 11  # an extension header runs past the packet
    TOO_MANY_EXT_HEADERS = 12
    NON_FIRST_FRAGMENT = 13  # no transport header, and the caller needs ports
    TRUNCATED_TCP = 14
    BAD_TCP_OFFSET = 15  # data offset below 5 or past the segment
    TRUNCATED_UDP = 16
    BAD_UDP_LENGTH = 17  # below 8 or past the IP payload
    TRUNCATED_ICMP = 18
    TRUNCATED_GRE = 19
    TRUNCATED_VXLAN = 20
    TRUNCATED_GENEVE = 21  # also: options longer than the datagram
    BAD_GENEVE_VERSION = 22
    TRUNCATED_GTPU = 23  # also: an extension header past the datagram
    BAD_GTPU_VERSION = 24
    CAPTURE_TRUNCATED = 25  # the capture kept fewer bytes than were on the wire


INNER_DROP = 32  # an inner packet's reason is its outer reason + 32

drops.register(
    "parse",
    ParseDrop,
    names={
        int(r) + INNER_DROP: "inner-" + r.name.lower().replace("_", "-")
        for r in ParseDrop
        if r != ParseDrop.CAPTURE_TRUNCATED
    },
)

NEXT_STAGES = ("ingress",)  # what follows parse: the datapath classifies every parsed row

MAX_EXT_HEADERS = 8
MAX_GTPU_EXT = 8

# Field positions, from the declarations (bytes from each header's start).
ETH_LEN = Ethernet.SIZE
ETH_TYPE = Ethernet.at("ethertype").offset
VLAN_LEN = 4
IP4_LEN = IPv4.SIZE
IP4_TOS = IPv4.at("tos").offset
IP4_TOTAL = IPv4.at("total_length").offset
IP4_FRAG = IPv4.at("flags").offset  # flags and fragment offset share these two bytes
IP4_TTL = IPv4.at("ttl").offset
IP4_PROTO = IPv4.at("protocol").offset
IP4_SRC = IPv4.at("src").offset
IP4_DST = IPv4.at("dst").offset
IP6_LEN = IPv6.SIZE
IP6_PAYLOAD = IPv6.at("payload_length").offset
IP6_NEXT = IPv6.at("next_header").offset
IP6_HOPS = IPv6.at("hop_limit").offset
IP6_SRC = IPv6.at("src").offset
IP6_DST = IPv6.at("dst").offset
FRAG6_OFFSET = IPv6Fragment.at("frag_offset").offset
TCP_LEN = TCP.SIZE
TCP_OFFSET = TCP.at("data_offset").offset
TCP_FLAGS = TCP.at("flags").offset
UDP_LEN = UDP.SIZE
UDP_LENGTH = UDP.at("length").offset
ICMP_LEN = ICMP.SIZE
ICMP_IDENT = ICMP.at("ident").offset
# The ICMP messages that quote a packet (RFC 792, RFC 4443): their inner_* columns hold it.
ICMP4_ERROR = np.zeros(256, dtype=np.bool_)
ICMP4_ERROR[[3, 4, 5, 11, 12]] = True  # unreachable, source quench, redirect, time, parameter
ICMP6_ERROR = np.zeros(256, dtype=np.bool_)
ICMP6_ERROR[[1, 2, 3, 4]] = True  # unreachable, too big, time exceeded, parameter problem
VXLAN_LEN = VXLAN.SIZE
VXLAN_VNI = VXLAN.at("vni").offset
GENEVE_LEN = Geneve.SIZE
GENEVE_PROTO = Geneve.at("protocol").offset
GENEVE_VNI = Geneve.at("vni").offset
GTPU_LEN = GTPU.SIZE
GTPU_TYPE = GTPU.at("message_type").offset
GTPU_TEID = GTPU.at("teid").offset

ETHERTYPE_NEXT = layers.ETHERTYPE_NEXT
IP_PROTO_NEXT = layers.IP_PROTO_NEXT
UDP_PORT_NEXT = layers.UDP_PORT_NEXT

L_ETHERNET = int(Layer.ETHERNET)
L_VLAN = int(Layer.VLAN)
L_ARP = int(Layer.ARP)
L_IPV4 = int(Layer.IPV4)
L_IPV6 = int(Layer.IPV6)
L_IPV6_EXT = int(Layer.IPV6_EXT)
L_ICMP = int(Layer.ICMP)
L_ICMPV6 = int(Layer.ICMPV6)
L_TCP = int(Layer.TCP)
L_UDP = int(Layer.UDP)
L_GRE = int(Layer.GRE)
L_VXLAN = int(Layer.VXLAN)
L_GENEVE = int(Layer.GENEVE)
L_GTPU = int(Layer.GTPU)
L_FRAGMENT = int(Layer.FRAGMENT)
L_PAYLOAD = int(Layer.PAYLOAD)
NONE = layers.NONE

D_TRUNC_ETH = int(ParseDrop.TRUNCATED_ETHERNET)
D_TRUNC_VLAN = int(ParseDrop.TRUNCATED_VLAN)
D_VLANS = int(ParseDrop.TOO_MANY_VLANS)
D_TRUNC_ARP = int(ParseDrop.TRUNCATED_ARP)
D_TRUNC_IP4 = int(ParseDrop.TRUNCATED_IPV4)
D_VERSION = int(ParseDrop.BAD_IP_VERSION)
D_IHL = int(ParseDrop.BAD_IHL)
D_IP4_LENGTH = int(ParseDrop.BAD_IPV4_LENGTH)
D_TRUNC_IP6 = int(ParseDrop.TRUNCATED_IPV6)
D_IP6_LENGTH = int(ParseDrop.BAD_IPV6_LENGTH)
D_EXT = int(ParseDrop.BAD_EXT_HEADER)
D_EXT_MANY = int(ParseDrop.TOO_MANY_EXT_HEADERS)
D_FRAGMENT = int(ParseDrop.NON_FIRST_FRAGMENT)
D_TRUNC_TCP = int(ParseDrop.TRUNCATED_TCP)
D_TCP_OFFSET = int(ParseDrop.BAD_TCP_OFFSET)
D_TRUNC_UDP = int(ParseDrop.TRUNCATED_UDP)
D_UDP_LENGTH = int(ParseDrop.BAD_UDP_LENGTH)
D_TRUNC_ICMP = int(ParseDrop.TRUNCATED_ICMP)
D_TRUNC_GRE = int(ParseDrop.TRUNCATED_GRE)
D_TRUNC_VXLAN = int(ParseDrop.TRUNCATED_VXLAN)
D_TRUNC_GENEVE = int(ParseDrop.TRUNCATED_GENEVE)
D_GENEVE_VERSION = int(ParseDrop.BAD_GENEVE_VERSION)
D_TRUNC_GTPU = int(ParseDrop.TRUNCATED_GTPU)
D_GTPU_VERSION = int(ParseDrop.BAD_GTPU_VERSION)
D_CAPTURE = int(ParseDrop.CAPTURE_TRUNCATED)

ICMP_ECHO = (0, 8)
ICMPV6_ECHO = (128, 129)


# ---------------------------------------------------------------- byte reads
@njit(cache=True, inline="always")
def be16(data: np.ndarray, i: int, at: int) -> int | np.int64:
    return (np.int64(data[i, at]) << 8) | np.int64(data[i, at + 1])


@njit(cache=True, inline="always")
def be32(data: np.ndarray, i: int, at: int) -> int | np.int64:
    return (be16(data, i, at) << 16) | be16(data, i, at + 2)


@njit(cache=True, inline="always")
def be64(data: np.ndarray, i: int, at: int) -> np.uint64:
    return (np.uint64(be32(data, i, at)) << np.uint64(32)) | np.uint64(be32(data, i, at + 4))


# ---------------------------------------------------------------- one layer at a time
@njit(cache=True, inline="always")
def parse_l2(data, i, at, end, max_tags):  # type: ignore[no-untyped-def]
    """Ethernet and up to ``max_tags`` VLAN tags.

    Returns (drop, ethertype, offset after L2, tag count, first VID, second VID).
    """
    if end - at < ETH_LEN:
        return D_TRUNC_ETH, 0, at, 0, 0, 0
    ethertype = be16(data, i, at + ETH_TYPE)
    at += ETH_LEN
    tags = 0
    vid0 = 0
    vid1 = 0
    while ETHERTYPE_NEXT[ethertype] == L_VLAN:
        if tags == max_tags:
            return D_VLANS, ethertype, at, tags, vid0, vid1
        if end - at < VLAN_LEN:
            return D_TRUNC_VLAN, ethertype, at, tags, vid0, vid1
        vid = be16(data, i, at) & 0x0FFF
        if tags == 0:
            vid0 = vid
        else:
            vid1 = vid
        tags += 1
        ethertype = be16(data, i, at + 2)
        at += VLAN_LEN
    return 0, ethertype, at, tags, vid0, vid1


@njit(cache=True, inline="always")
def parse_ip(data, i, l3, end, version, non_first_fragment_drops):  # type: ignore[no-untyped-def]
    """IPv4 or IPv6 (with extension headers) at ``l3``; ``end`` bounds the bytes.

    Returns (drop, ip_end, l4, protocol, ttl, tos, frag, l3_length,
             src4, dst4, src6_hi, src6_lo, dst6_hi, dst6_lo, layer bits).
    l4 is -1 when there is no transport header to read (a non-first fragment).
    """
    zero = np.uint64(0)
    avail = end - l3
    if version == 4:
        bits = 1 << L_IPV4
        if avail < IP4_LEN:
            return D_TRUNC_IP4, l3, -1, 0, 0, 0, 0, 0, 0, 0, zero, zero, zero, zero, bits
        if data[i, l3] >> 4 != 4:
            return D_VERSION, l3, -1, 0, 0, 0, 0, 0, 0, 0, zero, zero, zero, zero, bits
        ihl = (data[i, l3] & 0x0F) * 4
        total = be16(data, i, l3 + IP4_TOTAL)
        tos = data[i, l3 + IP4_TOS]
        ttl = data[i, l3 + IP4_TTL]
        proto = data[i, l3 + IP4_PROTO]
        src4 = be32(data, i, l3 + IP4_SRC)
        dst4 = be32(data, i, l3 + IP4_DST)
        if ihl < IP4_LEN:
            return (
                D_IHL,
                l3,
                -1,
                proto,
                ttl,
                tos,
                0,
                total,
                src4,
                dst4,
                zero,
                zero,
                zero,
                zero,
                bits,
            )
        if total > avail:
            return (
                D_IP4_LENGTH,
                l3,
                -1,
                proto,
                ttl,
                tos,
                0,
                total,
                src4,
                dst4,
                zero,
                zero,
                zero,
                zero,
                bits,
            )
        if ihl > total:
            return (
                D_IHL,
                l3,
                -1,
                proto,
                ttl,
                tos,
                0,
                total,
                src4,
                dst4,
                zero,
                zero,
                zero,
                zero,
                bits,
            )
        frag_word = be16(data, i, l3 + IP4_FRAG)
        frag = 0
        if frag_word & 0x3FFF:  # MF set or a non-zero offset
            frag = 2 if frag_word & 0x1FFF else 1
            bits |= 1 << L_FRAGMENT
        l4 = l3 + ihl
        drop = 0
        if frag == 2:
            l4 = -1
            if non_first_fragment_drops:
                drop = D_FRAGMENT
        return (
            drop,
            l3 + total,
            l4,
            proto,
            ttl,
            tos,
            frag,
            total,
            src4,
            dst4,
            zero,
            zero,
            zero,
            zero,
            bits,
        )

    bits = 1 << L_IPV6
    if avail < IP6_LEN:
        return D_TRUNC_IP6, l3, -1, 0, 0, 0, 0, 0, 0, 0, zero, zero, zero, zero, bits
    if data[i, l3] >> 4 != 6:
        return D_VERSION, l3, -1, 0, 0, 0, 0, 0, 0, 0, zero, zero, zero, zero, bits
    tos = ((data[i, l3] & 0x0F) << 4) | (data[i, l3 + 1] >> 4)
    total = IP6_LEN + be16(data, i, l3 + IP6_PAYLOAD)
    proto = data[i, l3 + IP6_NEXT]
    ttl = data[i, l3 + IP6_HOPS]
    s_hi = be64(data, i, l3 + IP6_SRC)
    s_lo = be64(data, i, l3 + IP6_SRC + 8)
    d_hi = be64(data, i, l3 + IP6_DST)
    d_lo = be64(data, i, l3 + IP6_DST + 8)
    if total > avail:
        return D_IP6_LENGTH, l3, -1, proto, ttl, tos, 0, total, 0, 0, s_hi, s_lo, d_hi, d_lo, bits
    ip_end = l3 + total
    at = l3 + IP6_LEN
    frag = 0
    count = 0
    while IP_PROTO_NEXT[proto] == L_IPV6_EXT:
        bits |= 1 << L_IPV6_EXT
        if count == MAX_EXT_HEADERS:
            return (
                D_EXT_MANY,
                ip_end,
                -1,
                proto,
                ttl,
                tos,
                frag,
                total,
                0,
                0,
                s_hi,
                s_lo,
                d_hi,
                d_lo,
                bits,
            )
        count += 1
        if ip_end - at < 8:
            return (
                D_EXT,
                ip_end,
                -1,
                proto,
                ttl,
                tos,
                frag,
                total,
                0,
                0,
                s_hi,
                s_lo,
                d_hi,
                d_lo,
                bits,
            )
        if proto == layers.IPV6_FRAGMENT_PROTO:
            bits |= 1 << L_FRAGMENT
            word = be16(data, i, at + FRAG6_OFFSET)
            proto = data[i, at]
            at += 8
            if word >> 3:  # non-zero offset
                drop = D_FRAGMENT if non_first_fragment_drops else 0
                return (
                    drop,
                    ip_end,
                    -1,
                    proto,
                    ttl,
                    tos,
                    2,
                    total,
                    0,
                    0,
                    s_hi,
                    s_lo,
                    d_hi,
                    d_lo,
                    bits,
                )
            frag = 1
            continue
        size = (np.int64(data[i, at + 1]) + 1) * 8
        if ip_end - at < size:
            return (
                D_EXT,
                ip_end,
                -1,
                proto,
                ttl,
                tos,
                frag,
                total,
                0,
                0,
                s_hi,
                s_lo,
                d_hi,
                d_lo,
                bits,
            )
        proto = data[i, at]
        at += size
    return 0, ip_end, at, proto, ttl, tos, frag, total, 0, 0, s_hi, s_lo, d_hi, d_lo, bits


@njit(cache=True, inline="always")
def parse_l4(data, i, l4, ip_end, proto):  # type: ignore[no-untyped-def]
    """The transport header at ``l4``, bounded by the IP payload's end.

    Returns (drop, sport, dport, tcp_flags, icmp_type, icmp_code, payload offset,
             next layer, layer bits). ``next layer`` names a tunnel to enter, or NONE.
    """
    avail = ip_end - l4
    layer = IP_PROTO_NEXT[proto]
    if layer == L_TCP:
        bits = 1 << L_TCP
        if avail < TCP_LEN:
            return D_TRUNC_TCP, 0, 0, 0, 0, 0, l4, NONE, bits
        sport = be16(data, i, l4)
        dport = be16(data, i, l4 + 2)
        flags = data[i, l4 + TCP_FLAGS]
        offset = (data[i, l4 + TCP_OFFSET] >> 4) * 4
        if offset < TCP_LEN or offset > avail:
            return D_TCP_OFFSET, sport, dport, flags, 0, 0, l4, NONE, bits
        return 0, sport, dport, flags, 0, 0, l4 + offset, NONE, bits
    if layer == L_UDP:
        bits = 1 << L_UDP
        if avail < UDP_LEN:
            return D_TRUNC_UDP, 0, 0, 0, 0, 0, l4, NONE, bits
        sport = be16(data, i, l4)
        dport = be16(data, i, l4 + 2)
        length = be16(data, i, l4 + UDP_LENGTH)
        if length < UDP_LEN or length > avail:
            return D_UDP_LENGTH, sport, dport, 0, 0, 0, l4, NONE, bits
        return 0, sport, dport, 0, 0, 0, l4 + UDP_LEN, UDP_PORT_NEXT[dport], bits
    if layer == L_ICMP or layer == L_ICMPV6:  # noqa: SIM109 (kept plain for Numba)
        bits = 1 << layer
        if avail < ICMP_LEN:
            return D_TRUNC_ICMP, 0, 0, 0, 0, 0, l4, NONE, bits
        kind = data[i, l4]
        code = data[i, l4 + 1]
        # Read whatever the type, then kept for echo only: reading it under the test
        # would cost a reference-count pair per packet (see lookup4 in classify/lpm4.py).
        ident = be16(data, i, l4 + ICMP_IDENT)
        if not ((layer == L_ICMP and (kind == 0 or kind == 8)) or (
            layer == L_ICMPV6 and (kind == 128 or kind == 129)
        )):
            ident = 0
        return 0, ident, ident, 0, kind, code, l4 + ICMP_LEN, NONE, bits
    if layer == L_GRE:
        bits = 1 << L_GRE
        if avail < 4:
            return D_TRUNC_GRE, 0, 0, 0, 0, 0, l4, NONE, bits
        flags = data[i, l4]
        size = 4 + 4 * ((flags >> 7) & 1) + 4 * ((flags >> 5) & 1) + 4 * ((flags >> 4) & 1)
        if avail < size:
            return D_TRUNC_GRE, 0, 0, 0, 0, 0, l4, NONE, bits
        return 0, 0, 0, 0, 0, 0, l4 + size, L_GRE, bits
    return 0, 0, 0, 0, 0, 0, l4, NONE, 1 << L_PAYLOAD


@njit(cache=True, inline="always")
def flow_hash(src_lo, dst_lo, sport, dport, proto):  # type: ignore[no-untyped-def]
    """Symmetric hash of a 5-tuple: both directions of a flow hash alike."""
    a = (np.uint64(src_lo) << np.uint64(16)) ^ np.uint64(sport)
    b = (np.uint64(dst_lo) << np.uint64(16)) ^ np.uint64(dport)
    lo = a if a < b else b
    hi = b if a < b else a
    x = lo * np.uint64(0x9E3779B97F4A7C15) ^ hi ^ np.uint64(proto)
    x ^= x >> np.uint64(31)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(29)
    return np.uint32(x & np.uint64(0xFFFFFFFF))


@njit(cache=True, inline="always")
def reset_inner(m):  # type: ignore[no-untyped-def]
    """The tunnel and inner columns as parse leaves a packet with neither a tunnel nor a
    quote (also what replies.build writes for the messages it makes)."""
    m.tunnel = 0
    m.tunnel_id = 0
    m.inner_l2 = -1
    m.inner_l3 = -1
    m.inner_l4 = -1
    m.inner_ip_version = 0
    m.inner_protocol = 0
    m.inner_tcp_flags = 0
    m.inner_src4 = 0
    m.inner_dst4 = 0
    m.inner_src6_hi = 0
    m.inner_src6_lo = 0
    m.inner_dst6_hi = 0
    m.inner_dst6_lo = 0
    m.inner_sport = 0
    m.inner_dport = 0


# ---------------------------------------------------------------- the kernel
@njit(cache=True)
def parse_rows(data, meta, count, non_first_fragment_drops):  # type: ignore[no-untyped-def]
    for i in range(count):
        m = meta[i]
        start = m.start
        end = start + m.length
        # Every column parse owns is written, so a row can be parsed again.
        m.drop = 0
        m.vlan_count = 0
        m.ip_version = 0
        m.l2 = start
        m.l3 = -1
        m.l4 = -1
        m.payload = -1
        m.ethertype = 0
        m.vlan_outer = 0
        m.vlan_inner = 0
        m.protocol = 0
        m.ttl = 0
        m.tos = 0
        m.frag = 0
        m.l3_length = 0
        m.src4 = 0
        m.dst4 = 0
        m.src6_hi = 0
        m.src6_lo = 0
        m.dst6_hi = 0
        m.dst6_lo = 0
        m.sport = 0
        m.dport = 0
        m.tcp_flags = 0
        m.icmp_type = 0
        m.icmp_code = 0
        reset_inner(m)
        m.flow_hash = 0
        mac = np.uint64(0)
        if end - start >= 6:
            for b in range(6):
                mac = (mac << np.uint64(8)) | np.uint64(data[i, start + b])
        m.eth_dst = mac

        bits = 1 << L_ETHERNET
        drop, ethertype, at, tags, vid0, vid1 = parse_l2(data, i, start, end, 2)
        m.ethertype = ethertype
        m.vlan_count = tags
        m.vlan_outer = vid0
        m.vlan_inner = vid1
        if tags:
            bits |= 1 << L_VLAN
        m.payload = at
        if drop:
            m.drop = drop
            m.layers = bits
            continue
        next_layer = ETHERTYPE_NEXT[ethertype]
        if next_layer == L_ARP:
            bits |= 1 << L_ARP
            m.l3 = at
            if end - at < 28:
                m.drop = D_TRUNC_ARP
            else:
                m.payload = at + 28
        elif next_layer == L_IPV4 or next_layer == L_IPV6:  # noqa: SIM109 (as above)
            version = 4 if next_layer == L_IPV4 else 6
            m.l3 = at
            (
                drop,
                ip_end,
                l4,
                proto,
                ttl,
                tos,
                frag,
                total,
                src4,
                dst4,
                s_hi,
                s_lo,
                d_hi,
                d_lo,
                ip_bits,
            ) = parse_ip(data, i, at, end, version, non_first_fragment_drops)
            bits |= ip_bits
            m.ip_version = version
            m.protocol = proto
            m.ttl = ttl
            m.tos = tos
            m.frag = frag
            m.l3_length = total
            m.src4 = src4
            m.dst4 = dst4
            m.src6_hi = s_hi
            m.src6_lo = s_lo
            m.dst6_hi = d_hi
            m.dst6_lo = d_lo
            if drop == 0 and l4 >= 0:
                m.l4 = l4
                (drop, sport, dport, tcp_flags, icmp_type, icmp_code, payload, tunnel, l4_bits) = (
                    parse_l4(data, i, l4, ip_end, proto)
                )
                bits |= l4_bits
                m.sport = sport
                m.dport = dport
                m.tcp_flags = tcp_flags
                m.icmp_type = icmp_type
                m.icmp_code = icmp_code
                m.payload = payload
                if drop == 0 and tunnel != NONE:
                    drop, inner_bits = parse_tunnel(
                        data, i, m, payload, ip_end, tunnel, l4 + be16(data, i, l4 + UDP_LENGTH)
                    )
                    bits |= inner_bits
                elif drop == 0 and ((proto == 1 and ICMP4_ERROR[icmp_type])
                                    or (proto == 58 and ICMP6_ERROR[icmp_type])):
                    parse_quote(data, i, m, payload, ip_end, version)
            elif drop == 0:  # a non-first fragment kept: no transport, no payload offset
                m.payload = -1
            if version == 4:
                m.flow_hash = flow_hash(m.src4, m.dst4, m.sport, m.dport, proto)
            else:
                m.flow_hash = flow_hash(s_lo ^ s_hi, d_lo ^ d_hi, m.sport, m.dport, proto)
            m.drop = drop
        else:
            bits |= 1 << L_PAYLOAD
        if m.drop == 0 and m.length < m.wire_length:
            m.drop = D_CAPTURE
        m.layers = bits


@njit(cache=True)
def parse_quote(data, i, m, at, end, version):  # type: ignore[no-untyped-def]
    """The packet an ICMP error quotes, at ``at``, into the ``inner_*`` columns.

    A quote is a truncated packet by design (RFC 792: the IP header and 8 bytes;
    RFC 1812 and 4443: as much as fits), so its lengths are not checked against
    what is there, and nothing here drops the error: whatever is readable (the IP
    header, then the first four bytes of the transport: the ports, or an echo's
    identifier) is filled in, the rest left absent. IPv6 extension headers are not
    walked: a quote whose next header is not the transport has no ports here.
    """
    avail = end - at
    if version == 4:
        if avail < IP4_LEN or data[i, at] >> 4 != 4:
            return
        ihl = (data[i, at] & 0x0F) * 4
        if ihl < IP4_LEN or ihl > avail:
            return
        proto = data[i, at + IP4_PROTO]
        m.inner_src4 = be32(data, i, at + IP4_SRC)
        m.inner_dst4 = be32(data, i, at + IP4_DST)
        l4 = at + ihl
    else:
        if avail < IP6_LEN or data[i, at] >> 4 != 6:
            return
        proto = data[i, at + IP6_NEXT]
        m.inner_src6_hi = be64(data, i, at + IP6_SRC)
        m.inner_src6_lo = be64(data, i, at + IP6_SRC + 8)
        m.inner_dst6_hi = be64(data, i, at + IP6_DST)
        m.inner_dst6_lo = be64(data, i, at + IP6_DST + 8)
        l4 = at + IP6_LEN
    m.inner_l3 = at
    m.inner_ip_version = version
    m.inner_protocol = proto
    if end - l4 < 4:
        return
    m.inner_l4 = l4
    if proto == 6 or proto == 17:  # noqa: SIM109 (kept plain for Numba)
        m.inner_sport = be16(data, i, l4)
        m.inner_dport = be16(data, i, l4 + 2)
    elif end - l4 >= ICMP_IDENT + 2 and (
            (proto == 1 and (data[i, l4] == 0 or data[i, l4] == 8))
            or (proto == 58 and (data[i, l4] == 128 or data[i, l4] == 129))):
        ident = be16(data, i, l4 + ICMP_IDENT)
        m.inner_sport = ident
        m.inner_dport = ident


@njit(cache=True)
def parse_tunnel(data, i, m, at, ip_end, tunnel, udp_end):  # type: ignore[no-untyped-def]
    """The tunnel header at ``at`` and the packet inside it. Returns (drop, layer bits)."""
    end = ip_end if tunnel == L_GRE else udp_end
    inner_l2 = -1
    inner_version = 0
    inner_at = at
    bits = 0
    if tunnel == L_GRE:
        l4 = m.l4
        ethertype = be16(data, i, l4 + 2)
        if data[i, l4] & 0x20:  # key present: it follows the optional checksum word
            m.tunnel_id = be32(data, i, l4 + 4 + 4 * (data[i, l4] >> 7))
        m.tunnel = L_GRE
        kind = ETHERTYPE_NEXT[ethertype]
        if kind == L_ETHERNET:
            inner_l2 = at
        elif kind == L_IPV4:
            inner_version = 4
        elif kind == L_IPV6:
            inner_version = 6
        else:
            return 0, 0
    elif tunnel == L_VXLAN:
        bits = 1 << L_VXLAN
        if end - at < VXLAN_LEN:
            return D_TRUNC_VXLAN, bits
        m.tunnel = L_VXLAN
        m.tunnel_id = be32(data, i, at + VXLAN_VNI - 1) & 0xFFFFFF
        inner_l2 = at + VXLAN_LEN
    elif tunnel == L_GENEVE:
        bits = 1 << L_GENEVE
        if end - at < GENEVE_LEN:
            return D_TRUNC_GENEVE, bits
        if data[i, at] >> 6 != 0:
            return D_GENEVE_VERSION, bits
        size = GENEVE_LEN + (data[i, at] & 0x3F) * 4
        if end - at < size:
            return D_TRUNC_GENEVE, bits
        m.tunnel = L_GENEVE
        m.tunnel_id = be32(data, i, at + GENEVE_VNI - 1) & 0xFFFFFF
        kind = ETHERTYPE_NEXT[be16(data, i, at + GENEVE_PROTO)]
        inner_at = at + size
        if kind == L_ETHERNET:
            inner_l2 = inner_at
        elif kind == L_IPV4:
            inner_version = 4
        elif kind == L_IPV6:
            inner_version = 6
        else:
            m.payload = inner_at
            return 0, bits
    else:  # GTP-U
        bits = 1 << L_GTPU
        if end - at < GTPU_LEN:
            return D_TRUNC_GTPU, bits
        flags = data[i, at]
        if flags >> 5 != 1:
            return D_GTPU_VERSION, bits
        m.tunnel = L_GTPU
        m.tunnel_id = be32(data, i, at + GTPU_TEID)
        inner_at = at + GTPU_LEN
        if flags & 0x07:  # E, S or PN: sequence, N-PDU and next-extension follow
            if end - inner_at < 4:
                return D_TRUNC_GTPU, bits
            next_ext = data[i, inner_at + 3]
            inner_at += 4
            hops = 0
            while flags & 0x04 and next_ext != 0:
                if hops == MAX_GTPU_EXT or end - inner_at < 4:
                    return D_TRUNC_GTPU, bits
                size = np.int64(data[i, inner_at]) * 4
                if size == 0 or end - inner_at < size:
                    return D_TRUNC_GTPU, bits
                next_ext = data[i, inner_at + size - 1]
                inner_at += size
                hops += 1
        if data[i, at + GTPU_TYPE] != 255 or end - inner_at < 1:
            m.payload = inner_at
            return 0, bits
        nibble = data[i, inner_at] >> 4
        if nibble == 4 or nibble == 6:
            inner_version = nibble
        else:
            m.payload = inner_at
            return 0, bits

    # The inner packet: drops here are reported as inner-<reason>.
    if inner_l2 >= 0:
        bits |= 1 << (layers.INNER + L_ETHERNET)
        m.inner_l2 = inner_l2
        drop, ethertype, inner_at, tags, _, _ = parse_l2(data, i, inner_l2, end, 2)
        if tags:
            bits |= 1 << (layers.INNER + L_VLAN)
        if drop:
            return drop + INNER_DROP, bits
        kind = ETHERTYPE_NEXT[ethertype]
        if kind == L_IPV4:
            inner_version = 4
        elif kind == L_IPV6:
            inner_version = 6
        else:
            if kind == L_ARP:
                bits |= 1 << (layers.INNER + L_ARP)
            m.payload = inner_at
            return 0, bits
    m.inner_l3 = inner_at
    m.inner_ip_version = inner_version
    (drop, inner_end, l4, proto, _, _, _, _, src4, dst4, s_hi, s_lo, d_hi, d_lo, ip_bits) = (
        parse_ip(data, i, inner_at, end, inner_version, False)
    )
    bits |= ip_bits << layers.INNER
    m.inner_protocol = proto
    m.inner_src4 = src4
    m.inner_dst4 = dst4
    m.inner_src6_hi = s_hi
    m.inner_src6_lo = s_lo
    m.inner_dst6_hi = d_hi
    m.inner_dst6_lo = d_lo
    if drop:
        return drop + INNER_DROP, bits
    if l4 < 0:
        return 0, bits
    m.inner_l4 = l4
    drop, sport, dport, tcp_flags, _, _, payload, _, l4_bits = parse_l4(
        data, i, l4, inner_end, proto
    )
    bits |= l4_bits << layers.INNER
    m.inner_sport = sport
    m.inner_dport = dport
    m.inner_tcp_flags = tcp_flags
    m.payload = payload
    if drop:
        return drop + INNER_DROP, bits
    return 0, bits


def parse(batch: Batch, *, non_first_fragments: str = "drop") -> None:
    """Parse rows [0, batch.count). ``non_first_fragments``: "drop" (the default, for
    stages that need ports) or "keep" (parsed without a transport header)."""
    if non_first_fragments not in ("drop", "keep"):
        raise ValueError(
            f"non_first_fragments: expected 'drop' or 'keep', got {non_first_fragments!r}"
        )
    parse_rows(batch.data, batch.meta, batch.count, non_first_fragments == "drop")
