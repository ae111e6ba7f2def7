"""The tenants' stateful firewall, through the whole gateway.

Over the two-tenant example (``gatewaynet.py``): a's egress allows its LAN
out; its ingress allows TCP 80 to the web server (reached by DNAT from
198.51.100.10:8080) and pings to the LAN, and denies the rest; b allows its
LAN out and denies everything in. Rules are changed live with
``Gateway.set_rules`` / ``set_container``; the flow cache must never let a
flow decided under the old rules through under the new ones.
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
    ROUTER_A,
    ROUTER_IP,
    UPLINK,
    UPLINK_IP,
    UPSTREAM_MAC,
    VLAN_A,
    VLAN_B,
    WEB,
    WEB_MAC,
    from_a,
    from_b,
    from_outside,
    net,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.packet import Raw

from portico.classify.rules import Rule

CACHE = pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])


def udp(src: str, dst: str, sport: int, dport: int) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport)


def tcp(src: str, dst: str, sport: int, dport: int, flags: str, seq: int = 0,
        ack: int = 0) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)


def rules(*dicts: dict[str, object]) -> list[Rule]:
    return [Rule.from_dict(d) for d in dicts]


ALLOW_LAN_OUT = {"id": "out", "priority": 10, "action": "allow", "src": "container:inside"}


@CACHE
def test_replies_to_allowed_connections_pass(checksums_valid, cache):
    """A whole TCP connection out of a, and one into a's web server by DNAT: every packet
    of both passes both ways, the replies on the strength of the connection alone."""
    n = net(checksums_valid, cache=cache)
    out_c = [from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "S", seq=1)),
             from_outside(tcp(OUTSIDE, PUBLIC_A, 443, 6000, "SA", seq=9, ack=2)),
             from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "A", seq=2, ack=10)),
             from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "PA", seq=2, ack=10) / Raw(b"hello")),
             from_outside(tcp(OUTSIDE, PUBLIC_A, 443, 6000, "PA", seq=10, ack=7) / Raw(b"hi")),
             from_outside(tcp(OUTSIDE, PUBLIC_A, 443, 6000, "PA", seq=12, ack=7) / Raw(b"hi")),
             from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "FA", seq=7, ack=14)),
             from_outside(tcp(OUTSIDE, PUBLIC_A, 443, 6000, "FA", seq=14, ack=8)),
             from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "A", seq=8, ack=15))]
    in_c = [from_outside(tcp(OUTSIDE, PUBLIC_A, 7000, DNAT_PORT, "S", seq=1)),
            from_a(tcp(WEB, OUTSIDE, 80, 7000, "SA", seq=9, ack=2), src=WEB_MAC),
            from_outside(tcp(OUTSIDE, PUBLIC_A, 7000, DNAT_PORT, "A", seq=2, ack=10)),
            from_outside(tcp(OUTSIDE, PUBLIC_A, 7000, DNAT_PORT, "PA", seq=2, ack=10)
                         / Raw(b"GET /")),
            from_a(tcp(WEB, OUTSIDE, 80, 7000, "PA", seq=10, ack=7) / Raw(b"200"), src=WEB_MAC),
            from_a(tcp(WEB, OUTSIDE, 80, 7000, "PA", seq=13, ack=7) / Raw(b"..."), src=WEB_MAC)]
    for frame in out_c:
        out = n.one(frame)
        inbound = frame.port == UPLINK
        assert out.verdict() == ((ACCESS, VLAN_A) if inbound else (UPLINK, None)), frame
        ip = out.packet[IP]
        assert (ip.src, ip.dst) == ((OUTSIDE, CLIENT) if inbound else (PUBLIC_A, OUTSIDE))
    for frame in in_c:
        out = n.one(frame)
        inbound = frame.port == UPLINK
        assert out.verdict() == ((ACCESS, VLAN_A) if inbound else (UPLINK, None)), frame
        ip, seg = out.packet[IP], out.packet[TCP]
        assert (ip.src, seg.sport, ip.dst, seg.dport) == (
            (OUTSIDE, 7000, WEB, 80) if inbound else (PUBLIC_A, DNAT_PORT, OUTSIDE, 7000))
    if cache:
        assert n.gateway.datapath.counters["hits"] > 0


@CACHE
def test_unsolicited_inbound_is_dropped(checksums_valid, cache):
    """Only replies come in, except through a forwarded port: a live binding does not
    open the tenant to whoever finds it (RFC 4787 REQ-8 address-and-port-dependent
    filtering), and b, which forwards nothing, takes nothing unsolicited."""
    n = net(checksums_valid, cache=cache)
    n.send([from_a(udp(CLIENT, OUTSIDE, 5000, 53)), from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "S")),
            from_b(udp(CLIENT, OUTSIDE, 5000, 53))])
    frames = [
        from_outside(udp("9.9.9.9", PUBLIC_A, 53, 5000)),  # another remote
        from_outside(udp(OUTSIDE, PUBLIC_A, 54, 5000)),  # the remote, another port
        from_outside(tcp("9.9.9.9", PUBLIC_A, 443, 6000, "S")),
        from_outside(tcp("9.9.9.9", PUBLIC_A, 443, 6000, "SA")),
        from_outside(udp("9.9.9.9", PUBLIC_B, 53, 5000)),
        from_outside(IP(src=OUTSIDE, dst=PUBLIC_B) / ICMP(type=8, id=5000)),  # not a reply
        from_outside(tcp(OUTSIDE, PUBLIC_A, 7000, DNAT_PORT, "S")),  # forwarded: in
    ]
    for _ in range(2):
        outs = n.send(frames)
        assert [o.verdict() for o in outs[:-1]] == [
            ("drop", "denied"), ("drop", "denied"), ("drop", "denied"), ("drop", "invalid"),
            ("drop", "denied"), ("drop", "untranslatable")]
        assert outs[-1].verdict() == (ACCESS, VLAN_A)
        assert (outs[-1].packet[IP].dst, outs[-1].packet[TCP].dport) == (WEB, 80)
    # The real replies still come in.
    replies = n.send([from_outside(udp(OUTSIDE, PUBLIC_A, 53, 5000)),
                      from_outside(udp(OUTSIDE, PUBLIC_B, 53, 5000))])
    assert [r.verdict() for r in replies] == [(ACCESS, VLAN_A), (ACCESS, VLAN_B)]


@CACHE
def test_mid_stream_ack_without_connection_is_invalid(checksums_valid, cache):
    n = net(checksums_valid, cache=cache)
    frames = [from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "A", seq=5, ack=5)),
              from_a(tcp(CLIENT, OUTSIDE, 6001, 443, "PA", seq=5, ack=5) / Raw(b"data")),
              from_outside(tcp(OUTSIDE, PUBLIC_A, 7000, DNAT_PORT, "A", seq=5, ack=5))]
    for _ in range(3):
        assert [o.verdict() for o in n.send(frames)] == [("drop", "invalid")] * 3
    assert n.gateway.conns.dump() == []


def test_an_invalid_packet_takes_no_binding(checksums_valid):
    n = net(checksums_valid)
    # Only a SYN may make a TCP binding (nat-out); conntrack names the drop.
    out = n.one(from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "A", seq=5, ack=5)))
    assert out.verdict() == ("drop", "invalid")
    assert [b for b in n.gateway.nat.live() if not b.static] == []


@CACHE
def test_deny_rule(checksums_valid, cache):
    n = net(checksums_valid, cache=cache)
    n.gateway.set_rules("a", "egress", rules(
        {"id": "no-quad9", "priority": 5, "action": "deny", "dst": "9.9.9.0/24"},
        ALLOW_LAN_OUT))
    for _ in range(2):
        outs = n.send([from_a(udp(CLIENT, "9.9.9.9", 5000, 53)),
                       from_a(tcp(CLIENT, "9.9.9.9", 6000, 443, "S")),
                       from_a(udp(CLIENT, OUTSIDE, 5000, 53)),
                       from_b(udp(CLIENT, "9.9.9.9", 5000, 53))])  # b's rules are its own
        assert [o.verdict() for o in outs] == [("drop", "denied"), ("drop", "denied"),
                                               (UPLINK, None), (UPLINK, None)]
    # The refused flows took no binding: only 10.0.0.7:5000's, for 8.8.8.8.
    assert [(b.tenant, b.protocol, b.internal_port) for b in n.gateway.nat.live()
            if not b.static] == [(1, 17, 5000), (2, 17, 5000)]


@CACHE
def test_reject_rule_answers_admin_prohibited(checksums_valid, cache):
    n = net(checksums_valid, cache=cache)
    n.gateway.set_rules("a", "egress", rules(
        {"id": "no-smtp", "priority": 5, "action": "reject", "protocol": "tcp", "dport": 25},
        ALLOW_LAN_OUT))
    for _ in range(2):  # answered every time, never from a cached entry
        out = n.one(from_a(tcp(CLIENT, OUTSIDE, 6000, 25, "S", seq=77)))
        assert out.verdict() == (ACCESS, VLAN_A)
        p = out.packet
        assert (p.src, p.dst) == (ROUTER_A, CLIENT_MAC)
        assert (p[IP].src, p[IP].dst) == (ROUTER_IP, CLIENT)
        assert (p[ICMP].type, p[ICMP].code) == (3, 13)
        assert (p[IPerror].src, p[IPerror].dst) == (CLIENT, OUTSIDE)
        assert (p[TCPerror].sport, p[TCPerror].dport, p[TCPerror].seq) == (6000, 25, 77)
    # Inbound: a rule rejecting a source answers it from the uplink address.
    n.gateway.set_rules("a", "ingress", rules(
        {"id": "no-9", "priority": 1, "action": "reject", "src": "9.9.9.9"},
        {"id": "web-in", "priority": 10, "action": "allow", "dst": WEB, "protocol": "tcp",
         "dport": 80}))
    out = n.one(from_outside(tcp("9.9.9.9", PUBLIC_A, 7000, DNAT_PORT, "S")))
    assert out.verdict() == (UPLINK, None)
    p = out.packet
    assert p.dst == UPSTREAM_MAC
    assert (p[IP].src, p[IP].dst, p[ICMP].type, p[ICMP].code) == (UPLINK_IP, "9.9.9.9", 3, 13)
    assert n.one(from_outside(tcp(OUTSIDE, PUBLIC_A, 7000, DNAT_PORT, "S"))).verdict() == (
        ACCESS, VLAN_A)


def test_rule_change_reaches_cached_flows_of_that_tenant_only(checksums_valid):
    """a's and b's flows are cached as allowed; a's egress rules change to refuse a's flow:
    its very next packet is dropped, while b's flow goes on from the cache."""
    n = net(checksums_valid, cache=True)
    fa = from_a(udp(CLIENT, OUTSIDE, 5000, 53))
    fb = from_b(udp(CLIENT, OUTSIDE, 5000, 53))
    for _ in range(3):
        assert [o.verdict() for o in n.send([fa, fb])] == [(UPLINK, None)] * 2
    counters = n.gateway.datapath.counters
    assert counters["hits"] >= 4
    n.gateway.set_rules("a", "egress", rules(
        {"id": "no-dns", "priority": 5, "action": "deny", "protocol": "udp", "dport": 53},
        ALLOW_LAN_OUT))
    assert n.one(fa).verdict() == ("drop", "denied")
    hits = counters["hits"]
    assert n.one(fb).verdict() == (UPLINK, None)
    assert counters["hits"] == hits + 1  # b's entry was left alone
    assert n.one(fa).verdict() == ("drop", "denied")
    # Allowed again: the flow passes again at once.
    n.gateway.set_rules("a", "egress", rules(ALLOW_LAN_OUT))
    assert n.one(fa).verdict() == (UPLINK, None)


