"""conntrack: connection tracking as data — states, events, a transition table, timeouts.

Theory of operation
-------------------
A stateful firewall lets a packet through when it belongs to a connection the
rules allowed, and the connection tracker is what says "belongs". It is a state
machine per connection, run here as a table, in the style of h11: the machine is
the ``TRANSITIONS`` array, declared below as readable rows; the code that runs it
(the Numba kernel ``track`` and its scalar twin ``advance``) only looks things up.
Nothing here touches a packet buffer, a clock or a socket.

For each packet the tracker is told four things: the connection's current
state, the packet's *direction* (ORIGINAL: from the side that opened the
connection; REPLY: from the other side), its IP protocol, and its TCP flags or
ICMP type. Protocol and flags become one *event* (``EVENTS``):

* TCP — SYN, SYNACK, ACK (any segment with ACK and none of SYN/FIN/RST: data or
  a pure ACK), FIN (FIN+ACK), RST (RST, with or without ACK), and BAD for flag
  sets no TCP sends (no flags, SYN+FIN, SYN+RST, FIN+RST, FIN without ACK).
  PSH, URG, ECE and CWR do not change the event.
* UDP and other protocols without a handshake — DATAGRAM.
* ICMP/ICMPv6 queries — REQUEST (echo, timestamp, information, address mask
  request) and RESPONSE (their replies). Everything else ICMP — UNTRACKED:
  errors belong to the connection of the packet they quote, which the firewall
  looks up from the quoted header; ND and router messages never reach it.

``TRANSITIONS[state, direction, event]`` is then the next state, or
``INVALID`` when the packet makes no sense in that state: a SYN+ACK from the
originator, data before the handshake, an ACK with no connection, an echo reply
nobody asked for, any BAD flag set. An INVALID packet changes nothing — neither
the state nor the expiry — so garbage can neither advance a connection nor keep
it alive. Cells the declaration does not list are INVALID: the table is a
whitelist, as a firewall's should be.

The TCP machine (O = from the originator, R = from the responder, * = either)::

            O:SYN             R:SYNACK             O:ACK
    NONE ─────────► SYN_SENT ─────────► SYN_RECV ─────────► ESTABLISHED
                       │                                     ▲    │    │
                  R:SYN│                        *:SYNACK/ACK │    │    │
                       ▼       *:SYNACK                      │    │    │
                   SYN_SENT2 ─────────► SYN_RECV2 ───────────┘    │    │
                                                           O:FIN  │    │  R:FIN
                                                    ┌─────────────┘    └─────────────┐
                                                    ▼                                ▼
                                              FIN_WAIT_ORIG                    FIN_WAIT_REPLY
                                                    │ R:FIN                    O:FIN │
                                                    └─────────► LAST_ACK ◄───────────┘
                                                                    │ *:ACK
                                                                    ▼
                                                                TIME_WAIT

    any TCP state but NONE ──*:RST──► CLOSE
    TIME_WAIT, CLOSE ──O:SYN──► SYN_SENT     (a new connection on the same 5-tuple)

  Retransmissions (a second SYN, SYN+ACK or FIN from the same side) keep the
  state; ``TRANSITION_ROWS`` lists each with the reason it is allowed.

UDP, other datagram protocols and ICMP queries have two states::

        NONE ──O:DATAGRAM/REQUEST──► NEW ──R:DATAGRAM/RESPONSE──► ESTABLISHED

Why these states
----------------
The set follows Linux nf_conntrack's TCP states (NONE, SYN_SENT, SYN_SENT2,
SYN_RECV, ESTABLISHED, ..., TIME_WAIT, CLOSE) with two deliberate differences,
both forced by what a flag-only tracker can know. The Batch carries TCP flags
but no sequence or acknowledgement numbers, so this tracker, unlike Linux's
``tcp_in_window`` or pf's per-peer windows, cannot tell whether an ACK
acknowledges a FIN or just carries data:

* Linux's FIN_WAIT → CLOSE_WAIT step ("the other side ACKed the FIN") would be a
  guess here, so there is no CLOSE_WAIT. What *is* certain is which side sent
  the first FIN, and the direction-indexed table needs it: FIN_WAIT_ORIG and
  FIN_WAIT_REPLY (the half-closed states, named after the side that closed).
  With them a retransmitted FIN stays a retransmission; a single FIN_WAIT, as
  in Linux, takes it for the second FIN and goes to LAST_ACK too early.
* Simultaneous open, which RFC 5382 REQ-2 requires a NAT to support (it is how
  TCP hole punching works), gets SYN_SENT2 (both SYNs crossed) and SYN_RECV2
  (one SYN+ACK seen). Once both sides have sent a SYN, a SYN+ACK from either is
  legitimate, so these two states need not record who sent what; the ordinary
  SYN_RECV does, and there a SYN+ACK from the originator is INVALID.

Like pf with ``flags S/SA`` (and unlike Linux's default loose pick-up), only a
SYN opens a TCP connection: mid-stream traffic with no state is INVALID.

Timeouts
--------
Each state has an idle timeout, the time after the last *accepted* packet at
which the connection is forgotten (``Timeouts``; defaults from the RFCs the
NAT issue cites): 2 h 4 min for an established TCP connection and 4 min for
every transitory one, handshake or closing (RFC 5382 REQ-5, restated by RFC
7857 section 2.1); 4 min after an RST (RFC 7857 section 2.2) and in TIME_WAIT
(2 MSL); 5 min for UDP (RFC 4787 REQ-5: at least 2, 5 recommended); 60 s for
ICMP queries (RFC 5508 REQ-1). They are a NumPy table ``[protocol class,
state]`` in nanoseconds, the unit of the Batch's ``timestamp`` column.

Where state lives
-----------------
Nowhere here: a connection's state (one ``uint8``) and expiry (one ``int64``)
live in whatever table the datapath keeps, keyed by (zone, 5-tuple) — the
tenant's conntrack zone is just part of the key, so overlapping tenant address
spaces never share a connection. ``track`` takes those two columns plus a
``slot`` per packet row saying which entry the row belongs to, and updates the
entries in place, row by row in batch order: two packets of one connection in
one batch (a whole handshake, replaying a capture) see each other's effect.
``ConnTable`` is a small dict-backed reference table for tests and the control
plane that resolves keys and orientation and leaves the state work to ``track``.

What the caller owns: the direction of each row (compare the packet's 5-tuple
with the entry's original one) and re-keying. An entry past its expiry counts
as NONE in ``track``; an entry in TIME_WAIT or CLOSE takes a new SYN from the
originator's side. A *reply*-side SYN there, or any packet on an expired entry
from its reply side, opens a connection in the other orientation: only the
table that holds the keys can turn the key round, so ``track`` calls it INVALID
and the datapath (which sends SYNs and expired entries down the miss path
anyway) replaces the entry before tracking, as ``ConnTable`` does.

Also the caller's: the verdict NEW marks packets that open a connection, the
ones the firewall's rules are for; a packet the rules then drop should not
leave the state ``track`` gave it (run ``track`` after the rules, or restore
the two columns).

Example::

    timeouts = Timeouts().table()
    verdict = track(state, expiry, slot, direction,
                    meta["protocol"], meta["tcp_flags"], meta["icmp_type"],
                    meta["timestamp"], timeouts)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np
from numba import njit

from portico.batch import Batch
from portico.packet import icmp, icmpv6
from portico.packet.tcp import ACK, FIN, RST, SYN


class State(IntEnum):
    """A connection's state, one ``uint8``. TCP uses all but NEW; datagram flows use
    NONE, NEW and ESTABLISHED."""

    NONE = 0  # no connection (a fresh or expired entry)
    SYN_SENT = 1  # originator's SYN seen
    SYN_SENT2 = 2  # simultaneous open: the responder sent a SYN too
    SYN_RECV = 3  # responder's SYN+ACK seen, waiting for the originator's ACK
    SYN_RECV2 = 4  # simultaneous open: one SYN+ACK seen, waiting for the other (or an ACK)
    ESTABLISHED = 5  # handshake complete (TCP) / reply seen (datagrams)
    FIN_WAIT_ORIG = 6  # the originator closed its half; the responder may still send
    FIN_WAIT_REPLY = 7  # the responder closed its half; the originator may still send
    LAST_ACK = 8  # both FINs seen, waiting for the last ACK
    TIME_WAIT = 9  # closed in order; stray retransmissions still pass
    CLOSE = 10  # reset
    NEW = 11  # datagram flow, no reply yet


class Direction(IntEnum):
    ORIGINAL = 0  # from the side that opened the connection
    REPLY = 1


class Event(IntEnum):
    """What a packet does to a connection, from its protocol and flags (``event_of``)."""

    SYN = 0
    SYNACK = 1
    ACK = 2  # ACK without SYN/FIN/RST: data or a pure acknowledgement
    FIN = 3  # FIN+ACK
    RST = 4  # RST or RST+ACK
    BAD = 5  # a TCP flag combination no stack sends
    DATAGRAM = 6  # UDP and protocols without a handshake
    REQUEST = 7  # ICMP query request
    RESPONSE = 8  # ICMP query reply
    UNTRACKED = 9  # ICMP errors and other ICMP: never a connection of their own


class Verdict(IntEnum):
    ACCEPT = 0  # fits the connection; state and expiry updated
    NEW = 1  # opens a connection: the packet the firewall's rules decide on
    INVALID = 2  # makes no sense in this state; nothing updated


class ProtoClass(IntEnum):
    """Which event rules and timeouts a protocol gets."""

    TCP = 0
    UDP = 1
    ICMP = 2
    ICMPV6 = 3
    OTHER = 4


INVALID = 255  # TRANSITIONS' "no such transition"
N_STATES = len(State)
N_EVENTS = len(Event)
N_CLASSES = len(ProtoClass)

PROTO_CLASS = np.full(256, ProtoClass.OTHER, dtype=np.uint8)
PROTO_CLASS[6] = ProtoClass.TCP
PROTO_CLASS[17] = ProtoClass.UDP
PROTO_CLASS[136] = ProtoClass.UDP  # UDP-Lite: same ports, same mapping rules
PROTO_CLASS[1] = ProtoClass.ICMP
PROTO_CLASS[58] = ProtoClass.ICMPV6

# ICMP queries (RFC 5508 section 3.1). Only echo carries an identifier the parser
# keys on; the others are tracked per address pair.
ICMP_REQUESTS = (icmp.ECHO_REQUEST, 13, 15, 17)  # echo, timestamp, information, address mask
ICMP_RESPONSES = (icmp.ECHO_REPLY, 14, 16, 18)
ICMPV6_REQUESTS = (icmpv6.ECHO_REQUEST,)
ICMPV6_RESPONSES = (icmpv6.ECHO_REPLY,)


def tcp_event(flags: int) -> Event:
    """The event of a TCP segment. RST wins over ACK; SYN, FIN and RST exclude each other."""
    f = flags & (SYN | ACK | FIN | RST)
    if f & RST:
        return Event.BAD if f & (SYN | FIN) else Event.RST
    return {
        SYN: Event.SYN,
        SYN | ACK: Event.SYNACK,
        ACK: Event.ACK,
        FIN | ACK: Event.FIN,
    }.get(f, Event.BAD)


def event_of(protocol: int, tcp_flags: int = 0, icmp_type: int = 0) -> Event:
    """The readable definition of a packet's event; ``EVENTS`` is this, tabulated."""
    cls = PROTO_CLASS[protocol]
    if cls == ProtoClass.TCP:
        return tcp_event(tcp_flags)
    if cls in (ProtoClass.ICMP, ProtoClass.ICMPV6):
        requests, responses = (
            (ICMP_REQUESTS, ICMP_RESPONSES)
            if cls == ProtoClass.ICMP
            else (ICMPV6_REQUESTS, ICMPV6_RESPONSES)
        )
        if icmp_type in requests:
            return Event.REQUEST
        if icmp_type in responses:
            return Event.RESPONSE
        return Event.UNTRACKED
    return Event.DATAGRAM


