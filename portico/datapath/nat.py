"""nat: the NAT44 binding table — pools, bindings, timeouts, and the batch kernels over them.

Theory of operation
-------------------
A NAT is, at heart, one table: a *binding* (RFC 4787 calls it a mapping) ties an
internal endpoint ``(tenant, protocol, internal address, internal port)`` to an
external endpoint ``(external address, external port)``. Outbound packets are
looked up by their source and get the external endpoint as their new source;
inbound packets are looked up by their destination (the reverse key
``(external address, external port, protocol)``) and get the internal endpoint
as their new destination. Everything else in this module is about *which*
external endpoint a new binding gets, *how long* it lives, and the cases where
a packet names a binding in an unusual place (hairpinning, ICMP errors).

Like ``conntrack`` this module is data plus kernels: no I/O, no clock (``now``
is an argument, nanoseconds like the Batch's ``timestamp``), no stage. The
bindings are rows of one ``int64`` array (``BINDING_COLUMNS``) with a free
list; three open-addressing hash tables (linear probing, deletion by backward
shift, so no tombstones) index them: forward, reverse and the address pairs.
The batch kernels (``translate_out``, ``translate_in``, ``hairpin``) are Numba
loops over a selection of a Batch's rows; the rest is the control plane's.

Behaviour, and the requirement each piece implements
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
* **Endpoint-independent mapping** (RFC 4787 REQ-1, RFC 5382 REQ-1): the
  forward key has no remote endpoint in it, so one internal endpoint talking to
  any number of destinations reuses one binding.
* **No port overloading** (RFC 4787 REQ-3, RFC 7857 "port overlapping"): an
  external ``(address, port, protocol)`` belongs to one live binding at a time;
  the reverse table enforces it, and a port is taken only when its reverse slot
  is empty or holds an *expired* binding (which is then freed first). A live
  binding is never stolen.
* **Paired address pooling** (RFC 4787 REQ-2, RFC 7857 "address pooling
  paired"): a *pair* records, per ``(tenant, internal address)``, the external
  address its bindings use and how many there are. While the count is above
  zero every new binding of that host takes the same address — and if that
  address has no port left the allocation fails (``EXHAUSTED``) rather than
  switching address. A host with no bindings gets the first pool address (from a
  hashed start, to spread hosts) with a port free.
* **Port preservation** (RFC 4787 REQ-3): the internal port is tried first
  when it lies in the pool's port range. Otherwise (or if it is taken) the search
  starts at a pseudo-random offset in the range (RFC 6056-style randomization,
  RFC 7857 "port randomization") and, with ``port_parity`` (the default), first
  looks only at ports of the internal port's parity (RFC 4787 REQ-4, a
  RECOMMENDED behaviour that RFC 7857 relaxes to a MAY; ``port_parity=False``
  turns it off), then at any port. Ports below the pool range (0-1023 with the
  default range 1024-65535) are not preserved: RFC 4787 REQ-3 only recommends
  keeping them in 0-1023, and we keep well-known ports out of dynamic pools.
* **Port exhaustion**: the per-(address, protocol) count of used ports makes
  "full" an O(1) test. A full address first triggers one sweep of expired
  bindings (at most once per ``sweep_interval``, so a flood of new flows to an
  exhausted pool cannot make every row scan the table) and, if still full, the
  row fails with ``NatDrop.EXHAUSTED``, counted. ``TABLE_FULL`` when the table
  itself has no free row, ``NO_POOL`` when the tenant has no pool.
* **ICMP query identifiers are ports** (RFC 5508 section 3, RFC 7857 "ICMP
  query mappings"): an echo request's identifier (``sport`` in the metadata) is
  mapped exactly like a source port, from the same pool range, keyed by protocol
  1. Inbound only echo replies match; errors go through ``icmp_error_in``.
* **Only a SYN makes a TCP binding** when ``tcp_syn_only`` is set (the
  gateway sets it; RFC 5382 leaves it open, and a stateful firewall behind the
  NAT would call any other segment without a connection invalid anyway): an
  outbound TCP segment without SYN and without a binding fails ``NO_BINDING``
  instead of taking a port it would hold for a connection that is not there.
* **Timeouts** (``NatTimeouts``, validated against the RFC minimums): UDP 5
  min (RFC 4787 REQ-5: at least 2, 5 recommended); TCP 2 h 4 min once the
  connection is established and 4 min while it is transitory (RFC 5382 REQ-5,
  RFC 7857 section 2.1); ICMP 60 s (RFC 5508 REQ-1). A TCP binding starts
  transitory; ``set_established`` is how conntrack (which owns the TCP state
  machine) tells us otherwise. Each binding has a last-used time; outbound
  packets refresh it (RFC 4787 REQ-6 makes that mandatory), inbound ones too
  unless ``inbound_refresh=False`` (REQ-6 leaves it open). Expiry is lazy — a
  lookup that meets an expired binding frees it — plus ``expire(now)``.
* **Flows hold their binding**: a refcount (``hold``/``release``) counts the
  flows (flow-cache or conntrack entries) that use a binding; a binding with a
  nonzero refcount never expires, and once the last flow lets go its idle timer
  applies from its last use. So a binding lives while any of its flows does.
* **Static bindings** (DNAT, port forwarding): ``StaticMapping`` entries are
  bindings that never expire and admit unsolicited inbound traffic. Adding one
  whose external or internal endpoint a live binding (static or dynamic) holds is
  refused with a ``ValueError`` naming the field; a static external port inside a
  pool's range is counted as used there, so dynamic allocation steps around it.
  Outbound traffic from a forwarded internal endpoint uses the static binding
  (the same external endpoint both ways).
* **Hairpinning** (RFC 4787 REQ-9, RFC 5382 REQ-8): a packet from inside whose
  destination is an external endpoint of this NAT is translated both ways: its
  source by ``translate_out`` (so the peer sees the sender's *external*
  endpoint, as REQ-9 requires), its destination by ``hairpin``, the reverse
  lookup without refreshing. ``hairpin_action`` builds the combined rewrite. The
  binding found may belong to another tenant when pools share an address; the
  caller routes the packet into that binding's tenant (``binding(i).tenant``).
* **ICMP errors** (RFC 5508 section 4, RFC 7857 on ICMP hairpinning): an
  error quotes the packet that caused it. Inbound, that quoted packet is one we
  translated on its way out, so its *source* is our external endpoint:
  ``icmp_error_in`` looks it up by the reverse key and returns the rewrite values
  (outer destination and embedded source to the internal endpoint). Outbound, an
  internal host quotes a packet it received, whose *destination* is its internal
  endpoint: ``icmp_error_out`` looks that up by the forward key. Neither refreshes
  the binding (an error is not traffic of the flow). Only the lookup and the
  values are here; rewriting the embedded header's bytes (addresses, port, IP and
  ICMP checksums — the embedded transport checksum may be left, see RFC 5508) is
  the datapath's, since ``actions.apply`` knows only the outer headers.

What this module leaves to conntrack and the firewall
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Filtering. ``translate_in`` answers "which binding, if any, owns this external
endpoint" whoever the remote is. Whether an inbound packet to a live binding is
*let in* is the filtering behaviour (RFC 4787 REQ-8, RFC 5382 REQ-3): with the
default address-and-port-dependent filtering it is conntrack's decision (the
packet must be a reply of a connection the firewall has seen); a pool with
``filtering=Filtering.ENDPOINT_INDEPENDENT`` (and every static binding) admits
any remote, and ``admits_unsolicited(bindings)`` tells the firewall so. The TCP
state machine, simultaneous open (RFC 5382 REQ-2) and the RST / TIME_WAIT
timers (RFC 7857 section 2.2) are conntrack's too; this module only learns
"established or not" through ``set_established``.

The flow cache's entries carry the binding index (``nat_binding``): when the
pipeline inserts an entry with a binding it calls ``hold``, when the entry dies
``release``. A binding index stays valid while held; an unheld binding may be
freed and its row reused once it expires.

Example::

    nat = NatTable([Pool(tenant=1, addresses=["203.0.113.1", "203.0.113.2"])])
    bindings = nat.translate_out(batch.meta, rows, now)      # -1: see reasons
    action = nat.action(int(bindings[0]), Direction.OUT)      # SET_IP_SRC | SET_SPORT
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from enum import Enum, IntEnum
from typing import NamedTuple

import numpy as np
from numba import njit

from portico import drops
from portico.datapath.actions import Action, Op

SECOND = 1_000_000_000  # ns
TCP, UDP, ICMP = 6, 17, 1
TCP_SYN = 0x02
ECHO_REPLY, ECHO_REQUEST = 0, 8


class NatDrop(IntEnum):
    """Why a row got no binding (codes 80..87 belong to NAT)."""

    NO_POOL = 80  # outbound: the row's tenant has no pool
    EXHAUSTED = 81  # outbound: the (paired) external address has no port left
    TABLE_FULL = 82  # outbound: the binding table has no free row
    UNTRANSLATABLE = 83  # no ports to map: not TCP/UDP/ICMP echo, a non-first fragment, not IPv4
    NO_BINDING = 84  # inbound: no live binding owns the external endpoint


drops.register("nat", NatDrop)


class Direction(IntEnum):
    OUT = 0  # inside -> outside: the source becomes the external endpoint
    IN = 1  # outside -> inside: the destination becomes the internal endpoint


class Filtering(Enum):
    """Inbound filtering behaviour of a pool's bindings (RFC 4787 REQ-8)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"  # any remote may send to a live binding
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"  # conntrack decides (default)