def test_container_change_reaches_cached_flows(checksums_valid):
    """a's egress rule allows ``container:inside`` (which includes ``lan``): taking the
    client's address out of ``lan`` refuses its next packet, putting it back allows."""
    n = net(checksums_valid, cache=True)
    fa = from_a(udp(CLIENT, OUTSIDE, 5000, 53))
    web = from_a(udp(WEB, OUTSIDE, 5000, 53), src=WEB_MAC)
    for _ in range(2):
        assert [o.verdict() for o in n.send([fa, web])] == [(UPLINK, None)] * 2
    n.gateway.set_container("a", "lan", ["10.0.0.0/30", "10.0.0.4/31"])  # .0-.5, not .7
    assert [o.verdict() for o in n.send([fa, web])] == [("drop", "denied"), (UPLINK, None)]
    n.gateway.set_container("a", "lan", ["10.0.0.0/24"])
    assert [o.verdict() for o in n.send([fa, web])] == [(UPLINK, None)] * 2
    # The including container's own prefixes change; what it includes stays.
    n.gateway.set_container("a", "inside", ["192.168.0.0/16"])
    assert [o.verdict() for o in n.send([fa, web])] == [(UPLINK, None)] * 2
    n.gateway.set_container("a", "lan", [])
    assert [o.verdict() for o in n.send([fa, web])] == [("drop", "denied")] * 2


