"""The gateway as its users see it: tenant isolation, router functions, neighbours, IPv6,
and the flow cache changing nothing (NAT and the firewall: test_gateway_nat.py,
test_gateway_firewall.py).

Every test builds frames with Scapy, runs them through ``Gateway.process`` over
the two-tenant example (``examples/two-tenants.yaml``, see ``gatewaynet.py``) or
a variant of it, and reads what left with Scapy: ports, VLANs, addresses,
ports, checksums (every frame that leaves is checked) and the drop reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv6Address

import numpy as np
import pytest
from gatewaynet import (
    ACCESS,
    CLIENT,
    CLIENT6,
    CLIENT_MAC,
    DMZ,
    DMZ_HOST,
    DMZ_HOST6,
    DMZ_HOST_MAC,
    DNAT_PORT,
    OUTSIDE,
    PUBLIC_A,
    PUBLIC_B,
    ROUTER6_A,
    ROUTER6_DMZ,
    ROUTER_A,
    ROUTER_B,
    ROUTER_DMZ,
    ROUTER_DMZ_MAC,
    ROUTER_IP,
    SECOND,
    UPLINK,
    UPLINK_IP,
    UPLINK_MAC,
    UPSTREAM_MAC,
    VLAN_A,
    VLAN_B,
    WEB,
    WEB_MAC,
    Frame,
    Net,
    Out,
    arp_from,
    from_a,
    from_b,
    from_outside,
    gateway,
    net,
    variant,
    with_dmz,
    without_default_route,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

CACHE = pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])


def udp(src: str, dst: str, sport: int, dport: int, **ip: object) -> IP:
    return IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport)


def syn(src: str, dst: str, sport: int, dport: int) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=1000)


# ---------------------------------------------------------------- isolation
@dataclass(frozen=True)
class Case:
    """One ordered pair of the matrix: who sends, to which endpoint, what must happen."""

    sender: str  # "a", "b" (each tenant's host 10.0.0.7, same MAC) or "outside"
    target: str
    frame: Frame
    verdict: tuple[object, ...]  # Out.verdict(): (port, vlan) or ("drop", reason)
    # Delivered: (src, sport, dst, dport) as the receiver sees them.
    seen: tuple[str, int, str, int] | None = None


# Both tenants' hosts 10.0.0.7 open UDP 5000 -> 8.8.8.8:53 first, so each public address
# has a live binding at port 5000 (198.51.100.10:5000 for a, .20:5000 for b).
OPENERS = [from_a(udp(CLIENT, OUTSIDE, 5000, 53)), from_b(udp(CLIENT, OUTSIDE, 5000, 53))]

MATRIX = [
    # a's host. Its tenant's private addresses are its own: 10.0.0.5 is a's web server.
    Case("a", "a's web by 10.0.0.5", from_a(udp(CLIENT, WEB, 6000, 7)),
         (ACCESS, VLAN_A), (CLIENT, 6000, WEB, 7)),
    Case("a", "outside", from_a(udp(CLIENT, OUTSIDE, 6001, 53)),
         (UPLINK, None), (PUBLIC_A, 6001, OUTSIDE, 53)),
    Case("a", "a's DNAT port (hairpin)", from_a(syn(CLIENT, PUBLIC_A, 6002, DNAT_PORT)),
         (ACCESS, VLAN_A), (PUBLIC_A, 6002, WEB, 80)),
    Case("a", "b's public binding", from_a(udp(CLIENT, PUBLIC_B, 6003, 5000)),
         ("drop", "denied")),
    Case("a", "b's public address, no binding", from_a(udp(CLIENT, PUBLIC_B, 6004, 5001)),
         ("drop", "no-binding")),
    Case("a", "b's host by its MAC (a's own)", from_a(udp(CLIENT, CLIENT, 6005, 7),
                                                     dst=CLIENT_MAC),
         ("drop", "hairpin-l2")),
    Case("a", "an unknown MAC (not flooded anywhere)",
         from_a(udp(CLIENT, WEB, 6006, 7), dst="02:00:00:00:00:99"),
         ("drop", "unknown-unicast")),
    # b's host: the same address and MAC as a's, in its own space.
    Case("b", "b's own 10.0.0.5 (never a's web)", from_b(udp(CLIENT, WEB, 6000, 7)),
         (ACCESS, VLAN_B), (CLIENT, 6000, WEB, 7)),
    Case("b", "outside", from_b(udp(CLIENT, OUTSIDE, 6001, 53)),
         (UPLINK, None), (PUBLIC_B, 6001, OUTSIDE, 53)),
    # a publishes its web server to everyone: b gets there as the Internet does, from
    # its public address, never from its own.
    Case("b", "a's DNAT port (published)", from_b(syn(CLIENT, PUBLIC_A, 6002, DNAT_PORT)),
         (ACCESS, VLAN_A), (PUBLIC_B, 6002, WEB, 80)),
    Case("b", "a's public binding", from_b(udp(CLIENT, PUBLIC_A, 6003, 5000)),
         ("drop", "denied")),
    Case("b", "a's public address, no binding", from_b(udp(CLIENT, PUBLIC_A, 6004, 5001)),
         ("drop", "no-binding")),
    Case("b", "a's web server's MAC", from_b(udp(CLIENT, WEB, 6005, 7), dst=WEB_MAC),
         ("drop", "hairpin-l2")),
    # The outside.
    Case("outside", "a's DNAT port", from_outside(syn(OUTSIDE, PUBLIC_A, 6000, DNAT_PORT)),
         (ACCESS, VLAN_A), (OUTSIDE, 6000, WEB, 80)),
    Case("outside", "reply to a's binding", from_outside(udp(OUTSIDE, PUBLIC_A, 53, 5000)),
         (ACCESS, VLAN_A), (OUTSIDE, 53, CLIENT, 5000)),
    Case("outside", "reply to b's binding", from_outside(udp(OUTSIDE, PUBLIC_B, 53, 5000)),
         (ACCESS, VLAN_B), (OUTSIDE, 53, CLIENT, 5000)),
    Case("outside", "a's binding, unsolicited", from_outside(udp(OUTSIDE, PUBLIC_A, 54, 5000)),
         ("drop", "denied")),
    Case("outside", "b's binding, unsolicited", from_outside(udp(OUTSIDE, PUBLIC_B, 54, 5000)),
         ("drop", "denied")),
    Case("outside", "b's public address, no binding",
         from_outside(udp(OUTSIDE, PUBLIC_B, 53, 5001)), ("drop", "no-binding")),
    Case("outside", "a's public address, no binding",
         from_outside(udp(OUTSIDE, PUBLIC_A, 53, 5001)), ("drop", "no-binding")),
    # A tenant's private address from outside is no tenant's: the provider routes it
    # back upstream by its default route, untranslated.
    Case("outside", "10.0.0.7 (a private address)", from_outside(udp(OUTSIDE, CLIENT, 53, 5000)),
         (UPLINK, None), (OUTSIDE, 53, CLIENT, 5000)),
]


def check_case(case: Case, out: Out) -> None:
    assert out.verdict() == case.verdict, (case.sender, case.target, out)
    if case.seen is None:
        return
    assert out.packet is not None
    ip = out.packet[IP]
    l4 = ip.payload
    assert (ip.src, l4.sport, ip.dst, l4.dport) == case.seen, (case.sender, case.target)
    if out.port == UPLINK:
        assert (out.packet.src, out.packet.dst) == (UPLINK_MAC, UPSTREAM_MAC)
    else:
        router = ROUTER_A if out.vlan == VLAN_A else ROUTER_B
        host = WEB_MAC if ip.dst == WEB else CLIENT_MAC
        assert (out.packet.src, out.packet.dst) == (router, host)
    assert ip.ttl == 63  # one routed hop, however many routers inside


@CACHE
def test_isolation_matrix(checksums_valid, cache):
    """Every ordered pair of endpoints, twice (the second time from the cache when on):
    each tenant reaches the other only through public addresses, as the outside does."""
    n = net(checksums_valid, cache=cache)
    opened = n.send(OPENERS)
    assert [o.verdict() for o in opened] == [(UPLINK, None), (UPLINK, None)]
    assert [o.packet[IP].src for o in opened] == [PUBLIC_A, PUBLIC_B]
    for round_ in range(2):
        outs = n.send(case.frame for case in MATRIX)
        for case, out in zip(MATRIX, outs, strict=True):
            check_case(case, out)
        # Nothing a tenant's VLAN sent left on the other tenant's VLAN.
        for case, out in zip(MATRIX, outs, strict=True):
            if case.sender == "a" and out.port == ACCESS:
                assert out.vlan == VLAN_A
            if out.port == ACCESS and out.vlan == VLAN_A and case.sender == "b":
                assert out.packet[IP].src == PUBLIC_B  # only as b's public address
        assert n.last_emitted == [], round_
    counters = n.gateway.datapath.counters
    assert (counters["hits"] > 0) == cache


# ----------------------------------------------------------- router functions
def test_ttl_1_gets_time_exceeded_quoting_the_packet(checksums_valid):
    n = net(checksums_valid)
    sent = from_a(udp(CLIENT, OUTSIDE, 7000, 33434, ttl=1))
    out = n.one(sent)
    assert out.verdict() == (ACCESS, VLAN_A)
    p = out.packet
    assert (p.src, p.dst) == (ROUTER_A, CLIENT_MAC)
    assert (p[IP].src, p[IP].dst) == (ROUTER_IP, CLIENT)
    assert (p[ICMP].type, p[ICMP].code) == (11, 0)
    assert (p[IPerror].src, p[IPerror].dst, p[IPerror].ttl) == (CLIENT, OUTSIDE, 1)
    assert (p[UDPerror].sport, p[UDPerror].dport) == (7000, 33434)
    # Nothing of it left for the outside, and no NAT binding was made for it.
    assert all(b.internal_port != 7000 for b in n.gateway.nat.live())


def test_no_route_gets_network_unreachable(checksums_valid):
    """The provider without a default route: a packet from outside to an address no
    route covers gets ICMP network unreachable from the uplink address."""
    n = Net(gateway(variant(without_default_route)), checksums_valid)
    out = n.one(from_outside(udp(OUTSIDE, "192.0.2.99", 7000, 53)))
    assert out.verdict() == (UPLINK, None)
    p = out.packet
    assert (p.src, p.dst) == (UPLINK_MAC, UPSTREAM_MAC)
    assert (p[IP].src, p[IP].dst) == (UPLINK_IP, OUTSIDE)
    assert (p[ICMP].type, p[ICMP].code) == (3, 0)
    assert (p[IPerror].src, p[IPerror].dst) == (OUTSIDE, "192.0.2.99")
    assert (p[UDPerror].sport, p[UDPerror].dport) == (7000, 53)


def dmz_net(check, *, cache: bool = True) -> Net:
    """The ``with_dmz`` variant, with a's client and the DMZ host known."""
    n = net(check, variant(with_dmz), cache=cache)
    out = n.one(arp_from(None, DMZ_HOST, DMZ_HOST_MAC, target=ROUTER_DMZ, port=DMZ))
    assert out.verdict() == (DMZ, None)
    return n