class Counter(IntEnum):
    ALLOCATIONS = 0  # dynamic bindings made
    PRESERVED = 1  # ... of which kept the internal port
    OUT_HITS = 2  # outbound rows that found their binding
    IN_HITS = 3  # inbound rows that found theirs
    HAIRPINS = 4  # hairpin lookups that found a binding
    NO_POOL = 5
    EXHAUSTED = 6
    TABLE_FULL = 7
    UNTRANSLATABLE = 8
    NO_BINDING = 9
    EXPIRED = 10  # bindings freed after their idle timeout
    SWEEPS = 11  # full expiry sweeps (expire() and exhaustion)


# ----------------------------------------------------------------- configuration
def _address(value: object, where: str) -> int:
    try:
        return int(ipaddress.IPv4Address(value))  # type: ignore[arg-type]
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise ValueError(f"{where}: {value!r} is not an IPv4 address") from None


def _port(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"{where}: {value!r} is not a port 1..65535")
    return value


MAX_POOL_ADDRESSES = 1 << 16


@dataclass(frozen=True, kw_only=True)
class Pool:
    """A tenant's external addresses and port range for dynamic bindings.

    ``addresses`` takes IPv4 addresses (text or int) and networks ("a.b.c.d/n",
    every address of the network). ``ports`` is inclusive.
    """

    tenant: int
    addresses: Sequence[str | int]
    ports: tuple[int, int] = (1024, 65535)
    filtering: Filtering = Filtering.ADDRESS_AND_PORT_DEPENDENT
    port_parity: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, int) or not 0 <= self.tenant < 1 << 31:
            raise ValueError(f"pool.tenant: {self.tenant!r} is not a tenant id 0..2**31-1")
        if isinstance(self.addresses, str | bytes) or not self.addresses:
            raise ValueError("pool.addresses: give a non-empty list of IPv4 addresses")
        if len(self.ports) != 2:
            raise ValueError(f"pool.ports: {self.ports!r} is not a (first, last) pair")
        lo = _port(self.ports[0], "pool.ports")
        hi = _port(self.ports[1], "pool.ports")
        if lo > hi:
            raise ValueError(f"pool.ports: first port {lo} is above last port {hi}")
        if not isinstance(self.filtering, Filtering):
            raise ValueError(f"pool.filtering: {self.filtering!r} is not a Filtering")
        self.expanded()  # validates every address

    def expanded(self) -> list[int]:
        """The pool's addresses as integers, networks expanded, in order, no duplicates."""
        out: list[int] = []
        for k, value in enumerate(self.addresses):
            where = f"pool.addresses[{k}]"
            if isinstance(value, str) and "/" in value:
                try:
                    net = ipaddress.IPv4Network(value)
                except ValueError as e:
                    raise ValueError(f"{where}: {value!r}: {e}") from None
                if len(out) + net.num_addresses > MAX_POOL_ADDRESSES:
                    raise ValueError(f"{where}: more than {MAX_POOL_ADDRESSES} addresses")
                out.extend(range(int(net.network_address), int(net.broadcast_address) + 1))
            else:
                out.append(_address(value, where))
        if len(set(out)) != len(out):
            raise ValueError("pool.addresses: an address is listed twice")
        return out


@dataclass(frozen=True, kw_only=True)
class StaticMapping:
    """A configured binding (DNAT / port forwarding): never expires, admits any remote."""

    tenant: int
    protocol: int  # 6 (TCP) or 17 (UDP)
    internal: str | int
    internal_port: int
    external: str | int
    external_port: int

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, int) or not 0 <= self.tenant < 1 << 31:
            raise ValueError(f"static.tenant: {self.tenant!r} is not a tenant id 0..2**31-1")
        if self.protocol not in (TCP, UDP):
            raise ValueError(f"static.protocol: {self.protocol!r}: only 6 (TCP) and 17 (UDP)")
        _address(self.internal, "static.internal")
        _address(self.external, "static.external")
        _port(self.internal_port, "static.internal_port")
        _port(self.external_port, "static.external_port")


