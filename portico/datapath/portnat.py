"""portnat: the port-range NAT table of Networking as a Service — shared addresses, pods, sessions.

Role. NaaS (issue 7) puts many pods behind few public addresses: each pod
gets a *shared* external IPv4 address and a set of its ports of its own (a
block ``lo..hi``, or the RFC 7597 port set of a PSID, see
``portico.services.naas``). This table says, for the stage
``portico.datapath.stages.portnat`` and for the nftables back-end
``portico.services.naas.nftables``, which pod owns which external port, and
which signalled sessions override that. It is data plus the control plane's
mutations; the per-packet work is the stage's kernel, which reads the arrays
below directly.

Theory of operation
-------------------
*Ranges are an array, not rules.* For every shared address the table keeps a
65,536-entry ``int32`` row of ``port_map``: external port -> the pod's slot,
or ``NO_POD``. Inbound, the port a packet is sent to indexes it in one load,
whatever the number of pods, and whatever shape their port sets have (a
PSID set is 63 runs of a few ports; it costs the same as one block).
Outbound, a pod's source port is inside its set exactly when
``port_map[its shared row, sport]`` holds its own slot. TCP and UDP share the
map: a pod's ports are its ports for both.

*Sessions override ranges.* A signalling service (a SIP proxy setting up a
call, say) installs per-session mappings: external ``(protocol, port)`` ->
``pod address : pod port``, e.g. the RTP/RTCP pair of one call, removed
together with the session. They are bidirectional, as media relays need
(symmetric RTP: the far end sends to the port it receives from): inbound
``shared:external_port`` goes to ``pod:pod_port``, and outbound
``pod:pod_port`` leaves as ``shared:external_port``. Both directions are keys
of one small open-addressing hash (``session_hash``: linear probing,
deletion by backward shift, load <= 1/2). So that the common packet does not
probe it, a port that some session maps carries ``SESSION_FLAG`` in its
``port_map`` entry (inbound), and a pod with sessions counts them in its row
(outbound); only then is the hash looked at.

*Rules that keep one owner per port.* Pods on one shared address never
share a port (overlaps are refused, naming the port and the pod that holds
it); a pod address is never a shared address; one pod address has one
mapping. A session's external port must lie in its pod's own port set (so the
pod's own traffic from that port and the session can only collide within the
one pod, never with a neighbour), and neither its inbound key nor its
outbound key ``(pod, protocol, pod_port)`` may be another session's.

*Incremental, never rebuilt.* Adding a pod writes its ports into the shared
address's row (O(ports in its set)) and one pod hash entry; removing it
writes ``NO_POD`` back over the same ports and removes its sessions. A
session is a few hash entries. Arrays grow by doubling when full (rows for
shared addresses, pod rows, session rows, hash tables rebuilt at twice the
size), amortised O(1) per add. The writes are ordered so that a batch
processed between two of them sees, for each port, either the old mapping or
the new one: a pod's ports are written before its address is findable for
outbound traffic and cleared after it is not; a session's hash entries go in
before its port is flagged. (Kernels hold the GIL, so a batch never runs in
the middle of one array write.) A caller that mutates from another thread
than the datapath's gets exactly that guarantee, no more.

*Policing.* A pod may have an allow list of external peer prefixes
(``allow``; None: any peer). The lists are containers of a
``portico.classify`` container store, and the rule set holds one *allow* rule
per distinct list, from the list's container to the container of the pods
that have that list (``_Policy``). The stage translates first, then
classifies the rows that went to a policed pod (their destination is now the
pod): a row that matches no rule is refused. The classifier and its store
(the store's DIR-24-8 table is 64 MiB, mostly untouched virtual memory) are
made when the first allow list is set.

Memory (kernel arrays, int64 unless said):

* per shared address: ``port_map`` row, 65,536 x 4 B = **256 KiB**, plus one
  ``shared_hash`` slot pair (32 B at load 1/2) and its address (8 B);
* per pod: one ``pods`` row (6 x 8 B) and its ``pod_hash`` slots (32 B);
* per session port: one ``session_rows`` row (5 x 8 B) and two keys in
  ``session_hash`` (64 B at load 1/2).

So 1,000 shared addresses cost 256 MiB of port maps, and 64 pods in blocks of
1,000 ports on one address cost 256 KiB + ~5 KiB. (The session hash could have
been a second 65,536-entry row per address and protocol, 512 KiB more per
address; a session per port is rare, so the hash.) ``memory_bytes`` sums the
arrays as allocated.

Example::

    table = PortNatTable()
    table.add_pod(PodMapping.block(shared="198.51.100.2", address="10.20.0.2",
                                   first=40000, last=40999))
    # A PSID set has a run in every 1024 ports, so it goes on another address:
    table.add_pod(PodMapping.psid(shared="198.51.100.3", address="10.21.0.2",
                                  psid=0x34, psid_length=8))
    table.add_session(Session(id="call-7", pod="10.20.0.2", ports=(
        SessionPort(protocol=17, external_port=40100, pod_port=10000),
        SessionPort(protocol=17, external_port=40101, pod_port=10001))))
    table.lookup_in("198.51.100.2", 17, 40100)     # ('10.20.0.2', 10000)
    table.remove_session("call-7")
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from numba import njit

from portico.services.naas.psid import DEFAULT_OFFSET, port_set

TCP, UDP = 6, 17
PROTOCOLS = {TCP: "tcp", UDP: "udp"}
PORTS = 1 << 16
NO_POD = -1
EMPTY = -1  # an empty hash slot's key
SESSION_FLAG = np.int32(1 << 30)  # in a port_map entry: some session maps this port
SLOT_MASK = (1 << 30) - 1
BYTES_PER_SHARED_ADDRESS = PORTS * 4  # one port_map row

# Columns of a pod row.
P_ADDRESS, P_SHARED_ROW, P_SHARED_ADDRESS, P_SESSIONS, P_POLICED, P_LIVE = range(6)
POD_COLUMNS = 6
# Columns of a session-port row.
S_POD, S_PROTOCOL, S_EXTERNAL_PORT, S_POD_PORT, S_SHARED_ROW = range(5)
SESSION_COLUMNS = 5
# A session key: direction bit 17, protocol bit 16 (1 = UDP), port; the shared row
# (inbound) or the pod slot (outbound) above them.
_OUTBOUND_BIT = 1 << 17
_UDP_BIT = 1 << 16
_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)


class Counter(IntEnum):
    """What the stage counts, beside the drops it sets (``counters()`` names them)."""

    TRANSLATED_IN = 0  # inbound rows sent to a pod (and not refused by its allow list)
    TRANSLATED_OUT = 1  # outbound rows sent from the shared address
    SESSION_IN = 2  # ... of the inbound ones, by a session mapping
    SESSION_OUT = 3  # ... of the outbound ones, by a session mapping
    OUTSIDE_RANGES = 4  # inbound to a shared address, on a port no pod holds
    SOURCE_PORT_OUTSIDE_RANGE = 5  # outbound from a pod, from a port not in its set
    PEER_NOT_ALLOWED = 6  # inbound from a peer the pod's allow list refuses
    NOT_TCP_UDP = 7  # to a shared address or from a pod, but without TCP/UDP ports


# ---------------------------------------------------------------- hash tables
@njit(cache=True, inline="always")
def hash_home(key, mask):  # type: ignore[no-untyped-def]
    """Fibonacci hashing: the key times 2^64/phi, high bits folded in; a slot index."""
    h = np.uint64(key) * _FIBONACCI
    h ^= h >> np.uint64(29)
    return np.int64(h & np.uint64(mask))


@njit(cache=True, inline="always")
def hash_find(table, key):  # type: ignore[no-untyped-def]
    """The value stored under ``key`` (keys >= 0), or -1. ``table[slot] = (key, value)``."""
    mask = table.shape[0] - 1
    j = hash_home(key, mask)
    found = np.int64(-1)
    while True:
        k = table[j, 0]
        if k == key:
            found = table[j, 1]
            break
        if k == EMPTY:
            break
        j = (j + 1) & mask
    return found


@njit(cache=True)
def _hash_put(table, key, value):  # type: ignore[no-untyped-def]
    mask = table.shape[0] - 1
    j = hash_home(key, mask)
    while table[j, 0] != EMPTY and table[j, 0] != key:
        j = (j + 1) & mask
    table[j, 1] = value  # the value first: a reader finding the key finds its value
    table[j, 0] = key


@njit(cache=True)
def _hash_delete(table, key):  # type: ignore[no-untyped-def]
    """Remove ``key``; later entries of its run move back when that keeps them reachable."""
    mask = table.shape[0] - 1
    j = hash_home(key, mask)
    while table[j, 0] != key:
        if table[j, 0] == EMPTY:
            return
        j = (j + 1) & mask
    i = j
    while True:
        i = (i + 1) & mask
        if table[i, 0] == EMPTY:
            break
        home = hash_home(table[i, 0], mask)
        if ((i - home) & mask) >= ((i - j) & mask):
            table[j, 1] = table[i, 1]
            table[j, 0] = table[i, 0]
            j = i
    table[j, 0] = EMPTY


def _new_hash(entries: int) -> np.ndarray:
    """A hash table for ``entries`` keys at load <= 1/2."""
    return np.full((1 << max(4, (2 * entries - 1).bit_length()), 2), EMPTY, dtype=np.int64)


def _grown_hash(table: np.ndarray, entries: int) -> np.ndarray:
    """``table`` again at a size that holds ``entries`` at load <= 1/2 (itself if it does)."""
    if 2 * entries <= table.shape[0]:
        return table
    grown = _new_hash(entries)
    for key, value in table[table[:, 0] != EMPTY].tolist():
        _hash_put(grown, key, value)
    return grown


@njit(cache=True, inline="always")
def session_key_in(shared_row, protocol, port):  # type: ignore[no-untyped-def]
    udp = _UDP_BIT if protocol == 17 else 0
    return (np.int64(shared_row) << 18) | udp | np.int64(port)


@njit(cache=True, inline="always")
def session_key_out(pod_slot, protocol, port):  # type: ignore[no-untyped-def]
    udp = _UDP_BIT if protocol == 17 else 0
    return (np.int64(pod_slot) << 18) | _OUTBOUND_BIT | udp | np.int64(port)


# ---------------------------------------------------------------- configuration
def _ipv4(value: object, where: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)  # type: ignore[arg-type]
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise ValueError(f"{where}: {value!r} is not an IPv4 address") from None


def _port(value: object, where: str, *, lowest: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= 0xFFFF:
        raise ValueError(f"{where}: {value!r} is not a port {lowest}..65535")
    return value


def _protocol(value: object, where: str) -> int:
    if isinstance(value, str):
        named = {name: number for number, name in PROTOCOLS.items()}.get(value.lower())
        if named is not None:
            return named
    if isinstance(value, bool) or value not in PROTOCOLS:
        raise ValueError(f"{where}: {value!r} is not tcp (6) or udp (17)")
    return int(value)  # type: ignore[call-overload]


@dataclass(frozen=True, kw_only=True)
class PodMapping:
    """A pod's allocation: its address, the shared address and the ports it owns there.

    ``ports``: runs ``(first, last)``, inclusive, disjoint (port 0 may be in a run:
    PSID 0 with offset 0 starts there; no packet is ever sent to it). ``allow``:
    peer prefixes allowed to reach the pod, None for any peer, () for none.
    """

    shared: str
    address: str
    ports: tuple[tuple[int, int], ...]
    allow: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        shared = _ipv4(self.shared, "pod.shared")
        address = _ipv4(self.address, "pod.address")
        if shared == address:
            raise ValueError(f"pod.address: {address} is the shared address itself")
        object.__setattr__(self, "shared", str(shared))
        object.__setattr__(self, "address", str(address))
        if isinstance(self.ports, str | bytes) or not self.ports:
            raise ValueError("pod.ports: give one or more runs (first, last)")
        runs = []
        for k, run in enumerate(self.ports):
            where = f"pod.ports[{k}]"
            if not isinstance(run, tuple | list) or len(run) != 2:
                raise ValueError(f"{where}: {run!r} is not a run (first, last)")
            first = _port(run[0], where, lowest=0)
            last = _port(run[1], where, lowest=0)
            if first > last:
                raise ValueError(f"{where}: first port {first} is above last port {last}")
            runs.append((first, last))
        runs.sort()
        for (_, last), (first, _) in zip(runs, runs[1:], strict=False):
            if first <= last:
                raise ValueError(f"pod.ports: runs overlap at port {first}")
        object.__setattr__(self, "ports", tuple(runs))
        if self.allow is not None:
            if isinstance(self.allow, str | bytes):
                raise ValueError("pod.allow: give a list of prefixes, not one string")
            allow = []
            for k, prefix in enumerate(self.allow):
                try:
                    allow.append(str(ipaddress.IPv4Network(prefix)))
                except (ValueError, TypeError):
                    raise ValueError(f"pod.allow[{k}]: {prefix!r} is not an IPv4 prefix "
                                     "(host bits must be zero)") from None
            object.__setattr__(self, "allow", tuple(allow))

    @classmethod
    def block(cls, *, shared: str, address: str, first: int, last: int,
              allow: Sequence[str] | None = None) -> PodMapping:
        return cls(shared=shared, address=address, ports=((first, last),),
                   allow=None if allow is None else tuple(allow))

    @classmethod
    def psid(cls, *, shared: str, address: str, psid: int, psid_length: int,
             offset: int = DEFAULT_OFFSET, allow: Sequence[str] | None = None) -> PodMapping:
        """The RFC 7597 port set of ``psid`` (``services.naas.psid.port_set``)."""
        return cls(shared=shared, address=address, ports=port_set(psid, psid_length, offset),
                   allow=None if allow is None else tuple(allow))

    @classmethod
    def from_allocation(cls, allocation: Any, *, address: str,
                        allow: Sequence[str] | None = None) -> PodMapping:
        """A NaaS allocation (``services.naas.allocator.Allocation``: its ``address`` is the
        shared one, ``ranges`` its ports) for the pod at ``address``."""
        return cls(shared=str(allocation.address), address=address,
                   ports=tuple(tuple(run) for run in allocation.ranges),
                   allow=None if allow is None else tuple(allow))

    def port_count(self) -> int:
        return sum(last - first + 1 for first, last in self.ports)


@dataclass(frozen=True, kw_only=True)
class SessionPort:
    """One mapping of a session: external ``(protocol, port)`` <-> the pod's ``pod_port``."""

    protocol: int
    external_port: int
    pod_port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", _protocol(self.protocol, "session.protocol"))
        _port(self.external_port, "session.external_port")
        _port(self.pod_port, "session.pod_port")