def test_routing_between_a_tenants_segments(checksums_valid):
    n = dmz_net(checksums_valid)
    for _ in range(2):
        out = n.one(from_a(udp(CLIENT, DMZ_HOST, 7000, 7)))
        assert out.verdict() == (DMZ, None)
        p = out.packet
        assert (p.src, p.dst) == (ROUTER_DMZ_MAC, DMZ_HOST_MAC)
        assert (p[IP].src, p[IP].dst, p[IP].ttl) == (CLIENT, DMZ_HOST, 63)  # not translated
    # And back.
    back = Frame(DMZ, Ether(src=DMZ_HOST_MAC, dst=ROUTER_DMZ_MAC) / udp(DMZ_HOST, CLIENT, 7, 7000))
    out = n.one(back)
    assert out.verdict() == (ACCESS, VLAN_A)
    assert (out.packet.src, out.packet.dst) == (ROUTER_A, CLIENT_MAC)


def test_mtu_fragmentation_needed(checksums_valid):
    """DMZ's port has MTU 1280: a 1400-byte DF packet gets ICMP fragmentation needed
    carrying 1280; without DF it is dropped (the gateway does not fragment), and the
    flow's packets that fit still pass (the drop was the packet's, not the flow's)."""
    n = dmz_net(checksums_valid)
    big = from_a(IP(src=CLIENT, dst=DMZ_HOST, flags="DF") / UDP(sport=7001, dport=7)
                 / Raw(b"x" * 1372))
    assert len(big.packet[IP]) == 1400
    out = n.one(big)
    assert out.verdict() == (ACCESS, VLAN_A)
    p = out.packet
    assert (p[IP].src, p[IP].dst) == (ROUTER_IP, CLIENT)
    assert (p[ICMP].type, p[ICMP].code, p[ICMP].nexthopmtu) == (3, 4, 1280)
    assert (p[IPerror].src, p[IPerror].dst, p[IPerror].len) == (CLIENT, DMZ_HOST, 1400)
    assert len(p[IP]) <= 576  # RFC 1812 4.3.2.3
    fits = from_a(IP(src=CLIENT, dst=DMZ_HOST, flags="DF") / UDP(sport=7001, dport=7)
                  / Raw(b"x" * 100))
    no_df = from_a(IP(src=CLIENT, dst=DMZ_HOST) / UDP(sport=7002, dport=7) / Raw(b"x" * 1372))
    small = from_a(IP(src=CLIENT, dst=DMZ_HOST) / UDP(sport=7002, dport=7) / Raw(b"x" * 100))
    for _ in range(2):  # the second time, from the cache
        outs = n.send([fits, no_df])
        assert [o.verdict() for o in outs] == [(DMZ, None), ("drop", "needs-fragmentation")]
        outs = n.send([small, big])
        assert [o.verdict() for o in outs] == [(DMZ, None), (ACCESS, VLAN_A)]
        assert ICMP in outs[1].packet
    assert n.gateway.datapath.counters["hits"] > 0


