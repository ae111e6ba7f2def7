"""The gateway's NAT44 as an application sees it (RFC 4787, RFC 5382, RFC 5508, RFC 7857).

Over the two-tenant example (``gatewaynet.py``): a's hosts 10.0.0.5 (the web
server, forwarded from 198.51.100.10:8080) and 10.0.0.7 leave as
198.51.100.10, b's as 198.51.100.20. What each test asserts is read from the
packets as they leave, decoded by Scapy.
"""

from __future__ import annotations

import pytest
from gatewaynet import (
    ACCESS,
    CLIENT,
    CLIENT_MAC,
    DNAT_PORT,
    OUTSIDE,
    PUBLIC_A,
    PUBLIC_B,
    SECOND,
    UPLINK,
    VLAN_A,
    VLAN_B,
    WEB,
    WEB_MAC,
    Net,
    arp_from,
    from_a,
    from_b,
    from_outside,
    net,
    variant,
    with_tiny_pool,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

CACHE = pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
OTHER = "1.1.1.1"  # a second destination outside


def udp(src: str, dst: str, sport: int, dport: int) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport)


def tcp(src: str, dst: str, sport: int, dport: int, flags: str, seq: int = 0,
        ack: int = 0) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)


def external(out) -> tuple[str, int]:
    """The source endpoint a packet left with."""
    assert out.verdict() == (UPLINK, None), out
    return out.packet[IP].src, out.packet[IP].payload.sport


@CACHE
def test_endpoint_independent_mapping_with_port_preservation(checksums_valid, cache):
    """One internal endpoint, two destinations, several packets: one external endpoint,
    the internal port kept (RFC 4787 REQ-1, REQ-3); both destinations' replies come in."""
    n = net(checksums_valid, cache=cache)
    for _ in range(2):
        outs = n.send([from_a(udp(CLIENT, OUTSIDE, 5000, 53)),
                       from_a(udp(CLIENT, OTHER, 5000, 53))])
        assert [external(o) for o in outs] == [(PUBLIC_A, 5000)] * 2
        assert [o.packet[IP].dst for o in outs] == [OUTSIDE, OTHER]
    outs = n.send([from_a(tcp(CLIENT, OUTSIDE, 5000, 443, "S")),
                   from_a(tcp(CLIENT, OTHER, 5000, 443, "S"))])
    assert [external(o) for o in outs] == [(PUBLIC_A, 5000)] * 2  # TCP: RFC 5382 REQ-1
    replies = n.send([from_outside(udp(OUTSIDE, PUBLIC_A, 53, 5000)),
                      from_outside(udp(OTHER, PUBLIC_A, 53, 5000))])
    for reply, remote in zip(replies, (OUTSIDE, OTHER), strict=True):
        assert reply.verdict() == (ACCESS, VLAN_A)
        p = reply.packet
        assert (p.dst, p[IP].src, p[IP].dst, p[UDP].sport, p[UDP].dport) == (
            CLIENT_MAC, remote, CLIENT, 53, 5000)
    udp_bindings = [b for b in n.gateway.nat.live() if b.protocol == 17]
    assert len(udp_bindings) == 1


@CACHE
def test_two_hosts_same_source_port_get_distinct_external_ports(checksums_valid, cache):
    n = net(checksums_valid, cache=cache)
    outs = n.send([from_a(udp(CLIENT, OUTSIDE, 5000, 53)),
                   from_a(udp(WEB, OUTSIDE, 5000, 53), src=WEB_MAC),
                   from_b(udp(CLIENT, OUTSIDE, 5000, 53))])
    (a1, p1), (a2, p2), (b1, p3) = (external(o) for o in outs)
    assert (a1, a2, b1) == (PUBLIC_A, PUBLIC_A, PUBLIC_B)  # paired: one address per host
    assert p1 == 5000 and p2 != 5000  # the first keeps its port, the second cannot
    assert 1024 <= p2 <= 65535
    assert p3 == 5000  # b's pool is its own: its host keeps the port too
    # Each external port leads back to its own host.
    replies = n.send([from_outside(udp(OUTSIDE, PUBLIC_A, 53, p2)),
                      from_outside(udp(OUTSIDE, PUBLIC_A, 53, 5000)),
                      from_outside(udp(OUTSIDE, PUBLIC_B, 53, 5000))])
    assert [(r.verdict(), r.packet[IP].dst, r.packet.dst, r.packet[UDP].dport)
            for r in replies] == [((ACCESS, VLAN_A), WEB, WEB_MAC, 5000),
                                  ((ACCESS, VLAN_A), CLIENT, CLIENT_MAC, 5000),
                                  ((ACCESS, VLAN_B), CLIENT, CLIENT_MAC, 5000)]