@dataclass(frozen=True, kw_only=True)
class Session:
    """A signalled session of a pod (a call): its mappings, installed and removed together."""

    id: str
    pod: str
    ports: tuple[SessionPort, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not 0 < len(self.id) <= 256:
            raise ValueError(f"session.id: {self.id!r} is not a session id (1-256 characters)")
        object.__setattr__(self, "pod", str(_ipv4(self.pod, "session.pod")))
        if isinstance(self.ports, str | bytes) or not self.ports:
            raise ValueError("session.ports: give one or more SessionPort")
        for k, port in enumerate(self.ports):
            if not isinstance(port, SessionPort):
                raise ValueError(f"session.ports[{k}]: {port!r} is not a SessionPort")
        object.__setattr__(self, "ports", tuple(self.ports))


# ---------------------------------------------------------------- the table
class PortNatTable:
    """Shared addresses, the pods' port sets on them, and session overrides (see module doc)."""

    def __init__(self, pods: Iterable[PodMapping] = (), *, capacity: int = 64) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"portnat.capacity: {capacity!r} is not a positive count")
        # The kernel's arrays (see the module doc).
        self.shared_hash = _new_hash(1)  # shared address -> its port_map row
        self.shared_addresses = np.zeros(1, dtype=np.int64)  # port_map row -> address
        self.port_map = np.full((1, PORTS), NO_POD, dtype=np.int32)
        self.pod_hash = _new_hash(capacity)  # pod address -> slot
        self.pods_array = np.zeros((capacity, POD_COLUMNS), dtype=np.int64)
        self.session_hash = _new_hash(capacity)  # session_key_in/out -> session-port row
        self.session_rows = np.zeros((capacity, SESSION_COLUMNS), dtype=np.int64)
        self.counters_array = np.zeros(len(Counter), dtype=np.int64)
        # The control plane's view.
        self._shared_row: dict[str, int] = {}
        self._shared_pods: dict[str, set[str]] = {}
        self._free_shared: list[int] = [0]
        self._pods: dict[str, PodMapping] = {}
        self._slot: dict[str, int] = {}
        self._free_pods: list[int] = list(range(capacity - 1, -1, -1))
        self._sessions: dict[str, Session] = {}
        self._session_port_rows: dict[str, list[int]] = {}
        self._sessions_of_pod: dict[str, set[str]] = {}
        self._free_session_rows: list[int] = list(range(capacity - 1, -1, -1))
        self._session_count = 0  # session-port rows in use
        self._policy: Any = None  # the classifier, made with the first allow list
        self.version = 0  # bumped by every change (a flow cache would key on it)
        for k, pod in enumerate(pods):
            try:
                self.add_pod(pod)
            except ValueError as error:
                raise ValueError(f"pods[{k}]: {error}") from None

    # ------------------------------------------------------------ reading
    def pods(self) -> list[PodMapping]:
        return list(self._pods.values())

    def pod(self, address: str) -> PodMapping | None:
        return self._pods.get(str(_ipv4(address, "pod.address")))

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def shared(self) -> list[str]:
        """The shared addresses that hold at least one pod."""
        return list(self._shared_row)

    def slot_of(self, address: str) -> int:
        """The pod's slot (what ``port_map`` holds for its ports); ValueError if none."""
        key = str(_ipv4(address, "pod.address"))
        if key not in self._slot:
            raise ValueError(f"pod.address: no pod {key}")
        return self._slot[key]

    def counters(self) -> dict[str, int]:
        return {c.name.lower().replace("_", "-"): int(self.counters_array[c]) for c in Counter}

    def memory_bytes(self) -> int:
        """The kernel's arrays as allocated (the classifier of allow lists not included)."""
        return int(sum(a.nbytes for a in (self.shared_hash, self.shared_addresses,
                                          self.port_map, self.pod_hash, self.pods_array,
                                          self.session_hash, self.session_rows)))

    @property
    def classifier(self) -> Any:
        """The allow lists' classifier, or None while no pod has one."""
        return self._policy.classifier if self._policy is not None else None

    def lookup_in(self, shared: str, protocol: int, port: int) -> tuple[str, int] | None:
        """Where an inbound packet to ``shared:port`` goes: (pod address, pod port), or None.
        The kernel's rule, read scalar (tests, the CLI)."""
        row = self._shared_row.get(str(_ipv4(shared, "shared")))
        protocol = _protocol(protocol, "protocol")
        port = _port(port, "port", lowest=0)
        if row is None:
            return None
        entry = int(self.port_map[row, port])
        if entry & int(SESSION_FLAG):
            found = int(hash_find(self.session_hash, session_key_in(row, protocol, port)))
            if found >= 0:
                s = self.session_rows[found]
                return self._address_of(int(s[S_POD])), int(s[S_POD_PORT])
        slot = entry & SLOT_MASK if entry >= 0 else NO_POD
        return None if slot == NO_POD else (self._address_of(slot), port)

    def lookup_out(self, pod: str, protocol: int, port: int) -> tuple[str, int] | None:
        """The external endpoint a pod's packet from ``port`` leaves with, or None (refused)."""
        address = str(_ipv4(pod, "pod"))
        protocol = _protocol(protocol, "protocol")
        port = _port(port, "port", lowest=0)
        slot = self._slot.get(address)
        if slot is None:
            return None
        row = int(self.pods_array[slot, P_SHARED_ROW])
        shared = self._pods[address].shared
        if self.pods_array[slot, P_SESSIONS]:
            found = int(hash_find(self.session_hash, session_key_out(slot, protocol, port)))
            if found >= 0:
                return shared, int(self.session_rows[found, S_EXTERNAL_PORT])
        entry = int(self.port_map[row, port])
        return (shared, port) if entry >= 0 and entry & SLOT_MASK == slot else None

    def _address_of(self, slot: int) -> str:
        return str(ipaddress.IPv4Address(int(self.pods_array[slot, P_ADDRESS])))

    # ------------------------------------------------------------ pods
    def add_pod(self, pod: PodMapping) -> int:
        """Map the pod's ports on its shared address to it; its slot. Refused (ValueError
        naming the field, the table unchanged) when its address has a mapping or is a
        shared address, its shared address is a pod's, or a port is another pod's."""
        if not isinstance(pod, PodMapping):
            raise ValueError(f"pod: {pod!r} is not a PodMapping")
        if pod.address in self._pods:
            raise ValueError(f"pod.address: {pod.address} already has a mapping "
                             f"(on {self._pods[pod.address].shared})")
        if pod.address in self._shared_row:
            raise ValueError(f"pod.address: {pod.address} is a shared address")
        if pod.shared in self._pods:
            raise ValueError(f"pod.shared: {pod.shared} is a pod's address")
        row = self._shared_row.get(pod.shared)
        if row is not None:
            for first, last in pod.ports:
                held = self.port_map[row, first : last + 1]
                taken = np.flatnonzero(held != NO_POD)
                if len(taken):
                    port = first + int(taken[0])
                    owner = self._address_of(int(held[taken[0]]) & SLOT_MASK)
                    raise ValueError(f"pod.ports: port {port} of {pod.shared} is pod "
                                     f"{owner}'s")
        # Checked: from here on nothing refuses.
        if row is None:
            row = self._add_shared(pod.shared)
        slot = self._take_pod_slot()
        record = self.pods_array[slot]
        record[:] = 0
        record[P_ADDRESS] = int(ipaddress.IPv4Address(pod.address))
        record[P_SHARED_ROW] = row
        record[P_SHARED_ADDRESS] = int(ipaddress.IPv4Address(pod.shared))
        record[P_LIVE] = 1
        for first, last in pod.ports:  # inbound works from here...
            self.port_map[row, first : last + 1] = slot
        self._pods[pod.address] = pod
        self._slot[pod.address] = slot
        self._shared_pods[pod.shared].add(pod.address)
        self._sessions_of_pod[pod.address] = set()
        self.pod_hash = _grown_hash(self.pod_hash, len(self._pods))
        _hash_put(self.pod_hash, int(record[P_ADDRESS]), slot)  # ...outbound from here
        if pod.allow is not None:
            self._set_allow(pod.address, pod.allow)
        self.version += 1
        return slot

    def remove_pod(self, address: str) -> PodMapping:
        """Unmap a pod (and its sessions); the mapping it had. ValueError if it has none."""
        key = str(_ipv4(address, "pod.address"))
        pod = self._pods.get(key)
        if pod is None:
            raise ValueError(f"pod.address: no pod {key}")
        for session_id in list(self._sessions_of_pod[key]):
            self.remove_session(session_id)
        slot = self._slot[key]
        record = self.pods_array[slot]
        row = int(record[P_SHARED_ROW])
        _hash_delete(self.pod_hash, int(record[P_ADDRESS]))  # no outbound from here...
        for first, last in pod.ports:  # ...nor inbound from here
            self.port_map[row, first : last + 1] = NO_POD
        if pod.allow is not None:
            self._set_allow(key, None)
        record[:] = 0
        del self._pods[key], self._slot[key], self._sessions_of_pod[key]
        self._free_pods.append(slot)
        self._shared_pods[pod.shared].discard(key)
        if not self._shared_pods[pod.shared]:
            self._remove_shared(pod.shared)
        self.version += 1
        return pod

    def set_allow(self, address: str, allow: Sequence[str] | None) -> None:
        """Replace a pod's allow list (None: any peer; (): none)."""
        key = str(_ipv4(address, "pod.address"))
        pod = self._pods.get(key)
        if pod is None:
            raise ValueError(f"pod.address: no pod {key}")
        updated = PodMapping(shared=pod.shared, address=pod.address, ports=pod.ports,
                             allow=None if allow is None else tuple(allow))  # validates
        self._set_allow(key, updated.allow)
        self._pods[key] = updated
        self.version += 1

    def _set_allow(self, address: str, allow: tuple[str, ...] | None) -> None:
        slot = self._slot[address]
        if allow is None:
            self.pods_array[slot, P_POLICED] = 0  # not policed before the rule goes
            if self._policy is not None:
                self._policy.remove(address)
            return
        if self._policy is None:
            self._policy = _Policy()
        self._policy.set(address, allow)
        self.pods_array[slot, P_POLICED] = 1  # policed once the rule is there

    def _take_pod_slot(self) -> int:
        if not self._free_pods:
            size = len(self.pods_array)
            grown = np.zeros((2 * size, POD_COLUMNS), dtype=np.int64)
            grown[:size] = self.pods_array
            self.pods_array = grown
            self._free_pods = list(range(2 * size - 1, size - 1, -1))
        return self._free_pods.pop()

    def _add_shared(self, shared: str) -> int:
        if not self._free_shared:
            size = len(self.port_map)
            grown = np.full((2 * size, PORTS), NO_POD, dtype=np.int32)
            grown[:size] = self.port_map
            addresses = np.zeros(2 * size, dtype=np.int64)
            addresses[:size] = self.shared_addresses
            self.port_map, self.shared_addresses = grown, addresses
            self._free_shared = list(range(2 * size - 1, size - 1, -1))
        row = self._free_shared.pop()
        self.port_map[row] = NO_POD
        value = int(ipaddress.IPv4Address(shared))
        self.shared_addresses[row] = value
        self._shared_row[shared] = row
        self._shared_pods[shared] = set()
        self.shared_hash = _grown_hash(self.shared_hash, len(self._shared_row))
        _hash_put(self.shared_hash, value, row)
        return row

    def _remove_shared(self, shared: str) -> None:
        row = self._shared_row.pop(shared)
        del self._shared_pods[shared]
        _hash_delete(self.shared_hash, int(self.shared_addresses[row]))
        self.shared_addresses[row] = 0
        self._free_shared.append(row)

    # ------------------------------------------------------------ sessions
    def add_session(self, session: Session) -> None:
        """Install a session's mappings (all or none). Refused (ValueError naming the field)
        when its id is taken, its pod has no mapping, an external port is outside the
        pod's ports, or a key (inbound or outbound) is another mapping's."""
        if not isinstance(session, Session):
            raise ValueError(f"session: {session!r} is not a Session")
        if session.id in self._sessions:
            raise ValueError(f"session.id: {session.id!r} is installed already")
        slot = self._slot.get(session.pod)
        if slot is None:
            raise ValueError(f"session.pod: no pod {session.pod}")
        row = int(self.pods_array[slot, P_SHARED_ROW])
        seen_in: set[tuple[int, int]] = set()
        seen_out: set[tuple[int, int]] = set()
        for k, port in enumerate(session.ports):
            where = f"session.ports[{k}]"
            entry = int(self.port_map[row, port.external_port])
            if entry < 0 or entry & SLOT_MASK != slot:
                raise ValueError(f"{where}.external_port: {port.external_port} is not one of "
                                 f"pod {session.pod}'s ports")
            inbound = (port.protocol, port.external_port)
            outbound = (port.protocol, port.pod_port)
            if inbound in seen_in or hash_find(
                    self.session_hash, session_key_in(row, port.protocol, port.external_port)) >= 0:
                raise ValueError(f"{where}.external_port: {PROTOCOLS[port.protocol]} "
                                 f"{port.external_port} is mapped by another session")
            if outbound in seen_out or hash_find(
                    self.session_hash, session_key_out(slot, port.protocol, port.pod_port)) >= 0:
                raise ValueError(f"{where}.pod_port: {PROTOCOLS[port.protocol]} "
                                 f"{port.pod_port} of {session.pod} is mapped by another "
                                 "session")
            seen_in.add(inbound)
            seen_out.add(outbound)
        # Checked: from here on nothing refuses.
        self._session_count += len(session.ports)
        self.session_hash = _grown_hash(self.session_hash, 2 * self._session_count)
        rows = []
        for port in session.ports:
            r = self._take_session_row()
            self.session_rows[r] = (slot, port.protocol, port.external_port, port.pod_port, row)
            _hash_put(self.session_hash, session_key_out(slot, port.protocol, port.pod_port), r)
            _hash_put(self.session_hash, session_key_in(row, port.protocol, port.external_port),
                      r)
            rows.append(r)
        self.pods_array[slot, P_SESSIONS] += len(session.ports)  # outbound looks from here
        for port in session.ports:  # inbound from here
            self.port_map[row, port.external_port] |= SESSION_FLAG
        self._sessions[session.id] = session
        self._session_port_rows[session.id] = rows
        self._sessions_of_pod[session.pod].add(session.id)
        self.version += 1

    def remove_session(self, session_id: str) -> Session:
        """Remove a session's mappings; the session. ValueError if it is not installed."""
        session = self._sessions.get(session_id)
        if session is None:
            raise ValueError(f"session.id: {session_id!r} is not installed")
        for r in self._session_port_rows.pop(session_id):
            slot, protocol, external, pod_port, row = (int(v) for v in self.session_rows[r])
            _hash_delete(self.session_hash, session_key_in(row, protocol, external))
            _hash_delete(self.session_hash, session_key_out(slot, protocol, pod_port))
            other = TCP if protocol == UDP else UDP  # the flag stays while the other holds it
            if hash_find(self.session_hash, session_key_in(row, other, external)) < 0:
                self.port_map[row, external] &= ~SESSION_FLAG
            self.pods_array[slot, P_SESSIONS] -= 1
            self.session_rows[r] = 0
            self._free_session_rows.append(r)
            self._session_count -= 1
        del self._sessions[session_id]
        self._sessions_of_pod[session.pod].discard(session_id)
        self.version += 1
        return session

    def _take_session_row(self) -> int:
        if not self._free_session_rows:
            size = len(self.session_rows)
            grown = np.zeros((2 * size, SESSION_COLUMNS), dtype=np.int64)
            grown[:size] = self.session_rows
            self.session_rows = grown
            self._free_session_rows = list(range(2 * size - 1, size - 1, -1))
        return self._free_session_rows.pop()


