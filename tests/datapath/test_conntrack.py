"""Connection tracking: the machine as declared, its kernel against its scalar twin, real packets.

The sequences below are the TCP exchanges RFC 793/9293 describe (three-way
handshake, simultaneous open, orderly close from either side and at once,
resets), each checked step by step with ``advance``; then the kernel is held to
``advance`` row by row with Hypothesis, and a whole connection built with Scapy
is parsed and tracked through ``ConnTable``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from portico.batch import Batch
from portico.datapath.conntrack import (
    DEFAULT_TIMEOUTS,
    EVENTS,
    INVALID,
    TRANSITION_ROWS,
    TRANSITIONS,
    VERDICTS,
    ConnTable,
    Direction,
    Event,
    Key,
    ProtoClass,
    State,
    Timeouts,
    Verdict,
    advance,
    build_transitions,
    event_of,
    step,
    tcp_event,
    timeout_ns,
    track,
)
from portico.datapath.stages.parse import parse

O, R = Direction.ORIGINAL, Direction.REPLY
S, SA, A, PA, FA, RA, RST_ = 0x02, 0x12, 0x10, 0x18, 0x11, 0x14, 0x04
TCP_P, UDP_P, ICMP_P, ICMP6_P = 6, 17, 1, 58
SEC = 1_000_000_000


def walk(start: State, steps: list[tuple[Direction, int, State]], **kw: int) -> None:
    """Feed (direction, flags) one by one and check each resulting state."""
    state = int(start)
    for direction, flags, want in steps:
        got = advance(state, direction, flags, **kw)
        assert got == want, (
            f"{State(state).name} + {direction.name} {flags:#04x}: "
            f"got {got if got == INVALID else State(got).name}, want {want.name}"
        )
        state = got


# ------------------------------------------------------------------- the table
def test_declaration_is_a_whitelist_and_a_cell_is_declared_once() -> None:
    assert TRANSITIONS.shape == (len(State), 2, len(Event))
    assert TRANSITIONS.dtype == np.uint8
    declared = sum(2 if d == "both" else 1 for _, d, _, _ in TRANSITION_ROWS)
    assert (TRANSITIONS != INVALID).sum() == declared
    with pytest.raises(ValueError, match="declared twice"):
        build_transitions([*TRANSITION_ROWS, ("NONE", "orig", "SYN", "SYN_SENT")])
    # A packet with impossible flags or an ICMP error never fits any state.
    assert (TRANSITIONS[:, :, Event.BAD] == INVALID).all()
    assert (TRANSITIONS[:, :, Event.UNTRACKED] == INVALID).all()
    # Only the originator opens; nothing but an opener is valid on NONE.
    assert (TRANSITIONS[State.NONE, R] == INVALID).all()
    assert {Event(int(e)) for e in np.flatnonzero(TRANSITIONS[State.NONE, O] != INVALID)} == {
        Event.SYN,
        Event.DATAGRAM,
        Event.REQUEST,
    }
    assert ((VERDICTS == Verdict.INVALID) == (TRANSITIONS == INVALID)).all()


@pytest.mark.parametrize(
    ("flags", "event"),
    [
        (S, Event.SYN),
        (S | 0xC0, Event.SYN),  # ECE+CWR: an ECN-setup SYN
        (SA, Event.SYNACK),
        (SA | 0x40, Event.SYNACK),
        (A, Event.ACK),
        (PA, Event.ACK),
        (A | 0x20, Event.ACK),  # URG
        (FA, Event.FIN),
        (FA | 0x08, Event.FIN),
        (RST_, Event.RST),
        (RA, Event.RST),
        (0, Event.BAD),  # null scan
        (0x01, Event.BAD),  # FIN without ACK
        (0x29, Event.BAD),  # FIN+PSH+URG: Xmas scan
        (0x03, Event.BAD),  # SYN+FIN
        (0x06, Event.BAD),  # SYN+RST
        (0x05, Event.BAD),  # FIN+RST
        (0x08, Event.BAD),  # PSH alone
    ],
)
def test_tcp_events_from_flags(flags: int, event: Event) -> None:
    assert tcp_event(flags) == event
    assert EVENTS[ProtoClass.TCP, flags] == event
    assert event_of(TCP_P, flags) == event


def test_events_of_other_protocols() -> None:
    assert event_of(UDP_P) == Event.DATAGRAM
    assert event_of(47) == Event.DATAGRAM  # GRE: tracked as a datagram flow
    assert event_of(ICMP_P, icmp_type=8) == Event.REQUEST
    assert event_of(ICMP_P, icmp_type=0) == Event.RESPONSE
    assert event_of(ICMP_P, icmp_type=13) == Event.REQUEST  # timestamp
    assert event_of(ICMP_P, icmp_type=3) == Event.UNTRACKED  # unreachable
    assert event_of(ICMP_P, icmp_type=11) == Event.UNTRACKED  # time exceeded
    assert event_of(ICMP6_P, icmp_type=128) == Event.REQUEST
    assert event_of(ICMP6_P, icmp_type=129) == Event.RESPONSE
    assert event_of(ICMP6_P, icmp_type=8) == Event.UNTRACKED  # v4 numbers mean nothing in v6
    assert event_of(ICMP6_P, icmp_type=135) == Event.UNTRACKED  # neighbour solicitation


# ------------------------------------------------------------------ sequences
def test_three_way_handshake_and_data() -> None:
    walk(
        State.NONE,
        [
            (O, S, State.SYN_SENT),
            (R, SA, State.SYN_RECV),
            (O, A, State.ESTABLISHED),
            (O, PA, State.ESTABLISHED),
            (R, PA, State.ESTABLISHED),
            (R, A, State.ESTABLISHED),
        ],
    )


def test_handshake_retransmissions_keep_the_state() -> None:
    walk(
        State.NONE,
        [
            (O, S, State.SYN_SENT),
            (O, S, State.SYN_SENT),  # no answer yet
            (R, SA, State.SYN_RECV),
            (O, S, State.SYN_RECV),  # the SYN+ACK got lost on the way back
            (R, SA, State.SYN_RECV),
            (R, PA, State.SYN_RECV),  # TCP Fast Open: the server speaks first
            (O, A, State.ESTABLISHED),
            (R, SA, State.ESTABLISHED),  # the third ACK got lost
        ],
    )


def test_simultaneous_open() -> None:
    walk(
        State.NONE,
        [
            (O, S, State.SYN_SENT),
            (R, S, State.SYN_SENT2),  # the SYNs crossed
            (O, SA, State.SYN_RECV2),  # legitimate here: both sides sent a SYN
            (R, SA, State.ESTABLISHED),
            (O, PA, State.ESTABLISHED),
        ],
    )
    walk(State.SYN_SENT2, [(R, SA, State.SYN_RECV2), (O, A, State.ESTABLISHED)])


def test_close_from_the_originator() -> None:
    walk(
        State.ESTABLISHED,
        [
            (O, FA, State.FIN_WAIT_ORIG),
            (R, A, State.FIN_WAIT_ORIG),  # the FIN acknowledged
            (R, PA, State.FIN_WAIT_ORIG),  # half-closed: the responder still sends
            (O, A, State.FIN_WAIT_ORIG),
            (O, FA, State.FIN_WAIT_ORIG),  # a retransmitted FIN is not the second FIN
            (R, FA, State.LAST_ACK),
            (O, A, State.TIME_WAIT),
            (O, A, State.TIME_WAIT),  # the last ACK retransmitted
            (R, FA, State.TIME_WAIT),  # the responder's FIN retransmitted
        ],
    )


def test_close_from_the_responder() -> None:
    walk(
        State.ESTABLISHED,
        [
            (R, FA, State.FIN_WAIT_REPLY),
            (O, PA, State.FIN_WAIT_REPLY),
            (R, FA, State.FIN_WAIT_REPLY),
            (O, FA, State.LAST_ACK),
            (R, A, State.TIME_WAIT),
        ],
    )


def test_simultaneous_close() -> None:
    walk(
        State.ESTABLISHED,
        [
            (O, FA, State.FIN_WAIT_ORIG),
            (R, FA, State.LAST_ACK),
            (O, A, State.TIME_WAIT),
            (R, A, State.TIME_WAIT),
        ],
    )


@pytest.mark.parametrize("direction", [O, R])
@pytest.mark.parametrize("flags", [RST_, RA])
@pytest.mark.parametrize("state", [s for s in State if s not in (State.NONE, State.NEW)])
def test_reset_from_either_side_closes(state: State, direction: Direction, flags: int) -> None:
    assert advance(state, direction, flags) == State.CLOSE


def test_a_reset_with_no_connection_is_invalid() -> None:
    assert advance(State.NONE, O, RST_) == INVALID


def test_reopening_after_close() -> None:
    for closed in (State.TIME_WAIT, State.CLOSE):
        assert advance(closed, O, S) == State.SYN_SENT
        assert VERDICTS[closed, O, Event.SYN] == Verdict.NEW
        # From the other side the key would have to turn round: the table's owner does that.
        assert advance(closed, R, S) == INVALID
    assert VERDICTS[State.NONE, O, Event.SYN] == Verdict.NEW
    assert VERDICTS[State.SYN_SENT, O, Event.SYN] == Verdict.ACCEPT  # a retransmission


@pytest.mark.parametrize(
    ("state", "direction", "flags", "why"),
    [
        (State.NONE, O, A, "mid-stream pick-up: no state, no entry"),
        (State.NONE, O, PA, "data with no connection"),
        (State.NONE, O, SA, "an unsolicited SYN+ACK"),
        (State.NONE, O, FA, "a FIN with no connection"),
        (State.SYN_SENT, O, SA, "SYN+ACK from the originator"),
        (State.SYN_SENT, O, PA, "data before the handshake"),
        (State.SYN_SENT, R, A, "an ACK that acknowledges no SYN+ACK"),
        (State.SYN_SENT, O, FA, "a FIN before the handshake"),
        (State.SYN_RECV, O, SA, "SYN+ACK from the originator"),
        (State.SYN_RECV, R, S, "a SYN from the responder after its SYN+ACK"),
        (State.ESTABLISHED, O, SA, "SYN+ACK from the originator"),
        (State.ESTABLISHED, O, S, "a SYN on an established connection"),
        (State.ESTABLISHED, R, S, "a SYN on an established connection"),
        (State.FIN_WAIT_ORIG, O, S, "a SYN while closing"),
        (State.LAST_ACK, R, SA, "a SYN+ACK while closing"),
        (State.TIME_WAIT, R, SA, "a SYN+ACK after the close"),
        (State.CLOSE, O, A, "data after a reset"),
        (State.ESTABLISHED, O, 0x03, "SYN+FIN"),
        (State.ESTABLISHED, R, 0x00, "no flags"),
        (State.ESTABLISHED, O, 0x01, "FIN without ACK"),
    ],
)
def test_invalid_tcp(state: State, direction: Direction, flags: int, why: str) -> None:
    assert advance(state, direction, flags) == INVALID, why


def test_udp_new_then_established() -> None:
    walk(
        State.NONE,
        [
            (O, 0, State.NEW),
            (O, 0, State.NEW),
            (R, 0, State.ESTABLISHED),
            (O, 0, State.ESTABLISHED),
        ],
        protocol=UDP_P,
    )
    assert advance(State.NONE, R, 0, protocol=UDP_P) == INVALID
    assert advance(State.SYN_SENT, O, 0, protocol=UDP_P) == INVALID  # TCP states are not UDP's


@pytest.mark.parametrize(("proto", "ask", "answer"), [(ICMP_P, 8, 0), (ICMP6_P, 128, 129)])
def test_icmp_echo(proto: int, ask: int, answer: int) -> None:
    def go(state: int, direction: Direction, kind: int) -> int:
        return advance(state, direction, protocol=proto, icmp_type=kind)

    assert go(State.NONE, O, ask) == State.NEW
    assert go(State.NEW, O, ask) == State.NEW
    assert go(State.NEW, R, answer) == State.ESTABLISHED
    assert go(State.ESTABLISHED, O, ask) == State.ESTABLISHED
    assert go(State.NONE, O, answer) == INVALID  # an echo reply nobody asked for
    assert go(State.NEW, O, answer) == INVALID
    assert go(State.NEW, R, ask) == INVALID
    assert go(State.ESTABLISHED, R, ask) == INVALID


# ------------------------------------------------------------------- timeouts
def test_default_timeouts_follow_the_rfcs() -> None:
    assert timeout_ns(TCP_P, State.ESTABLISHED) == (2 * 3600 + 4 * 60) * SEC  # RFC 5382 REQ-5
    for s in (
        State.SYN_SENT,
        State.SYN_SENT2,
        State.SYN_RECV,
        State.SYN_RECV2,
        State.FIN_WAIT_ORIG,
        State.FIN_WAIT_REPLY,
        State.LAST_ACK,
        State.TIME_WAIT,
        State.CLOSE,  # RFC 7857 2.2: 4 minutes after an RST
    ):
        assert timeout_ns(TCP_P, s) == 240 * SEC, s.name
    assert timeout_ns(UDP_P, State.NEW) == timeout_ns(UDP_P, State.ESTABLISHED) == 300 * SEC
    assert timeout_ns(ICMP_P, State.ESTABLISHED) == timeout_ns(ICMP6_P, State.NEW) == 60 * SEC
    # Every state a transition can reach has a timeout for the protocols that reach it.
    for _, _, e, nxt in TRANSITION_ROWS:
        cls = {
            "DATAGRAM": [ProtoClass.UDP, ProtoClass.OTHER],
            "REQUEST": [ProtoClass.ICMP, ProtoClass.ICMPV6],
            "RESPONSE": [ProtoClass.ICMP, ProtoClass.ICMPV6],
        }.get(e, [ProtoClass.TCP])
        for c in cls:
            assert DEFAULT_TIMEOUTS[c, State[nxt]] > 0, (c, nxt)


def test_timeouts_are_configurable_and_checked() -> None:
    table = Timeouts(tcp_established=3600, udp_new=30, icmp=10).table()
    assert table[ProtoClass.TCP, State.ESTABLISHED] == 3600 * SEC
    assert table[ProtoClass.UDP, State.NEW] == 30 * SEC
    assert table[ProtoClass.UDP, State.ESTABLISHED] == 300 * SEC
    assert table[ProtoClass.ICMPV6, State.ESTABLISHED] == 10 * SEC
    with pytest.raises(ValueError, match="tcp_transitory"):
        Timeouts(tcp_transitory=0)


def one(
    state: int, expiry: int, direction: int, proto: int, flags: int, kind: int, now: int
) -> tuple[int, Verdict, int]:
    nxt, verdict, exp = step(
        np.array([state]),
        np.array([expiry]),
        np.array([direction]),
        np.array([proto]),
        np.array([flags]),
        np.array([kind]),
        np.array([now]),
    )
    return int(nxt[0]), Verdict(int(verdict[0])), int(exp[0])


def test_kernel_sets_the_expiry_of_the_new_state() -> None:
    now = 1_700_000_000 * SEC
    assert one(State.NONE, 0, O, TCP_P, S, 0, now) == (State.SYN_SENT, Verdict.NEW, now + 240 * SEC)
    assert one(State.SYN_RECV, now, O, TCP_P, A, 0, now - 1) == (
        State.ESTABLISHED,
        Verdict.ACCEPT,
        now - 1 + 7440 * SEC,
    )
    assert one(State.NONE, 0, O, UDP_P, 0, 0, now) == (State.NEW, Verdict.NEW, now + 300 * SEC)
    assert one(State.NEW, now + SEC, R, ICMP_P, 0, 0, now) == (
        State.ESTABLISHED,
        Verdict.ACCEPT,
        now + 60 * SEC,
    )


def test_invalid_packets_change_nothing_not_even_the_timer() -> None:
    now = 10 * SEC
    assert one(State.ESTABLISHED, now + 5, O, TCP_P, 0x03, 0, now) == (
        State.ESTABLISHED,
        Verdict.INVALID,
        now + 5,
    )


def test_an_expired_connection_lends_no_state() -> None:
    expiry = 100 * SEC
    # Mid-stream data after the idle timeout: as if there were no connection.
    assert one(State.ESTABLISHED, expiry, O, TCP_P, PA, 0, expiry)[1] == Verdict.INVALID
    assert one(State.ESTABLISHED, expiry, O, TCP_P, PA, 0, expiry - 1)[1] == Verdict.ACCEPT
    # A new SYN on it opens a fresh connection.
    assert one(State.ESTABLISHED, expiry, O, TCP_P, S, 0, expiry + 1)[:2] == (
        State.SYN_SENT,
        Verdict.NEW,
    )
    # An expired UDP flow starts over as NEW; a late reply is not enough.
    assert one(State.ESTABLISHED, expiry, O, UDP_P, 0, 0, expiry)[:2] == (State.NEW, Verdict.NEW)
    assert one(State.NEW, expiry, R, UDP_P, 0, 0, expiry)[1] == Verdict.INVALID


# ----------------------------------------------------------- kernel == scalar
rows = st.tuples(
    st.sampled_from(list(State)),
    st.sampled_from([O, R]),
    st.sampled_from([TCP_P, TCP_P, TCP_P, UDP_P, ICMP_P, ICMP6_P, 47]),
    st.integers(0, 255),  # TCP flags: every byte, not just the sensible ones
    st.sampled_from([0, 3, 8, 11, 13, 14, 128, 129, 135, 255]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(rows, min_size=1, max_size=64))
def test_kernel_equals_advance_row_by_row(
    batch: list[tuple[State, Direction, int, int, int]],
) -> None:
    states, dirs, protos, flags, kinds = (np.array(col) for col in zip(*batch, strict=True))
    now = np.arange(len(batch), dtype=np.int64) * SEC + 5
    expiry = now + 1  # none has expired
    nxt, verdict, exp = step(states, expiry, dirs, protos, flags, kinds, now)
    for i, (s, d, p, f, k) in enumerate(batch):
        want = advance(s, d, f, protocol=p, icmp_type=k)
        if want == INVALID:
            assert (nxt[i], verdict[i], exp[i]) == (s, Verdict.INVALID, expiry[i])
        else:
            assert nxt[i] == want
            assert verdict[i] == VERDICTS[s, d, event_of(p, f, k)] != Verdict.INVALID
            assert exp[i] == now[i] + timeout_ns(p, want)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([O, R]), st.sampled_from([S, SA, A, PA, FA, RA, 0x03]))))
def test_one_slot_in_a_batch_sees_its_own_updates(seq: list[tuple[Direction, int]]) -> None:
    """Rows of one connection in one batch advance it in order, as packets one at a time."""
    n = len(seq)
    state = np.zeros(1, dtype=np.uint8)
    expiry = np.zeros(1, dtype=np.int64)
    verdict = track(
        state,
        expiry,
        np.zeros(n, dtype=np.intp),
        np.array([d for d, _ in seq], dtype=np.uint8),
        np.full(n, TCP_P, dtype=np.uint8),
        np.array([f for _, f in seq], dtype=np.uint8),
        np.zeros(n, dtype=np.uint8),
        np.arange(n, dtype=np.int64),
        DEFAULT_TIMEOUTS,
    )
    s = int(State.NONE)
    for i, (d, f) in enumerate(seq):
        nxt = advance(s, d, f)
        assert (verdict[i] == Verdict.INVALID) == (nxt == INVALID)
        s = s if nxt == INVALID else nxt
    assert state[0] == s


# -------------------------------------------------------- the reference table
def key(zone: int, src: int, sport: int, dst: int, dport: int, proto: int = TCP_P) -> Key:
    return (zone, proto, src, sport, dst, dport)


def test_conntable_normalises_direction_and_keeps_zones_apart() -> None:
    table = ConnTable()
    out = key(1, 10, 1234, 20, 80)
    back = key(1, 20, 80, 10, 1234)
    other_zone = key(2, 20, 80, 10, 1234)
    verdicts = table.process(
        [out, back, other_zone, out], [S, SA, SA, A], [0, 0, 0, 0], [1, 2, 3, 4]
    )
    assert list(verdicts) == [Verdict.NEW, Verdict.ACCEPT, Verdict.INVALID, Verdict.ACCEPT]
    conn = table.get(*back)
    assert conn is not None and conn.key == out and conn.state == State.ESTABLISHED
    assert table.get(*other_zone) is None  # the stray SYN+ACK in zone 2 made no entry
    assert len(table) == 1


def test_conntable_turns_a_closed_entry_round_for_a_reply_side_syn() -> None:
    table = ConnTable()
    a_to_b, b_to_a = key(0, 1, 1000, 2, 2000), key(0, 2, 2000, 1, 1000)
    table.process([a_to_b, b_to_a], [S, RA], [0, 0], [1, 2])  # refused
    assert table.get(*a_to_b).state == State.CLOSE  # type: ignore[union-attr]
    assert list(table.process([b_to_a], [S], [0], [3])) == [Verdict.NEW]
    conn = table.get(*a_to_b)
    assert conn is not None and conn.key == b_to_a and conn.state == State.SYN_SENT


def test_conntable_expiry() -> None:
    table = ConnTable(timeouts=Timeouts(udp_new=30))
    flow = key(0, 1, 53000, 2, 53, UDP_P)
    reply = key(0, 2, 53, 1, 53000, UDP_P)
    table.process([flow], [0], [0], [0])
    assert table.expire(29 * SEC) == 0
    # A late reply after expiry opens a flow of its own, the other way round.
    assert list(table.process([reply], [0], [0], [30 * SEC])) == [Verdict.NEW]
    conn = table.get(*flow)
    assert conn is not None and conn.key == reply and conn.state == State.NEW
    assert table.expire(60 * SEC) == 1
    assert len(table) == 0


def test_conntable_grows() -> None:
    table = ConnTable(capacity=2)
    keys = [key(0, 1, port, 2, 80) for port in range(100)]
    verdicts = table.process(keys, [S] * 100, [0] * 100, [0] * 100)
    assert (verdicts == Verdict.NEW).all() and len(table) == 100


# ------------------------------------------------------------- real packets
CLIENT, SERVER = "10.0.0.1", "192.0.2.7"


def client(flags: str, seq: int, ack: int = 0, data: bytes = b"") -> Packet:
    return (
        Ether()
        / IP(src=CLIENT, dst=SERVER)
        / TCP(sport=40000, dport=443, flags=flags, seq=seq, ack=ack)
        / data
    )


def server(flags: str, seq: int, ack: int = 0, data: bytes = b"") -> Packet:
    return (
        Ether()
        / IP(src=SERVER, dst=CLIENT)
        / TCP(sport=443, dport=40000, flags=flags, seq=seq, ack=ack)
        / data
    )


def tcp_connection() -> list[tuple[Packet, State, Verdict]]:
    """A whole TCP connection, client closes first, with the state after each packet."""
    return [
        (client("S", 100), State.SYN_SENT, Verdict.NEW),
        (server("SA", 900, 101), State.SYN_RECV, Verdict.ACCEPT),
        (client("A", 101, 901), State.ESTABLISHED, Verdict.ACCEPT),
        (client("PA", 101, 901, b"GET /"), State.ESTABLISHED, Verdict.ACCEPT),
        (server("PA", 901, 106, b"200"), State.ESTABLISHED, Verdict.ACCEPT),
        (client("FA", 106, 904), State.FIN_WAIT_ORIG, Verdict.ACCEPT),
        (server("A", 904, 107), State.FIN_WAIT_ORIG, Verdict.ACCEPT),
        (server("FA", 904, 107), State.LAST_ACK, Verdict.ACCEPT),
        (client("A", 107, 905), State.TIME_WAIT, Verdict.ACCEPT),
    ]


def parsed(packets: list[Packet], start: int = 1_700_000_000 * SEC) -> Batch:
    batch = Batch.from_packets(bytes(p) for p in packets)
    parse(batch)
    assert (batch.meta["drop"][: batch.count] == 0).all()
    batch.meta["timestamp"][: batch.count] = start + np.arange(batch.count) * 1_000_000
    return batch


@pytest.mark.parametrize("batch_size", [1, 4, 9])
def test_a_real_tcp_connection_built_with_scapy(batch_size: int) -> None:
    """Scapy builds it, parse reads the flags, the kernel tracks it (in batches of any size)."""
    conn = tcp_connection()
    table = ConnTable()
    batch = parsed([p for p, _, _ in conn])
    assert list(batch.meta["tcp_flags"][: batch.count]) == [
        int(p[TCP].flags)
        for p, _, _ in conn  # type: ignore[index]
    ]
    got: list[tuple[State, Verdict]] = []
    for lo in range(0, batch.count, batch_size):
        rows = np.arange(lo, min(lo + batch_size, batch.count))
        verdicts = table.process_batch(batch, zone=7, rows=rows)
        assert len(verdicts) == len(rows)
        # Only the state after the last row of a call is visible from outside.
        for r, v in zip(rows, verdicts, strict=True):
            got.append((conn[r][1], Verdict(int(v))))
        entry = table.get(7, TCP_P, 0x0A000001, 40000, 0xC0000207, 443)
        assert entry is not None and entry.state == conn[rows[-1]][1]
    assert [v for _, v in got] == [v for _, _, v in conn]
    final = table.get(7, TCP_P, 0xC0000207, 443, 0x0A000001, 40000)
    assert final is not None
    assert final.key == (7, TCP_P, 0x0A000001, 40000, 0xC0000207, 443)  # the client's direction
    assert final.expiry == int(batch.meta["timestamp"][batch.count - 1]) + 240 * SEC


def test_unsolicited_packets_built_with_scapy_are_invalid() -> None:
    inbound = Ether() / IP(src=SERVER, dst=CLIENT)
    batch = parsed(
        [
            inbound / TCP(sport=443, dport=40001, flags="SA"),  # a SYN+ACK nobody asked for
            inbound / TCP(sport=443, dport=40002, flags="A"),  # an ACK scan
            inbound / TCP(sport=443, dport=40003, flags="FPU"),  # Xmas
            inbound / ICMP(type=0, id=7),  # an echo reply with no request
            inbound / ICMP(type=3, code=1) / IP(src=CLIENT, dst=SERVER) / UDP(),  # an error
        ]
    )
    table = ConnTable()
    assert (table.process_batch(batch) == Verdict.INVALID).all()
    assert len(table) == 0


def test_udp_and_icmp_flows_built_with_scapy() -> None:
    c4, s4 = Ether() / IP(src=CLIENT, dst=SERVER), Ether() / IP(src=SERVER, dst=CLIENT)
    c6 = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2")
    s6 = Ether() / IPv6(src="2001:db8::2", dst="2001:db8::1")
    batch = parsed(
        [
            c4 / UDP(sport=5353, dport=53) / b"q",
            s4 / UDP(sport=53, dport=5353) / b"a",
            c4 / ICMP(type=8, id=42, seq=1),
            s4 / ICMP(type=0, id=42, seq=1),
            c6 / ICMPv6EchoRequest(id=9),
            s6 / ICMPv6EchoReply(id=9),
        ]
    )
    table = ConnTable()
    verdicts = table.process_batch(batch, zone=np.array([1, 1, 1, 1, 2, 2]))
    assert list(verdicts) == [Verdict.NEW, Verdict.ACCEPT] * 3
    assert len(table) == 3
    udp = table.get(1, UDP_P, 0xC0000207, 53, 0x0A000001, 5353)
    assert udp is not None and udp.state == State.ESTABLISHED
    ping = table.get(1, ICMP_P, 0x0A000001, 42, 0xC0000207, 42)
    assert ping is not None and ping.state == State.ESTABLISHED
    assert ping.expiry == int(batch.meta["timestamp"][3]) + 60 * SEC
