"""NAT bindings as RFC 4787 / 5382 / 5508 / 7857 describe them, held to a dict model.

Each behaviour the RFCs name gets a scenario (endpoint-independent mapping,
paired pooling, port preservation, exhaustion, timeouts, static forwarding,
hairpinning, ICMP echo and errors, tenant isolation); then Hypothesis drives the
table and a dict-based reference model through random allocations, holds,
releases and time steps; last, the Actions the table builds are applied to
Scapy-built packets and Scapy checks the result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from portico.batch import META_DTYPE, Batch
from portico.datapath.actions import Action, ActionTable, Op, apply
from portico.datapath.nat import (
    SECOND,
    T_REV,
    Direction,
    Filtering,
    NatDrop,
    NatTable,
    NatTimeouts,
    Pool,
    StaticMapping,
    _delete,
    _put,
    _slot,
)
from portico.datapath.stages.parse import parse

TCP_P, UDP_P, ICMP_P = 6, 17, 1
T0 = 1_000 * SECOND
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


E1, E2, E3 = v4("203.0.113.1"), v4("203.0.113.2"), v4("203.0.113.3")
H1, H2, H3 = v4("10.0.0.1"), v4("10.0.0.2"), v4("10.0.0.3")
REMOTE, REMOTE2 = v4("198.51.100.9"), v4("198.51.100.10")


def packets(*rows: tuple[int, ...]) -> np.ndarray:
    """Parsed-metadata rows without a packet behind them:
    (tenant, protocol, src, sport, dst, dport[, icmp_type])."""
    meta = np.zeros(len(rows), dtype=META_DTYPE)
    for k, row in enumerate(rows):
        tenant, proto, src, sport, dst, dport = row[:6]
        meta[k]["tenant"] = tenant
        meta[k]["ip_version"] = 4
        meta[k]["l3"], meta[k]["l4"] = 14, 34
        meta[k]["protocol"] = proto
        meta[k]["src4"], meta[k]["sport"] = src, sport
        meta[k]["dst4"], meta[k]["dport"] = dst, dport
        meta[k]["icmp_type"] = row[6] if len(row) > 6 else 0
    return meta


def out(nat: NatTable, now: int, *rows: tuple[int, ...]) -> tuple[list[int], list[int]]:
    meta = packets(*rows)
    reasons = np.zeros(len(rows), dtype=np.int64)
    got = nat.translate_out(meta, np.arange(len(rows)), now, reasons=reasons)
    return [int(b) for b in got], [int(r) for r in reasons]


def into(nat: NatTable, now: int, *rows: tuple[int, ...]) -> list[int]:
    meta = packets(*rows)
    return [int(b) for b in nat.translate_in(meta, np.arange(len(rows)), now)]


def external(nat: NatTable, b: int) -> tuple[int, int]:
    x = nat.binding(b)
    return x.external, x.external_port


def table(*pools: Pool, **kw: object) -> NatTable:
    return NatTable(pools, seed=7, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Pool(tenant=-1, addresses=["203.0.113.1"]), "pool.tenant"),
        (lambda: Pool(tenant=1, addresses=[]), "pool.addresses"),
        (lambda: Pool(tenant=1, addresses=["not-an-ip"]), r"pool.addresses\[0\]"),
        (lambda: Pool(tenant=1, addresses=["2001:db8::1"]), r"pool.addresses\[0\]"),
        (lambda: Pool(tenant=1, addresses=["1.2.3.4", "1.2.3.4"]), "pool.addresses"),
        (lambda: Pool(tenant=1, addresses=["1.2.3.0/33"]), r"pool.addresses\[0\]"),
        (lambda: Pool(tenant=1, addresses=["1.2.3.4"], ports=(0, 10)), "pool.ports"),
        (lambda: Pool(tenant=1, addresses=["1.2.3.4"], ports=(2000, 1999)), "pool.ports"),
        (lambda: Pool(tenant=1, addresses=["1.2.3.4"], ports=(1, 70000)), "pool.ports"),
        (lambda: NatTimeouts(udp=60), "timeouts.udp"),
        (lambda: NatTimeouts(tcp_established=3600), "timeouts.tcp_established"),
        (lambda: NatTimeouts(tcp_transitory=60), "timeouts.tcp_transitory"),
        (lambda: NatTimeouts(icmp=10), "timeouts.icmp"),
        (lambda: StaticMapping(tenant=1, protocol=1, internal="10.0.0.1", internal_port=1,
                               external="203.0.113.1", external_port=1), "static.protocol"),
        (lambda: StaticMapping(tenant=1, protocol=6, internal="10.0.0.1", internal_port=0,
                               external="203.0.113.1", external_port=1), "static.internal_port"),
        (lambda: StaticMapping(tenant=1, protocol=6, internal="10.0.0.1", internal_port=1,
                               external="x", external_port=1), "static.external"),
        (lambda: NatTable([Pool(tenant=1, addresses=["1.2.3.4"]),
                           Pool(tenant=1, addresses=["1.2.3.5"])]), r"pools\[1\].tenant"),
        (lambda: NatTable([Pool(tenant=1, addresses=["1.2.3.4"], ports=(1024, 2047)),
                           Pool(tenant=2, addresses=["1.2.3.4"], ports=(2000, 3000))]),
         r"pools\[1\].addresses"),
        (lambda: NatTable(capacity=0), "nat.capacity"),
    ],
)
def test_bad_config_names_the_field(make: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()  # type: ignore[operator]


def test_pool_networks_expand_and_shared_addresses_need_disjoint_ports() -> None:
    assert len(Pool(tenant=1, addresses=["203.0.113.0/30"]).expanded()) == 4
    nat = NatTable([Pool(tenant=1, addresses=["203.0.113.1"], ports=(1024, 2047)),
                    Pool(tenant=2, addresses=["203.0.113.1"], ports=(2048, 4095))])
    assert list(nat.is_external(np.array([E1, E2]))) == [True, False]


# ---------------------------------------------------------------- mapping
def test_endpoint_independent_mapping() -> None:
    """RFC 4787 REQ-1 / RFC 5382 REQ-1: one internal endpoint, two destinations,
    one external endpoint; replies from either come back to it."""
    nat = table(Pool(tenant=1, addresses=["203.0.113.1", "203.0.113.2"]))
    for proto in (UDP_P, TCP_P):
        got, _ = out(nat, T0, (1, proto, H1, 5000, REMOTE, 53), (1, proto, H1, 5000, REMOTE2, 80))
        assert got[0] == got[1] >= 0
        eaddr, eport = external(nat, got[0])
        back = into(nat, T0, (0, proto, REMOTE, 53, eaddr, eport),
                    (0, proto, REMOTE2, 80, eaddr, eport))
        assert back == [got[0], got[0]]
    counters = nat.counters()
    assert counters["allocations"] == 2 and counters["out_hits"] == 2
    assert counters["in_hits"] == 4


def test_paired_address_pooling() -> None:
    """RFC 4787 REQ-2: every binding of one internal host uses one external address."""
    nat = table(Pool(tenant=1, addresses=["203.0.113.0/29"]))
    used: set[int] = set()
    for host in range(20):
        src = H1 + host
        rows: list[tuple[int, ...]] = [
            (1, proto, src, port, REMOTE + k, 80)
            for k, (proto, port) in enumerate([(UDP_P, 5000), (TCP_P, 5000), (TCP_P, 6000),
                                               (UDP_P, 7001)])
        ]
        rows.append((1, ICMP_P, src, 9, REMOTE, 9, 8))
        got, reasons = out(nat, T0, *rows)
        assert min(got) >= 0 and not any(reasons)
        addrs = {nat.binding(b).external for b in got}
        assert len(addrs) == 1, f"host {host} spread over {addrs}"
        used |= addrs
    assert len(used) > 1  # hosts themselves are spread over the pool


def test_a_host_is_paired_afresh_once_its_bindings_are_gone() -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1", "203.0.113.2"], ports=(1024, 1024)))
    (a, b), _ = out(nat, T0, (1, UDP_P, H1, 1, REMOTE, 1), (1, UDP_P, H2, 1, REMOTE, 1))
    x, y = nat.binding(a).external, nat.binding(b).external
    assert x != y
    nat.hold(np.array([b]))
    t = T0 + 400 * SECOND
    (c,), _ = out(nat, t, (1, UDP_P, H3, 1, REMOTE, 1))  # reclaims H1's expired port on x
    assert nat.binding(c).external == x
    nat.release(np.array([b]), t)  # H2's binding is long idle: gone now
    (d,), (why,) = out(nat, t, (1, UDP_P, H1, 1, REMOTE, 1))
    assert why == 0 and nat.binding(d).external == y


def test_port_preservation_parity_and_fallback() -> None:
    """RFC 4787 REQ-3 (preserve when possible) and REQ-4 (else keep parity)."""
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]))
    (a,), _ = out(nat, T0, (1, UDP_P, H1, 40000, REMOTE, 53))
    assert external(nat, a) == (E1, 40000)
    (b, c), _ = out(nat, T0, (1, UDP_P, H2, 40000, REMOTE, 53), (1, UDP_P, H3, 40001, REMOTE, 53))
    assert external(nat, b)[1] != 40000 and external(nat, b)[1] % 2 == 0
    assert external(nat, c) == (E1, 40001)
    (d,), _ = out(nat, T0, (1, UDP_P, H2, 40001, REMOTE, 53))  # taken by H3: odd fallback
    assert external(nat, d)[1] not in (40000, 40001) and external(nat, d)[1] % 2 == 1
    (e,), _ = out(nat, T0, (1, TCP_P, H2, 40000, REMOTE, 80))  # TCP has its own port space
    assert external(nat, e) == (E1, 40000)
    (f,), _ = out(nat, T0, (1, UDP_P, H1, 80, REMOTE, 53))  # below the range: not preserved
    assert 1024 <= external(nat, f)[1] <= 65535 and external(nat, f)[1] % 2 == 0
    assert nat.counters()["preserved"] == 3


def test_parity_can_be_turned_off_and_fallback_stays_in_range() -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"], ports=(3000, 3001), port_parity=False))
    got, reasons = out(nat, T0, (1, UDP_P, H1, 3000, REMOTE, 1), (1, UDP_P, H2, 3000, REMOTE, 1))
    assert sorted(external(nat, b)[1] for b in got) == [3000, 3001] and not any(reasons)


def test_port_exhaustion_fails_counted_and_never_steals() -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"], ports=(2000, 2003)))
    rows = [(1, UDP_P, H1, 6000 + k, REMOTE, 53) for k in range(5)]
    got, reasons = out(nat, T0, *rows[:4])
    assert min(got) >= 0
    before = [nat.binding(b) for b in got]
    assert sorted(x.external_port for x in before) == [2000, 2001, 2002, 2003]
    later = T0 + 100 * SECOND  # the others are idle but well within their 5 minutes
    (fifth,), (why,) = out(nat, later, rows[4])
    assert fifth == -1 and why == NatDrop.EXHAUSTED
    (again,), (why,) = out(nat, later, (1, UDP_P, H2, 7000, REMOTE, 53))  # another host too
    assert again == -1 and why == NatDrop.EXHAUSTED
    assert nat.counters()["exhausted"] == 2
    assert [nat.binding(b) for b in got] == before  # intact, not refreshed, not stolen
    assert into(nat, later, (0, UDP_P, REMOTE, 53, E1, 2002)) == [got[2]]
    # A held binding survives its idle time; the others expire and their ports come back.
    nat.hold(np.array([got[0]]))
    after = later + 300 * SECOND  # the inbound packet above refreshed one of them
    got2, reasons = out(nat, after, *[(1, UDP_P, H2, 7000 + k, REMOTE, 53) for k in range(4)])
    assert reasons == [0, 0, 0, int(NatDrop.EXHAUSTED)]
    assert {external(nat, b)[1] for b in got2[:3]} == {2000, 2001, 2002, 2003} - {
        before[0].external_port}
    assert nat.binding(got[0]) == before[0]._replace(refs=1)


def test_table_full_is_its_own_reason() -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]), capacity=2)
    _, reasons = out(nat, T0, *[(1, UDP_P, H1, 5000 + k, REMOTE, 53) for k in range(3)])
    assert reasons == [0, 0, int(NatDrop.TABLE_FULL)] and nat.counters()["table_full"] == 1


def test_exhaustion_sweeps_at_most_once_per_interval() -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"], ports=(2000, 2000)))
    out(nat, T0, (1, UDP_P, H1, 1, REMOTE, 53))
    sweeps = nat.counters()["sweeps"]
    t = T0 + 10 * SECOND
    for k in range(50):
        out(nat, t, (1, UDP_P, H1, 2 + k, REMOTE, 53))
    assert nat.counters()["exhausted"] == 50 and nat.counters()["sweeps"] == sweeps + 1


# ---------------------------------------------------------------- timeouts
@pytest.mark.parametrize(
    ("proto", "established", "timeout"),
    [
        (UDP_P, False, 300),  # RFC 4787 REQ-5
        (ICMP_P, False, 60),  # RFC 5508 REQ-1
        (TCP_P, False, 240),  # RFC 5382 REQ-5 transitory
        (TCP_P, True, 2 * 3600 + 4 * 60),  # RFC 5382 REQ-5 established
    ],
)
def test_timeouts_per_protocol(proto: int, established: bool, timeout: int) -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]))
    row = (1, proto, H1, 4000, REMOTE, 4000, 8) if proto == ICMP_P else (1, proto, H1, 4000,
                                                                         REMOTE, 80)
    (b,), _ = out(nat, T0, row)
    nat.set_established(np.array([b]), established)
    assert nat.lookup(1, proto, H1, 4000, T0 + (timeout - 1) * SECOND) == b
    out(nat, T0 + (timeout - 1) * SECOND, row)  # outbound traffic refreshes (REQ-6)
    assert nat.lookup(1, proto, H1, 4000, T0 + (2 * timeout - 2) * SECOND) == b
    assert nat.lookup(1, proto, H1, 4000, T0 + (2 * timeout - 1) * SECOND) == -1
    assert nat.counters()["expired"] == 1 and nat.live() == []


def test_inbound_refresh_is_optional() -> None:
    for refresh, alive in ((True, True), (False, False)):
        nat = table(Pool(tenant=1, addresses=["203.0.113.1"]), inbound_refresh=refresh)
        (b,), _ = out(nat, T0, (1, UDP_P, H1, 4000, REMOTE, 53))
        into(nat, T0 + 200 * SECOND, (0, UDP_P, REMOTE, 53, E1, 4000))
        assert (nat.lookup(1, UDP_P, H1, 4000, T0 + 400 * SECOND) == b) is alive


def test_refcount_keeps_binding_alive_while_flows_hold_it() -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]))
    (b,), _ = out(nat, T0, (1, UDP_P, H1, 4000, REMOTE, 53))
    nat.hold(np.array([b, b]))
    late = T0 + 10 * 3600 * SECOND
    assert nat.expire(late) == 0 and nat.lookup(1, UDP_P, H1, 4000, late) == b
    nat.release(np.array([b]), late)
    assert nat.binding(b).refs == 1
    nat.release(np.array([b]), late)  # the last flow is gone, long idle: freed now
    assert nat.live() == [] and nat.counters()["expired"] == 1


# ------------------------------------------------------------ reverse / static
def test_reverse_lookup_and_unknown_endpoints() -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]))
    (b,), _ = out(nat, T0, (1, TCP_P, H1, 4000, REMOTE, 80))
    meta = packets((0, TCP_P, REMOTE, 80, E1, 4000), (0, TCP_P, REMOTE, 80, E1, 4001),
                   (0, UDP_P, REMOTE, 80, E1, 4000), (0, TCP_P, REMOTE, 80, E2, 4000))
    reasons = np.zeros(4, dtype=np.int64)
    got = nat.translate_in(meta, np.arange(4), T0, reasons=reasons)
    assert list(got) == [b, -1, -1, -1]
    assert list(reasons) == [0] + [int(NatDrop.NO_BINDING)] * 3
    assert nat.reverse(TCP_P, "203.0.113.1", 4000, T0) == b
    assert nat.counters()["no_binding"] == 3
    assert not nat.admits_unsolicited(np.array([b, -1])).any()  # APDF: conntrack decides


def test_endpoint_independent_filtering_pool_admits_unsolicited() -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"],
                     filtering=Filtering.ENDPOINT_INDEPENDENT))
    (b,), _ = out(nat, T0, (1, UDP_P, H1, 4000, REMOTE, 53))
    assert list(nat.admits_unsolicited(np.array([b, -1]))) == [True, False]


def test_static_dnat_bindings() -> None:
    web = StaticMapping(tenant=1, protocol=TCP_P, internal="10.0.0.5", internal_port=80,
                        external="203.0.113.1", external_port=8080)
    nat = NatTable([Pool(tenant=1, addresses=["203.0.113.1"], ports=(8080, 8081))],
                   statics=[web], seed=1)
    (s,) = into(nat, T0, (0, TCP_P, REMOTE, 33000, E1, 8080))
    assert s >= 0 and nat.binding(s).static and nat.admits_unsolicited(np.array([s]))[0]
    assert (nat.binding(s).internal, nat.binding(s).internal_port) == (v4("10.0.0.5"), 80)
    years = T0 + 10**6 * SECOND
    assert nat.expire(years) == 0 and into(nat, years, (0, TCP_P, REMOTE, 1, E1, 8080)) == [s]
    (o,), _ = out(nat, years, (1, TCP_P, v4("10.0.0.5"), 80, REMOTE, 33000))
    assert o == s  # the forwarded server's own traffic leaves through its static binding
    # A dynamic binding steps around the static port even when it asks for it.
    (d,), _ = out(nat, years, (1, TCP_P, H1, 8080, REMOTE, 80))
    assert external(nat, d) == (E1, 8081)
    (x,), (why,) = out(nat, years, (1, TCP_P, H2, 9000, REMOTE, 80))
    assert x == -1 and why == NatDrop.EXHAUSTED
    # Conflicts are refused and name the field; nothing is changed.
    clash = StaticMapping(tenant=1, protocol=TCP_P, internal="10.0.0.9", internal_port=22,
                          external="203.0.113.1", external_port=8081)
    with pytest.raises(ValueError, match=f"static.external_port: .* held by binding {d}"):
        nat.add_static(clash, years)
    with pytest.raises(ValueError, match="static.internal_port"):
        nat.add_static(StaticMapping(tenant=1, protocol=TCP_P, internal="10.0.0.5",
                                     internal_port=80, external="203.0.113.2",
                                     external_port=80), years)
    with pytest.raises(ValueError, match=r"statics\[1\]: static.external_port"):
        NatTable([], statics=[web, web])
    # Once the dynamic binding has expired, the static may take its port.
    t = years + 241 * SECOND
    s2 = nat.add_static(clash, t)
    assert into(nat, t, (0, TCP_P, REMOTE, 1, E1, 8081)) == [s2]
    nat.remove_static(s)
    assert into(nat, t, (0, TCP_P, REMOTE, 1, E1, 8080)) == [-1]
    (d2,), _ = out(nat, t, (1, TCP_P, H3, 8080, REMOTE, 80))
    assert external(nat, d2) == (E1, 8080)  # the freed static port is back in the pool


# -------------------------------------------------------- hairpin / ICMP
def test_hairpinning_decision() -> None:
    """RFC 4787 REQ-9 / RFC 5382 REQ-8: A -> B's external endpoint reaches B, from
    A's external endpoint."""
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]))
    (a, b), _ = out(nat, T0, (1, UDP_P, H1, 5000, REMOTE, 3478), (1, UDP_P, H2, 6000, REMOTE, 3478))
    (eb, pb), (ea, pa) = external(nat, b), external(nat, a)
    meta = packets((1, UDP_P, H1, 5000, eb, pb), (1, UDP_P, H1, 5000, REMOTE, 53),
                   (1, UDP_P, H1, 5000, eb, pb + 2))
    rows = np.arange(3)
    assert list(nat.is_external(meta["dst4"])) == [True, False, True]
    assert list(nat.hairpin(meta, rows, T0)) == [b, -1, -1]
    assert list(nat.translate_out(meta, rows[:1], T0)) == [a]
    act = nat.hairpin_action(a, b, Action(ops=Op.OUTPUT, out_port=1))
    assert act.ops == Op.SET_IP_SRC | Op.SET_SPORT | Op.SET_IP_DST | Op.SET_DPORT | Op.OUTPUT
    assert (act.ip_src, act.sport, act.ip_dst, act.dport) == (ea, pa, H2, 6000)
    assert nat.counters()["hairpins"] == 1 and nat.counters()["no_binding"] == 0