def test_echo_to_the_router(checksums_valid):
    n = net(checksums_valid)
    for frame, vlan, router in ((from_a, VLAN_A, ROUTER_A), (from_b, VLAN_B, ROUTER_B)):
        out = n.one(frame(IP(src=CLIENT, dst=ROUTER_IP) / ICMP(id=0x4242, seq=7)
                          / Raw(b"ping")))
        assert out.verdict() == (ACCESS, vlan)
        p = out.packet
        assert (p.src, p.dst) == (router, CLIENT_MAC)
        assert (p[IP].src, p[IP].dst) == (ROUTER_IP, CLIENT)
        assert (p[ICMP].type, p[ICMP].id, p[ICMP].seq, bytes(p[ICMP].payload)) == (
            0, 0x4242, 7, b"ping")


def test_echo_to_the_uplink_address(checksums_valid):
    n = net(checksums_valid)
    out = n.one(from_outside(IP(src=OUTSIDE, dst=UPLINK_IP) / ICMP(id=9, seq=1)))
    assert out.verdict() == (UPLINK, None)
    assert (out.packet[IP].src, out.packet[IP].dst, out.packet[ICMP].type) == (
        UPLINK_IP, OUTSIDE, 0)
    assert out.packet.dst == UPSTREAM_MAC