_CLASS_PROTOCOL = {
    ProtoClass.TCP: 6,
    ProtoClass.UDP: 17,
    ProtoClass.ICMP: 1,
    ProtoClass.ICMPV6: 58,
    ProtoClass.OTHER: 47,
}


def _events() -> np.ndarray:
    """EVENTS[class, key]: key is the TCP flags byte for TCP, the ICMP type for ICMP."""
    table = np.empty((N_CLASSES, 256), dtype=np.uint8)
    for cls, proto in _CLASS_PROTOCOL.items():
        for key in range(256):
            table[cls, key] = event_of(proto, key, key)
    return table


EVENTS = _events()


# ----------------------------------------------------------------- the machine
# (state, direction, event, next state). "both" = the same for either direction.
# Every cell not listed is INVALID. Comments say why a row that is not part of the
# obvious path is there.
TRANSITION_ROWS: tuple[tuple[str, str, str, str], ...] = (
    # --- TCP: opening
    ("NONE", "orig", "SYN", "SYN_SENT"),
    ("SYN_SENT", "orig", "SYN", "SYN_SENT"),  # SYN retransmitted
    ("SYN_SENT", "reply", "SYNACK", "SYN_RECV"),
    ("SYN_SENT", "reply", "SYN", "SYN_SENT2"),  # simultaneous open: the SYNs crossed
    ("SYN_SENT", "both", "RST", "CLOSE"),  # refused, or the originator gave up
    ("SYN_SENT2", "both", "SYN", "SYN_SENT2"),  # retransmitted SYNs
    ("SYN_SENT2", "both", "SYNACK", "SYN_RECV2"),  # both sent SYNs: either may SYN+ACK
    ("SYN_SENT2", "both", "RST", "CLOSE"),
    ("SYN_RECV", "orig", "ACK", "ESTABLISHED"),  # the third segment
    ("SYN_RECV", "orig", "FIN", "FIN_WAIT_ORIG"),  # the third segment, closing at once
    ("SYN_RECV", "orig", "SYN", "SYN_RECV"),  # the SYN+ACK was lost; SYN retransmitted
    ("SYN_RECV", "reply", "SYNACK", "SYN_RECV"),  # SYN+ACK retransmitted
    ("SYN_RECV", "reply", "ACK", "SYN_RECV"),  # TCP Fast Open: data before the third ACK
    ("SYN_RECV", "both", "RST", "CLOSE"),
    ("SYN_RECV2", "both", "SYN", "SYN_RECV2"),  # a SYN not yet acknowledged, retransmitted
    ("SYN_RECV2", "both", "SYNACK", "ESTABLISHED"),  # the second SYN+ACK
    ("SYN_RECV2", "both", "ACK", "ESTABLISHED"),
    ("SYN_RECV2", "orig", "FIN", "FIN_WAIT_ORIG"),
    ("SYN_RECV2", "reply", "FIN", "FIN_WAIT_REPLY"),
    ("SYN_RECV2", "both", "RST", "CLOSE"),
    # --- TCP: data
    ("ESTABLISHED", "both", "ACK", "ESTABLISHED"),
    ("ESTABLISHED", "reply", "SYNACK", "ESTABLISHED"),  # third ACK lost; SYN+ACK retransmitted
    ("ESTABLISHED", "orig", "FIN", "FIN_WAIT_ORIG"),
    ("ESTABLISHED", "reply", "FIN", "FIN_WAIT_REPLY"),
    ("ESTABLISHED", "both", "RST", "CLOSE"),
    # --- TCP: closing. A half-closed connection still carries data the other way.
    ("FIN_WAIT_ORIG", "both", "ACK", "FIN_WAIT_ORIG"),
    ("FIN_WAIT_ORIG", "orig", "FIN", "FIN_WAIT_ORIG"),  # FIN retransmitted
    ("FIN_WAIT_ORIG", "reply", "FIN", "LAST_ACK"),
    ("FIN_WAIT_ORIG", "both", "RST", "CLOSE"),
    ("FIN_WAIT_REPLY", "both", "ACK", "FIN_WAIT_REPLY"),
    ("FIN_WAIT_REPLY", "reply", "FIN", "FIN_WAIT_REPLY"),  # FIN retransmitted
    ("FIN_WAIT_REPLY", "orig", "FIN", "LAST_ACK"),
    ("FIN_WAIT_REPLY", "both", "RST", "CLOSE"),
    ("LAST_ACK", "both", "ACK", "TIME_WAIT"),  # no sequence numbers: any ACK is the last
    ("LAST_ACK", "both", "FIN", "LAST_ACK"),  # FINs retransmitted
    ("LAST_ACK", "both", "RST", "CLOSE"),
    ("TIME_WAIT", "both", "ACK", "TIME_WAIT"),  # the last ACK retransmitted
    ("TIME_WAIT", "both", "FIN", "TIME_WAIT"),  # a FIN retransmitted: its ACK was lost
    ("TIME_WAIT", "orig", "SYN", "SYN_SENT"),  # reopened (RFC 1122 4.2.2.13, RFC 6191)
    ("TIME_WAIT", "both", "RST", "CLOSE"),
    ("CLOSE", "orig", "SYN", "SYN_SENT"),  # a new connection on the same 5-tuple
    ("CLOSE", "both", "RST", "CLOSE"),  # RSTs answering stray segments
    # --- UDP and other datagram protocols
    ("NONE", "orig", "DATAGRAM", "NEW"),
    ("NEW", "orig", "DATAGRAM", "NEW"),
    ("NEW", "reply", "DATAGRAM", "ESTABLISHED"),
    ("ESTABLISHED", "both", "DATAGRAM", "ESTABLISHED"),
    # --- ICMP queries: requests one way, replies the other
    ("NONE", "orig", "REQUEST", "NEW"),
    ("NEW", "orig", "REQUEST", "NEW"),
    ("NEW", "reply", "RESPONSE", "ESTABLISHED"),
    ("ESTABLISHED", "orig", "REQUEST", "ESTABLISHED"),
    ("ESTABLISHED", "reply", "RESPONSE", "ESTABLISHED"),
)

