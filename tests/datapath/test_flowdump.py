"""The flow dump as an operator reads it: ``dpctl/dump-flows`` for the gateway's flow cache.

Traffic is the two-tenant example's (``gatewaynet.py``), built by Scapy and run
through a real Gateway; the dump must show each cached flow as it arrived
(tenant, port, VLAN, addresses, ports) and what the cache decided for it
(the translated source, the port it leaves by, or why it is dropped), and its
filters must pick exactly the flows they name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from gatewaynet import (
    ACCESS,
    CLIENT,
    CLIENT6,
    DMZ,
    DMZ_HOST6,
    DMZ_HOST_MAC,
    OUTSIDE,
    PUBLIC_A,
    PUBLIC_B,
    ROUTER6_DMZ,
    ROUTER_A,
    ROUTER_B,
    ROUTER_DMZ_MAC,
    SECOND,
    UPLINK,
    UPLINK_MAC,
    UPSTREAM_MAC,
    VLAN_A,
    VLAN_B,
    WEB,
    WEB_MAC,
    Frame,
    Net,
    from_a,
    from_b,
    from_outside,
    gateway,
    net,
    variant,
    with_dmz,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from portico.batch import Batch
from portico.datapath.flowcache import KEY_WORDS
from portico.datapath.flowdump import Flow, decode_keys, dump_flows, format_flows

Checker = Callable[[Packet], None]
STRAY, STRAY_MAC = "10.9.9.9", "02:00:00:00:00:99"


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"q") -> Packet:
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)


def only(flows: list[Flow]) -> Flow:
    assert len(flows) == 1, format_flows(flows)
    return flows[0]


@pytest.fixture
def scene(checksums_valid: Checker) -> tuple[Net, dict[str, Frame]]:
    """Both tenants' client 10.0.0.7 asks 8.8.8.8:53 three times; a's answers come back
    twice; a's client pings 8.8.8.8; an Internet client opens a connection to a's web
    server through the port forward; a stray host on VLAN 30, which no tenant has, sends
    twice."""
    n = net(checksums_valid)
    frames = {
        "a-dns": from_a(udp(CLIENT, OUTSIDE, 5000, 53, b"query-a")),
        "b-dns": from_b(udp(CLIENT, OUTSIDE, 5000, 53, b"query-b!")),
        "a-answer": from_outside(udp(OUTSIDE, PUBLIC_A, 53, 5000, b"answer")),
        "a-ping": from_a(IP(src=CLIENT, dst=OUTSIDE) / ICMP(type=8, id=777, seq=1)),
        "stray": Frame(ACCESS, Ether(src=STRAY_MAC, dst=ROUTER_A) / Dot1Q(vlan=30)
                       / udp(STRAY, OUTSIDE, 5001, 53)),
        "web-syn": from_outside(IP(src="100.64.0.50", dst=PUBLIC_A)
                                / TCP(sport=40000, dport=8080, flags="S", seq=1)),
        "web-ack": from_outside(IP(src="100.64.0.50", dst=PUBLIC_A)
                                / TCP(sport=40000, dport=8080, flags="A", seq=2, ack=10)),
        "web-synack": from_a(IP(src=WEB, dst="100.64.0.50")
                             / TCP(sport=80, dport=40000, flags="SA", seq=9, ack=2),
                             src=WEB_MAC),
    }
    n.send([frames[k] for k in ("a-dns", "b-dns", "a-ping", "stray", "web-syn")])
    n.send([frames[k] for k in ("a-answer", "a-dns", "b-dns", "stray", "web-synack")])
    outs = n.send([frames[k] for k in ("a-answer", "a-dns", "b-dns", "web-ack")])
    assert [o.verdict() for o in outs] == [(ACCESS, VLAN_A), (UPLINK, None), (UPLINK, None),
                                           (ACCESS, VLAN_A)]
    return n, frames


def test_an_outbound_flow_shows_its_translated_source_and_its_port(scene) -> None:
    n, frames = scene
    flow = only(dump_flows(n.gateway, tenant="a", protocol="udp", dst=OUTSIDE))
    wire = len(bytes(frames["a-dns"].packet))
    assert (flow.tenant, flow.tenant_id, flow.in_port, flow.in_port_id, flow.vlan) == (
        "a", 1, "access", ACCESS, VLAN_A)
    assert (flow.src, flow.sport, flow.dst, flow.dport, flow.protocol, flow.ip_version) == (
        CLIENT, 5000, OUTSIDE, 53, 17, 4)
    assert (flow.eth_dst, flow.icmp_type, flow.tunnel_id) == (ROUTER_A, None, 0)
    assert (flow.packets, flow.bytes) == (3, 3 * wire)
    assert (flow.out_port, flow.drop, flow.current) == ("uplink", None, True)
    assert flow.generation == n.gateway.cache.generation
    assert flow.actions == (
        f"pop_vlan,set(ipv4(src={PUBLIC_A})),set(udp(src=5000)),dec_ttl,"
        f"set(eth(src={UPLINK_MAC},dst={UPSTREAM_MAC})),output:uplink")
    # Tenant b's flow has the same addresses and ports; its own VLAN and public address.
    b = only(dump_flows(n.gateway, tenant="b"))
    assert (b.vlan, b.eth_dst, b.src, b.dst) == (VLAN_B, ROUTER_B, CLIENT, OUTSIDE)
    assert f"set(ipv4(src={PUBLIC_B}))" in b.actions and b.actions.endswith("output:uplink")
    # One line, as dpctl/dump-flows: the flow was last seen one second before the clock.
    last = n.now - SECOND  # the clock moved one second past the last batch
    line = format_flows(dump_flows(n.gateway, tenant="a", protocol=17, now=last + SECOND // 5))
    assert line == (
        f"tenant=a,in_port=access,vlan=10,eth_dst={ROUTER_A},udp,{CLIENT}:5000>{OUTSIDE}:53"
        f" packets:3 bytes:{3 * wire} used:0.2s actions:{flow.actions}")


def test_an_inbound_flow_is_the_providers_until_nat_and_shows_where_it_goes(scene) -> None:
    n, _ = scene
    answer = only(dump_flows(n.gateway, port="uplink", protocol="udp"))
    assert (answer.tenant, answer.tenant_id, answer.in_port, answer.vlan) == (
        "provider", 0, "uplink", None)
    assert (answer.src, answer.sport, answer.dst, answer.dport) == (OUTSIDE, 53, PUBLIC_A, 5000)
    assert answer.packets == 2
    assert answer.actions == (
        f"set(ipv4(dst={CLIENT})),set(udp(dst=5000)),dec_ttl,"
        f"set(eth(src={ROUTER_A},dst=02:00:00:00:00:77)),push_vlan(10),output:access")
    # The port forward: 198.51.100.10:8080 becomes the web server's port 80.
    web = only(dump_flows(n.gateway, tenant=0, protocol="tcp"))
    assert (web.src, web.sport, web.dst, web.dport) == ("100.64.0.50", 40000, PUBLIC_A, 8080)
    assert f"set(ipv4(dst={WEB})),set(tcp(dst=80))" in web.actions
    assert web.actions.endswith(f"set(eth(src={ROUTER_A},dst={WEB_MAC})),push_vlan(10),"
                                "output:access")


def test_a_dropped_flow_shows_its_drop_reason(scene) -> None:
    n, frames = scene
    flow = only(dump_flows(n.gateway, src=STRAY))
    assert (flow.tenant, flow.tenant_id, flow.vlan, flow.dst, flow.dport) == (
        "none", -1, 30, OUTSIDE, 53)
    assert (flow.actions, flow.drop, flow.out_port, flow.packets) == (
        "drop(no-segment)", "no-segment", None, 2)
    assert format_flows([flow]).startswith("tenant=none,in_port=access,vlan=30,")
    assert format_flows([flow]).endswith("actions:drop(no-segment)")


def test_an_echo_flow_shows_its_type_and_identifier(scene) -> None:
    n, _ = scene
    ping = only(dump_flows(n.gateway, protocol="icmp"))
    assert (ping.icmp_type, ping.sport, ping.src, ping.dst) == (8, 777, CLIENT, OUTSIDE)
    assert ping.match() == (f"tenant=a,in_port=access,vlan=10,eth_dst={ROUTER_A},icmp,"
                            f"{CLIENT}>{OUTSIDE},type=8,id=777")
    assert ping.actions.startswith(f"pop_vlan,set(ipv4(src={PUBLIC_A})),set(icmp(id=")
    assert ping.out_port == "uplink"


FILTERS: list[tuple[dict[str, object], Callable[[Flow], bool]]] = [
    ({"tenant": "a"}, lambda f: f.tenant == "a"),
    ({"tenant": 2}, lambda f: f.tenant_id == 2),
    ({"tenant": "provider"}, lambda f: f.tenant_id == 0),
    ({"port": "access"}, lambda f: f.in_port == "access"),
    ({"port": UPLINK}, lambda f: f.in_port_id == UPLINK),
    ({"port": "1"}, lambda f: f.in_port_id == ACCESS),  # an id's text, as a query string has it
    ({"tenant": "-1"}, lambda f: f.tenant == "none"),
    ({"protocol": "tcp"}, lambda f: f.protocol == 6),
    ({"protocol": "17"}, lambda f: f.protocol == 17),
    ({"src": CLIENT}, lambda f: f.src == CLIENT),
    ({"src": "10.0.0.0/24"}, lambda f: f.src is not None and f.src.startswith("10.0.0.")),
    ({"src": "10.0.0.4/31"}, lambda f: f.src in ("10.0.0.4", "10.0.0.5")),
    ({"dst": "198.51.100.0/24"}, lambda f: f.dst is not None and f.dst.startswith("198.51.100.")),
    ({"dst": "0.0.0.0/0"}, lambda f: f.ip_version == 4),
    ({"dst": "::/0"}, lambda f: f.ip_version == 6),
    ({"tenant": "a", "protocol": "udp", "dst": "8.0.0.0/8"},
     lambda f: f.tenant == "a" and f.protocol == 17 and f.dst == OUTSIDE),
]


@pytest.mark.parametrize(("given", "wanted"), FILTERS, ids=[repr(f) for f, _ in FILTERS])
def test_filters_select_exactly_the_matching_flows(scene, given, wanted) -> None:
    n, _ = scene
    everything = dump_flows(n.gateway)
    assert len(everything) == 7  # a-dns, b-dns, answer, ping, stray, web in, web out
    chosen = dump_flows(n.gateway, **given)
    assert sorted(f.entry for f in chosen) == sorted(f.entry for f in everything if wanted(f))


def test_the_heaviest_flows_come_first_and_limit_cuts(scene) -> None:
    n, _ = scene
    flows = dump_flows(n.gateway)
    packets = [f.packets for f in flows]
    assert packets == sorted(packets, reverse=True)
    top = dump_flows(n.gateway, limit=2)  # both tenants' DNS flows, 3 packets each
    assert sorted((f.tenant, f.dst, f.packets) for f in top) == [("a", OUTSIDE, 3),
                                                                 ("b", OUTSIDE, 3)]
    assert dump_flows(n.gateway, limit=0) == []


def test_flows_of_an_older_generation_are_stale(scene) -> None:
    n, frames = scene
    before = dump_flows(n.gateway)
    n.gateway.reconfigure(n.gateway.config)
    assert dump_flows(n.gateway) == []
    stale = dump_flows(n.gateway, stale=True)
    assert sorted(f.entry for f in stale) == sorted(f.entry for f in before)
    assert not any(f.current for f in stale)
    assert all(f"generation:{f.generation}(stale)" in f.line() for f in stale)
    n.send([frames["a-dns"]])  # decided again under the new tables
    again = only(dump_flows(n.gateway))
    assert (again.tenant, again.dst, again.packets, again.current) == ("a", OUTSIDE, 1, True)


def test_bad_filters_are_refused_by_name(scene) -> None:
    n, _ = scene
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tenant": "c"}, "tenant"), ({"port": "wan"}, "port"),
        ({"protocol": "sctpx"}, "protocol"), ({"protocol": 300}, "protocol"),
        ({"src": "10.0.0.300"}, "src"), ({"dst": "nowhere"}, "dst"), ({"limit": -1}, "limit")]
    for kw, word in cases:
        with pytest.raises(ValueError, match=f"^{word}: "):
            dump_flows(n.gateway, **kw)


def test_ipv6_flows(checksums_valid: Checker) -> None:
    """a's IPv6 client reaches a host on a's second segment (held until its neighbour
    advertisement, then cached); a stray IPv6 host on VLAN 30 is dropped (cached)."""
    n = Net(gateway(variant(with_dmz)), checksums_valid)
    routed = from_a(IPv6(src=CLIENT6, dst=DMZ_HOST6) / UDP(sport=1, dport=2))
    assert n.one(routed).held
    n.one(Frame(DMZ, Ether(src=DMZ_HOST_MAC, dst=ROUTER_DMZ_MAC)
                / IPv6(src=DMZ_HOST6, dst=ROUTER6_DMZ, hlim=255)
                / ICMPv6ND_NA(tgt=DMZ_HOST6, S=1, O=1)
                / ICMPv6NDOptDstLLAddr(lladdr=DMZ_HOST_MAC)))
    stray = Frame(ACCESS, Ether(src=STRAY_MAC, dst=ROUTER_A) / Dot1Q(vlan=30)
                  / IPv6(src="2001:db8:a::99", dst="2001:db8:ff::1") / TCP(sport=3, dport=4))
    for _ in range(2):
        assert [o.verdict() for o in n.send([routed, stray])] == [
            (DMZ, None), ("drop", "no-segment")]
    flow = only(dump_flows(n.gateway, dst="2001:db8:1::/64"))
    assert (flow.ip_version, flow.src, flow.dst, flow.sport, flow.dport) == (
        6, CLIENT6, DMZ_HOST6, 1, 2)
    assert flow.match().endswith(f"udp6,[{CLIENT6}]:1>[{DMZ_HOST6}]:2")
    assert flow.actions == (
        f"pop_vlan,dec_ttl,set(eth(src={ROUTER_DMZ_MAC},dst={DMZ_HOST_MAC})),output:dmz")
    dropped = only(dump_flows(n.gateway, dst="2001:db8:ff::1"))
    assert (dropped.protocol_name, dropped.actions) == ("tcp6", "drop(no-segment)")
    both = dump_flows(n.gateway, src="2001:db8:a::/64")
    assert sorted(f.dst or "" for f in both) == sorted([DMZ_HOST6, "2001:db8:ff::1"])
    assert only(dump_flows(n.gateway, src="2001:db8:a::/64", protocol="tcp")) == dropped
    assert only(dump_flows(n.gateway, src=CLIENT6)) == flow
    assert dump_flows(n.gateway, src="2001:db8:a:1::/64") == []
    assert dump_flows(n.gateway, src="10.0.0.0/8") == []


def test_decode_keys_is_the_inverse_of_the_caches_key() -> None:
    """Random metadata through the cache's own key kernel, decoded back column by column."""
    rng = np.random.default_rng(5)
    n = 500
    batch = Batch(n)
    batch.reset(n)
    m = batch.meta
    m["eth_dst"][:n] = rng.integers(0, 1 << 48, n, dtype=np.uint64)
    m["port"][:n] = rng.integers(0, 65535, n)
    m["tunnel_id"][:n] = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    m["vlan_outer"][:n] = rng.integers(0, 4096, n)
    m["ip_version"][:n] = rng.choice([4, 6], n)
    m["protocol"][:n] = rng.choice([1, 6, 17, 47, 58], n)
    m["sport"][:n] = rng.integers(0, 1 << 16, n)
    m["dport"][:n] = rng.integers(0, 1 << 16, n)
    m["icmp_type"][:n] = rng.integers(0, 256, n)
    m["tenant"][:n] = rng.choice([-1, 0, 1, 65535], n)
    for column in ("src6_hi", "src6_lo", "dst6_hi", "dst6_lo"):
        m[column][:n] = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64,
                                     endpoint=True)
    m["src4"][:n] = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    m["dst4"][:n] = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    cache = gateway().cache
    assert cache is not None
    words, _ = cache.flow_keys(m, np.arange(n))
    assert words.shape == (n, KEY_WORDS)
    keys = decode_keys(words)
    mine = m[:n]
    for field, column in [("eth_dst", "eth_dst"), ("port", "port"), ("tunnel_id", "tunnel_id"),
                          ("vlan", "vlan_outer"), ("ip_version", "ip_version"),
                          ("protocol", "protocol"), ("sport", "sport"), ("dport", "dport"),
                          ("tenant", "tenant")]:
        assert np.array_equal(keys[field], mine[column]), field
    icmp = np.isin(mine["protocol"], [1, 58])
    assert np.array_equal(keys["icmp_type"], np.where(icmp, mine["icmp_type"], 0))
    v6 = mine["ip_version"] == 6
    for side in ("src", "dst"):
        assert np.array_equal(keys[f"{side}_hi"], np.where(v6, mine[f"{side}6_hi"], 0))
        assert np.array_equal(keys[f"{side}_lo"],
                              np.where(v6, mine[f"{side}6_lo"], mine[f"{side}4"]))
    # The cache's own entries decode the same way, whole records or words.
    structured = np.zeros(n, dtype=[(f"k{w}", "u8") for w in range(KEY_WORDS)])
    for w in range(KEY_WORDS):
        structured[f"k{w}"] = words[:, w]
    assert np.array_equal(decode_keys(structured), keys)


def test_no_cache_no_flows(checksums_valid: Checker) -> None:
    n = net(checksums_valid, cache=False)
    n.send([from_a(udp(CLIENT, OUTSIDE, 5000, 53))])
    assert dump_flows(n.gateway) == []
