"""The compiled connection table: held to conntrack's reference table, then scenario by scenario.

Packets are metadata rows written straight into a Batch (what parse would have
filled), except for one connection built with Scapy and parsed. The differential
test feeds the same random streams to ``ConnTrack`` (in random batches) and to
``conntrack.ConnTable`` (one packet at a time) and compares every verdict and,
after each batch, what each table says about every tuple.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from portico.batch import Batch
from portico.datapath.conntable import (
    CONN_DTYPE,
    ConnTrack,
    Found,
    Outcome,
    capacity_slots,
)
from portico.datapath.conntrack import ConnTable, Direction, Key, State, Timeouts, Verdict
from portico.datapath.stages.parse import parse

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
TCP_P, UDP_P, ICMP_P, ICMP6_P, GRE_P = 6, 17, 1, 58, 47
S, SA, A, PA, FA, R, RA = 0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14
ORIG, REPLY = Direction.ORIGINAL, Direction.REPLY
N, E, RE = Outcome.NEW, Outcome.ESTABLISHED, Outcome.REPLY
DEN, INV, UNT, FULL = Outcome.DENIED, Outcome.INVALID, Outcome.UNTRACKED, Outcome.TABLE_FULL
V4A, V4B = int(ipaddress.IPv4Address("10.0.0.1")), int(ipaddress.IPv4Address("192.0.2.7"))
V6A, V6B = int(ipaddress.IPv6Address("2001:db8::1")), int(ipaddress.IPv6Address("2001:db8::2"))


class Pkt(NamedTuple):
    """One packet as the table sees it."""

    src: int
    sport: int
    dst: int
    dport: int
    flags: int = 0  # TCP flags
    proto: int = TCP_P
    ts: int = T0
    zone: int = 0
    version: int = 4
    icmp_type: int = 0
    frag: int = 0

    def back(self, flags: int = 0, ts: int | None = None, **kw: int) -> Pkt:
        """The other direction."""
        return self._replace(src=self.dst, sport=self.dport, dst=self.src, dport=self.sport,
                             flags=flags, ts=self.ts if ts is None else ts, **kw)

    def again(self, flags: int = 0, ts: int | None = None, **kw: int) -> Pkt:
        return self._replace(flags=flags, ts=self.ts if ts is None else ts, **kw)

    def key(self) -> Key:
        return (self.zone, self.proto, self.src, self.sport, self.dst, self.dport)


def batch_of(pkts: list[Pkt]) -> Batch:
    """A Batch whose metadata rows say what parse would say about these packets."""
    batch = Batch(max(1, len(pkts)))
    batch.reset(len(pkts))
    m = batch.meta
    for i, p in enumerate(pkts):
        m["ip_version"][i] = p.version
        m["protocol"][i] = p.proto
        if p.version == 4:
            m["src4"][i], m["dst4"][i] = p.src, p.dst
        elif p.version == 6:
            m["src6_hi"][i], m["src6_lo"][i] = p.src >> 64, p.src & (2**64 - 1)
            m["dst6_hi"][i], m["dst6_lo"][i] = p.dst >> 64, p.dst & (2**64 - 1)
        m["sport"][i], m["dport"][i] = p.sport, p.dport
        m["tcp_flags"][i] = p.flags
        m["icmp_type"][i] = p.icmp_type
        m["timestamp"][i] = p.ts
        m["frag"][i] = p.frag
    return batch


def run(
    table: ConnTrack, pkts: list[Pkt], allowed: bool | list[bool] = True
) -> tuple[list[Outcome], list[int]]:
    batch = batch_of(pkts)
    zones = np.array([p.zone for p in pkts], dtype=np.int64)
    outcome, slot = table.process(batch.meta, batch.rows(), zones,
                                  np.asarray(allowed, dtype=bool))
    assert outcome.dtype == np.uint8 and slot.dtype == np.int64
    return [Outcome(int(o)) for o in outcome], [int(s) for s in slot]


def get(table: ConnTrack, p: Pkt, now: int | None = None) -> Found | None:
    return table.get(p.zone, p.proto, p.src, p.sport, p.dst, p.dport, ip_version=p.version,
                     now=now)


def consistent(table: ConnTrack) -> None:
    """The hash table indexes exactly the live records, each reachable from its home
    (no empty slot between), and every connection is found both ways round."""
    mask = len(table.ht) - 1
    used = np.flatnonzero(table.ht[:, 1] >= 0)
    live = np.flatnonzero(table.conns["state"] != State.NONE)
    assert sorted(table.ht[used, 1]) == list(live) and len(live) == len(table)
    assert (table.ht[used, 0] == table.conns["hash"][table.ht[used, 1]]).all()
    for j in used:
        i = int(table.ht[j, 0]) & mask
        while i != j:
            assert table.ht[i, 1] >= 0, f"slot {j} unreachable from its home {i}"
            i = (i + 1) & mask
    for c in table.dump():
        p = Pkt(c.src, c.sport, c.dst, c.dport, proto=c.protocol, zone=c.zone,
                version=c.ip_version)
        assert get(table, p) == Found(c.state, c.expiry, ORIG)
        assert get(table, p.back()) == Found(c.state, c.expiry, REPLY)


# ------------------------------------------------------------------ scenarios
def test_a_handshake_data_and_close_in_one_batch() -> None:
    table = ConnTrack(capacity=16, seed=1)
    syn = Pkt(V4A, 40000, V4B, 443, S)
    pkts = [syn, syn.back(SA), syn.again(A), syn.again(PA), syn.back(PA), syn.again(FA),
            syn.back(FA), syn.again(A)]
    pkts = [p._replace(ts=T0 + i) for i, p in enumerate(pkts)]
    outcome, slot = run(table, pkts)
    assert outcome == [N, RE, E, E, RE, E, RE, E]
    assert len(set(slot)) == 1 and slot[0] >= 0
    found = get(table, syn.back())
    timeouts = Timeouts()
    assert found == Found(State.TIME_WAIT, T0 + 7 + round(timeouts.tcp_time_wait * SEC), REPLY)
    assert table.counters() | {} == {
        "created": 1, "established": 4, "reply": 3, "denied": 0, "invalid": 0, "untracked": 0,
        "table_full": 0, "expired": 0, "rekeyed": 0, "sweeps": 0, "touched": 0,
    }
    (conn,) = table.dump()
    assert conn.text() == {
        "slot": slot[0], "zone": 0, "ip_version": 4, "protocol": 6, "src": "10.0.0.1",
        "sport": 40000, "dst": "192.0.2.7", "dport": 443, "state": "TIME_WAIT",
        "expiry": found.expiry,
    }


def test_a_reply_before_any_original_is_invalid_and_leaves_nothing() -> None:
    table = ConnTrack(capacity=16, seed=1)
    syn = Pkt(V4A, 40000, V4B, 443, S)
    ping = Pkt(V4A, 7, V4B, 7, proto=ICMP_P, icmp_type=8)
    outcome, slot = run(table, [syn.back(SA), syn.again(A), syn.again(R),
                                ping.back(icmp_type=0)])
    assert outcome == [INV] * 4 and slot == [-1] * 4
    assert len(table) == 0 and table.counters()["invalid"] == 4
    # Then the real opening: the stray packets claimed no orientation.
    assert run(table, [syn, syn.back(SA)])[0] == [N, RE]


def test_invalid_packets_change_neither_state_nor_expiry() -> None:
    table = ConnTrack(capacity=16, seed=1)
    syn = Pkt(V4A, 40000, V4B, 443, S)
    run(table, [syn])
    before = get(table, syn)
    outcome, slot = run(table, [syn.again(SA, ts=T0 + SEC), syn.back(A, ts=T0 + SEC),
                                syn.again(S | FA, ts=T0 + SEC)])
    assert outcome == [INV] * 3 and slot == [-1] * 3
    assert get(table, syn) == before


def test_a_denied_syn_leaves_no_state() -> None:
    table = ConnTrack(capacity=16, seed=1)
    denied = Pkt(V4A, 40000, V4B, 22, S)
    allowed = Pkt(V4A, 40001, V4B, 443, S)
    outcome, slot = run(table, [denied, allowed, denied.back(SA), allowed.back(SA)],
                        allowed=[False, True, True, True])
    assert outcome == [DEN, N, INV, RE]
    assert slot[0] == -1 and slot[2] == -1 and slot[1] == slot[3] >= 0
    assert get(table, denied) is None and len(table) == 1
    assert table.counters()["denied"] == 1
    # A row of a connection ignores its "allowed": the rules decide openings only.
    assert run(table, [allowed.again(A)], allowed=False)[0] == [E]


def test_a_denied_reopening_keeps_the_closed_connection() -> None:
    table = ConnTrack(capacity=16, seed=1)
    syn = Pkt(V4A, 40000, V4B, 443, S)
    run(table, [syn, syn.back(RA)])
    closed = get(table, syn)
    assert closed is not None and closed.state == State.CLOSE
    # From either side a SYN on a closed connection opens a new one: the rules decide.
    assert run(table, [syn.again(S), syn.back(S)], allowed=False)[0] == [DEN, DEN]
    assert get(table, syn) == closed
    assert run(table, [syn.again(S)])[0] == [N]
    assert get(table, syn).state == State.SYN_SENT  # type: ignore[union-attr]


def test_zones_keep_identical_tuples_apart() -> None:
    table = ConnTrack(capacity=16, seed=1)
    a, b = Pkt(V4A, 1234, V4B, 80, S, zone=1), Pkt(V4A, 1234, V4B, 80, S, zone=2)
    outcome, slot = run(table, [a, b, a.back(SA), a.back(SA, zone=3)])
    assert outcome == [N, N, RE, INV]
    assert slot[0] != slot[1] and slot[2] == slot[0]
    assert get(table, a).state == State.SYN_RECV  # type: ignore[union-attr]
    assert get(table, b).state == State.SYN_SENT  # type: ignore[union-attr]
    assert get(table, a._replace(zone=3)) is None
    with pytest.raises(ValueError, match="zones"):
        run(table, [a._replace(zone=1 << 16)])
    assert len(table) == 2 and table.counters()["created"] == 2


def test_an_ipv6_connection() -> None:
    table = ConnTrack(capacity=16, seed=1)
    syn = Pkt(V6A, 40000, V6B, 443, S, version=6)
    ping = Pkt(V6A, 9, V6B, 9, proto=ICMP6_P, icmp_type=128, version=6)
    outcome, _ = run(table, [syn, syn.back(SA), syn.again(A), ping, ping.back(icmp_type=129)])
    assert outcome == [N, RE, E, N, RE]
    found = table.get(0, TCP_P, "2001:db8::2", 443, "2001:db8::1", 40000)
    assert found is not None and found.state == State.ESTABLISHED and found.direction == REPLY
    # The IPv4 address with the same low bits is another connection.
    v4 = Pkt(V6A & 0xFFFFFFFF, 40000, V6B & 0xFFFFFFFF, 443, A)
    assert get(table, v4) is None and run(table, [v4])[0] == [INV]
    assert {(c.ip_version, c.protocol) for c in table.dump()} == {(6, TCP_P), (6, ICMP6_P)}


def test_expiry_then_rekeying_in_the_late_packets_orientation() -> None:
    table = ConnTrack(capacity=16, timeouts=Timeouts(udp_new=30), seed=1)
    query = Pkt(V4A, 53000, V4B, 53, proto=UDP_P)
    assert run(table, [query])[0] == [N]
    assert get(table, query, now=T0 + 29 * SEC) is not None
    assert get(table, query, now=T0 + 30 * SEC) is None
    late = query.back(ts=T0 + 30 * SEC)
    assert run(table, [late])[0] == [N]  # a new flow, the other way round
    assert get(table, late) == Found(State.NEW, T0 + 60 * SEC, ORIG)
    assert table.counters()["expired"] == 1 and len(table) == 1


def test_a_reply_side_syn_turns_a_closed_connection_round() -> None:
    table = ConnTrack(capacity=16, seed=1)
    syn = Pkt(V4A, 1000, V4B, 2000, S)
    run(table, [syn, syn.back(RA)])
    outcome, _ = run(table, [syn.back(S, ts=T0 + 1), syn.again(SA, ts=T0 + 2)])
    assert outcome == [N, RE]
    found = get(table, syn.back())
    assert found is not None and found.direction == ORIG and found.state == State.SYN_RECV
    assert table.counters()["rekeyed"] == 1 and len(table) == 1


def test_untracked_rows_are_the_callers() -> None:
    table = ConnTrack(capacity=16, seed=1)
    error = Pkt(V4B, 0, V4A, 0, proto=ICMP_P, icmp_type=3)
    fragment = Pkt(V4A, 0, V4B, 0, proto=UDP_P, frag=2)
    not_ip = Pkt(0, 0, 0, 0, proto=0, version=0)
    gre = Pkt(V4A, 0, V4B, 0, proto=GRE_P)  # no handshake: tracked as datagrams
    outcome, slot = run(table, [error, fragment, not_ip, gre])
    assert outcome == [UNT, UNT, UNT, N] and slot[:3] == [-1] * 3
    assert table.counters()["untracked"] == 3 and len(table) == 1


def test_one_now_for_the_whole_call() -> None:
    table = ConnTrack(capacity=16, timeouts=Timeouts(udp_new=30), seed=1)
    batch = batch_of([Pkt(V4A, 5000, V4B, 53, proto=UDP_P, ts=0)])
    table.process(batch.meta, batch.rows(), 0, True, now=T0)
    found = table.get(0, UDP_P, V4A, 5000, V4B, 53)
    assert found is not None and found.expiry == T0 + 30 * SEC


def test_touch_keeps_a_connection_alive_past_its_first_expiry() -> None:
    table = ConnTrack(capacity=16, timeouts=Timeouts(udp_new=300, udp_established=300),
                      seed=1)
    flow = Pkt(V4A, 5000, V4B, 53, proto=UDP_P)
    other = Pkt(V4A, 5001, V4B, 53, proto=UDP_P)
    _, slot = run(table, [flow, other])
    # Only ``flow`` was forwarded from the flow cache since; -1 rows are skipped.
    assert table.touch(np.array([slot[0], -1]), T0 + 200 * SEC) == 1
    assert get(table, flow) == Found(State.NEW, T0 + 500 * SEC, ORIG)
    outcome, _ = run(table, [flow.back(ts=T0 + 400 * SEC), other.back(ts=T0 + 400 * SEC)])
    assert outcome == [RE, N]  # ``other`` expired: its late reply opens a flow of its own
    # A touch never shortens a timer, and never revives an expired connection.
    assert table.touch(np.array([slot[0]]), T0 + 300 * SEC) == 1
    assert get(table, flow) == Found(State.ESTABLISHED, T0 + 700 * SEC, ORIG)
    assert table.touch(np.array([slot[0]]), T0 + 700 * SEC) == 0
    assert get(table, flow, now=T0 + 700 * SEC) is None
    assert table.counters()["touched"] == 2


def test_a_full_table_refuses_new_connections_and_counts_them() -> None:
    table = ConnTrack(capacity=4, timeouts=Timeouts(udp_new=30, udp_established=30), seed=1,
                      sweep_interval=1.0)
    flows = [Pkt(V4A, port, V4B, 53, proto=UDP_P) for port in range(5000, 5006)]
    outcome, slot = run(table, [*flows[:5], flows[0].back()])
    assert outcome == [N, N, N, N, FULL, RE]  # the existing ones still pass
    assert slot[4] == -1 and len(table) == 4
    # A full table sweeps for expired connections before refusing, at most once a
    # sweep_interval: a flood of new flows does not scan the table for every row.
    assert table.counters()["sweeps"] == 1
    assert run(table, [flows[5]._replace(ts=T0 + SEC // 2)])[0] == [FULL]
    assert table.counters()["table_full"] == 2 and table.counters()["sweeps"] == 1
    # Past their expiry the sweep makes room.
    late = [f._replace(ts=T0 + 31 * SEC) for f in flows[4:6]]
    assert run(table, late)[0] == [N, N]
    assert len(table) == 2 and table.counters()["sweeps"] == 2
    assert table.counters()["expired"] == 4
    consistent(table)


def test_sweeps_after_many_deletions_leave_every_connection_findable() -> None:
    """Backward-shift deletion: thousands of connections made and freed at random,
    the table checked whole after each round."""
    rng = np.random.default_rng(7)
    table = ConnTrack(capacity=1024, timeouts=Timeouts(udp_new=10, tcp_transitory=10), seed=3)
    assert len(table.ht) == capacity_slots(1024) == 2048
    now = T0
    for _ in range(8):
        n = 1024 - len(table)
        ports = rng.choice(60000, n, replace=False) + 1024
        hosts = rng.integers(1, 8, n)  # few hosts: many tuples share an address pair
        pkts = [
            Pkt(V4A + int(h), int(p), V4B, 53, proto=UDP_P if p % 2 else TCP_P,
                flags=S, ts=now + int(rng.integers(0, 10 * SEC)), zone=int(h) % 3,
                version=4 if p % 3 else 6)
            for h, p in zip(hosts, ports, strict=True)
        ]
        outcome, _ = run(table, pkts)
        assert set(outcome) <= {N, E, INV}  # E, INV: a tuple still live from an earlier round
        consistent(table)
        now += 10 * SEC
        expected = int(((table.conns["state"] != State.NONE)
                        & (table.conns["expiry"] <= now + 5 * SEC)).sum())
        assert table.expire(now + 5 * SEC) == expected
        consistent(table)
    assert table.counters()["expired"] > 3000


def test_a_tcp_connection_built_with_scapy() -> None:
    c = Ether() / IP(src="10.0.0.1", dst="192.0.2.7")
    s = Ether() / IP(src="192.0.2.7", dst="10.0.0.1")
    packets = [
        c / TCP(sport=40000, dport=80, flags="S", seq=100),
        s / TCP(sport=80, dport=40000, flags="SA", seq=500, ack=101),
        c / TCP(sport=40000, dport=80, flags="A", seq=101, ack=501),
        c / TCP(sport=40000, dport=80, flags="PA", seq=101, ack=501) / b"GET / HTTP/1.0\r\n\r\n",
        s / TCP(sport=80, dport=40000, flags="RA", seq=501, ack=119),
        s / TCP(sport=80, dport=40000, flags="SA", seq=900, ack=101),
    ]
    batch = Batch(len(packets))
    batch.reset(len(packets))
    for i, p in enumerate(packets):
        raw = bytes(p)
        start = int(batch.meta["start"][i])
        batch.data[i, start : start + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        batch.meta["length"][i] = batch.meta["wire_length"][i] = len(raw)
        batch.meta["timestamp"][i] = T0 + i
    parse(batch)
    table = ConnTrack(capacity=16, seed=1)
    outcome, _ = table.process(batch.meta, batch.rows(), 5, True)
    assert [Outcome(int(o)) for o in outcome] == [N, RE, E, E, RE, INV]
    found = table.get(5, TCP_P, "192.0.2.7", 80, "10.0.0.1", 40000)
    assert found is not None and found.state == State.CLOSE and found.direction == REPLY


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ConnTrack(capacity=0)
    table = ConnTrack(capacity=16, seed=1)
    batch = batch_of([Pkt(V4A, 1, V4B, 2, S)] * 2)
    with pytest.raises(ValueError, match="allowed: 3 values for 2 rows"):
        table.process(batch.meta, batch.rows(), 0, np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="mixed IP versions"):
        table.get(0, TCP_P, "10.0.0.1", 1, "2001:db8::1", 2)
    with pytest.raises(ValueError, match="sport"):
        table.get(0, TCP_P, V4A, 1 << 16, V4B, 2)
    with pytest.raises(KeyError):
        table.connection(0)
    assert CONN_DTYPE.itemsize == 64


# -------------------------------------------------------- against the reference
def _verdict(outcome: Outcome) -> Verdict:
    if outcome == N:
        return Verdict.NEW
    if outcome in (E, RE):
        return Verdict.ACCEPT
    assert outcome in (INV, UNT), outcome  # the reference knows no DENIED or TABLE_FULL
    return Verdict.INVALID  # the reference calls ICMP errors INVALID too


TUPLES = (  # (proto, version, src, sport, dst, dport, zone)
    (TCP_P, 4, V4A, 40000, V4B, 443, 0),
    (TCP_P, 4, V4A, 40000, V4B, 443, 1),  # the same tuple in another zone
    (TCP_P, 6, V6A, 5555, V6B, 22, 0),
    (UDP_P, 4, V4A, 5353, V4B, 53, 0),
    (ICMP_P, 4, V4A, 77, V4B, 77, 0),  # echo: the identifier in both ports
    (ICMP6_P, 6, V6A, 9, V6B, 9, 2),
)
TCP_FLAGS = (S, S, SA, SA, A, PA, FA, R, RA, 0, S | FA)
ICMP_TYPES = {ICMP_P: (8, 8, 0, 0, 3, 13, 14), ICMP6_P: (128, 128, 129, 129, 1)}
GAPS = (0, 0, SEC, 30 * SEC, 61 * SEC, 250 * SEC, 310 * SEC, 2 * 3600 * SEC + 300 * SEC)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Pkt], list[int]]:
    """Packets over a few tuples in both directions, and the batch sizes to cut them in."""
    pkts: list[Pkt] = []
    now = T0
    for _ in range(draw(st.integers(1, 60))):
        proto, version, src, sport, dst, dport, zone = draw(st.sampled_from(TUPLES))
        now += draw(st.sampled_from(GAPS))
        p = Pkt(src, sport, dst, dport, proto=proto, ts=now, zone=zone, version=version)
        if proto == TCP_P:
            p = p._replace(flags=draw(st.sampled_from(TCP_FLAGS)))
        elif proto in ICMP_TYPES:
            p = p._replace(icmp_type=draw(st.sampled_from(ICMP_TYPES[proto])))
        pkts.append(p.back(p.flags) if draw(st.booleans()) else p)
    sizes = draw(st.lists(st.integers(1, 8), min_size=len(pkts), max_size=len(pkts)))
    return pkts, sizes


def _reference_view(ref: ConnTable, p: Pkt, now: int) -> Found | None:
    conn = ref.get(*p.key())
    if conn is None or now >= conn.expiry:
        return None
    return Found(conn.state, conn.expiry, ORIG if conn.key == p.key() else REPLY)


@settings(max_examples=250, deadline=None)
@given(streams())
def test_verdicts_and_states_equal_the_reference(stream: tuple[list[Pkt], list[int]]) -> None:
    pkts, sizes = stream
    table = ConnTrack(capacity=16, seed=5)
    ref = ConnTable()
    at = 0
    for size in sizes:
        chunk = pkts[at : at + size]
        if not chunk:
            break
        at += size
        outcome, slot = run(table, chunk)
        for p, o, s in zip(chunk, outcome, slot, strict=True):
            want = Verdict(int(ref.process([p.key()], [p.flags], [p.icmp_type], [p.ts])[0]))
            assert _verdict(o) == want, (p, o)
            assert (s >= 0) == (want != Verdict.INVALID)
        now = chunk[-1].ts
        for proto, version, src, sport, dst, dport, zone in TUPLES:
            p = Pkt(src, sport, dst, dport, proto=proto, zone=zone, version=version)
            assert get(table, p, now=now) == _reference_view(ref, p, now), p
            assert get(table, p.back(), now=now) == _reference_view(ref, p.back(), now)
    consistent(table)