@CACHE
def test_hairpinning_to_the_tenants_own_dnat_address(checksums_valid, cache):
    """a's client opens 198.51.100.10:8080, a's own forwarded port: the server sees the
    client's external endpoint (RFC 4787 REQ-9, RFC 5382 REQ-8), the same one the
    client has towards the outside, and the handshake completes both ways."""
    n = net(checksums_valid, cache=cache)
    to_outside = external(n.one(from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "S", seq=1))))
    out = n.one(from_a(tcp(CLIENT, PUBLIC_A, 6000, DNAT_PORT, "S", seq=100)))
    assert out.verdict() == (ACCESS, VLAN_A)
    p = out.packet
    assert (p.dst, p[IP].dst, p[TCP].dport) == (WEB_MAC, WEB, 80)
    assert (p[IP].src, p[TCP].sport) == to_outside == (PUBLIC_A, 6000)
    # The server answers the address it saw; the client sees the public service.
    out = n.one(from_a(tcp(WEB, PUBLIC_A, 80, 6000, "SA", seq=500, ack=101), src=WEB_MAC))
    assert out.verdict() == (ACCESS, VLAN_A)
    p = out.packet
    assert (p.dst, p[IP].dst, p[TCP].dport) == (CLIENT_MAC, CLIENT, 6000)
    assert (p[IP].src, p[TCP].sport, p[TCP].flags) == (PUBLIC_A, DNAT_PORT, "SA")
    for _ in range(3):  # the rest of the connection, from the cache when on
        out = n.one(from_a(tcp(CLIENT, PUBLIC_A, 6000, DNAT_PORT, "A", seq=101, ack=501)
                           / Raw(b"GET /")))
        assert out.verdict() == (ACCESS, VLAN_A)
        assert (out.packet[IP].src, out.packet[IP].dst, bytes(out.packet[TCP].payload)) == (
            PUBLIC_A, WEB, b"GET /")


@CACHE
def test_icmp_echo_identifier_translated_both_ways(checksums_valid, cache):
    """Two hosts ping with the same identifier: the identifiers are mapped like ports
    (RFC 5508 3.1), and each reply finds its host with the identifier it sent."""
    n = net(checksums_valid, cache=cache)
    for seq in (1, 2):
        outs = n.send([from_a(IP(src=CLIENT, dst=OUTSIDE) / ICMP(id=0x1234, seq=seq)
                              / Raw(b"abc")),
                       from_a(IP(src=WEB, dst=OUTSIDE) / ICMP(id=0x1234, seq=seq)
                              / Raw(b"def"), src=WEB_MAC)])
        assert [o.verdict() for o in outs] == [(UPLINK, None)] * 2
        assert [o.packet[IP].src for o in outs] == [PUBLIC_A] * 2
        ids = [o.packet[ICMP].id for o in outs]
        assert ids[0] == 0x1234 and ids[1] != 0x1234  # preserved where possible
        replies = n.send([from_outside(IP(src=OUTSIDE, dst=PUBLIC_A)
                                       / ICMP(type=0, id=ident, seq=seq) / Raw(data))
                          for ident, data in zip(reversed(ids), (b"def", b"abc"), strict=True)])
        assert [(r.verdict(), r.packet[IP].dst, r.packet[ICMP].id, r.packet[ICMP].seq,
                 bytes(r.packet[ICMP].payload)) for r in replies] == [
            ((ACCESS, VLAN_A), WEB, 0x1234, seq, b"def"),
            ((ACCESS, VLAN_A), CLIENT, 0x1234, seq, b"abc")]
    # An echo reply with an identifier nobody uses has no binding.
    stray = n.one(from_outside(IP(src=OUTSIDE, dst=PUBLIC_A) / ICMP(type=0, id=7, seq=1)))
    assert stray.verdict() == ("drop", "no-binding")


