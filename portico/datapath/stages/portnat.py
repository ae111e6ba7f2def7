"""portnat: NaaS port-range NAT, pods behind a shared address, one compiled pass over a batch.

Synopsis. After ``parse``, for every IPv4 row, with the table
``portico.datapath.portnat.PortNatTable``:

* **inbound** (the destination is a shared address): the destination port
  indexes the address's port map. A session mapping of ``(protocol, port)``
  wins: destination address and port become the session's pod endpoint.
  Otherwise the pod owning the port gets it, destination address rewritten,
  port kept. A port no pod holds: drop ``outside-ranges``.
* **outbound** (the source is a pod's address): a session mapping of the
  pod's ``(protocol, source port)`` gives the external port; otherwise the
  source port must be one of the pod's own, and is kept; the source address
  becomes the shared address. Any other source port: drop
  ``source-port-outside-range``.
* both, in one row, for a pod sending to a shared address (hairpinning: out,
  then in).
* a row for or from us that is not TCP/UDP with its ports (ICMP, a later
  fragment): drop ``not-tcp-udp``. Rows for neither are left alone.

The IPv4 header checksum and the TCP/UDP checksum are updated incrementally
(RFC 1624, the rewriting kernels' helpers of ``portico.datapath.actions`` and
``portico.packet.checksum``); an IPv4 UDP checksum of zero ("none") stays
zero. The metadata columns follow the packet. A row is decided before it is
rewritten, so a refused packet is left as it came; a policed one (below) was
already translated when it is refused, which does not matter for a dropped
packet.

*Why a source port outside the pod's set is dropped, not translated.* The
pods this is for are media relays (SBC media planes, TURN servers, RTP
proxies): each binds its sockets inside the range the CNI result gave it and
writes those ports into SDP/ICE candidates. A port translated on the way out
would be one the pod does not know it uses: the SDP would be wrong without
an ALG, and the translated port could collide with a socket the pod binds
later in its own range (one external port, two meanings). Dropping, counted
under a name, makes the misconfigured pod visible at once instead of
silently half-working. A pod that needs ephemeral ports for other traffic
(DNS, say) restricts them to its block (``net.ipv4.ip_local_port_range`` in
its namespace; ``ip_local_reserved_ports`` for a PSID set). The nftables
back-end makes the same choice (``services.naas.nftables``).

*Policing.* The rows sent to a pod with an allow list are classified after
translation (destination: the pod) with ``portico.classify`` over the table's
allow-list containers; a row that matches no rule is dropped
``peer-not-allowed``. Sessions are policed as their pod is.

Standalone use, as the issue's bench and tests run it::

    parse(batch)
    PortNat(table).process(batch)          # rewrites in place, sets meta["drop"]
    drops.count(batch.meta["drop"][: batch.count])

``out_port`` is left alone. The stage is not in the gateway's graph yet: there
stages record actions instead of rewriting (``portico.datapath.pipeline``), so
wiring it in means recording ``SET_IP_SRC | SET_SPORT`` and ``SET_IP_DST |
SET_DPORT`` in ``Decisions`` from the same decisions, policing on the
effective view, and tagging the flows with the table's ``version`` so that the
flow cache forgets them when a pod or a session changes.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

import numpy as np
from numba import njit

from portico import drops
from portico.batch import Batch
from portico.classify.classifier import NO_RULE
from portico.datapath.actions import get16, put16
from portico.datapath.portnat import (
    P_ADDRESS,
    P_POLICED,
    P_SESSIONS,
    P_SHARED_ADDRESS,
    P_SHARED_ROW,
    S_EXTERNAL_PORT,
    S_POD,
    S_POD_PORT,
    SESSION_FLAG,
    SLOT_MASK,
    Counter,
    PortNatTable,
    hash_find,
    session_key_in,
    session_key_out,
)
from portico.packet.checksum import update16, update32


class PortNatDrop(IntEnum):
    """Why the port-range NAT dropped a row (codes 148..155 belong to it)."""

    OUTSIDE_RANGES = 148  # inbound to a shared address on a port no pod holds
    SOURCE_PORT_OUTSIDE_RANGE = 149  # outbound from a pod, from a port not in its set
    PEER_NOT_ALLOWED = 150  # inbound from a peer the pod's allow list refuses
    NOT_TCP_UDP = 151  # for a shared address or from a pod, without TCP/UDP ports


drops.register("portnat", PortNatDrop)

D_OUTSIDE_RANGES = int(PortNatDrop.OUTSIDE_RANGES)
D_SOURCE_PORT = int(PortNatDrop.SOURCE_PORT_OUTSIDE_RANGE)
D_NOT_TCP_UDP = int(PortNatDrop.NOT_TCP_UDP)
K_IN, K_OUT = int(Counter.TRANSLATED_IN), int(Counter.TRANSLATED_OUT)
K_SESSION_IN, K_SESSION_OUT = int(Counter.SESSION_IN), int(Counter.SESSION_OUT)
K_OUTSIDE, K_SOURCE_PORT = int(Counter.OUTSIDE_RANGES), int(Counter.SOURCE_PORT_OUTSIDE_RANGE)
K_NOT_TCP_UDP, K_PEER = int(Counter.NOT_TCP_UDP), int(Counter.PEER_NOT_ALLOWED)
FLAG = np.int64(SESSION_FLAG)


@njit(cache=True, inline="always")
def _put32(data, i, at, value):  # type: ignore[no-untyped-def]
    put16(data, i, at, (value >> 16) & 0xFFFF)
    put16(data, i, at + 2, value & 0xFFFF)


@njit(cache=True)
def portnat_kernel(data, meta, rows, shared_hash, port_map, pod_hash, pods,  # type: ignore[no-untyped-def]
                   session_hash, session_rows, counters, policed):
    """Translate ``meta[rows[k]]`` for every k (see the module doc); the rows that went
    to a policed pod are written to ``policed``, their count returned."""
    n_policed = 0
    for k in range(rows.shape[0]):
        i = rows[k]
        m = meta[i]
        if m.drop != 0 or m.ip_version != 4 or m.l3 < 0:
            continue
        src = np.int64(m.src4)
        dst = np.int64(m.dst4)
        shared_row = hash_find(shared_hash, dst)
        pod = hash_find(pod_hash, src)
        if shared_row < 0 and pod < 0:
            continue  # neither for nor from us
        proto = np.int64(m.protocol)
        if m.l4 < 0 or not (proto == 6 or proto == 17):
            m.drop = D_NOT_TCP_UDP
            counters[K_NOT_TCP_UDP] += 1
            continue
        sport = np.int64(m.sport)
        dport = np.int64(m.dport)

        # Decide: outbound (the source is a pod), then inbound (the destination is shared).
        new_src = src
        new_sport = sport
        if pod >= 0:
            found = np.int64(-1)
            if pods[pod, P_SESSIONS] > 0:
                found = hash_find(session_hash, session_key_out(pod, proto, sport))
            if found >= 0:
                new_sport = session_rows[found, S_EXTERNAL_PORT]
                counters[K_SESSION_OUT] += 1
            else:
                entry = np.int64(port_map[pods[pod, P_SHARED_ROW], sport])
                if entry < 0 or (entry & SLOT_MASK) != pod:
                    m.drop = D_SOURCE_PORT
                    counters[K_SOURCE_PORT] += 1
                    continue
            new_src = pods[pod, P_SHARED_ADDRESS]
        new_dst = dst
        new_dport = dport
        target = np.int64(-1)
        if shared_row >= 0:
            entry = np.int64(port_map[shared_row, dport])
            if entry < 0:
                m.drop = D_OUTSIDE_RANGES
                counters[K_OUTSIDE] += 1
                continue
            target = entry & SLOT_MASK
            if entry & FLAG:
                found = hash_find(session_hash, session_key_in(shared_row, proto, dport))
                if found >= 0:
                    target = session_rows[found, S_POD]
                    new_dport = session_rows[found, S_POD_PORT]
                    counters[K_SESSION_IN] += 1
            new_dst = pods[target, P_ADDRESS]
            if pods[target, P_POLICED]:
                policed[n_policed] = i
                n_policed += 1

        # Rewrite, checksums kept incrementally (addresses are in the pseudo-header).
        l3 = np.int64(m.l3)
        l4 = np.int64(m.l4)
        l4_at = l4 + (16 if proto == 6 else 6)
        ip_sum = get16(data, i, l3 + 10)
        l4_sum = get16(data, i, l4_at)
        udp_none = proto == 17 and l4_sum == 0  # IPv4 UDP without a checksum
        if new_src != src:
            _put32(data, i, l3 + 12, new_src)
            ip_sum = update32(ip_sum, src, new_src)
            l4_sum = update32(l4_sum, src, new_src)
            m.src4 = new_src
            counters[K_OUT] += 1
        if new_sport != sport:
            put16(data, i, l4, new_sport)
            l4_sum = update16(l4_sum, sport, new_sport)
            m.sport = new_sport
        if new_dst != dst:
            _put32(data, i, l3 + 16, new_dst)
            ip_sum = update32(ip_sum, dst, new_dst)
            l4_sum = update32(l4_sum, dst, new_dst)
            m.dst4 = new_dst
            counters[K_IN] += 1
        if new_dport != dport:
            put16(data, i, l4 + 2, new_dport)
            l4_sum = update16(l4_sum, dport, new_dport)
            m.dport = new_dport
        put16(data, i, l3 + 10, ip_sum)
        if not udp_none:
            if proto == 17 and l4_sum == 0:
                l4_sum = 0xFFFF  # RFC 768: a computed zero is sent as all ones
            put16(data, i, l4_at, l4_sum)
    return n_policed


class PortNat:
    """The port-range NAT over a ``PortNatTable`` (see the module's docstring)."""

    NAME: ClassVar[str] = "portnat"
    NEXT: ClassVar[tuple[str, ...]] = ()
    DROPS: ClassVar[type[IntEnum] | None] = PortNatDrop

    def __init__(self, table: PortNatTable) -> None:
        self.table = table
        self._all_rows = np.zeros(0, dtype=np.int64)
        self._policed = np.zeros(0, dtype=np.int64)

    def process(self, batch: Batch, rows: np.ndarray | None = None) -> None:
        """Translate (or drop) every row of ``batch`` (or ``rows`` of it), in place."""
        if rows is None:
            if len(self._all_rows) < batch.count:
                self._all_rows = np.arange(batch.capacity, dtype=np.int64)
            rows = self._all_rows[: batch.count]
        elif not (isinstance(rows, np.ndarray) and rows.dtype == np.int64):
            rows = np.asarray(rows, dtype=np.int64)
        if len(self._policed) < len(rows):
            self._policed = np.empty(max(len(rows), batch.capacity), dtype=np.int64)
        t = self.table
        n = portnat_kernel(batch.data, batch.meta, rows, t.shared_hash, t.port_map, t.pod_hash,
                           t.pods_array, t.session_hash, t.session_rows, t.counters_array,
                           self._policed)
        if n:
            self._police(batch, self._policed[:n])

    def _police(self, batch: Batch, rows: np.ndarray) -> None:
        classifier = self.table.classifier
        refused = rows if classifier is None else rows[classifier.classify(batch, rows) == NO_RULE]
        if len(refused):
            batch.meta["drop"][refused] = int(PortNatDrop.PEER_NOT_ALLOWED)
            self.table.counters_array[K_PEER] += len(refused)
            self.table.counters_array[K_IN] -= len(refused)  # counted as translated above