@CACHE
def test_ping_in_is_allowed_by_rule_only_to_forwarded_hosts(checksums_valid, cache):
    """a's ingress allows pings to its LAN, but no ping reaches the LAN unsolicited:
    NAT maps only echo replies inward. A ping out gets its reply."""
    n = net(checksums_valid, cache=cache)
    assert n.one(from_outside(IP(src=OUTSIDE, dst=PUBLIC_A) / ICMP(id=1))).verdict() == (
        "drop", "untranslatable")
    out = n.one(from_a(IP(src=CLIENT, dst=OUTSIDE) / ICMP(id=77, seq=1)))
    assert out.verdict() == (UPLINK, None)
    ident = out.packet[ICMP].id
    reply = n.one(from_outside(IP(src=OUTSIDE, dst=PUBLIC_A) / ICMP(type=0, id=ident, seq=1)))
    assert reply.verdict() == (ACCESS, VLAN_A)
    assert (reply.packet[IP].dst, reply.packet[ICMP].id) == (CLIENT, 77)
    # b's host pinging out works the same, from b's address.
    out = n.one(from_b(IP(src=CLIENT, dst=OUTSIDE) / ICMP(id=77, seq=1)))
    assert (out.verdict(), out.packet[IP].src) == ((UPLINK, None), PUBLIC_B)


