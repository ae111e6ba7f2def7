"""The peers: the same workloads done per packet, each in its own idiom.

* ``struct``: what a careful Python programmer writes by hand: ``unpack_from``
  at computed offsets, the packet copied into a ``bytearray`` output buffer and
  patched with ``pack_into``, checksums updated incrementally (RFC 1624), the
  same arithmetic as Portico's kernel. It is the reference Portico's output
  must equal byte for byte.
* ``dpkt``: decode into dpkt objects, set the fields, zero the checksums and
  let dpkt recompute them when serialising (its way of fixing checksums).
* ``scapy``: dissect with ``Ether(...)``, set the fields, delete the checksums
  and let Scapy rebuild them (its way).

Each function takes a list of frames and returns what it computed (5-tuples,
or the output frames) so the harness can check every contender agrees. Only
unfragmented IPv4 TCP/UDP is translated; anything else passes unchanged,
as in Portico's kernel.

``read`` is different: each function takes a classic pcap file and a packet
count and returns the first ``count`` packets of the file as bytes, which the
harness checks equal the pool's:

* ``struct``: the file read into one ``bytes``, then a plain loop over the
  records, ``unpack_from`` on each 16-byte record header and a slice for the
  packet;
* ``dpkt``: iterate ``dpkt.pcap.Reader``, which yields ``(timestamp, buf)``;
* ``scapy``: iterate ``scapy.utils.RawPcapReader``, which yields
  ``(bytes, metadata)`` without dissecting: Scapy's fastest reader (its
  ``rdpcap`` and ``PcapReader`` build a ``Packet`` per record on top of it).
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

from bench.workloads import NAT_ADDRESS, NAT_ADDRESS_BYTES, nat_port

FiveTuple = tuple[int, int, int, int, int]

_ETHERTYPE = struct.Struct("!H")
_IPV4 = struct.Struct("!BBHHHBBHII")  # ver/ihl, tos, total, ident, flags/frag, ttl, proto, sum
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_VLAN_TPIDS = (0x8100, 0x88A8)
_PCAP_MAGICS = (0xA1B2C3D4, 0xA1B23C4D)  # microseconds, nanoseconds


# ---------------------------------------------------------------- struct
def _l3_of(frame: bytes) -> tuple[int, int]:
    """(ethertype after any VLAN tags, offset of the L3 header)."""
    (ethertype,) = _ETHERTYPE.unpack_from(frame, 12)
    at = 14
    while ethertype in _VLAN_TPIDS:
        (ethertype,) = _ETHERTYPE.unpack_from(frame, at + 2)
        at += 4
    return ethertype, at


def parse_struct(frames: Sequence[bytes]) -> list[FiveTuple | None]:
    tuples: list[FiveTuple | None] = []
    append = tuples.append
    for frame in frames:
        ethertype, l3 = _l3_of(frame)
        if ethertype != 0x0800:
            append(None)
            continue
        ver_ihl, _, _, _, frag, _, proto, _, src, dst = _IPV4.unpack_from(frame, l3)
        if proto in (6, 17) and frag & 0x3FFF == 0:
            sport, dport = _PORTS.unpack_from(frame, l3 + (ver_ihl & 0x0F) * 4)
            append((src, dst, proto, sport, dport))
        else:
            append(None)
    return tuples


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _update16(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')."""
    return ~_fold((~csum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def _update32(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 over a 32-bit field, as two 16-bit words."""
    total = (~csum & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
    return ~_fold(total + (new >> 16) + (new & 0xFFFF)) & 0xFFFF


def snat_struct(frames: Sequence[bytes]) -> Slab:
    out = bytearray(sum(len(f) for f in frames))
    offsets = []
    at = 0
    for frame in frames:
        size = len(frame)
        out[at : at + size] = frame
        offsets.append(at)
        ethertype, l3 = _l3_of(frame)
        if ethertype == 0x0800:
            ver_ihl, _, _, _, frag, _, proto, ip_sum, src, dst = _IPV4.unpack_from(frame, l3)
            if proto in (6, 17) and frag & 0x3FFF == 0:
                l4 = l3 + (ver_ihl & 0x0F) * 4
                sport, dport = _PORTS.unpack_from(frame, l4)
                port = nat_port(src, dst, sport, dport, proto)
                _U16.pack_into(out, at + l3 + 10, _update32(ip_sum, src, NAT_ADDRESS))
                _U32.pack_into(out, at + l3 + 12, NAT_ADDRESS)
                csum_at = l4 + (16 if proto == 6 else 6)
                (l4_sum,) = _U16.unpack_from(frame, csum_at)
                if proto == 6 or l4_sum:
                    l4_sum = _update16(_update32(l4_sum, src, NAT_ADDRESS), sport, port)
                    _U16.pack_into(out, at + csum_at, l4_sum or (0xFFFF if proto == 17 else 0))
                _U16.pack_into(out, at + l4, port)
        at += size
    return Slab(out, offsets)


class Slab(Sequence[bytes]):
    """Frames laid end to end in one output buffer; sliced out only when looked at."""

    def __init__(self, buffer: bytearray, offsets: list[int]) -> None:
        self.buffer = buffer
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        end = self.offsets[index + 1] if index + 1 < len(self.offsets) else len(self.buffer)
        return bytes(self.buffer[self.offsets[index] : end])


# ---------------------------------------------------------------- dpkt
def parse_dpkt(frames: Sequence[bytes]) -> list[FiveTuple | None]:
    import dpkt

    tuples: list[FiveTuple | None] = []
    for frame in frames:
        ip = dpkt.ethernet.Ethernet(frame).data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP | dpkt.udp.UDP):
            l4 = ip.data
            tuples.append((int.from_bytes(ip.src, "big"), int.from_bytes(ip.dst, "big"), ip.p,
                           l4.sport, l4.dport))
        else:
            tuples.append(None)
    return tuples


def snat_dpkt(frames: Sequence[bytes]) -> list[bytes]:
    import dpkt

    out = []
    for frame in frames:
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        if (isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP | dpkt.udp.UDP)
                and not ip.mf and ip.offset == 0):
            l4 = ip.data
            l4.sport = nat_port(int.from_bytes(ip.src, "big"), int.from_bytes(ip.dst, "big"),
                                l4.sport, l4.dport, ip.p)
            ip.src = NAT_ADDRESS_BYTES
            ip.sum = 0  # dpkt recomputes zeroed checksums when serialising
            l4.sum = 0
            out.append(bytes(eth))
        else:
            out.append(frame)
    return out


# ---------------------------------------------------------------- scapy
def _scapy() -> tuple[Any, Any, Any, Any]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    return Ether, IP, TCP, UDP


def parse_scapy(frames: Sequence[bytes]) -> list[FiveTuple | None]:
    Ether, IP, TCP, UDP = _scapy()
    tuples: list[FiveTuple | None] = []
    for frame in frames:
        packet = Ether(frame)
        ip = packet.getlayer(IP)
        l4 = ip.payload if ip is not None else None
        if isinstance(l4, TCP | UDP):
            tuples.append((_ip_int(ip.src), _ip_int(ip.dst), ip.proto, l4.sport, l4.dport))
        else:
            tuples.append(None)
    return tuples


def snat_scapy(frames: Sequence[bytes]) -> list[bytes]:
    Ether, IP, TCP, UDP = _scapy()
    out = []
    for frame in frames:
        packet = Ether(frame)
        ip = packet.getlayer(IP)
        l4 = ip.payload if ip is not None else None
        if isinstance(l4, TCP | UDP) and ip.frag == 0 and not ip.flags.MF:
            l4.sport = nat_port(_ip_int(ip.src), _ip_int(ip.dst), l4.sport, l4.dport, ip.proto)
            ip.src = "203.0.113.1"
            del ip.chksum  # Scapy rebuilds deleted checksums
            del l4.chksum
            out.append(bytes(packet))
        else:
            out.append(frame)
    return out


def _ip_int(text: str) -> int:
    a, b, c, d = (int(part) for part in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


# ---------------------------------------------------------------- read
def read_struct(path: str | os.PathLike[str], count: int) -> list[bytes]:
    """The first ``count`` packets of a classic pcap file, by a loop over its bytes."""
    with open(path, "rb") as file:
        data = file.read()
    for order in ("<", ">"):
        if struct.unpack_from(order + "I", data, 0)[0] in _PCAP_MAGICS:
            break
    else:
        raise ValueError(f"{os.fspath(path)}: not a classic pcap file")
    record = struct.Struct(order + "IIII")  # seconds, fraction, captured, original length
    packets: list[bytes] = []
    append = packets.append
    at, end = 24, len(data)
    while len(packets) < count and at + 16 <= end:
        _, _, captured, _ = record.unpack_from(data, at)
        at += 16
        append(data[at : at + captured])
        at += captured
    return packets


def read_dpkt(path: str | os.PathLike[str], count: int) -> list[bytes]:
    import dpkt

    with open(path, "rb") as file:
        return [buf for _, buf in itertools.islice(dpkt.pcap.Reader(file), count)]


def read_scapy(path: str | os.PathLike[str], count: int) -> list[bytes]:
    from scapy.utils import RawPcapReader

    with RawPcapReader(os.fspath(path)) as reader:
        return [data for data, _ in itertools.islice(reader, count)]


# parse/snat peers take frames; read peers take (path, count).
PEERS: dict[str, dict[str, Callable[..., Sequence]]] = {
    "parse": {"struct": parse_struct, "dpkt": parse_dpkt, "scapy": parse_scapy},
    "snat": {"struct": snat_struct, "dpkt": snat_dpkt, "scapy": snat_scapy},
    "read": {"struct": read_struct, "dpkt": read_dpkt, "scapy": read_scapy},
}