@dataclass(frozen=True, kw_only=True)
class NatTimeouts:
    """Idle timeouts of unheld bindings, in seconds; no lower than the RFCs allow."""

    udp: float = 5 * 60  # RFC 4787 REQ-5: >= 2 min, 5 min recommended
    tcp_established: float = 2 * 3600 + 4 * 60  # RFC 5382 REQ-5: >= 2 h 4 min
    tcp_transitory: float = 4 * 60  # RFC 5382 REQ-5, RFC 7857 section 2.1: >= 4 min
    icmp: float = 60  # RFC 5508 REQ-1: >= 60 s

    MINIMUM = {"udp": 120, "tcp_established": 7440, "tcp_transitory": 240, "icmp": 60}

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low = self.MINIMUM[f.name]
            if not isinstance(value, int | float) or not value >= low:
                raise ValueError(f"timeouts.{f.name}: {value!r} is below the RFC minimum {low} s")


# ------------------------------------------------------------------ the arrays
# Bindings: one int64 row each.
BINDING_COLUMNS = (
    "tenant", "protocol", "int_addr", "int_port", "ext_addr", "ext_port",
    "last_used", "refs", "flags", "addr_row", "pair",
)
(B_TENANT, B_PROTO, B_IADDR, B_IPORT, B_EADDR, B_EPORT,
 B_LAST, B_REFS, B_FLAGS, B_ADDR, B_PAIR) = range(len(BINDING_COLUMNS))
F_LIVE, F_STATIC, F_ESTABLISHED, F_EIF = 1, 2, 4, 8

# Pairs (paired pooling): tenant, internal address, address row, binding count.
P_TENANT, P_IADDR, P_ADDR, P_COUNT = range(4)
# Pools: port range, first address row and count, parity flag, EIF flag.
PL_LO, PL_HI, PL_A0, PL_NA, PL_PARITY, PL_EIF = range(6)
# Address rows: address, pool, then ports used per protocol class (TCP, UDP, ICMP).
A_ADDR, A_POOL, A_USED = 0, 1, 2
# Hash tables: ht[table, slot, (k0, k1, value)]; value -1 = empty.
T_FWD, T_REV, T_PAIR = 0, 1, 2
# ctl: parameters, free-list tops and counters, one int64 array.
(C_SEED, C_SWEEP_IV, C_LAST_SWEEP, C_TO_TCP_EST, C_TO_TCP_TRANS, C_TO_UDP, C_TO_ICMP,
 C_IN_REFRESH, C_FREE_B, C_FREE_P, C_CURSOR, C_SYN_ONLY) = range(12)
C_COUNT = 12
CTL_SIZE = C_COUNT + len(Counter)

R_NO_POOL, R_EXHAUSTED = int(NatDrop.NO_POOL), int(NatDrop.EXHAUSTED)
R_TABLE_FULL, R_UNTRANSLATABLE = int(NatDrop.TABLE_FULL), int(NatDrop.UNTRANSLATABLE)
R_NO_BINDING = int(NatDrop.NO_BINDING)
K_ALLOC, K_PRESERVED = C_COUNT + Counter.ALLOCATIONS, C_COUNT + Counter.PRESERVED
K_OUT_HITS, K_IN_HITS = C_COUNT + Counter.OUT_HITS, C_COUNT + Counter.IN_HITS
K_HAIRPINS, K_NO_POOL = C_COUNT + Counter.HAIRPINS, C_COUNT + Counter.NO_POOL
K_EXHAUSTED, K_TABLE_FULL = C_COUNT + Counter.EXHAUSTED, C_COUNT + Counter.TABLE_FULL
K_UNTRANSLATABLE = C_COUNT + Counter.UNTRANSLATABLE
K_NO_BINDING, K_EXPIRED = C_COUNT + Counter.NO_BINDING, C_COUNT + Counter.EXPIRED
K_SWEEPS = C_COUNT + Counter.SWEEPS

_P1 = np.uint64(0x9E3779B97F4A7C15)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


# --------------------------------------------------------------- hash tables
@njit(cache=True, inline="always")
def _hash(k0, k1, seed):  # type: ignore[no-untyped-def]
    """splitmix64's finalizer over two mixed words; non-negative int64."""
    h = (np.uint64(k0) * _P1) ^ ((np.uint64(k1) + np.uint64(seed)) * _P2)
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return np.int64(h >> np.uint64(1))


@njit(cache=True, inline="always")
def _slot(ht, t, k0, k1, seed):  # type: ignore[no-untyped-def]
    """The slot holding (k0, k1) in table t, or the empty slot where it would go."""
    mask = ht.shape[1] - 1
    j = _hash(k0, k1, seed + t) & mask
    while ht[t, j, 2] >= 0 and not (ht[t, j, 0] == k0 and ht[t, j, 1] == k1):
        j = (j + 1) & mask
    return j


@njit(cache=True)
def _put(ht, t, k0, k1, value, seed):  # type: ignore[no-untyped-def]
    j = _slot(ht, t, k0, k1, seed)
    ht[t, j, 0] = k0
    ht[t, j, 1] = k1
    ht[t, j, 2] = value


@njit(cache=True)
def _delete(ht, t, k0, k1, seed):  # type: ignore[no-untyped-def]
    """Remove (k0, k1) from table t by backward shift: later entries of the run
    move into the hole when that keeps them reachable from their home slot."""
    mask = ht.shape[1] - 1
    j = _slot(ht, t, k0, k1, seed)
    if ht[t, j, 2] < 0:
        return
    i = j
    while True:
        i = (i + 1) & mask
        if ht[t, i, 2] < 0:
            break
        home = _hash(ht[t, i, 0], ht[t, i, 1], seed + t) & mask
        if ((i - home) & mask) >= ((i - j) & mask):
            ht[t, j, 0] = ht[t, i, 0]
            ht[t, j, 1] = ht[t, i, 1]
            ht[t, j, 2] = ht[t, i, 2]
            j = i
    ht[t, j, 2] = -1


@njit(cache=True, inline="always")
def _fwd_key(tenant, proto, port):  # type: ignore[no-untyped-def]
    return (tenant << 24) | (proto << 16) | port  # k1 is the internal address


