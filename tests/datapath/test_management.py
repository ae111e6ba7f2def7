"""In-band management: which frames of a batch go to the kernel, which are refused, and the
punt budget; frames built with Scapy, the split checked row by row."""

from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Ether

from portico.batch import Batch
from portico.datapath.management import Management

MGMT4, MGMT6 = "192.0.2.10", "2001:db8::10"
UPLINK, TENANT = 3, 1
ROUTER_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:99"


def _frames() -> list[tuple[bytes, int, str]]:
    """(frame, ingress port, what the split must make of it)."""
    eth = Ether(src=PEER_MAC, dst=ROUTER_MAC)
    bcast = Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff")
    ns_dst = "ff02::1:ff00:10"  # MGMT6's solicited-node group
    return [
        (bytes(bcast / ARP(op=1, psrc="192.0.2.1", pdst=MGMT4)), UPLINK, "punt"),
        (bytes(bcast / ARP(op=1, psrc="192.0.2.1", pdst="192.0.2.11")), UPLINK, "pass"),
        (bytes(eth / IP(src="198.51.100.7", dst=MGMT4) / ICMP()), UPLINK, "punt"),
        (bytes(eth / IP(src="198.51.100.7", dst=MGMT4) / TCP(dport=8443, flags="S")), UPLINK,
         "punt"),
        (bytes(eth / IP(src="198.51.100.7", dst=MGMT4) / TCP(dport=23, flags="S")), UPLINK,
         "refused_port"),
        (bytes(eth / IP(src="198.51.100.7", dst=MGMT4) / UDP(dport=53)), UPLINK, "refused_port"),
        (bytes(eth / IP(src="198.51.100.7", dst=MGMT4) / UDP(dport=161)), UPLINK, "punt"),
        (bytes(eth / IP(src="10.0.0.5", dst=MGMT4) / TCP(dport=8443, flags="S")), TENANT,
         "refused_tenant"),
        (bytes(eth / IP(src="10.0.0.5", dst="198.51.100.7") / TCP(dport=8443)), TENANT, "pass"),
        (bytes(eth / IP(src="198.51.100.7", dst="203.0.113.9") / TCP(dport=8443)), UPLINK,
         "pass"),
        (bytes(Ether(src=PEER_MAC, dst="33:33:ff:00:00:10") / IPv6(src="fe80::1", dst=ns_dst)
               / ICMPv6ND_NS(tgt=MGMT6)), UPLINK, "punt"),
        (bytes(Ether(src=PEER_MAC, dst="33:33:ff:00:00:11") / IPv6(src="fe80::1", dst=ns_dst)
               / ICMPv6ND_NS(tgt="2001:db8::11")), UPLINK, "pass"),
        (bytes(eth / IPv6(src="2001:db8::1", dst=MGMT6) / ICMPv6EchoRequest()), UPLINK, "punt"),
        (bytes(eth / IPv6(src="2001:db8::1", dst=MGMT6) / TCP(dport=22, flags="S")), UPLINK,
         "punt"),
        (bytes(eth / IPv6(src="fd00::5", dst=MGMT6) / TCP(dport=22, flags="S")), TENANT,
         "refused_tenant"),
    ]


def _batch(frames: list[tuple[bytes, int, str]]) -> Batch:
    batch = Batch.from_packets([frame for frame, _, _ in frames])
    batch.meta["port"][: batch.count] = [port for _, port, _ in frames]
    return batch


def _management(**budget: float) -> Management:
    return Management(port=UPLINK, address=MGMT4, address6=MGMT6, tcp_ports=(22, 8443),
                      udp_ports=(161,), **budget)  # type: ignore[arg-type]


def test_each_frame_gets_the_verdict_its_address_port_and_ingress_call_for() -> None:
    frames = _frames()
    batch = _batch(frames)
    management = _management()
    split = management.split(batch, now=1)
    want_punt = [k for k, (_, _, what) in enumerate(frames) if what == "punt"]
    want_taken = [k for k, (_, _, what) in enumerate(frames) if what != "pass"]
    assert split.punt.tolist() == want_punt
    assert split.taken.tolist() == want_taken
    kinds = [what for _, _, what in frames]
    assert management.counters == {
        "punted": kinds.count("punt"), "rate_limited": 0,
        "refused_port": kinds.count("refused_port"),
        "refused_tenant": kinds.count("refused_tenant")}


def test_removing_the_taken_rows_leaves_the_others_intact_and_in_order() -> None:
    frames = _frames()
    batch = _batch(frames)
    split = _management().split(batch, now=1)
    batch.remove(split.taken)
    kept = [(frame, port) for frame, port, what in frames if what == "pass"]
    assert batch.count == len(kept)
    assert batch.packets() == [frame for frame, _ in kept]
    assert batch.meta["port"][: batch.count].tolist() == [port for _, port in kept]


def test_the_punt_budget_limits_a_flood_and_refills_with_time() -> None:
    ping = bytes(Ether(src=PEER_MAC, dst=ROUTER_MAC) / IP(src="198.51.100.7", dst=MGMT4) / ICMP())
    management = _management(rate=5, burst=3)
    second = 1_000_000_000
    first = management.split(_batch([(ping, UPLINK, "punt")] * 10), now=second)
    assert len(first.punt) == 3 and len(first.taken) == 10
    again = management.split(_batch([(ping, UPLINK, "punt")] * 10), now=second + second // 5)
    assert len(again.punt) == 1  # 0.2 s at 5/s: one token
    later = management.split(_batch([(ping, UPLINK, "punt")] * 10), now=10 * second)
    assert len(later.punt) == 3  # never more than the burst saved
    assert management.counters["punted"] == 7
    assert management.counters["rate_limited"] == 23


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"address": "192.0.2.300"}, "management.address: '192.0.2.300' is not an IPv4"),
    ({"address": None, "address6": "2001:db8::zz"}, "management.address6"),
    ({"address": None}, "an IPv4 or an IPv6 address is needed"),
    ({"tcp_ports": (0,)}, "management.tcp_ports: 0 is not a port number"),
    ({"udp_ports": (70000,)}, "management.udp_ports: 70000"),
    ({"rate": 0}, "management.rate"),
])
def test_bad_settings_are_refused_by_name(kwargs: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"port": UPLINK, "address": MGMT4, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Management(**settings)  # type: ignore[arg-type]


def test_an_empty_batch_takes_nothing() -> None:
    batch = Batch(4)
    batch.reset(0)
    split = _management().split(batch, now=1)
    assert len(split.punt) == 0 and len(split.taken) == 0
    assert np.asarray(split.taken).dtype.kind == "i"