def test_arp_for_the_router_is_answered_with_its_mac():
    n = Net(gateway(), lambda p: None)
    outs = n.send([arp_from(VLAN_A, CLIENT, CLIENT_MAC), arp_from(VLAN_B, CLIENT, CLIENT_MAC),
                   arp_from(VLAN_A, CLIENT, CLIENT_MAC, target="10.0.0.99")])
    for out, vlan, router in zip(outs, (VLAN_A, VLAN_B), (ROUTER_A, ROUTER_B), strict=False):
        assert out.verdict() == (ACCESS, vlan)
        p = out.packet
        assert (p.src, p.dst) == (router, CLIENT_MAC)
        assert p[Dot1Q].vlan == vlan
        assert (p[ARP].op, p[ARP].hwsrc, p[ARP].psrc) == (2, router, ROUTER_IP)
        assert (p[ARP].hwdst, p[ARP].pdst) == (CLIENT_MAC, CLIENT)
    # Only for its own addresses: a request for another host is learnt from, not answered.
    assert outs[2].verdict() == ("drop", "arp-consumed")


# ------------------------------------------------------------------ neighbours
@CACHE
def test_unresolved_neighbour_holds_asks_and_releases(checksums_valid, cache):
    """a's web server has not been heard from: a connection forwarded to it waits while
    the router asks for its MAC, and leaves as soon as the answer comes."""
    n = Net(gateway(cache=cache), checksums_valid)
    out = n.one(from_outside(syn(OUTSIDE, PUBLIC_A, 6000, DNAT_PORT)))
    assert out.held
    [ask] = n.last_emitted
    assert ask.verdict() == (ACCESS, VLAN_A)
    p = ask.packet
    assert (p.src, p.dst) == (ROUTER_A, "ff:ff:ff:ff:ff:ff")
    assert (p[ARP].op, p[ARP].hwsrc, p[ARP].psrc, p[ARP].pdst) == (1, ROUTER_A, ROUTER_IP, WEB)

    answer = n.one(arp_from(VLAN_A, WEB, WEB_MAC, target=ROUTER_IP, op=2))
    assert answer.verdict() == ("drop", "arp-consumed")
    [released] = n.last_emitted
    assert released.verdict() == (ACCESS, VLAN_A)
    p = released.packet
    assert (p.src, p.dst) == (ROUTER_A, WEB_MAC)
    assert (p[IP].src, p[IP].dst, p[TCP].sport, p[TCP].dport) == (OUTSIDE, WEB, 6000, 80)
    assert p[TCP].flags == "S"
    assert p[IP].ttl == 63
    # The flow goes on without waiting.
    out = n.one(from_outside(IP(src=OUTSIDE, dst=PUBLIC_A)
                             / TCP(sport=6000, dport=DNAT_PORT, flags="S", seq=1000)))
    assert out.verdict() == (ACCESS, VLAN_A)
    assert n.gateway.counters["released"] == 1