@njit(cache=True, inline="always")
def _rev_key(proto, port):  # type: ignore[no-untyped-def]
    return (proto << 16) | port  # k1 is the external address


@njit(cache=True, inline="always")
def _pclass(proto):  # type: ignore[no-untyped-def]
    return 0 if proto == 6 else (2 if proto == 1 else 1)


# ------------------------------------------------------------------ bindings
# The helpers the batch kernels run for every row (_slot, _timeout, _expired, _probe)
# are inlined and read each array they are given on every path: one read at a chosen
# index where branches differ, b's row 0 where there is no binding. A helper that
# touches an array on one branch only, or is not inlined, makes Numba keep a
# reference-count increment and decrement around every call (see lookup4 in
# portico/classify/lpm4.py). Freeing, which needs three more arrays, stays out of
# them: the kernels call ``_free`` themselves, for the rare expired binding. The
# helpers a new binding runs through (``_choose``, ``_pick_port``, ``_port_free``,
# ``_find``) are inlined into ``_allocate``: as calls, each passed eight arrays and
# counted references to all of them, a pair of atomic operations an array a call,
# four calls deep for every new flow (~600 -> ~500 ns an allocation, min of 5).
@njit(cache=True, inline="always")
def _timeout(proto, flags, ctl):  # type: ignore[no-untyped-def]
    """The idle timeout of an unheld binding of ``proto`` with ``flags``."""
    if proto == 6:
        k = C_TO_TCP_EST if flags & F_ESTABLISHED else C_TO_TCP_TRANS
    elif proto == 1:
        k = C_TO_ICMP
    else:
        k = C_TO_UDP
    return ctl[k]


@njit(cache=True, inline="always")
def _expired(b, i, now, ctl):  # type: ignore[no-untyped-def]
    flags = b[i, B_FLAGS]
    refs = b[i, B_REFS]
    last = b[i, B_LAST]
    timeout = _timeout(b[i, B_PROTO], flags, ctl)
    return flags & F_STATIC == 0 and refs <= 0 and now >= last + timeout


@njit(cache=True, inline="always")
def _probe(t, k0, k1, now, b, ht, ctl):  # type: ignore[no-untyped-def]
    """(the binding under key (k0, k1) of table t or -1, whether it has expired);
    an expired binding is the caller's to free (``_find`` does)."""
    v = ht[t, _slot(ht, t, k0, k1, ctl[C_SEED]), 2]
    expired = _expired(b, max(v, 0), now, ctl)
    return v, v >= 0 and expired


@njit(cache=True)
def _free(i, b, pairs, ht, free, addrs, ctl):  # type: ignore[no-untyped-def]
    """Forget binding i: both keys, its share of the pair and of the address."""
    seed = ctl[C_SEED]
    _delete(ht, T_FWD, _fwd_key(b[i, B_TENANT], b[i, B_PROTO], b[i, B_IPORT]), b[i, B_IADDR], seed)
    _delete(ht, T_REV, _rev_key(b[i, B_PROTO], b[i, B_EPORT]), b[i, B_EADDR], seed)
    p = b[i, B_PAIR]
    if p >= 0:
        pairs[p, P_COUNT] -= 1
        if pairs[p, P_COUNT] == 0:
            _delete(ht, T_PAIR, pairs[p, P_TENANT], pairs[p, P_IADDR], seed)
            free[1, ctl[C_FREE_P]] = p
            ctl[C_FREE_P] += 1
    a = b[i, B_ADDR]
    if a >= 0:
        addrs[a, A_USED + _pclass(b[i, B_PROTO])] -= 1
    b[i, B_FLAGS] = 0
    b[i, B_REFS] = 0
    free[0, ctl[C_FREE_B]] = i
    ctl[C_FREE_B] += 1


@njit(cache=True)
def _sweep(now, b, pairs, ht, free, addrs, ctl):  # type: ignore[no-untyped-def]
    n = 0
    for i in range(b.shape[0]):
        if b[i, B_FLAGS] & F_LIVE and _expired(b, i, now, ctl):
            _free(i, b, pairs, ht, free, addrs, ctl)
            n += 1
    ctl[K_EXPIRED] += n
    ctl[K_SWEEPS] += 1
    ctl[C_LAST_SWEEP] = now
    return n


@njit(cache=True, inline="always")
def _find(t, k0, k1, now, b, pairs, ht, free, addrs, ctl):  # type: ignore[no-untyped-def]
    """The live binding under key (k0, k1) of table t, or -1; an expired one is freed."""
    v, expired = _probe(t, k0, k1, now, b, ht, ctl)
    if expired:
        _free(v, b, pairs, ht, free, addrs, ctl)
        ctl[K_EXPIRED] += 1
        v = -1
    return v


@njit(cache=True, inline="always")
def _port_free(eaddr, proto, port, now, b, pairs, ht, free, addrs, ctl):  # type: ignore[no-untyped-def]
    return _find(T_REV, _rev_key(proto, port), eaddr, now, b, pairs, ht, free, addrs, ctl) < 0


@njit(cache=True, inline="always")
def _pick_port(a, pl, proto, iaddr, iport, now, b, pairs, ht, free, pools, addrs, ctl):  # type: ignore[no-untyped-def]
    """A free port on address row a: the internal one if possible, else a search."""
    lo = pools[pl, PL_LO]
    size = pools[pl, PL_HI] - lo + 1
    if addrs[a, A_USED + _pclass(proto)] >= size:
        return -1
    eaddr = addrs[a, A_ADDR]
    if lo <= iport <= pools[pl, PL_HI] and _port_free(
        eaddr, proto, iport, now, b, pairs, ht, free, addrs, ctl
    ):
        return iport
    off = _hash(ctl[C_CURSOR], (iaddr << 16) | iport, ctl[C_SEED]) % size
    ctl[C_CURSOR] += 1
    if pools[pl, PL_PARITY]:
        for k in range(size):
            p = lo + (off + k) % size
            if (p & 1) == (iport & 1) and _port_free(
                eaddr, proto, p, now, b, pairs, ht, free, addrs, ctl
            ):
                return p
    for k in range(size):
        p = lo + (off + k) % size
        if _port_free(eaddr, proto, p, now, b, pairs, ht, free, addrs, ctl):
            return p
    return -1