@CACHE
def test_a_peer_gets_in_once_the_host_has_sent_to_it(checksums_valid, cache):
    """Hole punching (RFC 5128): the peer's first packets reach a's binding before a's
    host has sent to the peer and are refused; once it has, they are replies."""
    n = net(checksums_valid, cache=cache)
    n.one(from_a(udp(CLIENT, OUTSIDE, 5000, 53)))  # the binding, made talking to another
    peer = from_outside(udp("9.9.9.9", PUBLIC_A, 4000, 5000))
    for _ in range(2):
        assert n.one(peer).verdict() == ("drop", "denied")
    out = n.one(from_a(udp(CLIENT, "9.9.9.9", 5000, 4000)))
    assert (out.verdict(), out.packet[IP].src, out.packet[UDP].sport) == (
        (UPLINK, None), PUBLIC_A, 5000)
    for _ in range(2):
        out = n.one(peer)
        assert out.verdict() == (ACCESS, VLAN_A)
        assert (out.packet[IP].dst, out.packet[UDP].dport) == (CLIENT, 5000)


def handshake(n) -> None:
    """a's client opens TCP 6000 -> 8.8.8.8:443 and sends data both ways (cached, when on)."""
    for frame in [from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "S", seq=1)),
                  from_outside(tcp(OUTSIDE, PUBLIC_A, 443, 6000, "SA", seq=9, ack=2)),
                  from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "A", seq=2, ack=10)),
                  from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "PA", seq=2, ack=10) / Raw(b"x")),
                  from_outside(tcp(OUTSIDE, PUBLIC_A, 443, 6000, "PA", seq=10, ack=3)
                               / Raw(b"y")),
                  from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "PA", seq=3, ack=11) / Raw(b"x")),
                  from_outside(tcp(OUTSIDE, PUBLIC_A, 443, 6000, "PA", seq=11, ack=4)
                               / Raw(b"y"))]:
        assert n.one(frame).verdict() in ((UPLINK, None), (ACCESS, VLAN_A)), frame


@CACHE
def test_a_syn_decides_nothing_for_the_rest_of_the_handshake(checksums_valid, cache):
    """The opener's ACK before the peer's SYN+ACK is invalid, even though the SYN that
    opened the flow passed (and, with the cache, made an entry for it)."""
    n = net(checksums_valid, cache=cache)
    assert n.one(from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "S", seq=1))).verdict() == (UPLINK, None)
    early = from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "PA", seq=2, ack=10) / Raw(b"x"))
    assert n.one(early).verdict() == ("drop", "invalid")
    assert n.one(from_outside(tcp(OUTSIDE, PUBLIC_A, 443, 6000, "SA", seq=9, ack=2))
                 ).verdict() == (ACCESS, VLAN_A)
    for _ in range(3):  # now established: in order, and from the cache when on
        assert n.one(early).verdict() == (UPLINK, None)
    if cache:
        assert n.gateway.datapath.counters["hits"] >= 2


@CACHE
def test_after_a_reset_the_connection_takes_nothing_more(checksums_valid, cache):
    n = net(checksums_valid, cache=cache)
    handshake(n)
    rst = from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "R", seq=4))
    assert n.one(rst).verdict() == (UPLINK, None)
    late = [from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "PA", seq=4, ack=12) / Raw(b"x")),
            from_outside(tcp(OUTSIDE, PUBLIC_A, 443, 6000, "PA", seq=12, ack=4) / Raw(b"y"))]
    for _ in range(2):
        assert [o.verdict() for o in n.send(late)] == [("drop", "invalid")] * 2


@CACHE
def test_a_reset_reaches_packets_of_its_own_batch(checksums_valid, cache):
    n = net(checksums_valid, cache=cache)
    handshake(n)
    outs = n.send([from_a(tcp(CLIENT, OUTSIDE, 6000, 443, "R", seq=4)),
                   from_outside(tcp(OUTSIDE, PUBLIC_A, 443, 6000, "PA", seq=12, ack=4)
                                / Raw(b"y"))])
    assert [o.verdict() for o in outs] == [(UPLINK, None), ("drop", "invalid")]