_DIRECTIONS = {
    "orig": (Direction.ORIGINAL,),
    "reply": (Direction.REPLY,),
    "both": (Direction.ORIGINAL, Direction.REPLY),
}

# A connection can start over from these: NONE, and the two closed states.
OPENABLE = (State.NONE, State.TIME_WAIT, State.CLOSE)
OPENING = (State.SYN_SENT, State.NEW)


def build_transitions(
    rows: Iterable[tuple[str, str, str, str]],
) -> tuple[np.ndarray, np.ndarray]:
    """TRANSITIONS and VERDICTS from a declaration; a cell declared twice is an error.

    VERDICTS is derived, not declared: INVALID where there is no transition, NEW
    where a connection starts over (from NONE or a closed state into SYN_SENT or
    NEW), ACCEPT elsewhere.
    """
    table = np.full((N_STATES, 2, N_EVENTS), INVALID, dtype=np.uint8)
    for state, direction, event, nxt in rows:
        for d in _DIRECTIONS[direction]:
            cell = (State[state], d, Event[event])
            if table[cell] != INVALID:
                raise ValueError(f"transition {state}/{d.name}/{event} declared twice")
            table[cell] = State[nxt]
    verdicts = np.full(table.shape, Verdict.ACCEPT, dtype=np.uint8)
    verdicts[table == INVALID] = Verdict.INVALID
    for opened in OPENABLE:
        for opening in OPENING:
            verdicts[opened][table[opened] == opening] = Verdict.NEW
    return table, verdicts