@CACHE
def test_queue_per_neighbour_is_bounded(checksums_valid, cache):
    n = Net(gateway(cache=cache), checksums_valid)
    outs = n.send([from_outside(syn(OUTSIDE, PUBLIC_A, 6000 + k, DNAT_PORT)) for k in range(20)])
    assert [o.verdict() for o in outs] == [("held",)] * 16 + [("drop", "queue-full")] * 4
    assert len(n.last_emitted) == 1  # one question for the neighbour, not one a packet
    n.one(arp_from(VLAN_A, WEB, WEB_MAC, op=2))
    released = n.last_emitted
    assert [o.verdict() for o in released] == [(ACCESS, VLAN_A)] * 16
    assert [o.packet[TCP].sport for o in released] == list(range(6000, 6016))  # in order
    assert all(o.packet.dst == WEB_MAC for o in released)


# ------------------------------------------------------------------------ IPv6
def ns_for(target: str) -> Frame:
    """a's client solicits ``target``, to its solicited-node group (RFC 4861 7.2.2)."""
    low = int(IPv6Address(target)) & 0xFFFFFF
    group = IPv6Address(int(IPv6Address("ff02::1:ff00:0")) | low)
    mac = "33:33:" + ":".join(f"{b:02x}" for b in group.packed[-4:])
    return Frame(ACCESS, Ether(src=CLIENT_MAC, dst=mac) / Dot1Q(vlan=VLAN_A)
                 / IPv6(src=CLIENT6, dst=str(group), hlim=255) / ICMPv6ND_NS(tgt=target)
                 / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC))


