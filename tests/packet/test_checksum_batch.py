"""The batch checksum kernels against Scapy's checksums, and their verdicts on corruption."""

from __future__ import annotations

import numpy as np
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether

from portico.batch import Batch
from portico.datapath.stages.parse import parse
from portico.packet.checksum import checksums_valid, ipv4_header_checksums, l4_checksums

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
PACKETS = [
    Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / b"abc",
    Ether(**MACS)
    / Dot1Q(vlan=5)
    / IP(src="10.0.0.3", dst="10.9.0.2")
    / UDP(sport=3, dport=4)
    / b"x",
    Ether(**MACS)
    / IP(src="192.0.2.1", dst="198.51.100.7", options=b"\x01\x01\x01\x00")
    / ICMP(id=9),
    Ether(**MACS) / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=5, dport=6) / b"odd",
    Ether(**MACS) / IPv6(src="2001:db8::3", dst="fe80::1") / UDP(sport=7, dport=8) / b"yy",
    Ether(**MACS) / IPv6(src="2001:db8::4", dst="2001:db8::5") / ICMPv6EchoRequest(id=3, data=b"p"),
]
TRANSPORTS = (TCP, UDP, ICMP, TCP, UDP, ICMPv6EchoRequest)


def parsed(frames: list[bytes]) -> Batch:
    batch = Batch.from_packets(frames)
    parse(batch)
    assert not batch.meta["drop"][: batch.count].any()
    return batch


def test_kernels_compute_what_scapy_computes() -> None:
    built = [Ether(bytes(p)) for p in PACKETS]  # Scapy fills every checksum
    batch = parsed([bytes(p) for p in built])
    ip = ipv4_header_checksums(batch.data, batch.meta, batch.count)
    l4 = l4_checksums(batch.data, batch.meta, batch.count)
    for row, (pkt, transport) in enumerate(zip(built, TRANSPORTS, strict=True)):
        assert ip[row] == (pkt[IP].chksum if IP in pkt else -1)
        field = "cksum" if transport is ICMPv6EchoRequest else "chksum"
        assert l4[row] == getattr(pkt[transport], field)
    assert checksums_valid(batch.data, batch.meta, batch.count).all()


def test_a_flipped_byte_is_caught_in_the_row_it_hits() -> None:
    frames = [bytes(p) for p in PACKETS]
    batch = parsed(frames)
    corrupt = batch.headroom + len(frames[0]) - 1  # the last payload byte of row 0
    batch.data[0, corrupt] ^= 0x40
    batch.data[2, batch.headroom + 14 + 8] ^= 0x01  # the TTL of row 2: IPv4 header checksum
    valid = checksums_valid(batch.data, batch.meta, batch.count)
    assert list(valid) == [False, True, False, True, True, True]


def test_zero_udp_checksum_over_ipv4_means_none() -> None:
    frame = bytes(Ether(**MACS) / IP() / UDP(sport=1, dport=2, chksum=0) / b"data")
    batch = parsed([frame])
    assert checksums_valid(batch.data, batch.meta, 1).all()
    assert l4_checksums(batch.data, batch.meta, 1)[0] not in (0, -1)


def test_generated_traffic_is_valid_everywhere() -> None:
    from portico.gen import TrafficSpec, generate

    spec = TrafficSpec(packets=2000, flows=300, seed=3, ipv6_share=0.3, vlans=2, sizes="imix")
    for batch in generate(spec, batch_size=512):
        parse(batch)
        assert checksums_valid(batch.data, batch.meta, batch.count).all()
        assert np.all(batch.meta["drop"][: batch.count] == 0)