TRANSITIONS, VERDICTS = build_transitions(TRANSITION_ROWS)


# ------------------------------------------------------------------- timeouts
@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Idle timeouts in seconds, per group of states. Defaults: the RFC values.

    The RFCs set minimums for a NAT (a binding must not vanish under a live
    connection); lower values are accepted for a firewall that wants them.
    """

    tcp_established: float = 2 * 3600 + 4 * 60  # RFC 5382 REQ-5: >= 2 h 4 min
    tcp_transitory: float = 4 * 60  # RFC 5382 REQ-5: >= 4 min, opening and closing
    tcp_time_wait: float = 4 * 60  # 2 MSL
    tcp_close: float = 4 * 60  # RFC 7857 section 2.2: keep 4 min after an RST
    udp_new: float = 5 * 60  # RFC 4787 REQ-5: >= 2 min, 5 min recommended
    udp_established: float = 5 * 60
    icmp: float = 60  # RFC 5508 REQ-1: >= 60 s
    other: float = 10 * 60  # no RFC: Linux's generic default

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"timeouts.{f.name}: must be positive seconds, got {value!r}")

    def table(self) -> np.ndarray:
        """TIMEOUTS[class, state] in nanoseconds (0 where a class never has the state)."""
        ns = np.zeros((N_CLASSES, N_STATES), dtype=np.int64)
        for cls, state, group in TIMEOUT_GROUPS:
            ns[ProtoClass[cls], State[state]] = round(getattr(self, group) * 1e9)
        return ns


# (protocol class, state, Timeouts field): which timeout a state gets.
TIMEOUT_GROUPS: tuple[tuple[str, str, str], ...] = (
    *(
        ("TCP", s, "tcp_transitory")
        for s in (
            "SYN_SENT",
            "SYN_SENT2",
            "SYN_RECV",
            "SYN_RECV2",
            "FIN_WAIT_ORIG",
            "FIN_WAIT_REPLY",
            "LAST_ACK",
        )
    ),
    ("TCP", "ESTABLISHED", "tcp_established"),
    ("TCP", "TIME_WAIT", "tcp_time_wait"),
    ("TCP", "CLOSE", "tcp_close"),
    ("UDP", "NEW", "udp_new"),
    ("UDP", "ESTABLISHED", "udp_established"),
    ("ICMP", "NEW", "icmp"),
    ("ICMP", "ESTABLISHED", "icmp"),
    ("ICMPV6", "NEW", "icmp"),
    ("ICMPV6", "ESTABLISHED", "icmp"),
    ("OTHER", "NEW", "other"),
    ("OTHER", "ESTABLISHED", "other"),
)

DEFAULT_TIMEOUTS = Timeouts().table()


def timeout_ns(protocol: int, state: int, timeouts: np.ndarray = DEFAULT_TIMEOUTS) -> int:
    """The idle timeout of ``state`` for ``protocol``, in nanoseconds."""
    return int(timeouts[PROTO_CLASS[protocol], state])


# ------------------------------------------------------------- scalar and batch
def advance(
    state: int,
    direction: int,
    flags: int = 0,
    *,
    protocol: int = 6,
    icmp_type: int = 0,
) -> int:
    """The next state of one connection for one packet, or ``INVALID``.

    ``flags`` are the TCP flags (ignored for other protocols). For tests and the
    control plane; ``track`` is the same lookup over a batch.
    """
    return int(TRANSITIONS[state, direction, event_of(protocol, flags, icmp_type)])


def verdict_of(state: int, direction: int, event: int) -> Verdict:
    return Verdict(int(VERDICTS[state, direction, event]))


C_TCP = int(ProtoClass.TCP)
C_ICMP = int(ProtoClass.ICMP)
C_ICMPV6 = int(ProtoClass.ICMPV6)
S_NONE = int(State.NONE)
V_INVALID = int(Verdict.INVALID)


@njit(cache=True)
def track(  # type: ignore[no-untyped-def]
    state, expiry, slot, direction, protocol, tcp_flags, icmp_type, timestamp, timeouts
):
    """Advance the connections of every row, in row order; return each row's Verdict.

    ``state`` (uint8) and ``expiry`` (int64 ns) are the connection table's columns
    and are updated in place at ``slot[i]``; the other arguments are per row.
    An entry whose expiry has passed counts as NONE. INVALID rows change nothing.
    The tables (``PROTO_CLASS``, ``EVENTS``, ``TRANSITIONS``, ``VERDICTS``) are
    compiled in as constants; ``timeouts`` is ``Timeouts.table()``.
    """
    n = slot.shape[0]
    verdict = np.empty(n, dtype=np.uint8)
    for i in range(n):
        k = slot[i]
        now = timestamp[i]
        s = state[k]
        if s != S_NONE and now >= expiry[k]:
            s = S_NONE
        cls = PROTO_CLASS[protocol[i]]
        key = tcp_flags[i]
        if cls == C_ICMP or cls == C_ICMPV6:  # noqa: SIM109 (kept plain for Numba)
            key = icmp_type[i]
        event = EVENTS[cls, key]
        d = direction[i]
        v = VERDICTS[s, d, event]
        verdict[i] = v
        if v != V_INVALID:
            nxt = TRANSITIONS[s, d, event]
            state[k] = nxt
            expiry[k] = now + timeouts[cls, nxt]
    return verdict


def step(
    states: np.ndarray,
    expiries: np.ndarray,
    directions: np.ndarray,
    protocol: np.ndarray,
    tcp_flags: np.ndarray,
    icmp_type: np.ndarray,
    timestamps: np.ndarray,
    timeouts: np.ndarray = DEFAULT_TIMEOUTS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``track`` for rows that are each their own connection, without touching the inputs.

    Returns (next states, verdicts, expiries): the gathered form, for callers
    that copy state out of their table and back.
    """
    nxt = np.ascontiguousarray(states, dtype=np.uint8).copy()
    exp = np.ascontiguousarray(expiries, dtype=np.int64).copy()
    verdict = track(
        nxt,
        exp,
        np.arange(len(nxt), dtype=np.intp),
        np.asarray(directions, dtype=np.uint8),
        np.asarray(protocol, dtype=np.uint8),
        np.asarray(tcp_flags, dtype=np.uint8),
        np.asarray(icmp_type, dtype=np.uint8),
        np.asarray(timestamps, dtype=np.int64),
        timeouts,
    )
    return nxt, verdict, exp