def test_ipv6_neighbour_solicitation_for_the_router(checksums_valid):
    n = Net(gateway(variant(with_dmz)), checksums_valid)
    out = n.one(ns_for(ROUTER6_A))
    assert out.verdict() == (ACCESS, VLAN_A)
    p = out.packet
    assert (p.src, p.dst) == (ROUTER_A, CLIENT_MAC)
    assert (p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (ROUTER6_A, CLIENT6, 255)
    na = p[ICMPv6ND_NA]
    assert (na.tgt, na.R, na.S, na.O) == (ROUTER6_A, 1, 1, 1)
    assert p[ICMPv6NDOptDstLLAddr].lladdr == ROUTER_A
    # Not the router's address: learnt from, not answered.
    assert n.one(ns_for("2001:db8:a::99")).verdict() == ("drop", "nd-consumed")


def test_ipv6_echo_and_hop_limit(checksums_valid):
    n = Net(gateway(variant(with_dmz)), checksums_valid)
    out = n.one(from_a(IPv6(src=CLIENT6, dst=ROUTER6_A) / ICMPv6EchoRequest(id=3, seq=4,
                                                                             data=b"hi")))
    assert out.verdict() == (ACCESS, VLAN_A)
    p = out.packet
    assert (p[IPv6].src, p[IPv6].dst) == (ROUTER6_A, CLIENT6)
    assert (p[ICMPv6EchoReply].id, p[ICMPv6EchoReply].seq, p[ICMPv6EchoReply].data) == (
        3, 4, b"hi")
    out = n.one(from_a(IPv6(src=CLIENT6, dst=DMZ_HOST6, hlim=1) / UDP(sport=1, dport=2)))
    assert out.verdict() == (ACCESS, VLAN_A)
    p = out.packet
    assert (p[IPv6].src, p[IPv6].dst) == (ROUTER6_A, CLIENT6)
    assert (p[ICMPv6TimeExceeded].type, p[ICMPv6TimeExceeded].code) == (3, 0)
    assert (p[IPerror6].src, p[IPerror6].dst, p[IPerror6].hlim) == (CLIENT6, DMZ_HOST6, 1)


def test_ipv6_packet_too_big(checksums_valid):
    n = Net(gateway(variant(with_dmz)), checksums_valid)
    out = n.one(from_a(IPv6(src=CLIENT6, dst=DMZ_HOST6) / UDP(sport=1, dport=2)
                       / Raw(b"x" * 1352)))
    assert out.verdict() == (ACCESS, VLAN_A)
    p = out.packet
    assert (p[IPv6].src, p[IPv6].dst) == (ROUTER6_A, CLIENT6)
    assert (p[ICMPv6PacketTooBig].type, p[ICMPv6PacketTooBig].mtu) == (2, 1280)
    assert (p[IPerror6].src, p[IPerror6].dst, p[IPerror6].plen) == (CLIENT6, DMZ_HOST6, 1360)
    assert len(p[IPv6]) <= 1280  # RFC 4443 2.4 (c)


def test_ipv6_unresolved_neighbour_is_solicited(checksums_valid):
    n = Net(gateway(variant(with_dmz)), checksums_valid)
    out = n.one(from_a(IPv6(src=CLIENT6, dst=DMZ_HOST6) / UDP(sport=1, dport=2)))
    assert out.held
    [ask] = n.last_emitted
    assert ask.verdict() == (DMZ, None)
    p = ask.packet
    assert (p.src, p.dst) == (ROUTER_DMZ_MAC, "33:33:ff:00:00:09")
    assert (p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (ROUTER6_DMZ, "ff02::1:ff00:9", 255)
    assert p[ICMPv6ND_NS].tgt == DMZ_HOST6
    assert p[ICMPv6NDOptSrcLLAddr].lladdr == ROUTER_DMZ_MAC


def test_ipv6_routed_between_segments(checksums_valid):
    n = Net(gateway(variant(with_dmz)), checksums_valid)
    sent = from_a(IPv6(src=CLIENT6, dst=DMZ_HOST6) / UDP(sport=1, dport=2))
    assert n.one(sent).held
    advert = Frame(DMZ, Ether(src=DMZ_HOST_MAC, dst=ROUTER_DMZ_MAC)
                   / IPv6(src=DMZ_HOST6, dst=ROUTER6_DMZ, hlim=255)
                   / ICMPv6ND_NA(tgt=DMZ_HOST6, S=1, O=1)
                   / ICMPv6NDOptDstLLAddr(lladdr=DMZ_HOST_MAC))
    assert n.one(advert).verdict() == ("drop", "nd-consumed")
    [released] = n.last_emitted
    assert released.verdict() == (DMZ, None)
    assert (released.packet.src, released.packet.dst) == (ROUTER_DMZ_MAC, DMZ_HOST_MAC)
    assert released.packet[IPv6].hlim == 63
    out = n.one(sent)
    assert out.verdict() == (DMZ, None)
    assert out.packet[IPv6].hlim == 63


def test_ipv6_is_not_translated(checksums_valid):
    """NAT is IPv4 only: a's IPv6 to the outside is not given a public address (here a's
    egress rules, written for its IPv4 LAN, refuse it before NAT)."""
    n = Net(gateway(variant(with_dmz)), checksums_valid)
    out = n.one(from_a(IPv6(src=CLIENT6, dst="2001:db8:ff::1") / UDP(sport=1, dport=2)))
    assert out.verdict() == ("drop", "denied")
    assert [b for b in n.gateway.nat.live() if not b.static] == []


# --------------------------------------------------------------- differential
HOSTS = [("a", CLIENT, CLIENT_MAC), ("a", WEB, WEB_MAC), ("b", CLIENT, CLIENT_MAC),
         ("b", WEB, WEB_MAC)]
REMOTES = [OUTSIDE, "1.1.1.1", "9.9.9.9"]
PUBLIC = {"a": PUBLIC_A, "b": PUBLIC_B}


def inside(tenant: str, mac: str, l3: IP) -> Frame:
    return (from_a if tenant == "a" else from_b)(l3, src=mac)


@dataclass
class Flow:
    """One conversation the traffic generator keeps going: who opened it, its next step."""

    kind: str  # "udp", "tcp" (opened from inside), "dnat" (opened from outside), "echo"
    tenant: str
    host: str
    mac: str
    sport: int
    remote: str
    dport: int
    step: int = 0
    external: tuple[str, int] | None = None  # the opener's source as it left, once seen

    def ext(self) -> tuple[str, int]:
        return self.external or (PUBLIC[self.tenant], self.sport)

    def out(self, l4) -> Frame:
        return inside(self.tenant, self.mac, IP(src=self.host, dst=self.remote) / l4)

    def back(self, l4) -> Frame:
        addr, _ = self.ext()
        return from_outside(IP(src=self.remote, dst=addr) / l4)

    # A TCP connection's packets in turn ("<": from the side that did not open it).
    TCP_SCRIPT = ["S", "SA<", "A", "PA", "PA<", "PA", "A<", "FA", "FA<", "A", "PA"]

    def next(self, rng: np.random.Generator) -> Frame:
        """The flow's next packet (a finished flow repeats its last steps)."""
        step = self.step
        self.step += 1
        _, eport = self.ext()
        if self.kind == "udp":
            if step and rng.random() < 0.5:
                return self.back(UDP(sport=self.dport, dport=eport) / Raw(b"r%d" % step))
            return self.out(UDP(sport=self.sport, dport=self.dport) / Raw(b"q%d" % step))
        if self.kind == "echo":
            if step % 2:
                return self.back(ICMP(type=0, id=eport, seq=step // 2))
            return self.out(ICMP(type=8, id=self.sport, seq=step // 2))
        flags = self.TCP_SCRIPT[min(step, len(self.TCP_SCRIPT) - 1)]
        answer = flags.endswith("<")
        flags = flags.rstrip("<")
        payload = Raw(b"x" * (step + 1)) if "P" in flags else Raw(b"")
        if self.kind == "tcp":
            if answer:
                return self.back(TCP(sport=self.dport, dport=eport, flags=flags, seq=5000 + step,
                                     ack=1000 + step) / payload)
            return self.out(TCP(sport=self.sport, dport=self.dport, flags=flags, seq=1000 + step,
                                ack=5000 + step if step else 0) / payload)
        # dnat: the outside opens a's forwarded port; the web server answers.
        if answer:
            return from_a(IP(src=WEB, dst=self.remote)
                          / TCP(sport=80, dport=self.sport, flags=flags, seq=5000 + step,
                                ack=1000 + step) / payload, src=WEB_MAC)
        return from_outside(IP(src=self.remote, dst=PUBLIC_A)
                            / TCP(sport=self.sport, dport=DNAT_PORT, flags=flags,
                                  seq=1000 + step, ack=5000 + step if step else 0) / payload)


class Traffic:
    """Seeded random traffic over the example: flows of every kind opened, answered,
    repeated and closed, with strays (unsolicited, mid-stream, TTL 1, pings to the router,
    hairpins) between them."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.flows: list[Flow] = []

    def _new_flow(self) -> Flow:
        rng = self.rng
        kind = str(rng.choice(["udp", "udp", "tcp", "tcp", "dnat", "echo"]))
        tenant, host, mac = HOSTS[rng.integers(len(HOSTS))]
        if kind == "dnat":
            tenant, host, mac = "a", WEB, WEB_MAC
        sport = int(rng.choice([5000, 5001, 5002, 40000 + int(rng.integers(100))]))
        return Flow(kind, tenant, host, mac, sport, REMOTES[rng.integers(len(REMOTES))],
                    int(rng.choice([53, 80, 443])))

    def _stray(self) -> Frame:
        rng = self.rng
        tenant, host, mac = HOSTS[rng.integers(len(HOSTS))]
        sport = int(rng.integers(1024, 65535))
        choice = int(rng.integers(6))
        if choice == 0:  # unsolicited, to a public address
            return from_outside(udp(REMOTES[rng.integers(3)], PUBLIC[tenant], 53,
                                    int(rng.choice([5000, 5001, sport]))))
        if choice == 1:  # mid-stream, no connection
            return inside(tenant, mac, IP(src=host, dst=OUTSIDE)
                          / TCP(sport=sport, dport=443, flags="A", seq=1, ack=1))
        if choice == 2:
            return inside(tenant, mac, udp(host, OUTSIDE, sport, 53, ttl=1))
        if choice == 3:
            return inside(tenant, mac, IP(src=host, dst=ROUTER_IP) / ICMP(id=sport, seq=1))
        if choice == 4:  # a's hairpin, or b to a's forwarded port
            return inside(tenant, mac, syn(host, PUBLIC_A, 5000, DNAT_PORT))
        return inside(tenant, mac, udp(host, PUBLIC["b" if tenant == "a" else "a"], sport,
                                       5000))

    def batch(self, size: int) -> tuple[list[Frame], list[Flow | None]]:
        """``size`` packets, several of one connection at times (a close and the
        packets after it in one batch among them)."""
        frames: list[Frame] = []
        sources: list[Flow | None] = []
        for _ in range(size):
            r = self.rng.random()
            if r < 0.1:
                frames.append(self._stray())
                sources.append(None)
                continue
            if r < 0.3 or not self.flows:
                self.flows.append(self._new_flow())
            flow = self.flows[self.rng.integers(len(self.flows))]
            frames.append(flow.next(self.rng))
            sources.append(flow)
        return frames, sources

    @staticmethod
    def observe(frames: list[Frame], sources: list[Flow | None], outs: list[Out]) -> None:
        """Learn each opener's external endpoint from the first of its packets that left."""
        for frame, flow, out in zip(frames, sources, outs, strict=True):
            if flow is None or flow.external is not None or flow.kind == "dnat":
                continue
            if frame.port == ACCESS and out.port == UPLINK:
                ip = out.packet[IP]
                flow.external = (ip.src, ip[ICMP].id if ICMP in ip else ip.payload.sport)


def what_left(outs: list[Out]) -> list[tuple[int, str, bytes]]:
    return [(o.port, o.drop, o.raw) for o in outs]


@pytest.mark.parametrize("seed", [20240611, 7, 99, 16, 27])  # 16, 27: a close mid-batch
def test_cache_changes_nothing(checksums_valid, seed):
    """The same random traffic through a gateway with the flow cache and one without:
    packet for packet the same bytes out of the same ports, the same drops for the same
    reasons, the same packets sent of the gateway's own accord; and the cache served."""
    cached = net(checksums_valid, cache=True)
    uncached = net(checksums_valid, cache=False)
    traffic = Traffic(seed)
    total = 0
    seen: set[object] = set()  # what became of the packets: drop reasons, (port, VLAN)
    for k in range(12):
        frames, sources = traffic.batch(int(traffic.rng.integers(20, 60)))
        if k == 6:  # the hosts speak up again, between flows
            frames.insert(0, arp_from(VLAN_A, CLIENT, CLIENT_MAC))
            sources.insert(0, None)
        at = cached.now + int(traffic.rng.integers(0, 3)) * SECOND
        got = cached.send(frames, at=at)
        want = uncached.send(frames, at=at)
        for row, (g, w) in enumerate(zip(got, want, strict=True)):
            assert (g.port, g.drop, g.raw) == (w.port, w.drop, w.raw), (
                k, row, frames[row].packet.summary(), g, w)
        assert what_left(cached.last_emitted) == what_left(uncached.last_emitted)
        traffic.observe(frames, sources, want)
        total += len(frames)
        seen |= {w.drop or (w.port, w.vlan) for w in want if w.drop or w.port >= 0}
    assert total >= 300
    assert cached.gateway.datapath.counters["hits"] > 0
    assert uncached.gateway.datapath.counters["hits"] == 0
    # The traffic reached every kind of outcome it is made to cause.
    assert seen >= {(UPLINK, None), (ACCESS, VLAN_A), (ACCESS, VLAN_B), "denied", "invalid",
                    "no-binding"}
