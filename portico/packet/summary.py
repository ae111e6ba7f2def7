"""Parse one packet into the Batch's metadata columns, in plain Python.

This is the scalar twin of the batch parser (``portico.datapath.stages.parse``):
it decodes with the header declarations' scalar codec (``Header.unpack``)
instead of byte offsets, one packet at a time, and returns a dict keyed by the
same column names. It exists to be obviously right, not fast: the tests hold
the compiled kernel to it row by row, and the control plane may use it for a
single packet.

It follows the same rules: every header is bounded by the captured bytes and
by the lengths the outer headers claim; the first problem found is the drop
reason; fields of the layers already decoded are kept.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from portico.datapath.stages.parse import INNER_DROP, MAX_EXT_HEADERS, MAX_GTPU_EXT, ParseDrop
from portico.packet import layers
from portico.packet.ethernet import Ethernet
from portico.packet.geneve import Geneve
from portico.packet.gre import GRE
from portico.packet.gtpu import GTPU
from portico.packet.header import Header
from portico.packet.icmp import ICMP
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import IPv6, IPv6ExtHeader, IPv6Fragment
from portico.packet.layers import Layer
from portico.packet.tcp import TCP
from portico.packet.udp import UDP
from portico.packet.vlan import Dot1Q
from portico.packet.vxlan import VXLAN

ECHO_TYPES = {Layer.ICMP: (0, 8), Layer.ICMPV6: (128, 129)}
ERROR_TYPES = {Layer.ICMP: (3, 4, 5, 11, 12), Layer.ICMPV6: (1, 2, 3, 4)}


class _Drop(Exception):
    def __init__(self, reason: int) -> None:
        self.reason = reason


def _fixed(cls: type[Header], buf: bytes, at: int, end: int, reason: ParseDrop) -> Any:
    """The fixed fields of ``cls`` at ``at``, if they fit before ``end``.

    Only the declared fields are decoded, so the checks here (not the codec's own
    validation of options and versions) decide the drop reason, in the kernel's order.
    """
    if end - at < cls.SIZE:
        raise _Drop(reason)
    return SimpleNamespace(**cls.fixed_fields(buf, at))


def _empty(start: int) -> dict[str, int]:
    row = dict.fromkeys(
        [
            "drop",
            "vlan_count",
            "ip_version",
            "ethertype",
            "vlan_outer",
            "vlan_inner",
            "protocol",
            "ttl",
            "tos",
            "frag",
            "l3_length",
            "src4",
            "dst4",
            "src6_hi",
            "src6_lo",
            "dst6_hi",
            "dst6_lo",
            "sport",
            "dport",
            "tcp_flags",
            "icmp_type",
            "icmp_code",
            "tunnel",
            "tunnel_id",
            "inner_ip_version",
            "inner_protocol",
            "inner_tcp_flags",
            "inner_src4",
            "inner_dst4",
            "inner_src6_hi",
            "inner_src6_lo",
            "inner_dst6_hi",
            "inner_dst6_lo",
            "inner_sport",
            "inner_dport",
            "layers",
        ],
        0,
    )
    row.update(l2=start, l3=-1, l4=-1, payload=-1, inner_l2=-1, inner_l3=-1, inner_l4=-1)
    return row


def _eth_dst(buf: bytes) -> int:
    """The frame's destination MAC: its first six bytes, when it has them."""
    return int.from_bytes(buf[:6], "big") if len(buf) >= 6 else 0


