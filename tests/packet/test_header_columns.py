"""The batch accessors every declaration gets: read and write one field of many packets.

Scapy builds the packets and reads back what was written: fields of odd widths
and alignments (IPv4 flags and fragment offset share two bytes, the IPv6 flow
label spans three, the VXLAN VNI is 24 bits) must come out exact, and a write
must leave the neighbouring bits alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6 as ScapyIPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN as ScapyVXLAN

from portico.batch import Batch
from portico.datapath.stages.parse import parse
from portico.packet.errors import PacketError
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import IPv6
from portico.packet.tcp import TCP as PorticoTCP
from portico.packet.vxlan import VXLAN

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def batch_of(packets: list) -> Batch:
    batch = Batch.from_packets([bytes(p) for p in packets])
    parse(batch, non_first_fragments="keep")
    return batch


def test_reads_match_scapy() -> None:
    packets = [Ether(**MACS) / IP(ttl=t, flags=f, frag=o, id=7) / TCP(dport=d, flags="SA")
               for t, f, o, d in ((1, 0, 0, 80), (64, 2, 0, 443), (255, 1, 8191, 22))]
    batch = batch_of(packets)
    rows = batch.rows()
    l3 = batch.meta["l3"][rows]
    assert list(IPv4.column(batch.data, rows, l3, "ttl")) == [1, 64, 255]
    assert list(IPv4.column(batch.data, rows, l3, "flags")) == [0, 2, 1]
    assert list(IPv4.column(batch.data, rows, l3, "frag_offset")) == [0, 0, 8191]
    l4 = np.where(batch.meta["l4"][rows] >= 0, batch.meta["l4"][rows], l3 + 20)
    assert list(PorticoTCP.column(batch.data, rows, l4, "dport")) == [80, 443, 22]
    assert list(PorticoTCP.column(batch.data, rows, l4, "data_offset")) == [5, 5, 5]


def test_writes_touch_only_their_field() -> None:
    packets = [Ether(**MACS) / IP(flags=2, frag=0) / UDP(),
               Ether(**MACS) / IP() / UDP(sport=1, dport=4789) / ScapyVXLAN(vni=0xABCDEF)
               / Ether(**MACS) / IP() / TCP(),
               Ether(**MACS) / ScapyIPv6(tc=0x5A, fl=0xFFFFF) / UDP()]
    batch = batch_of(packets)
    one = [np.array([r]) for r in range(3)]
    l3 = batch.meta["l3"]
    IPv4.set_column(batch.data, one[0], l3[one[0]], "frag_offset", 0x1234)
    vxlan_at = batch.meta["l4"][one[1]] + 8
    assert VXLAN.column(batch.data, one[1], vxlan_at, "vni")[0] == 0xABCDEF
    VXLAN.set_column(batch.data, one[1], vxlan_at, "vni", 0x000102)
    IPv6.set_column(batch.data, one[2], l3[one[2]], "flow_label", 0x12345)
    fragment, tunnel, six = (Ether(batch.packet(r)) for r in range(3))
    assert fragment[IP].frag == 0x1234 and fragment[IP].flags == 2  # the flags beside it kept
    assert tunnel[ScapyVXLAN].vni == 0x000102
    assert tunnel[ScapyVXLAN].flags == Ether(bytes(packets[1]))[ScapyVXLAN].flags
    assert six[ScapyIPv6].fl == 0x12345 and six[ScapyIPv6].tc == 0x5A
    assert six[ScapyIPv6].version == 6


def test_addresses_have_no_column() -> None:
    batch = batch_of([Ether(**MACS) / ScapyIPv6() / UDP()])
    with pytest.raises(PacketError, match="ipv6.src"):
        IPv6.column(batch.data, batch.rows(), batch.meta["l3"][:1], "src")
    with pytest.raises(PacketError, match="no field named 'nope'"):
        IPv4.column(batch.data, batch.rows(), batch.meta["l3"][:1], "nope")