class _Policy:
    """The allow lists as containers and rules of ``portico.classify`` (see module doc).

    Pods with equal allow lists share one rule: *allow* from container ``peers-N`` (the
    list's prefixes) to container ``pods-N`` (those pods' addresses, as /32s). A peer
    address then belongs to one container per distinct list that holds it, not one per
    pod, which is what keeps the classifier's walk short (its cost grows with the keys
    of a packet's classes); moving a pod to another list moves one /32.
    """

    def __init__(self) -> None:
        from portico.classify.classifier import Classifier
        from portico.classify.containers import ContainerStore
        from portico.classify.rules import Direction, RuleSet

        self.store = ContainerStore("naas")
        self.rules = RuleSet(tenant="naas", direction=Direction.INGRESS,
                             container_exists=lambda name: name in self.store.containers)
        self.classifier = Classifier(self.store, self.rules)
        self._group_of_list: dict[frozenset[str], int] = {}
        self._members: dict[int, set[str]] = {}
        self._list_of_pod: dict[str, frozenset[str]] = {}
        self._next_group = 0

    def set(self, address: str, allow: tuple[str, ...]) -> None:
        from portico.classify.rules import Rule

        wanted = frozenset(allow)
        if self._list_of_pod.get(address) == wanted:
            return
        group = self._group_of_list.get(wanted)
        if group is None:  # a new list: its two containers and its rule
            group = self._next_group
            self._next_group += 1
            self.store.create(f"peers-{group}", sorted(wanted))
            self.store.create(f"pods-{group}", [f"{address}/32"])
            self.rules.add(Rule.from_dict({
                "id": f"allow-{group}", "priority": 100, "action": "allow",
                "src": f"container:peers-{group}", "dst": f"container:pods-{group}"}))
            self._group_of_list[wanted] = group
            self._members[group] = set()
        else:  # allowed by the new list before it leaves the old one
            self.store.add_prefix(f"pods-{group}", f"{address}/32")
        self._members[group].add(address)
        self.remove(address)
        self._list_of_pod[address] = wanted

    def remove(self, address: str) -> None:
        """Take the pod out of its list's group (the group goes with its last pod)."""
        wanted = self._list_of_pod.pop(address, None)
        if wanted is None:
            return
        group = self._group_of_list[wanted]
        self._members[group].discard(address)
        if self._members[group]:
            self.store.remove_prefix(f"pods-{group}", f"{address}/32")
            return
        self.rules.remove(f"allow-{group}")
        self.store.delete(f"pods-{group}")
        self.store.delete(f"peers-{group}")
        del self._group_of_list[wanted], self._members[group]