@CACHE
def test_inbound_to_an_unknown_public_port_has_no_binding(checksums_valid, cache):
    n = net(checksums_valid, cache=cache)
    frames = [from_outside(udp(OUTSIDE, PUBLIC_A, 53, 9999)),
              from_outside(tcp(OUTSIDE, PUBLIC_A, 1234, 9999, "S")),
              from_outside(tcp(OUTSIDE, PUBLIC_A, 1234, DNAT_PORT + 1, "S")),
              from_outside(udp(OUTSIDE, PUBLIC_A, 53, DNAT_PORT)),  # forwarded for TCP only
              from_outside(udp(OUTSIDE, PUBLIC_B, 53, 9999))]
    assert [o.verdict() for o in n.send(frames)] == [("drop", "no-binding")] * 5
    assert n.gateway.nat.counters()["no_binding"] == 5
    # Again: the same (from the cache's remembered drops, when on).
    assert [o.verdict() for o in n.send(frames)] == [("drop", "no-binding")] * 5


@CACHE
def test_port_exhaustion(checksums_valid, cache):
    """a's pool has two ports: the third binding, and any binding of another host (it
    must keep the same address, RFC 4787 REQ-2), is refused ``exhausted``; TCP and
    existing bindings are unaffected."""
    n = net(checksums_valid, variant(with_tiny_pool), cache=cache)
    first = [from_a(udp(CLIENT, OUTSIDE, 5000 + k, 53)) for k in range(3)]
    web = from_a(udp(WEB, OUTSIDE, 5000, 53), src=WEB_MAC)
    outs = n.send([*first, web])
    assert [o.verdict() for o in outs] == [(UPLINK, None)] * 2 + [("drop", "exhausted")] * 2
    assert sorted(external(o) for o in outs[:2]) == [(PUBLIC_A, 1024), (PUBLIC_A, 1025)]
    assert n.gateway.nat.counters()["exhausted"] == 2
    again = n.send([*first, web])  # the bound flows go on; the others are still refused
    assert [o.verdict() for o in again] == [o.verdict() for o in outs]
    assert [external(o) for o in again[:2]] == [external(o) for o in outs[:2]]
    syn = n.one(from_a(tcp(CLIENT, OUTSIDE, 5000, 80, "S")))
    assert external(syn)[1] in (1024, 1025)  # TCP ports are counted apart
    b = n.one(from_b(udp(CLIENT, OUTSIDE, 5002, 53)))  # b's pool is its own
    assert external(b) == (PUBLIC_B, 5002)


@CACHE
def test_udp_binding_times_out(checksums_valid, cache):
    """A UDP binding lives 5 minutes from its last use (RFC 4787 REQ-5): a reply within
    them comes in, one after them finds no binding."""
    n = net(checksums_valid, cache=cache)
    opened = n.now
    assert external(n.one(from_a(udp(CLIENT, OUTSIDE, 5000, 53)), at=opened)) == (PUBLIC_A, 5000)
    reply = from_outside(udp(OUTSIDE, PUBLIC_A, 53, 5000))
    assert n.one(reply, at=opened + 290 * SECOND).verdict() == (ACCESS, VLAN_A)
    n.announce((VLAN_A, CLIENT, CLIENT_MAC))  # the client is still there (its ARP)
    assert n.one(reply, at=opened + (290 + 301) * SECOND).verdict() == ("drop", "no-binding")
    assert [b for b in n.gateway.nat.live() if b.protocol == 17] == []