@njit(cache=True, inline="always")
def _choose(tenant, pl, proto, iaddr, iport, now, b, pairs, ht, free, pools, addrs, ctl):  # type: ignore[no-untyped-def]
    """(address row, port) for a new binding, or (-1, -1). Paired: a host that has
    bindings keeps its address, full or not."""
    v = ht[T_PAIR, _slot(ht, T_PAIR, tenant, iaddr, ctl[C_SEED]), 2]
    if v >= 0:
        a = pairs[v, P_ADDR]
        return a, _pick_port(a, pl, proto, iaddr, iport, now, b, pairs, ht, free, pools, addrs, ctl)
    a0 = pools[pl, PL_A0]
    na = pools[pl, PL_NA]
    start = _hash(tenant, iaddr, ctl[C_SEED] + 7) % na
    for k in range(na):
        a = a0 + (start + k) % na
        port = _pick_port(a, pl, proto, iaddr, iport, now, b, pairs, ht, free, pools, addrs, ctl)
        if port >= 0:
            return a, port
    return -1, -1


@njit(cache=True)
def _allocate(tenant, proto, iaddr, iport, now, b, pairs, ht, free, pools, addrs, tpool, ctl):  # type: ignore[no-untyped-def]
    """A new dynamic binding; returns (binding, 0) or (-1, reason)."""
    if tenant < 0 or tenant >= tpool.shape[0] or tpool[tenant] < 0:
        return -1, R_NO_POOL
    pl = tpool[tenant]
    may_sweep = now - ctl[C_LAST_SWEEP] >= ctl[C_SWEEP_IV]
    if ctl[C_FREE_B] == 0 and may_sweep:
        _sweep(now, b, pairs, ht, free, addrs, ctl)
        may_sweep = False
    if ctl[C_FREE_B] == 0:
        return -1, R_TABLE_FULL
    a, port = _choose(tenant, pl, proto, iaddr, iport, now, b, pairs, ht, free, pools, addrs, ctl)
    if port < 0 and may_sweep:
        _sweep(now, b, pairs, ht, free, addrs, ctl)
        a, port = _choose(
            tenant, pl, proto, iaddr, iport, now, b, pairs, ht, free, pools, addrs, ctl
        )
    if port < 0:
        return -1, R_EXHAUSTED
    seed = ctl[C_SEED]
    j = _slot(ht, T_PAIR, tenant, iaddr, seed)
    p = ht[T_PAIR, j, 2]
    if p < 0:
        ctl[C_FREE_P] -= 1
        p = free[1, ctl[C_FREE_P]]
        pairs[p, P_TENANT] = tenant
        pairs[p, P_IADDR] = iaddr
        pairs[p, P_ADDR] = a
        pairs[p, P_COUNT] = 0
        ht[T_PAIR, j, 0] = tenant
        ht[T_PAIR, j, 1] = iaddr
        ht[T_PAIR, j, 2] = p
    pairs[p, P_COUNT] += 1
    ctl[C_FREE_B] -= 1
    i = free[0, ctl[C_FREE_B]]
    b[i, B_TENANT] = tenant
    b[i, B_PROTO] = proto
    b[i, B_IADDR] = iaddr
    b[i, B_IPORT] = iport
    b[i, B_EADDR] = addrs[a, A_ADDR]
    b[i, B_EPORT] = port
    b[i, B_LAST] = now
    b[i, B_REFS] = 0
    b[i, B_FLAGS] = F_LIVE | (F_EIF if pools[pl, PL_EIF] else 0)
    b[i, B_ADDR] = a
    b[i, B_PAIR] = p
    addrs[a, A_USED + _pclass(proto)] += 1
    _put(ht, T_FWD, _fwd_key(tenant, proto, iport), iaddr, i, seed)
    _put(ht, T_REV, _rev_key(proto, port), addrs[a, A_ADDR], i, seed)
    ctl[K_ALLOC] += 1
    if port == iport:
        ctl[K_PRESERVED] += 1
    return i, 0


# -------------------------------------------------------------- batch kernels
@njit(cache=True, inline="always")
def _translatable(m, echo_type):  # type: ignore[no-untyped-def]
    """IPv4 TCP, UDP, or the ICMP echo of this direction (``echo_type``), with its header."""
    proto = m.protocol
    return m.ip_version == 4 and m.l4 >= 0 and (
        proto == 6 or proto == 17 or (proto == 1 and m.icmp_type == echo_type))


@njit(cache=True)
def _out_kernel(meta, rows, now, out, reasons, b, pairs, ht, free, pools, addrs, tpool, ctl):  # type: ignore[no-untyped-def]
    for k in range(rows.shape[0]):
        m = meta[rows[k]]
        out[k] = -1
        reasons[k] = 0
        proto = np.int64(m.protocol)
        if not _translatable(m, ECHO_REQUEST):
            reasons[k] = R_UNTRANSLATABLE
            ctl[K_UNTRANSLATABLE] += 1
            continue
        tenant = np.int64(m.tenant)
        iaddr = np.int64(m.src4)
        iport = np.int64(m.sport)
        v = -1
        if tenant >= 0:
            v, expired = _probe(T_FWD, _fwd_key(tenant, proto, iport), iaddr, now, b, ht, ctl)
            if expired:  # freed here, not in _probe: see above _timeout
                _free(v, b, pairs, ht, free, addrs, ctl)
                ctl[K_EXPIRED] += 1
                v = -1
        if v >= 0:
            b[v, B_LAST] = max(b[v, B_LAST], now)
            ctl[K_OUT_HITS] += 1
            out[k] = v
            continue
        if proto == TCP and ctl[C_SYN_ONLY] and not m.tcp_flags & TCP_SYN:
            reasons[k] = R_NO_BINDING  # only a SYN opens a TCP connection, and its binding
            ctl[K_NO_BINDING] += 1
            continue
        v, reason = _allocate(tenant, proto, iaddr, iport, now,
                              b, pairs, ht, free, pools, addrs, tpool, ctl)
        out[k] = v
        if v < 0:
            reasons[k] = reason
            if reason == R_NO_POOL:
                ctl[K_NO_POOL] += 1
            elif reason == R_EXHAUSTED:
                ctl[K_EXHAUSTED] += 1
            else:
                ctl[K_TABLE_FULL] += 1


@njit(cache=True)
def _in_kernel(meta, rows, now, hairpin, out, reasons, b, pairs, ht, free, addrs, ctl):  # type: ignore[no-untyped-def]
    """Reverse lookups by destination. ``hairpin``: no refresh, no miss counting."""
    for k in range(rows.shape[0]):
        m = meta[rows[k]]
        out[k] = -1
        reasons[k] = 0
        proto = np.int64(m.protocol)
        if not _translatable(m, ECHO_REPLY):
            reasons[k] = R_UNTRANSLATABLE
            if not hairpin:
                ctl[K_UNTRANSLATABLE] += 1
            continue
        v, expired = _probe(T_REV, _rev_key(proto, np.int64(m.dport)), np.int64(m.dst4), now,
                            b, ht, ctl)
        if expired:  # freed here, not in _probe: see above _timeout
            _free(v, b, pairs, ht, free, addrs, ctl)
            ctl[K_EXPIRED] += 1
            v = -1
        out[k] = v
        if v < 0:
            reasons[k] = R_NO_BINDING
            if not hairpin:
                ctl[K_NO_BINDING] += 1
        elif hairpin:
            ctl[K_HAIRPINS] += 1
        else:
            if ctl[C_IN_REFRESH]:
                b[v, B_LAST] = max(b[v, B_LAST], now)
            ctl[K_IN_HITS] += 1