def test_icmp_echo_identifiers_are_mapped_like_ports() -> None:
    """RFC 5508 / RFC 7857: two hosts pinging with the same identifier through one
    address get different external identifiers; replies find their way back."""
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]))
    (a, b), _ = out(nat, T0, (1, ICMP_P, H1, 77, REMOTE, 77, 8), (1, ICMP_P, H2, 77, REMOTE, 77, 8))
    assert external(nat, a)[1] != external(nat, b)[1]
    ia, ib = external(nat, a)[1], external(nat, b)[1]
    assert into(nat, T0, (0, ICMP_P, REMOTE, ib, E1, ib, 0), (0, ICMP_P, REMOTE, ia, E1, ia, 0)) \
        == [b, a]
    # An inbound echo *request*, or an ICMP error, is not a query reply: no binding.
    _, reasons = out(nat, T0, (1, ICMP_P, H1, 0, REMOTE, 0, 3))
    assert reasons == [int(NatDrop.UNTRANSLATABLE)]
    assert into(nat, T0, (0, ICMP_P, REMOTE, ia, E1, ia, 8)) == [-1]


def test_untranslatable_rows() -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]))
    meta = packets((1, 47, H1, 0, REMOTE, 0), (1, UDP_P, H1, 5, REMOTE, 5),
                   (1, UDP_P, H1, 6, REMOTE, 6), (2, UDP_P, H1, 7, REMOTE, 7))
    meta[1]["l4"] = -1  # a non-first fragment
    meta[2]["ip_version"] = 6
    reasons = np.zeros(4, dtype=np.int64)
    assert list(nat.translate_out(meta, np.arange(4), T0, reasons=reasons)) == [-1] * 4
    assert list(reasons) == [NatDrop.UNTRANSLATABLE] * 3 + [NatDrop.NO_POOL]
    assert nat.counters()["untranslatable"] == 3 and nat.counters()["no_pool"] == 1