class _Walker:
    """Walks one packet, filling ``row``; a drop raises ``_Drop`` to the top."""

    def __init__(self, buf: bytes, row: dict[str, int], drop_fragments: bool) -> None:
        self.buf = buf
        self.row = row
        self.drop_fragments = drop_fragments

    def bit(self, layer: Layer, inner: bool) -> None:
        self.row["layers"] |= 1 << (layer + (layers.INNER if inner else 0))

    def l2(self, at: int, end: int, inner: bool) -> tuple[int, int]:
        """Ethernet and VLAN tags; returns (ethertype, offset after them)."""
        self.bit(Layer.ETHERNET, inner)
        eth = _fixed(Ethernet, self.buf, at, end, ParseDrop.TRUNCATED_ETHERNET)
        ethertype, at = eth.ethertype, at + Ethernet.SIZE
        if not inner:
            self.row.update(ethertype=ethertype, payload=at)
        vids: list[int] = []
        while layers.ETHERTYPE_NEXT[ethertype] == Layer.VLAN:
            if len(vids) == 2:
                raise _Drop(ParseDrop.TOO_MANY_VLANS)
            tag = _fixed(Dot1Q, self.buf, at, end, ParseDrop.TRUNCATED_VLAN)
            self.bit(Layer.VLAN, inner)
            if not inner:
                self.row["vlan_count"] = len(vids) + 1
                self.row["vlan_outer" if not vids else "vlan_inner"] = tag.vid
                self.row["ethertype"] = tag.ethertype
            vids.append(tag.vid)
            ethertype, at = tag.ethertype, at + Dot1Q.SIZE
            if not inner:
                self.row["payload"] = at
        return ethertype, at

    def ip(self, at: int, end: int, version: int, inner: bool) -> tuple[int, int, int]:
        """IPv4/IPv6 and extension headers; returns (ip end, l4 offset or -1, protocol)."""
        p = "inner_" if inner else ""
        row = self.row
        if version == 4:
            self.bit(Layer.IPV4, inner)
            ip = _fixed(IPv4, self.buf, at, end, ParseDrop.TRUNCATED_IPV4)
            if ip.version != 4:
                raise _Drop(ParseDrop.BAD_IP_VERSION)
            row[p + "protocol"] = ip.protocol
            row[p + "src4"], row[p + "dst4"] = ip.src, ip.dst
            if not inner:
                row.update(ttl=ip.ttl, tos=ip.tos, l3_length=ip.total_length)
            if ip.ihl < 5:
                raise _Drop(ParseDrop.BAD_IHL)
            if ip.total_length > end - at:
                raise _Drop(ParseDrop.BAD_IPV4_LENGTH)
            if ip.ihl * 4 > ip.total_length:
                raise _Drop(ParseDrop.BAD_IHL)
            ip_end = at + ip.total_length
            if ip.flags & 1 or ip.frag_offset:
                self.bit(Layer.FRAGMENT, inner)
                if not inner:
                    row["frag"] = 2 if ip.frag_offset else 1
                if ip.frag_offset:
                    return self.non_first(ip_end, ip.protocol, inner)
            return ip_end, at + ip.ihl * 4, ip.protocol

        self.bit(Layer.IPV6, inner)
        ip6 = _fixed(IPv6, self.buf, at, end, ParseDrop.TRUNCATED_IPV6)
        if ip6.version != 6:
            raise _Drop(ParseDrop.BAD_IP_VERSION)
        proto = ip6.next_header
        row[p + "protocol"] = proto
        row[p + "src6_hi"], row[p + "src6_lo"] = ip6.src >> 64, ip6.src & (2**64 - 1)
        row[p + "dst6_hi"], row[p + "dst6_lo"] = ip6.dst >> 64, ip6.dst & (2**64 - 1)
        total = IPv6.SIZE + ip6.payload_length
        if not inner:
            row.update(ttl=ip6.hop_limit, tos=ip6.traffic_class, l3_length=total)
        if total > end - at:
            raise _Drop(ParseDrop.BAD_IPV6_LENGTH)
        ip_end, at = at + total, at + IPv6.SIZE
        for hops in range(MAX_EXT_HEADERS + 1):
            if layers.IP_PROTO_NEXT[proto] != Layer.IPV6_EXT:
                break
            self.bit(Layer.IPV6_EXT, inner)
            if hops == MAX_EXT_HEADERS:
                raise _Drop(ParseDrop.TOO_MANY_EXT_HEADERS)
            if proto == layers.IPV6_FRAGMENT_PROTO:
                self.bit(Layer.FRAGMENT, inner)
                frag = _fixed(IPv6Fragment, self.buf, at, ip_end, ParseDrop.BAD_EXT_HEADER)
                proto = frag.next_header
                row[p + "protocol"] = proto
                at += IPv6Fragment.SIZE
                if not inner:
                    row["frag"] = 2 if frag.frag_offset else 1
                if frag.frag_offset:
                    return self.non_first(ip_end, proto, inner)
                continue
            ext = _fixed(IPv6ExtHeader, self.buf, at, ip_end, ParseDrop.BAD_EXT_HEADER)
            size = (ext.length + 1) * 8
            if ip_end - at < size:
                raise _Drop(ParseDrop.BAD_EXT_HEADER)
            proto = ext.next_header
            row[p + "protocol"] = proto
            at += size
        return ip_end, at, proto

    def non_first(self, ip_end: int, proto: int, inner: bool) -> tuple[int, int, int]:
        if self.drop_fragments and not inner:
            raise _Drop(ParseDrop.NON_FIRST_FRAGMENT)
        return ip_end, -1, proto

    def quote(self, at: int, end: int, version: int) -> None:
        """The packet an ICMP error quotes, as far as it is there (never a drop)."""
        row, buf = self.row, self.buf
        if version == 4:
            if end - at < 20 or buf[at] >> 4 != 4 or not 20 <= (buf[at] & 0x0F) * 4 <= end - at:
                return
            proto = buf[at + 9]
            row["inner_src4"] = int.from_bytes(buf[at + 12:at + 16], "big")
            row["inner_dst4"] = int.from_bytes(buf[at + 16:at + 20], "big")
            l4 = at + (buf[at] & 0x0F) * 4
        else:
            if end - at < 40 or buf[at] >> 4 != 6:
                return
            proto = buf[at + 6]
            src = int.from_bytes(buf[at + 8:at + 24], "big")
            dst = int.from_bytes(buf[at + 24:at + 40], "big")
            row["inner_src6_hi"], row["inner_src6_lo"] = src >> 64, src & (1 << 64) - 1
            row["inner_dst6_hi"], row["inner_dst6_lo"] = dst >> 64, dst & (1 << 64) - 1
            l4 = at + 40
        row.update(inner_l3=at, inner_ip_version=version, inner_protocol=proto)
        if end - l4 < 4:
            return
        row["inner_l4"] = l4
        if proto in (6, 17):
            row["inner_sport"] = int.from_bytes(buf[l4:l4 + 2], "big")
            row["inner_dport"] = int.from_bytes(buf[l4 + 2:l4 + 4], "big")
        elif (proto, buf[l4]) in ((1, 0), (1, 8), (58, 128), (58, 129)) and end - l4 >= 6:
            row["inner_sport"] = row["inner_dport"] = int.from_bytes(buf[l4 + 4:l4 + 6], "big")

    def l4(self, at: int, ip_end: int, proto: int, inner: bool) -> tuple[Layer | None, int]:
        """The transport header; returns (tunnel layer to enter or None, payload offset)."""
        p = "inner_" if inner else ""
        row = self.row
        layer = layers.IP_PROTO_NEXT[proto]
        if layer == Layer.TCP:
            self.bit(Layer.TCP, inner)
            tcp = _fixed(TCP, self.buf, at, ip_end, ParseDrop.TRUNCATED_TCP)
            row[p + "sport"], row[p + "dport"], row[p + "tcp_flags"] = (
                tcp.sport,
                tcp.dport,
                tcp.flags,
            )
            if not TCP.SIZE <= tcp.data_offset * 4 <= ip_end - at:
                raise _Drop(ParseDrop.BAD_TCP_OFFSET)
            return None, at + tcp.data_offset * 4
        if layer == Layer.UDP:
            self.bit(Layer.UDP, inner)
            udp = _fixed(UDP, self.buf, at, ip_end, ParseDrop.TRUNCATED_UDP)
            row[p + "sport"], row[p + "dport"] = udp.sport, udp.dport
            if not UDP.SIZE <= udp.length <= ip_end - at:
                raise _Drop(ParseDrop.BAD_UDP_LENGTH)
            tunnel = layers.UDP_PORT_NEXT[udp.dport]
            return (None if tunnel == layers.NONE else Layer(tunnel)), at + UDP.SIZE
        if layer in (Layer.ICMP, Layer.ICMPV6):
            self.bit(Layer(layer), inner)
            icmp = _fixed(ICMP, self.buf, at, ip_end, ParseDrop.TRUNCATED_ICMP)
            if not inner:
                row["icmp_type"], row["icmp_code"] = icmp.type, icmp.code
            if icmp.type in ECHO_TYPES[Layer(layer)]:
                row[p + "sport"] = row[p + "dport"] = icmp.ident
            if not inner and icmp.type in ERROR_TYPES[Layer(layer)]:
                self.quote(at + ICMP.SIZE, ip_end, 4 if layer == Layer.ICMP else 6)
            return None, at + ICMP.SIZE
        if layer == Layer.GRE:
            self.bit(Layer.GRE, inner)
            gre = _fixed(GRE, self.buf, at, ip_end, ParseDrop.TRUNCATED_GRE)
            size = GRE.SIZE + 4 * (gre.checksum_present + gre.key_present + gre.seq_present)
            if ip_end - at < size:
                raise _Drop(ParseDrop.TRUNCATED_GRE)
            return Layer.GRE, at + size
        self.bit(Layer.PAYLOAD, inner)
        return None, at

    def tunnel(self, kind: Layer, at: int, end: int) -> None:
        """A tunnel header at ``at`` and what it carries, bounded by ``end``."""
        row, buf = self.row, self.buf
        inner_l2, version = -1, 0
        if kind == Layer.GRE:
            gre = _fixed(GRE, buf, row["l4"], end, ParseDrop.TRUNCATED_GRE)
            if gre.key_present:
                key_at = row["l4"] + GRE.SIZE + 4 * gre.checksum_present
                row["tunnel_id"] = int.from_bytes(buf[key_at : key_at + 4], "big")
            row["tunnel"] = Layer.GRE
            carried = layers.ETHERTYPE_NEXT[gre.protocol]
        elif kind == Layer.VXLAN:
            self.bit(Layer.VXLAN, False)
            vx = _fixed(VXLAN, buf, at, end, ParseDrop.TRUNCATED_VXLAN)
            row["tunnel"], row["tunnel_id"] = Layer.VXLAN, vx.vni
            at += VXLAN.SIZE
            carried = Layer.ETHERNET
        elif kind == Layer.GENEVE:
            self.bit(Layer.GENEVE, False)
            gen = _fixed(Geneve, buf, at, end, ParseDrop.TRUNCATED_GENEVE)
            if gen.version != 0:
                raise _Drop(ParseDrop.BAD_GENEVE_VERSION)
            size = Geneve.SIZE + gen.opt_len * 4
            if end - at < size:
                raise _Drop(ParseDrop.TRUNCATED_GENEVE)
            row["tunnel"], row["tunnel_id"] = Layer.GENEVE, gen.vni
            at += size
            carried = layers.ETHERTYPE_NEXT[gen.protocol]
        else:
            self.bit(Layer.GTPU, False)
            gtp = _fixed(GTPU, buf, at, end, ParseDrop.TRUNCATED_GTPU)
            if gtp.version != 1:
                raise _Drop(ParseDrop.BAD_GTPU_VERSION)
            row["tunnel"], row["tunnel_id"] = Layer.GTPU, gtp.teid
            at += GTPU.SIZE
            if gtp.ext_flag or gtp.seq_flag or gtp.npdu_flag:
                if end - at < 4:
                    raise _Drop(ParseDrop.TRUNCATED_GTPU)
                next_ext = buf[at + 3]
                at += 4
                for hops in range(MAX_GTPU_EXT + 1):
                    if not (gtp.ext_flag and next_ext):
                        break
                    if hops == MAX_GTPU_EXT or end - at < 4:
                        raise _Drop(ParseDrop.TRUNCATED_GTPU)
                    size = buf[at] * 4
                    if size == 0 or end - at < size:
                        raise _Drop(ParseDrop.TRUNCATED_GTPU)
                    next_ext = buf[at + size - 1]
                    at += size
            carried = layers.NONE
            if gtp.message_type == 255 and end - at >= 1 and buf[at] >> 4 in (4, 6):
                carried = Layer.IPV4 if buf[at] >> 4 == 4 else Layer.IPV6
        if carried == Layer.ETHERNET:
            inner_l2 = at
        elif carried in (Layer.IPV4, Layer.IPV6):
            version = 4 if carried == Layer.IPV4 else 6
        else:
            row["payload"] = at
            return
        try:
            self.inner(inner_l2, at, version, end)
        except _Drop as drop:
            raise _Drop(drop.reason + INNER_DROP) from None

    def inner(self, inner_l2: int, at: int, version: int, end: int) -> None:
        row = self.row
        if inner_l2 >= 0:
            row["inner_l2"] = inner_l2
            ethertype, at = self.l2(inner_l2, end, inner=True)
            carried = layers.ETHERTYPE_NEXT[ethertype]
            if carried not in (Layer.IPV4, Layer.IPV6):
                if carried == Layer.ARP:
                    self.bit(Layer.ARP, True)
                row["payload"] = at
                return
            version = 4 if carried == Layer.IPV4 else 6
        row["inner_l3"], row["inner_ip_version"] = at, version
        ip_end, l4, proto = self.ip(at, end, version, inner=True)
        if l4 < 0:
            return
        row["inner_l4"] = l4
        try:
            _, row["payload"] = self.l4(l4, ip_end, proto, inner=True)
        except _Drop:
            row["payload"] = l4
            raise

    def outer(self, start: int, end: int) -> None:
        row = self.row
        row["payload"] = start
        ethertype, at = self.l2(start, end, inner=False)
        carried = layers.ETHERTYPE_NEXT[ethertype]
        if carried == Layer.ARP:
            self.bit(Layer.ARP, False)
            row["l3"] = at
            if end - at < 28:
                raise _Drop(ParseDrop.TRUNCATED_ARP)
            row["payload"] = at + 28
            return
        if carried not in (Layer.IPV4, Layer.IPV6):
            self.bit(Layer.PAYLOAD, False)
            return
        version = 4 if carried == Layer.IPV4 else 6
        row["l3"], row["ip_version"] = at, version
        try:
            ip_end, l4, proto = self.ip(at, end, version, inner=False)
        except _Drop:
            row["payload"] = at
            raise
        if l4 < 0:
            row["payload"] = -1
            return
        row["l4"] = l4
        try:
            tunnel, row["payload"] = self.l4(l4, ip_end, proto, inner=False)
        except _Drop:
            row["payload"] = l4
            raise
        if tunnel is not None:
            bound = ip_end
            if tunnel != Layer.GRE:
                bound = l4 + int.from_bytes(self.buf[l4 + 4 : l4 + 6], "big")
            self.tunnel(tunnel, row["payload"], bound)


def summarize(
    packet: bytes,
    *,
    start: int = 0,
    wire_length: int | None = None,
    non_first_fragments: str = "drop",
) -> dict[str, int]:
    """The metadata columns the batch parser gives ``packet`` placed at ``start`` in a slot.

    ``flow_hash`` is not computed here (it is a kernel detail, not a header field).
    """
    buf = bytes(start) + packet
    row = _empty(start)
    row["eth_dst"] = _eth_dst(packet)
    walker = _Walker(buf, row, non_first_fragments == "drop")
    try:
        walker.outer(start, len(buf))
    except _Drop as drop:
        row["drop"] = int(drop.reason)
    if not row["drop"] and wire_length is not None and wire_length > len(packet):
        row["drop"] = int(ParseDrop.CAPTURE_TRUNCATED)
    return row