@njit(cache=True)
def _release_kernel(bindings, now, b, pairs, ht, free, addrs, ctl):  # type: ignore[no-untyped-def]
    for k in range(bindings.shape[0]):
        i = bindings[k]
        if i < 0 or not b[i, B_FLAGS] & F_LIVE or b[i, B_REFS] <= 0:
            continue
        b[i, B_REFS] -= 1
        if _expired(b, i, now, ctl):  # the last flow outlived the binding's idle time
            _free(i, b, pairs, ht, free, addrs, ctl)
            ctl[K_EXPIRED] += 1


# ------------------------------------------------------------------ the table
class Binding(NamedTuple):
    """One binding, readable (tests, traces, the control plane)."""

    id: int  # the row: what translate_* return and flow-cache entries carry
    tenant: int
    protocol: int
    internal: int
    internal_port: int
    external: int
    external_port: int
    last_used: int
    refs: int
    static: bool
    established: bool


class IcmpErrorRewrite(NamedTuple):
    """What to write into an ICMP error and the packet it quotes.

    Inbound: outer destination and embedded source become ``address``, the
    embedded source port (or echo identifier) becomes ``port``. Outbound: outer
    source and embedded destination become ``address``, the embedded destination
    port (identifier) becomes ``port``.
    """

    binding: int
    tenant: int
    address: int
    port: int


def capacity_slots(capacity: int) -> int:
    """Hash-table slots for ``capacity`` bindings: a power of two, load <= 0.5."""
    return 1 << max(3, (2 * capacity - 1).bit_length())