def test_icmp_error_lookups() -> None:
    """RFC 5508 section 4: the packet quoted in an ICMP error names a binding."""
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]))
    (b,), _ = out(nat, T0, (1, UDP_P, H1, 5000, REMOTE, 53))
    eaddr, eport = external(nat, b)
    # From outside: "port unreachable" about the datagram we sent out as eaddr:eport.
    rw = nat.icmp_error_in(UDP_P, eaddr, eport, T0 + SECOND)
    assert rw is not None and (rw.binding, rw.tenant, rw.address, rw.port) == (b, 1, H1, 5000)
    assert nat.icmp_error_in(UDP_P, eaddr, eport + 1, T0) is None
    # From inside: H1 complains about a packet it received (REMOTE:53 -> H1:5000).
    rw = nat.icmp_error_out(1, UDP_P, H1, 5000, T0 + SECOND)
    assert rw is not None and (rw.binding, rw.address, rw.port) == (b, eaddr, eport)
    assert nat.icmp_error_out(2, UDP_P, H1, 5000, T0) is None  # another tenant's H1
    assert nat.binding(b).last_used == T0  # errors do not refresh the binding
    (e,), _ = out(nat, T0, (1, ICMP_P, H1, 300, REMOTE, 300, 8))
    rw = nat.icmp_error_in(ICMP_P, E1, external(nat, e)[1], T0)  # an error about an echo request
    assert rw is not None and rw.binding == e and rw.port == 300