# ------------------------------------------------------------ reference table
Key = tuple[int, int, int, int, int, int]  # zone, protocol, src, sport, dst, dport
NO_SLOT = 0  # ConnTable's slot for rows with no connection


@dataclass(frozen=True)
class Conn:
    key: Key  # in the original direction
    state: State
    expiry: int  # ns


class ConnTable:
    """A dict-backed connection table: the reference the datapath's table is tested against.

    Keys are (zone, protocol, src, sport, dst, dport) in the connection's
    original direction; a packet matching the reversed key is a REPLY. Each key
    maps to a slot in two NumPy columns, ``state`` and ``expiry``, which ``track``
    updates for all rows of a call at once.

    Orientation is resolved here, before ``track`` runs, against the table as it
    was before the call: an entry the call has not touched yet is taken over in
    the packet's orientation when it has expired, or when it is closed
    (TIME_WAIT, CLOSE) and a reply-side SYN opens a new connection. Entries
    are only made by packets that open a connection.
    """

    def __init__(self, *, timeouts: Timeouts | None = None, capacity: int = 64) -> None:
        capacity = max(2, capacity)
        self.timeouts = (timeouts or Timeouts()).table()
        self.state = np.zeros(capacity, dtype=np.uint8)
        self.expiry = np.zeros(capacity, dtype=np.int64)
        self._slots: dict[Key, int] = {}
        self._keys: dict[int, Key] = {}
        # Slot 0 is never a connection: rows that cannot open one point there, stay
        # NONE and are INVALID, so a stray packet never claims a key's orientation.
        self._free: list[int] = list(range(capacity - 1, 0, -1))

    def __len__(self) -> int:
        return len(self._slots)

    def _allocate(self, key: Key) -> int:
        if not self._free:
            old = len(self.state)
            self.state = np.concatenate([self.state, np.zeros(old, dtype=np.uint8)])
            self.expiry = np.concatenate([self.expiry, np.zeros(old, dtype=np.int64)])
            self._free = list(range(2 * old - 1, old - 1, -1))
        k = self._free.pop()
        self.state[k] = State.NONE
        self.expiry[k] = 0
        self._slots[key] = k
        self._keys[k] = key
        return k

    def _release(self, k: int) -> None:
        del self._slots[self._keys.pop(k)]
        self.state[k] = State.NONE
        self._free.append(k)

    def get(
        self, zone: int, protocol: int, src: int, sport: int, dst: int, dport: int
    ) -> Conn | None:
        """The connection a packet with this 5-tuple belongs to, in either direction."""
        key = (zone, protocol, src, sport, dst, dport)
        k = self._slots.get(key, self._slots.get(_reverse(key)))
        if k is None:
            return None
        return Conn(self._keys[k], State(int(self.state[k])), int(self.expiry[k]))

    def process(
        self,
        keys: Sequence[Key],
        tcp_flags: Sequence[int] | np.ndarray,
        icmp_type: Sequence[int] | np.ndarray,
        timestamps: Sequence[int] | np.ndarray,
    ) -> np.ndarray:
        """Track a sequence of packets, given as keys in their own direction; return verdicts."""
        n = len(keys)
        flags = np.asarray(tcp_flags, dtype=np.uint8).reshape(n)
        types = np.asarray(icmp_type, dtype=np.uint8).reshape(n)
        times = np.asarray(timestamps, dtype=np.int64).reshape(n)
        slot = np.empty(n, dtype=np.intp)
        direction = np.empty(n, dtype=np.uint8)
        touched: set[int] = set()
        for i, key in enumerate(keys):
            event = event_of(key[1], int(flags[i]), int(types[i]))
            k, d = self._slots.get(key), Direction.ORIGINAL
            if k is None and (k := self._slots.get(_reverse(key))) is not None:
                d = Direction.REPLY
            if k is not None and k not in touched and self._stale(k, d, event, int(times[i])):
                self._release(k)
                k, d = None, Direction.ORIGINAL
            if k is None:
                opens = VERDICTS[State.NONE, Direction.ORIGINAL, event] == Verdict.NEW
                k = self._allocate(key) if opens else NO_SLOT
            touched.add(k)
            slot[i] = k
            direction[i] = d
        protocol = np.array([key[1] for key in keys], dtype=np.uint8)
        return track(  # type: ignore[no-any-return]
            self.state, self.expiry, slot, direction, protocol, flags, types, times, self.timeouts
        )

    def _stale(self, k: int, d: Direction, event: Event, now: int) -> bool:
        """Whether the packet should replace entry ``k`` with one in its own orientation."""
        s = int(self.state[k])
        if s != State.NONE and now >= self.expiry[k]:
            return True  # expired: as good as gone
        return d == Direction.REPLY and s in (State.TIME_WAIT, State.CLOSE) and event == Event.SYN

    def process_batch(
        self, batch: Batch, *, zone: int | np.ndarray = 0, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Track the parsed rows of a Batch (by default: every IP row parse kept)."""
        meta = batch.meta[: batch.count]
        if rows is None:
            rows = np.flatnonzero((meta["drop"] == 0) & (meta["ip_version"] != 0))
        zones = np.broadcast_to(np.asarray(zone), (batch.count,))
        keys: list[Key] = []
        for r in rows:
            m = meta[r]
            if m["ip_version"] == 4:
                src, dst = int(m["src4"]), int(m["dst4"])
            else:
                src = int(m["src6_hi"]) << 64 | int(m["src6_lo"])
                dst = int(m["dst6_hi"]) << 64 | int(m["dst6_lo"])
            keys.append(
                (int(zones[r]), int(m["protocol"]), src, int(m["sport"]), dst, int(m["dport"]))
            )
        return self.process(
            keys, meta["tcp_flags"][rows], meta["icmp_type"][rows], meta["timestamp"][rows]
        )

    def expire(self, now: int) -> int:
        """Forget every connection idle past its timeout at ``now``; return how many."""
        dead = [k for k in self._keys if now >= self.expiry[k]]
        for k in dead:
            self._release(k)
        return len(dead)


def _reverse(key: Key) -> Key:
    zone, protocol, src, sport, dst, dport = key
    return zone, protocol, dst, dport, src, sport
