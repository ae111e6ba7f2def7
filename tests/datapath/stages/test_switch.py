"""The switch: learn sources, forward known unicast, hand the router's frames on, drop the rest."""

from __future__ import annotations

import numpy as np
from l2net import (
    ACCESS,
    EDGE,
    FABRIC,
    GATEWAY_MAC,
    L2,
    ROUTER_A,
    STATIC_A,
    TRUNK,
    UPLINK,
    UPLINK_MAC,
    mac_int,
    make_l2,
)
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from portico import drops
from portico.batch import Batch
from portico.datapath.flowcache import NO_TAG
from portico.datapath.mactable import TAG_BASE, UNKNOWN
from portico.datapath.stages.parse import parse

X = "02:00:00:00:00:11"
Y = "02:00:00:00:00:12"
Z = "02:00:00:00:00:13"
OVERLAY_VNI_HOST = "02:00:00:00:0b:77"  # b.overlay's static entries
OVERLAY_PORT_HOST = "02:00:00:00:0b:78"


def udp(src: str, dst: str, vlan: int | None = None, *, ip_dst: str = "10.0.0.9") -> bytes:
    l2 = Ether(src=src, dst=dst)
    if vlan is not None:
        l2 = l2 / Dot1Q(vlan=vlan)
    return bytes(l2 / IP(src="10.0.0.2", dst=ip_dst) / UDP(sport=1000, dport=2000) / b"data")


def announce(src: str, vlan: int | None = None) -> bytes:
    """A broadcast (a DHCP-like UDP one): not forwarded, but its source is learned."""
    l2 = Ether(src=src, dst="ff:ff:ff:ff:ff:ff")
    if vlan is not None:
        l2 = l2 / Dot1Q(vlan=vlan)
    return bytes(l2 / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67))


def arp(src: str, vlan: int | None = None) -> bytes:
    """A gratuitous ARP: broadcast, and for the router's responder."""
    l2 = Ether(src=src, dst="ff:ff:ff:ff:ff:ff")
    if vlan is not None:
        l2 = l2 / Dot1Q(vlan=vlan)
    return bytes(l2 / ARP(op=1, hwsrc=src, psrc="10.0.0.2", pdst="10.0.0.2"))


def outcomes(batch: Batch) -> list[str]:
    """Per row: "port N" or the drop reason."""
    m = batch.meta
    return [drops.name(m["drop"][r]) if m["drop"][r] else f"port {m['out_port'][r]}"
            for r in range(batch.count)]


def test_known_unicast_goes_out_behind_its_attachment() -> None:
    net = make_l2()
    # STATIC_A is configured behind access VLAN 10; the sender is on edge VLAN 30.
    batch = net.run([(EDGE, udp(X, STATIC_A, 30))])
    assert outcomes(batch) == ["port 1"]
    assert batch.meta["out_attachment"][0] == net.topology.attachment_at(ACCESS, 10)
    assert Ether(batch.packet(0))[Dot1Q].vlan == 10


def test_sources_are_learned_and_unknown_destinations_dropped() -> None:
    net = make_l2()
    assert outcomes(net.run([(EDGE, udp(Y, X, 30))])) == ["unknown-unicast"]
    # X announces itself: the broadcast is not flooded, but X is learned behind trunk 10.
    assert outcomes(net.run([(TRUNK, announce(X, 10))])) == ["flood-unsupported"]
    a = net.segment("a.lan")
    assert net.macs.entries(a) == {mac_int(Y): net.topology.attachment_at(EDGE, 30),
                                   mac_int(X): net.topology.attachment_at(TRUNK, 10)}
    batch = net.run([(EDGE, udp(Y, X, 30))])
    assert outcomes(batch) == ["port 4"]
    assert Ether(batch.packet(0))[Dot1Q].vlan == 10
    assert net.counted("switch") == {"unknown-unicast": 1, "flood-unsupported": 1}


def test_learning_then_forwarding_follows_arrival_order_inside_a_batch() -> None:
    net = make_l2()
    batch = net.run([(EDGE, udp(Y, X, 30)), (ACCESS, udp(X, Y, 10)), (EDGE, udp(Y, X, 30))])
    # The first frame to X precedes X's first frame; the third follows it.
    assert outcomes(batch) == ["unknown-unicast", "port 2", "port 1"]


def test_a_frame_is_never_sent_back_where_it_came_from() -> None:
    net = make_l2()
    net.run([(ACCESS, announce(X, 10)), (ACCESS, announce(Y, 10))])
    batch = net.run([(ACCESS, udp(X, Y, 10)), (ACCESS, udp(X, STATIC_A, 10))])
    assert outcomes(batch) == ["hairpin-l2", "hairpin-l2"]