def test_tenant_isolation_with_overlapping_addresses() -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]),
                Pool(tenant=2, addresses=["203.0.113.2"]),
                Pool(tenant=3, addresses=["203.0.113.3"], ports=(1024, 30000)),
                Pool(tenant=4, addresses=["203.0.113.3"], ports=(30001, 65535)))
    rows = [(t, UDP_P, H1, 5000, REMOTE, 53) for t in (1, 2, 3, 4)]
    got, reasons = out(nat, T0, *rows)
    assert len(set(got)) == 4 and not any(reasons)
    ext = [external(nat, b) for b in got]
    assert ext[0] == (E1, 5000) and ext[1] == (E2, 5000) and ext[2] == (E3, 5000)
    assert ext[3][0] == E3 and 30001 <= ext[3][1] <= 65535  # shared address, own range
    for t, b, (eaddr, eport) in zip((1, 2, 3, 4), got, ext, strict=True):
        (back,) = into(nat, T0, (0, UDP_P, REMOTE, 53, eaddr, eport))
        assert back == b and nat.binding(back).tenant == t
        assert nat.lookup(t, UDP_P, H1, 5000, T0) == b


# --------------------------------------------------------- reference model
@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), min_size=60, max_size=200))
def test_hash_table_against_a_dict(steps: list[tuple[bool, int]]) -> None:
    """The index tables alone: puts and backward-shift deletes in a crowded table."""
    ht = np.full((3, 64, 3), -1, dtype=np.int64)
    ref: dict[int, int] = {}
    for k, (put, key) in enumerate(steps):
        k0, k1 = np.int64(key % 7), np.int64(key // 7)
        if put:
            _put(ht, T_REV, k0, k1, np.int64(k), np.int64(5))
            ref[key] = k
        else:
            _delete(ht, T_REV, k0, k1, np.int64(5))
            ref.pop(key, None)
        for other in range(41):
            j = _slot(ht, T_REV, np.int64(other % 7), np.int64(other // 7), np.int64(5))
            assert ht[T_REV, j, 2] == ref.get(other, -1)



HOSTS = (H1, H2, H3)
PORTS = (1024, 1025, 1026, 5000, 5001)
TIMEOUT = {UDP_P: 300, TCP_P: 240}
CAPACITY = 10
POOLS = (Pool(tenant=1, addresses=["203.0.113.1", "203.0.113.2"], ports=(1024, 1026)),
         Pool(tenant=2, addresses=["203.0.113.1"], ports=(1027, 1028)))
RANGES = {1: ([E1, E2], range(1024, 1027)), 2: ([E1], range(1027, 1029))}

allocation = st.tuples(st.just("out"), st.sampled_from((1, 1, 2, 3)), st.sampled_from(HOSTS),
                       st.sampled_from(PORTS), st.sampled_from((UDP_P, TCP_P)))
ops = st.one_of(
    allocation,
    allocation,
    st.tuples(st.just("in"), st.sampled_from((UDP_P, TCP_P)), st.sampled_from((E1, E2)),
              st.integers(1024, 1028)),
    st.tuples(st.just("hold"), st.integers(0, 100)),
    st.tuples(st.just("release"), st.integers(0, 100)),
    st.tuples(st.just("tick"), st.sampled_from((0, 1, 30, 200, 250, 400))),
    st.tuples(st.just("expire")),
    st.tuples(st.just("probe")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, min_size=20, max_size=80))
def test_against_reference_model(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    """Random allocations, lookups, holds, releases, time steps, sweeps and probes
    (lookups of every binding, which free expired ones lazily) against a dict."""
    nat = NatTable(POOLS, capacity=CAPACITY, sweep_interval=0, seed=3)
    model: dict[tuple[int, int, int, int], dict[str, int]] = {}  # key -> ext, port, last, refs, id
    now = T0

    def alive(v: dict[str, int], proto: int) -> bool:
        return v["refs"] > 0 or now < v["last"] + TIMEOUT[proto] * SECOND

    for step in steps:
        model = {k: v for k, v in model.items() if alive(v, k[1])}
        kind = step[0]
        if kind == "out":
            _, tenant, host, port, proto = step
            key = (tenant, proto, host, port)
            (b,), (why,) = out(nat, now, (tenant, proto, host, port, REMOTE, 80))
            if key in model:
                assert b == model[key]["id"] and why == 0
                model[key]["last"] = now
            elif tenant not in RANGES:
                assert (b, why) == (-1, NatDrop.NO_POOL)
            else:
                addrs, ports = RANGES[tenant]
                mine = {v["ext"] for k, v in model.items() if k[0] == tenant and k[2] == host}
                assert len(mine) <= 1  # paired
                candidates = sorted(mine) or addrs
                taken = {(v["ext"], v["port"]) for k, v in model.items() if k[1] == proto}
                free = {a: [p for p in ports if (a, p) not in taken] for a in candidates}
                if len(model) == CAPACITY:
                    assert (b, why) == (-1, NatDrop.TABLE_FULL)
                elif not any(free.values()):
                    assert (b, why) == (-1, NatDrop.EXHAUSTED)
                else:
                    assert b >= 0 and why == 0
                    got = nat.binding(b)
                    assert got.external_port in free.get(got.external, [])
                    if port in free[got.external]:
                        assert got.external_port == port  # preserved when free
                    model[key] = {"ext": got.external, "port": got.external_port,
                                  "last": now, "refs": 0, "id": b}
        elif kind == "in":
            _, proto, eaddr, eport = step
            (b,) = into(nat, now, (0, proto, REMOTE, 80, eaddr, eport))
            owners = [k for k, v in model.items()
                      if k[1] == proto and (v["ext"], v["port"]) == (eaddr, eport)]
            assert b == (model[owners[0]]["id"] if owners else -1)
            if owners:
                model[owners[0]]["last"] = now
        elif kind in ("hold", "release"):
            keys = sorted(k for k, v in model.items() if kind == "hold" or v["refs"] > 0)
            if keys:
                key = keys[step[1] % len(keys)]
                if kind == "hold":
                    nat.hold(np.array([model[key]["id"]]))
                    model[key]["refs"] += 1
                else:
                    nat.release(np.array([model[key]["id"]]), now)
                    model[key]["refs"] -= 1
        elif kind == "tick":
            now += step[1] * SECOND
        elif kind == "expire":
            nat.expire(now)
        else:
            for x in nat.live():
                found = nat.lookup(x.tenant, x.protocol, x.internal, x.internal_port, now)
                key = (x.tenant, x.protocol, x.internal, x.internal_port)
                assert found == (model[key]["id"] if key in model else -1)

        model = {k: v for k, v in model.items() if alive(v, k[1])}
        physical = nat.live()
        ends = [(x.external, x.external_port, x.protocol) for x in physical]
        assert len(ends) == len(set(ends)), "two bindings share an external endpoint"
        real = {(x.tenant, x.protocol, x.internal, x.internal_port):
                (x.id, x.external, x.external_port, x.refs)
                for x in physical if x.refs > 0 or now < x.last_used + TIMEOUT[x.protocol] * SECOND}
        assert real == {k: (v["id"], v["ext"], v["port"], v["refs"]) for k, v in model.items()}


# ------------------------------------------------------------ Scapy end to end
def run(nat: NatTable, pkts: list[Packet], translate: str, now: int) -> tuple[list[int],
                                                                              list[Packet]]:
    """Parse, translate, build and apply each row's Action; return bindings and Scapy's view."""
    batch = Batch.from_packets([bytes(p) for p in pkts])
    parse(batch)
    batch.meta["tenant"][: batch.count] = 1
    rows = np.arange(batch.count)
    bindings = getattr(nat, translate)(batch.meta, rows, now)
    assert (bindings >= 0).all()
    direction = Direction.OUT if translate == "translate_out" else Direction.IN
    actions = ActionTable()
    base = Action(ops=Op.DEC_TTL | Op.OUTPUT, out_port=2)
    ids = [actions.add(nat.action(int(b), direction, base)) for b in bindings]
    apply(batch, rows, np.array(ids), actions)
    assert not batch.meta["drop"][: batch.count].any()
    return [int(b) for b in bindings], [Ether(p) for p in batch.packets()]


def test_actions_translate_real_packets_both_ways(
    checksums_valid: Callable[[Packet], None],
) -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"], ports=(20000, 20010)))
    out(nat, T0, (1, TCP_P, H2, 40000, REMOTE, 1))  # H2 is on .1 too; 40000 is not in range
    outbound = [
        Ether(**MACS) / IP(src="10.0.0.1", dst="198.51.100.9") / TCP(sport=40000, dport=443,
                                                                     flags="S") / b"hello",
        Ether(**MACS) / IP(src="10.0.0.1", dst="198.51.100.9") / UDP(sport=20001, dport=53) / b"q",
        Ether(**MACS) / IP(src="10.0.0.1", dst="198.51.100.9") / ICMP(id=77, seq=3),
    ]
    bindings, sent = run(nat, outbound, "translate_out", T0)
    for b, pkt in zip(bindings, sent, strict=True):
        x = nat.binding(b)
        assert pkt[IP].src == str(ipaddress.IPv4Address(x.external))
        assert pkt[IP].dst == "198.51.100.9" and pkt[IP].ttl == 63
        checksums_valid(pkt)
    assert sent[0][TCP].sport == nat.binding(bindings[0]).external_port
    assert 20000 <= sent[0][TCP].sport <= 20010 and sent[0][TCP].sport % 2 == 0
    assert sent[1][UDP].sport == 20001  # preserved
    assert sent[2][ICMP].id == nat.binding(bindings[2]).external_port and sent[2][ICMP].seq == 3
    replies = [
        Ether(**MACS) / IP(src="198.51.100.9", dst="203.0.113.1")
        / TCP(sport=443, dport=sent[0][TCP].sport, flags="SA") / b"hi",
        Ether(**MACS) / IP(src="198.51.100.9", dst="203.0.113.1") / UDP(sport=53, dport=20001)
        / b"a",
        Ether(**MACS) / IP(src="198.51.100.9", dst="203.0.113.1")
        / ICMP(type=0, id=sent[2][ICMP].id, seq=3),
    ]
    back, received = run(nat, replies, "translate_in", T0 + SECOND)
    assert back == bindings
    for pkt in received:
        assert pkt[IP].dst == "10.0.0.1" and pkt[IP].src == "198.51.100.9"
        checksums_valid(pkt)
    assert received[0][TCP].dport == 40000 and received[0][TCP].sport == 443
    assert received[1][UDP].dport == 20001
    assert received[2][ICMP].id == 77


def test_hairpin_action_on_a_real_packet(checksums_valid: Callable[[Packet], None]) -> None:
    nat = table(Pool(tenant=1, addresses=["203.0.113.1"]))
    (a, b), _ = out(nat, T0, (1, UDP_P, H1, 5000, REMOTE, 1), (1, UDP_P, H2, 6000, REMOTE, 1))
    (eb, pb), (ea, pa) = external(nat, b), external(nat, a)
    pkt = Ether(**MACS) / IP(src="10.0.0.1", dst=str(ipaddress.IPv4Address(eb))) / UDP(
        sport=5000, dport=pb) / b"hairpin"
    batch = Batch.from_packets([bytes(pkt)])
    parse(batch)
    batch.meta["tenant"][0] = 1
    rows = np.arange(1)
    assert nat.is_external(batch.meta["dst4"][:1])[0]
    dst = int(nat.hairpin(batch.meta, rows, T0)[0])
    src = int(nat.translate_out(batch.meta, rows, T0)[0])
    actions = ActionTable()
    apply(batch, rows, np.array([actions.add(nat.hairpin_action(src, dst))]), actions)
    got = Ether(batch.packet(0))
    assert got[IP].src == str(ipaddress.IPv4Address(ea)) and got[UDP].sport == pa
    assert got[IP].dst == "10.0.0.2" and got[UDP].dport == 6000
    checksums_valid(got)