class NatTable:
    """Pools, static mappings and the dynamic bindings made from them."""

    def __init__(
        self,
        pools: Iterable[Pool] = (),
        *,
        statics: Iterable[StaticMapping] = (),
        capacity: int = 1 << 16,
        timeouts: NatTimeouts | None = None,
        inbound_refresh: bool = True,
        tcp_syn_only: bool = False,
        sweep_interval: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if not isinstance(capacity, int) or not 1 <= capacity <= 1 << 26:
            raise ValueError(f"nat.capacity: {capacity!r} is not 1..2**26 bindings")
        if not sweep_interval >= 0:
            raise ValueError(f"nat.sweep_interval: {sweep_interval!r} must be >= 0 s")
        timeouts = timeouts or NatTimeouts()
        pools = list(pools)
        self.pools = pools
        self.timeouts = timeouts
        self.capacity = capacity

        # Pools and their address rows; one pool per tenant; an address may be in
        # several pools only with disjoint port ranges (then the port says whose).
        tenants: dict[int, int] = {}
        rows: list[tuple[int, int]] = []
        pool_rows: list[list[int]] = []
        owners: dict[int, list[tuple[int, int, int]]] = {}
        for k, pool in enumerate(pools):
            if not isinstance(pool, Pool):
                raise ValueError(f"pools[{k}]: {pool!r} is not a Pool")
            if pool.tenant in tenants:
                first = tenants[pool.tenant]
                raise ValueError(f"pools[{k}].tenant: tenant {pool.tenant} has pools[{first}]")
            tenants[pool.tenant] = k
            lo, hi = pool.ports
            addresses = pool.expanded()
            for addr in addresses:
                for other, olo, ohi in owners.get(addr, []):
                    if lo <= ohi and olo <= hi:
                        raise ValueError(
                            f"pools[{k}].addresses: {ipaddress.IPv4Address(addr)} is in "
                            f"pools[{other}] with overlapping ports {olo}-{ohi}"
                        )
                owners.setdefault(addr, []).append((k, lo, hi))
            pool_rows.append([lo, hi, len(rows), len(addresses), int(pool.port_parity),
                              int(pool.filtering is Filtering.ENDPOINT_INDEPENDENT)])
            rows.extend((addr, k) for addr in addresses)
        self._owners = owners
        self._pools = np.array(pool_rows, dtype=np.int64).reshape(-1, 6)
        self._addrs = np.zeros((max(1, len(rows)), 5), dtype=np.int64)
        for r, (addr, k) in enumerate(rows):
            self._addrs[r, A_ADDR] = addr
            self._addrs[r, A_POOL] = k
        self._external = np.unique(np.array([addr for addr, _ in rows], dtype=np.int64))
        self._tpool = np.full(max(tenants, default=-1) + 1, -1, dtype=np.int64)
        for tenant, k in tenants.items():
            self._tpool[tenant] = k

        self._b = np.zeros((capacity, len(BINDING_COLUMNS)), dtype=np.int64)
        self._pairs = np.zeros((capacity, 4), dtype=np.int64)
        self._ht = np.full((3, capacity_slots(capacity), 3), -1, dtype=np.int64)
        self._free = np.empty((2, capacity), dtype=np.int64)
        self._free[:] = np.arange(capacity - 1, -1, -1)  # pops give 0, 1, 2, ...
        ctl = np.zeros(CTL_SIZE, dtype=np.int64)
        ctl[C_SEED] = (seed if seed is not None else int.from_bytes(os.urandom(6))) & (2**48 - 1)
        ctl[C_SWEEP_IV] = round(sweep_interval * SECOND)
        ctl[C_LAST_SWEEP] = -(2**62)
        ctl[C_TO_TCP_EST] = round(timeouts.tcp_established * SECOND)
        ctl[C_TO_TCP_TRANS] = round(timeouts.tcp_transitory * SECOND)
        ctl[C_TO_UDP] = round(timeouts.udp * SECOND)
        ctl[C_TO_ICMP] = round(timeouts.icmp * SECOND)
        ctl[C_IN_REFRESH] = int(inbound_refresh)
        ctl[C_SYN_ONLY] = int(tcp_syn_only)
        ctl[C_FREE_B] = capacity
        ctl[C_FREE_P] = capacity
        self._ctl = ctl
        for k, static in enumerate(statics):
            try:
                self.add_static(static)
            except ValueError as e:
                raise ValueError(f"statics[{k}]: {e}") from None

    # -------------------------------------------------------------- batch API
    def translate_out(
        self, meta: np.ndarray, rows: np.ndarray, now: int, *, reasons: np.ndarray | None = None
    ) -> np.ndarray:
        """The binding of each row's source endpoint, made if need be; -1 on failure.

        ``reasons`` (optional, one per row) receives 0 or the ``NatDrop`` code.
        """
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        out = np.empty(len(rows), dtype=np.int64)
        why = self._reasons(reasons, len(rows))
        _out_kernel(meta, rows, np.int64(now), out, why, self._b, self._pairs, self._ht,
                    self._free, self._pools, self._addrs, self._tpool, self._ctl)
        if reasons is not None:
            reasons[:] = why
        return out

    def translate_in(
        self, meta: np.ndarray, rows: np.ndarray, now: int, *, reasons: np.ndarray | None = None
    ) -> np.ndarray:
        """The binding owning each row's destination endpoint, or -1 (``NO_BINDING``)."""
        return self._in(meta, rows, now, False, reasons)

    def hairpin(self, meta: np.ndarray, rows: np.ndarray, now: int) -> np.ndarray:
        """For rows from inside: the binding owning the destination (then the row is
        hairpinned: its destination maps to that binding's internal endpoint), else -1.
        Looks up without refreshing; the source's own translation is ``translate_out``."""
        return self._in(meta, rows, now, True, None)

    def _in(
        self, meta: np.ndarray, rows: np.ndarray, now: int, hairpin: bool,
        reasons: np.ndarray | None,
    ) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        out = np.empty(len(rows), dtype=np.int64)
        why = self._reasons(reasons, len(rows))
        _in_kernel(meta, rows, np.int64(now), hairpin, out, why, self._b, self._pairs,
                   self._ht, self._free, self._addrs, self._ctl)
        if reasons is not None:
            reasons[:] = why
        return out

    @staticmethod
    def _reasons(reasons: np.ndarray | None, n: int) -> np.ndarray:
        if reasons is not None and len(reasons) != n:
            raise ValueError(f"reasons: {len(reasons)} entries for {n} rows")
        return np.empty(n, dtype=np.int64)

    def is_external(self, addresses: np.ndarray) -> np.ndarray:
        """Which addresses are pool addresses of this NAT (hairpin candidates)."""
        return np.isin(np.asarray(addresses, dtype=np.int64), self._external)

    def hold(self, bindings: np.ndarray) -> None:
        """One more flow uses each binding (repeats count); held bindings never expire."""
        idx = np.asarray(bindings, dtype=np.int64)
        idx = idx[idx >= 0]
        np.add.at(self._b[:, B_REFS], idx, 1)

    def release(self, bindings: np.ndarray, now: int) -> None:
        """A flow using each binding is gone; an unheld binding past its idle time is freed."""
        idx = np.ascontiguousarray(bindings, dtype=np.int64)
        _release_kernel(idx, np.int64(now), self._b, self._pairs, self._ht, self._free,
                        self._addrs, self._ctl)

    def set_established(self, bindings: np.ndarray, established: bool | np.ndarray = True) -> None:
        """Conntrack's word on TCP state: established bindings get the long timeout."""
        idx = np.asarray(bindings, dtype=np.int64)
        flag = np.broadcast_to(np.asarray(established, dtype=bool), idx.shape)
        keep = idx >= 0
        idx, flag = idx[keep], flag[keep]
        flags = self._b[idx, B_FLAGS]
        self._b[idx, B_FLAGS] = np.where(flag, flags | F_ESTABLISHED, flags & ~F_ESTABLISHED)

    def admits_unsolicited(self, bindings: np.ndarray) -> np.ndarray:
        """True where inbound traffic from any remote may pass: static bindings and
        bindings of endpoint-independent-filtering pools. Elsewhere conntrack decides."""
        idx = np.asarray(bindings, dtype=np.int64)
        flags = np.where(idx >= 0, self._b[np.maximum(idx, 0), B_FLAGS], 0)
        return (flags & F_LIVE != 0) & (flags & (F_STATIC | F_EIF) != 0)  # type: ignore[no-any-return]

    def endpoints(self, bindings: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per binding (all live): tenant, protocol, internal address and port, external
        address and port, as int64 arrays (one gather for a batch's bindings)."""
        r = self._b[np.asarray(bindings, dtype=np.int64)]
        return (r[:, B_TENANT], r[:, B_PROTO], r[:, B_IADDR], r[:, B_IPORT], r[:, B_EADDR],
                r[:, B_EPORT])

    def has_pool(self, tenants: np.ndarray) -> np.ndarray:
        """Which tenants have a pool (SNAT): the others' traffic leaves untranslated."""
        t = np.asarray(tenants, dtype=np.int64)
        inside = (t >= 0) & (t < len(self._tpool))
        out = np.zeros(len(t), dtype=bool)
        out[inside] = self._tpool[t[inside]] >= 0
        return out

    def touch(self, bindings: np.ndarray, now: int) -> None:
        """Traffic used these bindings at ``now`` without a lookup (flow-cache hits)."""
        idx = np.asarray(bindings, dtype=np.int64)
        self._b[idx[idx >= 0], B_LAST] = now

    def expire(self, now: int) -> int:
        """Free every unheld dynamic binding idle past its timeout; return how many."""
        return int(_sweep(np.int64(now), self._b, self._pairs, self._ht, self._free,
                          self._addrs, self._ctl))

    # ------------------------------------------------------------ scalar API
    def lookup(self, tenant: int, protocol: int, internal: str | int, port: int, now: int) -> int:
        """The live binding of an internal endpoint, or -1 (no refresh, no allocation)."""
        return self._find(T_FWD, (tenant << 24) | (protocol << 16) | port,
                          _address(internal, "internal"), now)

    def reverse(self, protocol: int, external: str | int, port: int, now: int) -> int:
        """The live binding that owns an external endpoint, or -1 (no refresh)."""
        return self._find(T_REV, (protocol << 16) | port, _address(external, "external"), now)

    def _find(self, t: int, k0: int, k1: int, now: int) -> int:
        return int(_find(t, np.int64(k0), np.int64(k1), np.int64(now), self._b, self._pairs,
                         self._ht, self._free, self._addrs, self._ctl))

    def icmp_error_in(
        self, protocol: int, embedded_src: int, embedded_sport: int, now: int
    ) -> IcmpErrorRewrite | None:
        """An ICMP error from outside quoting a packet we sent out: the quoted source is
        our external endpoint. Returns the internal endpoint to restore, or None."""
        i = self.reverse(protocol, embedded_src, embedded_sport, now)
        if i < 0:
            return None
        b = self._b
        return IcmpErrorRewrite(i, int(b[i, B_TENANT]), int(b[i, B_IADDR]), int(b[i, B_IPORT]))

    def icmp_error_out(
        self, tenant: int, protocol: int, embedded_dst: int, embedded_dport: int, now: int
    ) -> IcmpErrorRewrite | None:
        """An ICMP error from inside quoting a packet it received: the quoted destination
        is its internal endpoint. Returns the external endpoint to show, or None."""
        i = self.lookup(tenant, protocol, embedded_dst, embedded_dport, now)
        if i < 0:
            return None
        b = self._b
        return IcmpErrorRewrite(i, tenant, int(b[i, B_EADDR]), int(b[i, B_EPORT]))

    def binding(self, index: int) -> Binding:
        r = self._b[index]
        if not r[B_FLAGS] & F_LIVE:
            raise KeyError(f"binding {index} is not live")
        return Binding(
            index, int(r[B_TENANT]), int(r[B_PROTO]), int(r[B_IADDR]), int(r[B_IPORT]),
            int(r[B_EADDR]), int(r[B_EPORT]), int(r[B_LAST]), int(r[B_REFS]),
            bool(r[B_FLAGS] & F_STATIC), bool(r[B_FLAGS] & F_ESTABLISHED),
        )

    def __len__(self) -> int:
        """Live bindings (expired ones not yet freed included), counted without a list."""
        return int(np.count_nonzero(self._b[:, B_FLAGS] & F_LIVE))

    def live(self) -> list[Binding]:
        """Every live binding, expired-but-not-yet-freed ones included."""
        return [self.binding(int(i)) for i in np.flatnonzero(self._b[:, B_FLAGS] & F_LIVE)]

    def counters(self) -> dict[str, int]:
        return {c.name.lower(): int(self._ctl[C_COUNT + c]) for c in Counter}

    # --------------------------------------------------------------- statics
    def add_static(self, static: StaticMapping, now: int | None = None) -> int:
        """Install a DNAT / port-forwarding binding; refuse one that collides with a
        live binding. With ``now``, dynamic bindings expired by then do not count."""
        if not isinstance(static, StaticMapping):
            raise ValueError(f"static: {static!r} is not a StaticMapping")
        proto = static.protocol
        iaddr = _address(static.internal, "static.internal")
        eaddr = _address(static.external, "static.external")
        held = self._holder(T_REV, (proto << 16) | static.external_port, eaddr, now)
        if held >= 0:
            raise ValueError(
                f"static.external_port: {ipaddress.IPv4Address(eaddr)}:{static.external_port}/"
                f"{proto} is held by binding {held}"
            )
        fwd = (static.tenant << 24) | (proto << 16) | static.internal_port
        held = self._holder(T_FWD, fwd, iaddr, now)
        if held >= 0:
            raise ValueError(
                f"static.internal_port: {ipaddress.IPv4Address(iaddr)}:{static.internal_port}/"
                f"{proto} of tenant {static.tenant} is held by binding {held}"
            )
        if self._ctl[C_FREE_B] == 0:
            raise ValueError("static: the binding table is full")
        row = -1
        for k, lo, hi in self._owners.get(eaddr, []):
            if lo <= static.external_port <= hi:
                start = int(self._pools[k, PL_A0])
                hits = np.flatnonzero(self._addrs[start : start + int(self._pools[k, PL_NA]),
                                                  A_ADDR] == eaddr)
                row = start + int(hits[0])
        self._ctl[C_FREE_B] -= 1
        i = int(self._free[0, self._ctl[C_FREE_B]])
        self._b[i] = 0
        self._b[i, B_TENANT] = static.tenant
        self._b[i, B_PROTO] = proto
        self._b[i, B_IADDR] = iaddr
        self._b[i, B_IPORT] = static.internal_port
        self._b[i, B_EADDR] = eaddr
        self._b[i, B_EPORT] = static.external_port
        self._b[i, B_FLAGS] = F_LIVE | F_STATIC
        self._b[i, B_ADDR] = row
        self._b[i, B_PAIR] = -1
        if row >= 0:
            self._addrs[row, A_USED + (0 if proto == TCP else 1)] += 1
        seed = self._ctl[C_SEED]
        _put(self._ht, T_FWD, np.int64((static.tenant << 24) | (proto << 16)
                                       | static.internal_port), np.int64(iaddr), i, seed)
        _put(self._ht, T_REV, np.int64((proto << 16) | static.external_port),
             np.int64(eaddr), i, seed)
        return i

    def _holder(self, t: int, k0: int, k1: int, now: int | None) -> int:
        """The binding under a key: live at ``now``, or (no clock given) not yet freed."""
        if now is not None:
            return self._find(t, k0, k1, now)
        return int(self._ht[t, _slot(self._ht, t, np.int64(k0), np.int64(k1),
                                     self._ctl[C_SEED]), 2])

    def remove_static(self, index: int) -> None:
        if not self._b[index, B_FLAGS] & F_STATIC:
            raise KeyError(f"binding {index} is not a static binding")
        _free(np.int64(index), self._b, self._pairs, self._ht, self._free, self._addrs,
              self._ctl)

    # --------------------------------------------------------------- actions
    def action(self, index: int, direction: Direction, base: Action | None = None) -> Action:
        """The rewrite of a binding in one direction, merged into ``base`` (routing's
        output, TTL, ...). OUT: source -> external endpoint. IN: destination ->
        internal endpoint (for ICMP echo replies the identifier, which
        ``actions.apply`` rewrites through SET_SPORT)."""
        b = self.binding(index)
        base = base or Action()
        if direction == Direction.OUT:
            return dataclasses.replace(base, ops=base.ops | Op.SET_IP_SRC | Op.SET_SPORT,
                                       ip_src=b.external, sport=b.external_port)
        if b.protocol == ICMP:
            return dataclasses.replace(base, ops=base.ops | Op.SET_IP_DST | Op.SET_SPORT,
                                       ip_dst=b.internal, sport=b.internal_port)
        return dataclasses.replace(base, ops=base.ops | Op.SET_IP_DST | Op.SET_DPORT,
                                   ip_dst=b.internal, dport=b.internal_port)

    def hairpin_action(self, source: int, destination: int, base: Action | None = None) -> Action:
        """Both rewrites of a hairpinned packet: source to ``source``'s external
        endpoint, destination to ``destination``'s internal endpoint."""
        out = self.action(source, Direction.OUT, base)
        d = self.binding(destination)
        return dataclasses.replace(out, ops=out.ops | Op.SET_IP_DST | Op.SET_DPORT,
                                   ip_dst=d.internal, dport=d.internal_port)