@CACHE
def test_a_flow_the_cache_forwards_keeps_its_binding(checksums_valid, cache):
    """Outbound packets every 30 s for 8 minutes (from the cache, when on): the binding
    never idles out, and the reply at the end comes in."""
    n = net(checksums_valid, cache=cache)
    start = n.now
    for k in range(17):
        at = start + k * 30 * SECOND
        outs = n.send([from_a(udp(CLIENT, OUTSIDE, 5000, 53)), arp_from(VLAN_A, CLIENT,
                                                                         CLIENT_MAC)], at=at)
        assert external(outs[0]) == (PUBLIC_A, 5000)
    reply = n.one(from_outside(udp(OUTSIDE, PUBLIC_A, 53, 5000)), at=at + 10 * SECOND)
    assert reply.verdict() == (ACCESS, VLAN_A)
    if cache:
        assert n.gateway.datapath.counters["hits"] >= 16


def test_b_cannot_use_as_binding_what_a_bound(checksums_valid):
    """The tenants' bindings are apart: b's host with a's internal endpoint gets b's own."""
    n: Net = net(checksums_valid)
    a = n.one(from_a(udp(CLIENT, OUTSIDE, 5000, 53)))
    b = n.one(from_b(udp(CLIENT, OUTSIDE, 5000, 53)))
    assert (external(a), external(b)) == ((PUBLIC_A, 5000), (PUBLIC_B, 5000))
    assert sorted((x.tenant, x.external_port) for x in n.gateway.nat.live() if not x.static) == [
        (1, 5000), (2, 5000)]


@CACHE
def test_b_reaches_a_published_server_as_the_outside_does(checksums_valid, cache):
    """b's client talks to a's forwarded port: a's server sees b's public address, b's
    client sees a's public service, and the whole connection passes both tenants'
    firewalls (each side's packets are the replies of the other's)."""
    n = net(checksums_valid, cache=cache)
    steps = [(from_b(tcp(CLIENT, PUBLIC_A, 6000, DNAT_PORT, "S", seq=1)), VLAN_A),
             (from_a(tcp(WEB, PUBLIC_B, 80, 6000, "SA", seq=9, ack=2), src=WEB_MAC), VLAN_B),
             (from_b(tcp(CLIENT, PUBLIC_A, 6000, DNAT_PORT, "A", seq=2, ack=10)), VLAN_A),
             (from_b(tcp(CLIENT, PUBLIC_A, 6000, DNAT_PORT, "PA", seq=2, ack=10)
                     / Raw(b"GET /")), VLAN_A),
             (from_a(tcp(WEB, PUBLIC_B, 80, 6000, "PA", seq=10, ack=7) / Raw(b"200"),
                     src=WEB_MAC), VLAN_B),
             (from_b(tcp(CLIENT, PUBLIC_A, 6000, DNAT_PORT, "A", seq=7, ack=13)), VLAN_A)]
    for frame, vlan in steps:
        out = n.one(frame)
        assert out.verdict() == (ACCESS, vlan), frame.packet.summary()
        ip, seg = out.packet[IP], out.packet[TCP]
        if vlan == VLAN_A:  # at a's server
            assert (ip.src, seg.sport, ip.dst, seg.dport) == (PUBLIC_B, 6000, WEB, 80)
            assert out.packet.dst == WEB_MAC
        else:  # at b's client
            assert (ip.src, seg.sport, ip.dst, seg.dport) == (PUBLIC_A, DNAT_PORT, CLIENT, 6000)
            assert out.packet.dst == CLIENT_MAC


@CACHE
def test_a_packet_before_the_binding_does_not_shut_it_out(checksums_valid, cache):
    """A remote's packet to a public port nobody holds yet finds no binding; once the
    host opens the port (to that remote), the remote's packets are its replies."""
    n = net(checksums_valid, cache=cache)
    early = from_outside(udp(OUTSIDE, PUBLIC_A, 53, 5000))
    for _ in range(2):
        assert n.one(early).verdict() == ("drop", "no-binding")
    assert external(n.one(from_a(udp(CLIENT, OUTSIDE, 5000, 53)))) == (PUBLIC_A, 5000)
    for _ in range(2):
        assert n.one(early).verdict() == (ACCESS, VLAN_A)
