"""replies: the gateway's own answers (ARP, echo, ICMP errors, neighbour adverts), built in place.

Theory of operation. When a stage decides that the gateway itself must answer
a packet (an ARP request or a neighbour solicitation for a router address, a
ping to the router, a packet whose TTL ran out or that does not fit the next
link), the answer goes back out of the port, and with the VLAN tags, the
request came in on, to the neighbour that sent it. So the reply is built in
the request's own slot: the stage fills one ``REPLY_DTYPE`` record per row
(what to send and the router addresses to send it from) and ``build`` turns
every selected row into its reply in one compiled pass. No packet is copied
out to Python, and the ports see one more ordinary frame.

How each reply reuses the request's bytes:

* ARP reply (RFC 826, "Packet Reception"): the same 28 bytes with the op
  made 2 and the sender and target fields swapped, the router's MAC put in as
  sender. Ethernet goes to the requester's hardware address.
* Echo reply (ICMPv4, RFC 792; ICMPv6, RFC 4443 §4.2): the ICMP message stays
  (identifier, sequence, data), its type is changed and its checksum
  recomputed; the IP header is rewritten with the addresses swapped and a
  TTL/hop limit of 64. IPv4 options and IPv6 extension headers of the request
  are not sent back: the ICMP message moves forward over them (RFC 1122
  §3.2.2.6 asks to reflect record-route and timestamp options; that SHOULD is
  not implemented). The reply's source is the address the request was sent
  to, unless that is a multicast or broadcast address: then it is the
  record's router address (RFC 1122 §3.2.1.3, RFC 4443 §4.2).
* ICMP errors (RFC 792, RFC 1812 §4.3.2; RFC 4443 §2.4, §3): the offending
  packet does not move. A new IP header and ICMP header go in front of its IP
  header, and the Ethernet header and VLAN tags are copied in front of those,
  so ``start`` moves back 28 bytes (IPv4) or 48 (IPv6) into the headroom.
  The quote is cut so that the error's IP packet is at most 576 bytes
  (RFC 1812 §4.3.2.3) or 1280 bytes (RFC 4443 §2.4 (c)). IPv4 errors carry
  precedence 6 (TOS 0xC0, RFC 1812 §4.3.2.5), DF clear, and the offending
  datagram's identification (the gateway keeps no counter; it varies from
  datagram to datagram, which RFC 6864 §4 asks of a datagram that may be
  fragmented).
* Neighbour advertisement (RFC 4861 §4.4, §7.2.4): written over the
  solicitation, R and O set, S set unless the solicitation came from the
  unspecified address (then the advert goes to all-nodes, ff02::1), with the
  solicited target and a target link-layer address option. Hop limit 255, as
  a receiver checks (§7.1.2).

Who decides what. The stage that fills the records decides *whether* to
answer (the address is the router's, the rate limit of RFC 1812 §4.3.2.8 /
RFC 4443 §2.4 (f) allows it); this module refuses what the RFCs forbid
whatever the stage decided, with a named drop reason and the bytes left as
they were, never an exception:

* never an error about an ICMP error or an ICMPv6 redirect (RFC 1122
  §3.2.2, RFC 1812 §4.3.2.7, RFC 4443 §2.4 (e.1, e.2)): ``error-about-error``;
* never an IPv4 error about a non-first fragment (RFC 1812 §4.3.2.7); for
  IPv6 only when the fragment carries ICMPv6, whose type cannot be seen
  there: ``error-about-fragment``;
* never an error about a packet sent to an IP or link-layer broadcast or
  multicast address (RFC 1812 §4.3.2.7; RFC 4443 §2.4 (e.3-e.5), which allows
  packet-too-big and parameter problem code 2): ``error-about-multicast``;
* no reply to a source that does not name one host (0/8, 127/8, 224/4,
  240/4; ::, ::1, ff00::/8), except a neighbour solicitation from ::
  (duplicate address detection): ``source-not-unicast``;
* the kind does not fit the packet (an ARP reply to anything but an
  Ethernet/IPv4 ARP request, an echo reply to anything but an unfragmented
  echo request, an advert to anything but a valid solicitation, RFC 4861
  §7.1.1): ``not-answerable``;
* the record is incomplete (no router MAC, no router address where one is
  needed, an error type this module does not build, an unknown kind):
  ``bad-reply-record``;
* the reply does not fit its slot (an error needs headroom; an advert can be
  8 bytes longer than the solicitation): ``reply-no-room``.

Rows already dropped, and rows whose record says NONE, are left alone.

The metadata follow the packet: after ``build`` every column ``parse`` owns
describes the reply as a fresh parse would (``tests/datapath/test_replies.py``
holds it to that), so no second parse is needed. ``out_port`` is set to
``port`` and ``out_attachment`` to ``attachment``: the reply leaves where the
request came in. ``wire_length`` equals ``length``. Frames are not padded to
the Ethernet minimum; that is the port's business.

Example::

    records = np.zeros(batch.capacity, dtype=REPLY_DTYPE)   # indexed by batch row
    records["kind"][rows] = ReplyKind.ICMP_ERROR
    records["type"][rows] = 11                               # time exceeded, code 0: in transit
    records["eth_src"][rows] = router_mac
    records["ip4_src"][rows] = router_ip4
    build(batch, rows, records)           # rows refused carry a ReplyDrop in meta["drop"]
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from enum import IntEnum

import numpy as np
from numba import njit

from portico import drops
from portico.batch import Batch
from portico.datapath.stages.parse import flow_hash, parse_quote, parse_rows, reset_inner
from portico.packet import arp, icmp, icmpv6
from portico.packet.arp import ARP
from portico.packet.build import build as build_frame
from portico.packet.checksum import PROTO_ICMP, PROTO_ICMPV6, fold, pseudo_sum, sum_bytes
from portico.packet.ethernet import Ethernet
from portico.packet.header import Header
from portico.packet.icmp import ICMP
from portico.packet.icmpv6 import ICMPv6
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import IPv6
from portico.packet.layers import ETHERTYPE, SELECTOR_VALUE, Layer
from portico.packet.vlan import Dot1Q


class ReplyKind(IntEnum):
    """What to answer a row with."""

    NONE = 0
    ARP_REPLY = 1  # to an ARP request for a router address
    ECHO_REPLY = 2  # ICMPv4 or ICMPv6, by the request's IP version
    ICMP_ERROR = 3  # ICMPv4 or ICMPv6 error quoting the packet; type and code from the record
    NEIGHBOUR_ADVERT = 4  # to a neighbour solicitation for a router address


# One record per batch row (indexed by row). ``type``/``code`` are the ICMP error's.
# ``mtu`` is the next-hop MTU of ICMPv4 frag-needed (type 3 code 4, RFC 1191) and of
# ICMPv6 packet-too-big; for a parameter problem it carries the pointer instead
# (ICMPv4 type 12: one byte, RFC 792; ICMPv6 type 4: 32 bits, RFC 4443 §3.4).
# ``eth_src`` is the router's MAC (48 bits). ``ip4_src``/``ip6_src_*`` are the router
# address an error or advert is sent from (and an echo reply to a group address).
REPLY_DTYPE = np.dtype([
    ("kind", "u1"),
    ("type", "u1"),
    ("code", "u1"),
    ("mtu", "u4"),
    ("eth_src", "u8"),
    ("ip4_src", "u4"),
    ("ip6_src_hi", "u8"),
    ("ip6_src_lo", "u8"),
], align=True)


class ReplyDrop(IntEnum):
    """Why a row was not answered (codes 120..127 belong to replies)."""

    NOT_ANSWERABLE = 120  # the kind does not fit the packet
    ERROR_ABOUT_ERROR = 121  # RFC 1122 3.2.2, RFC 1812 4.3.2.7, RFC 4443 2.4 (e.1, e.2)
    ERROR_ABOUT_FRAGMENT = 122  # a non-first fragment (RFC 1812 4.3.2.7)
    ERROR_ABOUT_MULTICAST = 123  # sent to a group address, IP or link layer
    SOURCE_NOT_UNICAST = 124  # the source names no single host: nowhere to reply to
    REPLY_NO_ROOM = 125  # no headroom for an error's headers, or no tailroom for an advert
    BAD_REPLY_RECORD = 126  # unknown kind or error type, router MAC or address missing


drops.register("replies", ReplyDrop)

# ---------------------------------------------------------------- constants, from the declarations
K_NONE = int(ReplyKind.NONE)
K_ARP = int(ReplyKind.ARP_REPLY)
K_ECHO = int(ReplyKind.ECHO_REPLY)
K_ERROR = int(ReplyKind.ICMP_ERROR)
K_ADVERT = int(ReplyKind.NEIGHBOUR_ADVERT)
K_LAST = max(int(k) for k in ReplyKind)

D_NOT_ANSWERABLE = int(ReplyDrop.NOT_ANSWERABLE)
D_ABOUT_ERROR = int(ReplyDrop.ERROR_ABOUT_ERROR)
D_ABOUT_FRAGMENT = int(ReplyDrop.ERROR_ABOUT_FRAGMENT)
D_ABOUT_MULTICAST = int(ReplyDrop.ERROR_ABOUT_MULTICAST)
D_SOURCE = int(ReplyDrop.SOURCE_NOT_UNICAST)
D_NO_ROOM = int(ReplyDrop.REPLY_NO_ROOM)
D_RECORD = int(ReplyDrop.BAD_REPLY_RECORD)

ETHERTYPE_ARP = SELECTOR_VALUE[(ETHERTYPE, Layer.ARP)]
ETHERTYPE_IPV4 = SELECTOR_VALUE[(ETHERTYPE, Layer.IPV4)]
ETH_DST = Ethernet.at("dst").offset
ETH_SRC = Ethernet.at("src").offset

ARP_LEN = ARP.SIZE
ARP_HWTYPE = ARP.at("hwtype").offset  # read as one word with ptype
ARP_HWLEN = ARP.at("hwlen").offset  # read as one word with plen
ARP_OP = ARP.at("op").offset
ARP_SHA = ARP.at("sha").offset
ARP_SPA = ARP.at("spa").offset
ARP_THA = ARP.at("tha").offset
ARP_TPA = ARP.at("tpa").offset
ARP_REQUEST, ARP_REPLY = arp.REQUEST, arp.REPLY
ARP_FORMAT = (1 << 16) | ETHERTYPE_IPV4  # hwtype 1 (Ethernet), ptype IPv4: what is answered
ARP_SIZES = (6 << 8) | 4  # hwlen, plen of that format

IP4_LEN = IPv4.SIZE
IP4_VERSION_IHL = 0x40 | (IP4_LEN // 4)  # version 4, no options
IP4_TOS = IPv4.at("tos").offset
IP4_TOTAL = IPv4.at("total_length").offset
IP4_IDENT = IPv4.at("ident").offset
IP4_FRAG = IPv4.at("flags").offset  # flags and fragment offset share these two bytes
IP4_TTL = IPv4.at("ttl").offset
IP4_PROTO = IPv4.at("protocol").offset
IP4_CHECKSUM = IPv4.at("checksum").offset
IP4_SRC = IPv4.at("src").offset
IP4_DST = IPv4.at("dst").offset

IP6_LEN = IPv6.SIZE
IP6_VERSION_WORD = 6 << 28  # version 6, traffic class 0, flow label 0
IP6_PAYLOAD = IPv6.at("payload_length").offset
IP6_NEXT = IPv6.at("next_header").offset
IP6_HOPS = IPv6.at("hop_limit").offset
IP6_SRC = IPv6.at("src").offset
IP6_DST = IPv6.at("dst").offset

ICMP_LEN = ICMP.SIZE  # ICMPv6 has the same 8-byte first part
assert ICMPv6.SIZE == ICMP_LEN
ICMP_TYPE = ICMP.at("type").offset
ICMP_CODE = ICMP.at("code").offset
ICMP_CHECKSUM = ICMP.at("checksum").offset
ICMP_IDENT = ICMP.at("ident").offset  # the second word: ident and seq, MTU, pointer, NA flags
ND_TARGET = ICMPv6.SIZE  # the 16-byte target follows the fixed part
ND_OPTIONS = ND_TARGET + 16
ND_OPTION_LEN = 8  # one link-layer address option: type, length 1 (8 octets), MAC
NS_MIN_LEN = ND_OPTIONS  # RFC 4861 7.1.1: an NS is at least 24 octets
NA_LEN = ND_OPTIONS + ND_OPTION_LEN
NA_FLAGS = icmpv6.NA_ROUTER | icmpv6.NA_OVERRIDE

ICMP4_SOURCE_QUENCH = 4  # an error too (RFC 792; deprecated by RFC 6633, never sent here)
ICMP6_REDIRECT = 137  # RFC 4861 4.5
ICMP6_FIRST_INFO = 128  # RFC 4443 2.1: types below are errors
ICMP6_OPTION_BAD = 2  # parameter problem code 2: allowed about a multicast packet


def _type_table(types: Iterable[int]) -> np.ndarray:
    table = np.zeros(256, dtype=np.bool_)
    table[list(types)] = True
    table.flags.writeable = False
    return table


# ICMP types, as tables the kernel indexes: the errors built here, and the messages
# no error may be about (RFC 1122 3.2.2, RFC 1812 4.3.2.7; RFC 4443 2.4 (e.1, e.2)).
ICMP4_BUILT = _type_table((icmp.DEST_UNREACHABLE, icmp.TIME_EXCEEDED, icmp.PARAMETER_PROBLEM))
ICMP6_BUILT = _type_table(icmpv6.ERROR_TYPES)
ICMP4_NO_ERROR_ABOUT = _type_table((*icmp.ERROR_TYPES, ICMP4_SOURCE_QUENCH))
ICMP6_NO_ERROR_ABOUT = _type_table((*range(ICMP6_FIRST_INFO), ICMP6_REDIRECT))

ERROR4_MAX = 576  # RFC 1812 4.3.2.3
ERROR6_MAX = 1280  # RFC 4443 2.4 (c): the IPv6 minimum MTU
ERROR4_HEADERS = IP4_LEN + ICMP_LEN
ERROR6_HEADERS = IP6_LEN + ICMP_LEN
ERROR4_TOS = 0xC0  # precedence 6, internetwork control (RFC 1812 4.3.2.5)
REPLY_TTL = 64
ND_HOP_LIMIT = 255  # RFC 4861 7.1.1, 7.1.2

ALL_NODES_HI, ALL_NODES_LO = divmod(int(ipaddress.IPv6Address("ff02::1")), 1 << 64)
ALL_NODES_MAC = 0x333300000001  # RFC 2464 7: 33:33 and the address's last 32 bits
SOLICITED_NODE_HI, SOLICITED_NODE_LO = divmod(int(ipaddress.IPv6Address("ff02::1:ff00:0")),
                                              1 << 64)

L_ETHERNET_BITS = 1 << int(Layer.ETHERNET)
L_VLAN_BITS = 1 << int(Layer.VLAN)
L_ICMP4_BITS = (1 << int(Layer.IPV4)) | (1 << int(Layer.ICMP))
L_ICMP6_BITS = (1 << int(Layer.IPV6)) | (1 << int(Layer.ICMPV6))


# ---------------------------------------------------------------- byte access
# Helpers that take the slot array are inlined and index it on every path: one that
# indexed it on a branch only would cost a reference-count pair per call (see
# sum_bytes in portico/packet/checksum.py). They are few and flat, because Numba
# inlines each call anew and the kernel's compile time grows with the calls (one
# helper per width made it 13 s, these 4 s). The IP headers are written in the
# kernel's own body: header writers called from the kinds' branches kept a
# reference-count pair per packet (tests/test_refcounts.py's checker sees it).
@njit(cache=True, inline="always")
def _get(data, i, at, size):  # type: ignore[no-untyped-def]
    """The big-endian number in bytes [at, at + size) of slot ``i`` (size 1..7)."""
    value = np.int64(data[i, at])
    for b in range(1, size):
        value = (value << 8) | np.int64(data[i, at + b])
    return value


@njit(cache=True, inline="always")
def _put(data, i, at, size, value):  # type: ignore[no-untyped-def]
    """Write ``value`` big-endian into bytes [at, at + size) of slot ``i`` (size 1..8)."""
    word = np.uint64(value)
    data[i, at + size - 1] = word & np.uint64(0xFF)
    for b in range(size - 2, -1, -1):
        word >>= np.uint64(8)
        data[i, at + b] = word & np.uint64(0xFF)


@njit(cache=True, inline="always")
def _put_macs(data, i, at, dst, src):  # type: ignore[no-untyped-def]
    """The Ethernet destination and source at ``at``."""
    for b in range(6):
        shift = 40 - 8 * b
        data[i, at + ETH_DST + b] = (dst >> shift) & 0xFF
        data[i, at + ETH_SRC + b] = (src >> shift) & 0xFF


# ---------------------------------------------------------------- addresses
@njit(cache=True, inline="always")
def _ip4_is_group(address):  # type: ignore[no-untyped-def]
    """Multicast (224/4) or the limited broadcast."""
    return (address >> 28) == 0xE or address == 0xFFFFFFFF


@njit(cache=True, inline="always")
def _ip4_names_one_host(address):  # type: ignore[no-untyped-def]
    """Not 0/8 ("this network"), 127/8, multicast or 240/4 (RFC 1812 4.2.2.11, 5.3.7)."""
    first = address >> 24
    return first != 0 and first != 127 and first < 224


@njit(cache=True, inline="always")
def _ip6_is_multicast(hi):  # type: ignore[no-untyped-def]
    return (np.uint64(hi) >> np.uint64(56)) == np.uint64(0xFF)


@njit(cache=True, inline="always")
def _ip6_names_one_host(hi, lo):  # type: ignore[no-untyped-def]
    """Not ::, ::1 or multicast (RFC 4443 2.4 (e.6), RFC 4291 2.5.3)."""
    special = np.uint64(hi) == np.uint64(0) and np.uint64(lo) <= np.uint64(1)
    return not special and not _ip6_is_multicast(hi)


# ---------------------------------------------------------------- the decision
@njit(cache=True)
def _refusal(m, r, kind, slot, eth_group, arp_format, arp_sizes, arp_op, target_first):  # type: ignore[no-untyped-def]
    """0 when row ``m``'s reply ``r`` can be built, else the drop reason.

    Takes no array: the kernel reads the few bytes it needs (the Ethernet I/G bit,
    the ARP format, sizes and op, the first byte of an NS target), so this is
    compiled once and called, not inlined.
    """
    version = np.int64(m.ip_version)
    proto = np.int64(m.protocol)
    icmp_type = np.int64(m.icmp_type)
    has_l4 = m.l4 >= 0

    if kind < K_ARP or kind > K_LAST or r.eth_src == 0:
        return D_RECORD
    if kind == K_ARP:
        if (m.ethertype != ETHERTYPE_ARP or m.l3 < 0
                or arp_format != ARP_FORMAT or arp_sizes != ARP_SIZES or arp_op != ARP_REQUEST):
            return D_NOT_ANSWERABLE
        return 0

    if version == 4:
        src_ok = _ip4_names_one_host(np.int64(m.src4))
        dst_group = _ip4_is_group(np.int64(m.dst4))
        is_icmp = has_l4 and proto == PROTO_ICMP
    elif version == 6:
        src_ok = _ip6_names_one_host(m.src6_hi, m.src6_lo)
        dst_group = _ip6_is_multicast(m.dst6_hi)
        is_icmp = has_l4 and proto == PROTO_ICMPV6
    else:
        return D_NOT_ANSWERABLE
    no_ip4_src = r.ip4_src == 0
    no_ip6_src = r.ip6_src_hi == 0 and r.ip6_src_lo == 0

    if kind == K_ECHO:
        request = icmp.ECHO_REQUEST if version == 4 else icmpv6.ECHO_REQUEST
        if not is_icmp or icmp_type != request or m.frag != 0:
            return D_NOT_ANSWERABLE
        if not src_ok:
            return D_SOURCE
        if dst_group and (no_ip4_src if version == 4 else no_ip6_src):
            return D_RECORD  # a reply to a group address is sent from the record's
        return 0

    if kind == K_ADVERT:
        icmp_length = np.int64(m.l3) + np.int64(m.l3_length) - np.int64(m.l4)
        if (version != 6 or not is_icmp or icmp_type != icmpv6.NEIGHBOR_SOLICIT
                or m.icmp_code != 0 or m.ttl != ND_HOP_LIMIT or m.frag != 0
                or icmp_length < NS_MIN_LEN or target_first == 0xFF):
            return D_NOT_ANSWERABLE  # RFC 4861 7.1.1, the checks that need no option walk
        if m.src6_hi == 0 and m.src6_lo == 0:  # duplicate address detection
            if (m.dst6_hi != np.uint64(SOLICITED_NODE_HI)
                    or m.dst6_lo >> np.uint64(24) != np.uint64(SOLICITED_NODE_LO >> 24)):
                return D_NOT_ANSWERABLE
        elif not src_ok:
            return D_SOURCE
        if no_ip6_src:
            return D_RECORD
        if np.int64(m.l3) + IP6_LEN + NA_LEN > slot:
            return D_NO_ROOM
        return 0

    # ICMP_ERROR
    error_type = np.int64(r.type)
    if version == 4:
        if not ICMP4_BUILT[error_type] or no_ip4_src:
            return D_RECORD
        if m.frag == 2:
            return D_ABOUT_FRAGMENT
        if is_icmp and ICMP4_NO_ERROR_ABOUT[icmp_type]:
            return D_ABOUT_ERROR
        if dst_group or eth_group:
            return D_ABOUT_MULTICAST
        if not src_ok:
            return D_SOURCE
        if m.start < ERROR4_HEADERS:
            return D_NO_ROOM
        return 0
    if not ICMP6_BUILT[error_type] or no_ip6_src:
        return D_RECORD
    if m.frag == 2 and proto == PROTO_ICMPV6:  # its ICMPv6 type is in the first fragment
        return D_ABOUT_FRAGMENT
    if is_icmp and ICMP6_NO_ERROR_ABOUT[icmp_type]:
        return D_ABOUT_ERROR
    group_allowed = error_type == icmpv6.PACKET_TOO_BIG or (
        error_type == icmpv6.PARAMETER_PROBLEM and r.code == ICMP6_OPTION_BAD)
    if (dst_group or eth_group) and not group_allowed:
        return D_ABOUT_MULTICAST
    if not src_ok:
        return D_SOURCE
    if m.start < ERROR6_HEADERS:
        return D_NO_ROOM
    return 0


# ---------------------------------------------------------------- metadata of the reply
@njit(cache=True)
def _set_icmp_meta(m, start, l3, l4, total, ttl, tos, icmp_type, code, ident, eth_dst,  # type: ignore[no-untyped-def]
                   src4, dst4, src_hi, src_lo, dst_hi, dst_lo):
    """Every column parse owns, as it would find an ICMP/ICMPv6 message at ``l4``
    behind the IP header at ``l3`` (the tags, and so vlan_* and ethertype, are kept)."""
    m.start = start
    m.length = l3 + total - start
    m.wire_length = m.length
    m.l2 = start
    m.l3 = l3
    m.l4 = l4
    m.payload = l4 + ICMP_LEN
    m.eth_dst = eth_dst
    m.l3_length = total
    m.ttl = ttl
    m.tos = tos
    m.frag = 0
    m.icmp_type = icmp_type
    m.icmp_code = code
    m.sport = ident
    m.dport = ident
    m.tcp_flags = 0
    m.src4 = src4
    m.dst4 = dst4
    m.src6_hi = src_hi
    m.src6_lo = src_lo
    m.dst6_hi = dst_hi
    m.dst6_lo = dst_lo
    reset_inner(m)
    bits = L_ETHERNET_BITS | (L_VLAN_BITS if m.vlan_count else 0)
    if m.ip_version == 4:
        m.protocol = PROTO_ICMP
        m.layers = bits | L_ICMP4_BITS
        m.flow_hash = flow_hash(m.src4, m.dst4, m.sport, m.dport, m.protocol)
    else:
        m.protocol = PROTO_ICMPV6
        m.layers = bits | L_ICMP6_BITS
        m.flow_hash = flow_hash(m.src6_lo ^ m.src6_hi, m.dst6_lo ^ m.dst6_hi,
                                m.sport, m.dport, m.protocol)


# ---------------------------------------------------------------- the kernel
@njit(cache=True)
def build_kernel(data, meta, rows, records):  # type: ignore[no-untyped-def]
    """Turn each packet ``rows[k]`` into the reply ``records[rows[k]]`` asks for."""
    slot = data.shape[1]
    for k in range(rows.shape[0]):
        i = rows[k]
        m = meta[i]
        r = records[i]
        kind = np.int64(r.kind)
        if kind == K_NONE or m.drop != 0:
            continue
        start = np.int64(m.start)
        # What the decision reads, read whatever the kind; an absent header (or one too
        # near the slot's end) reads the Ethernet header instead, and fails its check.
        at3 = np.int64(m.l3) if 0 <= m.l3 <= slot - ARP_LEN else start
        at4 = np.int64(m.l4) if 0 <= m.l4 <= slot - ND_OPTIONS else start
        drop = _refusal(m, r, kind, slot, data[i, start + ETH_DST] & 1,
                        _get(data, i, at3 + ARP_HWTYPE, 4), _get(data, i, at3 + ARP_HWLEN, 2),
                        _get(data, i, at3 + ARP_OP, 2), data[i, at4 + ND_TARGET])
        if drop != 0:
            m.drop = drop
            continue

        l3 = np.int64(m.l3)
        l4 = np.int64(m.l4)
        router_mac = np.int64(r.eth_src)
        peer_mac = _get(data, i, start + ETH_SRC, 6)  # the neighbour that sent the request
        m.out_port = m.port
        m.out_attachment = m.attachment

        if kind == K_ARP:  # RFC 826: the old sender becomes the target, the router the sender
            sha = _get(data, i, l3 + ARP_SHA, 6)
            tpa = _get(data, i, l3 + ARP_TPA, 4)
            for b in range(ARP_TPA + 4 - ARP_THA):  # sha, spa -> tha, tpa
                data[i, l3 + ARP_THA + b] = data[i, l3 + ARP_SHA + b]
            _put(data, i, l3 + ARP_SHA, 6, router_mac)
            _put(data, i, l3 + ARP_SPA, 4, tpa)
            data[i, l3 + ARP_OP + 1] = ARP_REPLY  # the high byte is 0: the op was REQUEST
            _put_macs(data, i, start, sha, router_mac)
            m.eth_dst = sha
            m.length = l3 + ARP_LEN - start
            m.wire_length = m.length
            m.payload = l3 + ARP_LEN
            continue

        # Every other reply is ICMP or ICMPv6. Each branch moves what must move and says
        # what to write: where the IP header and the message are ([n4, end)), the header
        # fields and addresses. The IP and ICMP headers, the checksums, the MACs and the
        # metadata are then written once, in this loop's body (hand-inlined: see _get).
        version = np.int64(m.ip_version)
        eth_dst = peer_mac
        src4 = np.int64(0)
        dst4 = np.int64(0)
        src_hi = np.uint64(0)
        src_lo = np.uint64(0)
        dst_hi = np.uint64(0)
        dst_lo = np.uint64(0)
        first_word = IP6_VERSION_WORD  # IPv6: version, traffic class, flow label
        ident4 = np.int64(0)  # IPv4: identification
        flags_frag = np.int64(0)
        if kind == K_ECHO:
            n4 = l3 + (IP4_LEN if version == 4 else IP6_LEN)
            end = n4 + (l3 + np.int64(m.l3_length) - l4)
            if n4 != l4:  # forward over the options or extension headers
                for b in range(end - n4):
                    data[i, n4 + b] = data[i, l4 + b]
            word = _get(data, i, n4 + ICMP_IDENT, 4)  # identifier and sequence, kept
            ident = word >> 16
            code = 0
            ttl = REPLY_TTL
            tos = np.int64(m.tos)  # kept, with IPv4's identification and DF, IPv6's flow label
            first_word = _get(data, i, l3, 4)
            ident4 = _get(data, i, l3 + IP4_IDENT, 2)
            flags_frag = _get(data, i, l3 + IP4_FRAG, 2)
            if version == 4:
                icmp_type = icmp.ECHO_REPLY
                src4 = np.int64(r.ip4_src) if _ip4_is_group(np.int64(m.dst4)) else np.int64(
                    m.dst4)
                dst4 = np.int64(m.src4)
            else:
                icmp_type = icmpv6.ECHO_REPLY
                if _ip6_is_multicast(m.dst6_hi):
                    src_hi, src_lo = r.ip6_src_hi, r.ip6_src_lo
                else:
                    src_hi, src_lo = m.dst6_hi, m.dst6_lo
                dst_hi, dst_lo = m.src6_hi, m.src6_lo
        elif kind == K_ADVERT:  # RFC 4861 4.4, 7.2.4: written over the solicitation
            n4 = l3 + IP6_LEN
            end = n4 + NA_LEN
            for b in range(16):  # the target, forward over any extension headers
                data[i, n4 + ND_TARGET + b] = data[i, l4 + ND_TARGET + b]
            data[i, n4 + ND_OPTIONS] = icmpv6.OPT_TGT_LLADDR
            data[i, n4 + ND_OPTIONS + 1] = ND_OPTION_LEN // 8
            _put(data, i, n4 + ND_OPTIONS + 2, 6, router_mac)
            icmp_type = icmpv6.NEIGHBOR_ADVERT
            code = 0
            ident = 0
            ttl = ND_HOP_LIMIT
            tos = 0
            src_hi, src_lo = r.ip6_src_hi, r.ip6_src_lo
            if m.src6_hi == 0 and m.src6_lo == 0:  # to duplicate address detection: all nodes
                dst_hi, dst_lo = np.uint64(ALL_NODES_HI), np.uint64(ALL_NODES_LO)
                eth_dst = ALL_NODES_MAC
                word = NA_FLAGS << 16
            else:
                dst_hi, dst_lo = m.src6_hi, m.src6_lo
                word = (NA_FLAGS | icmpv6.NA_SOLICITED) << 16
        else:  # ICMP_ERROR: new headers in front of the offending IP header, which stays
            headers = ERROR4_HEADERS if version == 4 else ERROR6_HEADERS
            limit = ERROR4_MAX if version == 4 else ERROR6_MAX
            n4 = l3 - ICMP_LEN
            end = l3 + min(np.int64(m.l3_length), limit - headers)
            ident4 = _get(data, i, l3 + IP4_IDENT, 2)  # the offending datagram's (IPv4)
            for b in range(l3 - start):  # Ethernet and tags, before the new headers cover them
                data[i, start - headers + b] = data[i, start + b]
            start -= headers
            l3 -= headers
            icmp_type = np.int64(r.type)
            code = np.int64(r.code)
            ident = 0
            ttl = REPLY_TTL
            mtu = np.int64(r.mtu)
            word = 0
            if version == 4:
                if icmp_type == icmp.DEST_UNREACHABLE and code == icmp.CODE_FRAG_NEEDED:
                    word = mtu & 0xFFFF  # RFC 1191 4: the low half (the "seq" bytes)
                elif icmp_type == icmp.PARAMETER_PROBLEM:
                    word = (mtu & 0xFF) << 24  # the pointer: the first byte
                tos = ERROR4_TOS
                src4 = np.int64(r.ip4_src)
                dst4 = np.int64(m.src4)
            else:
                if icmp_type == icmpv6.PACKET_TOO_BIG or icmp_type == icmpv6.PARAMETER_PROBLEM:
                    word = mtu  # the MTU, or the pointer: the whole second word
                tos = 0
                src_hi, src_lo = r.ip6_src_hi, r.ip6_src_lo
                dst_hi, dst_lo = m.src6_hi, m.src6_lo

        if version == 4:  # 20 bytes, no options; the checksum summed from the values
            total = end - l3
            words = ((IP4_VERSION_IHL << 8) | tos) + total + ident4 + flags_frag
            words += (ttl << 8) | PROTO_ICMP
            words += (src4 >> 16) + (src4 & 0xFFFF) + (dst4 >> 16) + (dst4 & 0xFFFF)
            checksum = ~fold(words) & 0xFFFF
            data[i, l3] = IP4_VERSION_IHL
            data[i, l3 + IP4_TOS] = tos
            for b in range(2):
                shift = 8 - 8 * b
                data[i, l3 + IP4_TOTAL + b] = (total >> shift) & 0xFF
                data[i, l3 + IP4_IDENT + b] = (ident4 >> shift) & 0xFF
                data[i, l3 + IP4_FRAG + b] = (flags_frag >> shift) & 0xFF
                data[i, l3 + IP4_CHECKSUM + b] = (checksum >> shift) & 0xFF
            data[i, l3 + IP4_TTL] = ttl
            data[i, l3 + IP4_PROTO] = PROTO_ICMP
            for b in range(4):
                shift = 24 - 8 * b
                data[i, l3 + IP4_SRC + b] = (src4 >> shift) & 0xFF
                data[i, l3 + IP4_DST + b] = (dst4 >> shift) & 0xFF
        else:
            payload = end - n4
            for b in range(4):
                data[i, l3 + b] = (first_word >> (24 - 8 * b)) & 0xFF
            data[i, l3 + IP6_PAYLOAD] = (payload >> 8) & 0xFF
            data[i, l3 + IP6_PAYLOAD + 1] = payload & 0xFF
            data[i, l3 + IP6_NEXT] = PROTO_ICMPV6
            data[i, l3 + IP6_HOPS] = ttl
            for b in range(8):
                shift = np.uint64(56 - 8 * b)
                data[i, l3 + IP6_SRC + b] = (src_hi >> shift) & np.uint64(0xFF)
                data[i, l3 + IP6_SRC + 8 + b] = (src_lo >> shift) & np.uint64(0xFF)
                data[i, l3 + IP6_DST + b] = (dst_hi >> shift) & np.uint64(0xFF)
                data[i, l3 + IP6_DST + 8 + b] = (dst_lo >> shift) & np.uint64(0xFF)

        data[i, n4 + ICMP_TYPE] = icmp_type
        data[i, n4 + ICMP_CODE] = code
        _put(data, i, n4 + ICMP_CHECKSUM, 6, word)  # checksum 0 while summing, then the word
        pseudo = pseudo_sum(data, i, l3, version, PROTO_ICMPV6, end - n4)  # ICMPv6 only
        total = sum_bytes(data, i, n4, end, pseudo if version == 6 else 0)
        _put(data, i, n4 + ICMP_CHECKSUM, 2, ~fold(total) & 0xFFFF)
        _put_macs(data, i, start, eth_dst, router_mac)
        _set_icmp_meta(m, start, l3, n4, end - l3, ttl, tos, icmp_type, code, ident, eth_dst,
                       src4, dst4, src_hi, src_lo, dst_hi, dst_lo)
        if kind == K_ERROR:  # the quote, as parse describes an error's (inner_* columns)
            parse_quote(data, i, m, n4 + 8, end, version)


def build(batch: Batch, rows: np.ndarray, records: np.ndarray) -> None:
    """Turn packet ``rows[k]`` into the reply ``records[rows[k]]`` asks for, in its slot.

    ``records`` is a ``REPLY_DTYPE`` array indexed by batch row. Rows that cannot be
    answered get a ``ReplyDrop`` reason in ``meta["drop"]`` and keep their bytes.
    """
    if records.dtype != REPLY_DTYPE:
        raise TypeError(f"replies.build: records must have REPLY_DTYPE, not {records.dtype}")
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= min(batch.count, len(records))):
        raise ValueError(
            f"replies.build: rows must lie in [0, {min(batch.count, len(records))}) "
            f"(batch count {batch.count}, {len(records)} records)"
        )
    build_kernel(batch.data, batch.meta, rows, records)


# ---------------------------------------------------------------- new packets: neighbour resolution
def solicited_node(address: int) -> int:
    """The solicited-node multicast address of ``address`` (RFC 4291 2.7.1)."""
    return (SOLICITED_NODE_HI << 64 | SOLICITED_NODE_LO) | (address & 0xFFFFFF)


def multicast_mac(address: int) -> int:
    """The Ethernet group address of an IPv6 multicast address (RFC 2464 7)."""
    return 0x333300000000 | (address & 0xFFFFFFFF)


def write_arp_request(batch: Batch, row: int, *, eth_src: int, ip_src: int, ip_target: int,
                      vlan_tci: int | None = None, port: int) -> None:
    """Write a broadcast ARP request for ``ip_target`` (RFC 826) into ``row``, to leave by ``port``.

    The row is overwritten whole: metadata as a fresh parse of the frame gives
    them, ``port`` and ``out_port`` = ``port``. Counting the row in (``batch.count``)
    is the caller's.
    """
    request = ARP(op=ARP_REQUEST, sha=eth_src, spa=ip_src, tha=0, tpa=ip_target)
    _write_frame(batch, row, _l2(0xFFFFFFFFFFFF, eth_src, vlan_tci) + [request], port)


def write_neighbour_solicit(batch: Batch, row: int, *, eth_src: int, ip6_src: int, target: int,
                            vlan_tci: int | None = None, port: int) -> None:
    """Write a neighbour solicitation for ``target`` (RFC 4861 4.3, 7.2.2) into ``row``.

    It goes to the target's solicited-node group and its MAC, hop limit 255, with
    a source link-layer address option (left out when ``ip6_src`` is ::, as §7.2.2
    requires for duplicate address detection). Metadata as ``write_arp_request``.
    """
    group = solicited_node(target)
    options = [("src_lladdr", eth_src)] if ip6_src else []
    headers = _l2(multicast_mac(group), eth_src, vlan_tci) + [
        IPv6(src=ip6_src, dst=group, hop_limit=ND_HOP_LIMIT),
        ICMPv6(type=icmpv6.NEIGHBOR_SOLICIT, code=0, target=target, options=options),
    ]
    _write_frame(batch, row, headers, port)


def _l2(dst: int, src: int, vlan_tci: int | None) -> list[Header]:
    headers: list[Header] = [Ethernet(dst=dst, src=src)]
    if vlan_tci is not None:
        if not 0 <= vlan_tci < 1 << 16:
            raise ValueError(f"vlan_tci: {vlan_tci} does not fit in 16 bits")
        headers.append(Dot1Q(pcp=vlan_tci >> 13, dei=(vlan_tci >> 12) & 1, vid=vlan_tci & 0xFFF))
    return headers


def _write_frame(batch: Batch, row: int, headers: list[Header], port: int) -> None:
    if not 0 <= row < batch.capacity:
        raise ValueError(f"row {row} outside batch capacity {batch.capacity}")
    frame = build_frame(*headers)
    start = batch.headroom
    if start + len(frame) > batch.slot_size:
        raise ValueError(f"a {len(frame)}-byte frame does not fit a {batch.slot_size}-byte slot")
    batch.data[row, start : start + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    m = batch.meta[row : row + 1]
    m[:] = np.zeros(1, dtype=m.dtype)
    for column in ("out_port", "tenant", "segment", "attachment", "out_attachment"):
        m[column] = -1
    m["start"] = start
    m["length"] = m["wire_length"] = len(frame)
    m["port"] = m["out_port"] = port
    parse_rows(batch.data[row : row + 1], m, 1, True)  # the header columns, as parse says