def test_broadcast_and_multicast_are_not_flooded() -> None:
    net = make_l2()
    frames = [(ACCESS, announce(X, 10)), (ACCESS, udp(Y, "01:00:5e:00:00:fb", 10)),
              (ACCESS, udp(Z, "33:33:00:00:00:01", 10))]
    assert outcomes(net.run(frames)) == ["flood-unsupported"] * 3
    assert len(net.macs.entries(net.segment("a.lan"))) == 3  # all three sources learned


def test_bad_source_macs_are_dropped_and_not_learned() -> None:
    net = make_l2()
    frames = [(ACCESS, udp("01:00:5e:00:00:01", STATIC_A, 20)),
              (ACCESS, udp("00:00:00:00:00:00", STATIC_A, 20))]
    assert outcomes(net.run(frames)) == ["bad-source-mac"] * 2
    assert len(net.macs) == 0


def test_frames_for_the_router_go_to_route(checksums_valid) -> None:  # type: ignore[no-untyped-def]
    net = make_l2()
    icmp = bytes(Ether(src=X, dst=ROUTER_A) / Dot1Q(vlan=10)
                 / IP(src="10.0.0.2", dst="198.51.100.7", ttl=9) / ICMP(id=7, seq=1))
    batch = net.run([(ACCESS, icmp), (ACCESS, arp(Y, 10)), (ACCESS, announce(Z, 10))])
    # The ARP broadcast goes to the router's responder too (the stub drops non-IP).
    assert outcomes(batch) == ["port 0", "stub-not-ipv4", "flood-unsupported"]
    assert net.pipeline.counters["route"].packets == 2
    # Routed by the stub out of the (untagged) uplink: output popped the tag and set
    # the uplink's MAC as source; the stub's next hop and TTL decrement are there too.
    out = Ether(batch.packet(0))
    assert Dot1Q not in out
    assert (out.src, out.dst, out[IP].ttl, out[ICMP].id) == (UPLINK_MAC, GATEWAY_MAC, 8, 7)
    checksums_valid(out)


def test_a_tunnel_segment_switches_the_inner_frame_without_learning() -> None:
    net = make_l2()

    def vxlan(src: str, dst: str) -> bytes:
        return bytes(Ether(src="02:00:00:00:99:01", dst="02:00:00:00:99:02")
                     / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=49152, dport=4789)
                     / VXLAN(vni=5001) / Ether(src=src, dst=dst)
                     / IP(src="10.9.0.2", dst="10.9.0.3") / UDP(sport=1, dport=2))

    batch = net.run([
        (FABRIC, vxlan(X, OVERLAY_PORT_HOST)),  # VNI -> fabric VLAN 50: needs a decapsulation
        (FABRIC, udp(Y, OVERLAY_VNI_HOST, 50)),  # fabric VLAN 50 -> VNI: needs an encapsulation
        (FABRIC, vxlan(Y, OVERLAY_VNI_HOST)),  # VNI -> VNI: split horizon, as between VTEPs
        (FABRIC, vxlan(Y, X)),  # X was not learned: mac_learning is off
    ])
    assert outcomes(batch) == ["tunnel-unsupported", "tunnel-unsupported", "hairpin-l2",
                               "unknown-unicast"]
    assert len(net.macs) == 0
    assert net.counted("output") == {"tunnel-unsupported": 2}


def test_decisions_carry_the_tags_of_what_they_rest_on() -> None:
    net = make_l2()
    net.run([(TRUNK, arp(X, 10))])
    frames = [udp(Y, X, 30), udp(Y, Z, 30), udp(Y, STATIC_A, 30), udp(Y, ROUTER_A, 30)]
    batch = Batch.from_packets(frames, port=EDGE)
    parse(batch)
    decided = net.pipeline.run(batch)  # the stages only: decisions, not yet applied
    a = net.segment("a.lan")
    learned_tag = int(net.macs.locate(np.array([a]), np.array([mac_int(X)], np.uint64))[1][0])
    assert learned_tag != NO_TAG
    # learned X: its entry's tag; unknown Z: a.lan's "unknown" tag; the static entry and
    # the router's MAC are topology (the generation covers them): no tag.
    assert [list(decided.tags[r][: decided.tag_count[r]]) for r in range(4)] == [
        [learned_tag], [TAG_BASE | (UNKNOWN + a)], [], []]
    assert [drops.name(d) if d else "" for d in batch.meta["drop"][:4]] == [
        "", "unknown-unicast", "", ""]
    assert list(decided.actions["out_port"][[0, 2, 3]]) == [TRUNK, ACCESS, UPLINK]


def test_unknown_port_frames_never_reach_the_switch_tables() -> None:
    net: L2 = make_l2()
    assert outcomes(net.run([(UPLINK, udp(X, Y, 10))])) == ["no-segment"]
    assert len(net.macs) == 0
