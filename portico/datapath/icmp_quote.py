"""icmp_quote: NAT's rewrite of the packet an ICMPv4 error quotes, in place, over a batch.

Role. An ICMP error carries the start of the packet it is about (RFC 792).
When that packet crossed the NAT, the quote shows the addresses the error's
sender saw, not the ones its receiver knows, so the NAT rewrites the quote
along with the error's own header (RFC 5508 section 4.2, RFC 7857 section
2.9): inbound, the quoted *source* becomes the internal endpoint again;
outbound, the quoted *destination* becomes the external one. The error's outer
addresses are an ordinary action (``SET_IP_DST`` / ``SET_IP_SRC``); this
module does the quote, after the actions, for the rows ``decided.quote``
names (the NAT stage fills it; ``datapath`` calls ``rewrite``).

Theory of operation. Everything is incremental (RFC 1624): the quoted
address and port change, so the quoted IPv4 header checksum is updated for the
address, a quoted UDP checksum (when the quote holds it and it is not 0) for
address and port, and the ICMP checksum, which covers the whole quote, for
every 16-bit word that changed (including the two quoted checksums). A quoted
TCP checksum lies beyond the 8 bytes RFC 792 promises and is left alone, as
RFC 5508 permits. For a quoted echo the "port" is the identifier.

Rows whose quote is not there (``inner_l3``/``inner_l4`` absent) are dropped
``quote-missing``: the NAT cannot say whom the error is for.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numba import njit

from portico import drops
from portico.datapath.actions import get16, put16
from portico.packet.checksum import update16, update32

QUOTE_DTYPE = np.dtype([("side", "u1"), ("address", "u4"), ("port", "u2")], align=True)
NONE, SOURCE, DESTINATION = 0, 1, 2  # which endpoint of the quoted packet to rewrite


class QuoteDrop(IntEnum):
    """Why a quote could not be rewritten (code 139, the datapath's range)."""

    QUOTE_MISSING = 139


drops.register("icmp-quote", QuoteDrop)
D_MISSING = int(QuoteDrop.QUOTE_MISSING)


@njit(cache=True)
def rewrite_kernel(data, meta, rows, quotes):  # type: ignore[no-untyped-def]
    for k in range(rows.shape[0]):
        i = rows[k]
        m = meta[i]
        q = quotes[i]
        side = np.int64(q.side)
        if side == NONE or m.drop != 0:
            continue
        q3 = np.int64(m.inner_l3)
        q4 = np.int64(m.inner_l4)
        if q3 < 0 or q4 < 0 or m.l4 < 0 or m.inner_ip_version != 4:
            m.drop = D_MISSING
            continue
        icmp_sum_at = np.int64(m.l4) + 2
        icmp_sum = get16(data, i, icmp_sum_at)
        at = q3 + (12 if side == SOURCE else 16)
        old = (get16(data, i, at) << 16) | get16(data, i, at + 2)
        new = np.int64(q.address)
        # The quoted IP header checksum, and the ICMP checksum for both changes.
        ip_sum_at = q3 + 10
        old_ip_sum = get16(data, i, ip_sum_at)
        new_ip_sum = update32(old_ip_sum, old, new)
        put16(data, i, at, (new >> 16) & 0xFFFF)
        put16(data, i, at + 2, new & 0xFFFF)
        put16(data, i, ip_sum_at, new_ip_sum)
        icmp_sum = update32(icmp_sum, old, new)
        icmp_sum = update16(icmp_sum, old_ip_sum, new_ip_sum)
        proto = np.int64(m.inner_protocol)
        # An echo's identifier whichever side; otherwise the side's port.
        port_at = q4 + 4 if proto == 1 else q4 + (0 if side == SOURCE else 2)
        old_port = get16(data, i, port_at)
        new_port = np.int64(q.port)
        put16(data, i, port_at, new_port)
        icmp_sum = update16(icmp_sum, old_port, new_port)
        end = np.int64(m.start) + np.int64(m.length)
        if proto == 17 and q4 + 8 <= end:  # a quoted UDP checksum, when it is there
            old_udp = get16(data, i, q4 + 6)
            if old_udp != 0:
                new_udp = update16(update32(old_udp, old, new), old_port, new_port)
                if new_udp == 0:
                    new_udp = 0xFFFF
                put16(data, i, q4 + 6, new_udp)
                icmp_sum = update16(icmp_sum, old_udp, new_udp)
        put16(data, i, icmp_sum_at, icmp_sum)
        if side == SOURCE:
            m.inner_src4 = new
            m.inner_sport = new_port
        else:
            m.inner_dst4 = new
            m.inner_dport = new_port
        if proto == 1:
            m.inner_sport = new_port
            m.inner_dport = new_port


def rewrite(data: np.ndarray, meta: np.ndarray, rows: np.ndarray, quotes: np.ndarray) -> None:
    """Rewrite the quotes of ``rows`` as ``quotes[row]`` (a ``QUOTE_DTYPE`` per batch row) says."""
    rewrite_kernel(data, meta, np.ascontiguousarray(rows, dtype=np.int64), quotes)
