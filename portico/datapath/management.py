"""management: in-band management, the frames for the gateway's own address go to the kernel.

Role (capability 9). The gateway's management address lives on an interface
that also carries tenant traffic: a user-space datapath owns that interface,
so the kernel never sees its frames. ``Management.split(batch)`` picks out of
a received batch the frames the kernel must answer, before the gateway runs
the rest: the caller writes those to a TAP device (the user-to-kernel
transport), where the kernel's stack and its ordinary servers (the API, ssh,
ping) answer; what the kernel sends back on the TAP leaves by the management
port as it is, since the kernel built the whole frame with the TAP's MAC, which
is the management MAC.

Theory of operation. One compiled pass over the parsed rows sorts each row
into one of four verdicts (``Verdict``):

* ``PUNT``: it came in by the management port and is for the management
  address: an ARP frame whose target is the IPv4 address (requests and
  replies both: the kernel resolves its own next hops through the same
  path); an IPv6 neighbour solicitation or advertisement whose target is the
  IPv6 address; ICMP/ICMPv6 to the address (ping, errors about the kernel's
  own connections); TCP or UDP to the address on one of the allowed ports.
* ``REFUSED_PORT``: for the management address from the management port, but
  to a port not allowed, or another protocol. The kernel would have answered
  (an RST, a port unreachable): management must not reveal more than it
  serves, so these are dropped and counted instead.
* ``REFUSED_TENANT``: for the management address (IPv4 or IPv6), but from any
  other port, that is from a tenant: tenant traffic never reaches the kernel.
* ``PASS``: everything else, the gateway's business.

Punted frames are then rate-limited by a token bucket (``rate`` frames a
second, ``burst`` at once), so a flood at the management address costs the
datapath at most that much kernel work; frames over the budget are counted as
``rate_limited``. ``split`` returns the rows to punt and every row it took
(punted, refused or over the budget); the caller writes the first to the TAP
and then takes the second out of the batch (``Batch.remove``) before the
gateway runs, so the gateway never sees them and counts none of them. The
matching reads parsed columns and the ARP/ND target, whose offsets come from
the header declarations; the gateway parses the batch again (~30 ns a
packet), the price of keeping this out of its stages.

Example (the loop of ``portico up``)::

    split = management.split(batch, now)
    tap.send(batch, split.punt)
    batch.remove(split.taken)
    gateway.process(batch, now)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from numba import njit

from portico.batch import Batch
from portico.datapath.stages.parse import be32, be64, parse
from portico.packet.arp import ARP
from portico.packet.icmpv6 import ICMPv6

ARP_TPA = ARP.at("tpa").offset
ND_TARGET = ICMPv6.SIZE  # the 16-byte target follows ICMPv6's fixed part
ETHERTYPE_ARP = 0x0806
NS, NA = 135, 136
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


class Verdict(IntEnum):
    PASS = 0
    PUNT = 1
    REFUSED_PORT = 2
    REFUSED_TENANT = 3


@dataclass(frozen=True)
class Split:
    """``punt``: rows for the kernel, in arrival order; ``taken``: every row the gateway
    must not see (the punted ones, the refused ones, the ones over the budget)."""

    punt: np.ndarray
    taken: np.ndarray


@njit(cache=True)
def classify_management(data, meta, count, port, ip4, has4, ip6_hi, ip6_lo, has6,  # type: ignore[no-untyped-def]
                        tcp_allowed, udp_allowed, verdicts):
    """A ``Verdict`` for rows [0, count) (see the module's theory of operation)."""
    for i in range(count):
        m = meta[i]
        verdicts[i] = 0
        if m.drop != 0:
            continue
        to_us = False
        kernel_protocol = False  # ARP, ND, ICMP: the kernel answers whatever the port
        if m.ethertype == ETHERTYPE_ARP and m.l3 >= 0 and has4:
            to_us = be32(data, i, m.l3 + ARP_TPA) == ip4
            kernel_protocol = True
        elif m.ip_version == 4 and has4:
            to_us = m.dst4 == ip4
        elif m.ip_version == 6 and has6:
            to_us = m.dst6_hi == ip6_hi and m.dst6_lo == ip6_lo
            if (m.protocol == ICMPV6 and m.l4 >= 0
                    and (m.icmp_type == NS or m.icmp_type == NA)):
                # An NS for us goes to our solicited-node group, not to us: match the target.
                to_us = (be64(data, i, m.l4 + ND_TARGET) == ip6_hi
                         and be64(data, i, m.l4 + ND_TARGET + 8) == ip6_lo)
                kernel_protocol = True
        if not to_us:
            continue
        if m.port != port:
            verdicts[i] = Verdict.REFUSED_TENANT
            continue
        allowed = kernel_protocol or m.protocol == ICMP or m.protocol == ICMPV6
        if m.protocol == TCP and m.l4 >= 0:
            allowed = tcp_allowed[m.dport]
        elif m.protocol == UDP and m.l4 >= 0:
            allowed = udp_allowed[m.dport]
        verdicts[i] = Verdict.PUNT if allowed else Verdict.REFUSED_PORT


def _ports(ports: tuple[int, ...], what: str) -> np.ndarray:
    allowed = np.zeros(65536, dtype=np.bool_)
    for port in ports:
        if not 0 < port < 65536:
            raise ValueError(f"management.{what}: {port} is not a port number (1..65535)")
        allowed[port] = True
    return allowed


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; time in ns."""

    rate: float
    burst: int
    tokens: float = field(init=False)
    last: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"management.rate: {self.rate}/s with burst {self.burst}: "
                             "both must be positive")
        self.tokens = float(self.burst)

    def take(self, wanted: int, now: int) -> int:
        """How many of ``wanted`` may go at ``now``; those are spent."""
        if self.last is not None and now > self.last:
            self.tokens = min(float(self.burst),
                              self.tokens + (now - self.last) * self.rate / 1e9)
        self.last = now if self.last is None else max(self.last, now)
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted


class Management:
    """The management address on one port: which frames of a batch the kernel gets.

    ``address``/``address6``: the management IPv4/IPv6 address (either may be
    None, not both); ``port``: the gateway port (the Batch's ``port`` value)
    it lives on; ``tcp_ports``/``udp_ports``: the services the kernel may be
    reached at (ICMP, ARP and ND always are); ``rate``/``burst``: the punt
    budget, frames a second.
    """

    def __init__(self, *, port: int, address: str | None = None, address6: str | None = None,
                 tcp_ports: tuple[int, ...] = (), udp_ports: tuple[int, ...] = (),
                 rate: float = 10_000, burst: int = 1_000) -> None:
        if address is None and address6 is None:
            raise ValueError("management.address: an IPv4 or an IPv6 address is needed")
        try:
            ip4 = int(ipaddress.IPv4Address(address)) if address is not None else 0
        except ValueError:
            raise ValueError(f"management.address: {address!r} is not an IPv4 address") from None
        try:
            ip6 = int(ipaddress.IPv6Address(address6)) if address6 is not None else 0
        except ValueError:
            raise ValueError(
                f"management.address6: {address6!r} is not an IPv6 address") from None
        self.port = port
        self._ip4, self._has4 = np.uint32(ip4), address is not None
        self._ip6 = (np.uint64(ip6 >> 64), np.uint64(ip6 & (1 << 64) - 1))
        self._has6 = address6 is not None
        self._tcp = _ports(tcp_ports, "tcp_ports")
        self._udp = _ports(udp_ports, "udp_ports")
        self.bucket = TokenBucket(rate, burst)
        self._verdicts = np.zeros(256, dtype=np.uint8)
        self.counters = {"punted": 0, "rate_limited": 0, "refused_port": 0,
                         "refused_tenant": 0}

    def split(self, batch: Batch, now: int) -> Split:
        """Parse ``batch`` and sort out the rows that are management's (see the module's
        docstring); the batch itself is left as it is."""
        count = batch.count
        if len(self._verdicts) < count:
            self._verdicts = np.zeros(count, dtype=np.uint8)
        verdicts = self._verdicts[:count]
        parse(batch)
        classify_management(batch.data, batch.meta, count, self.port, self._ip4, self._has4,
                            self._ip6[0], self._ip6[1], self._has6, self._tcp, self._udp,
                            verdicts)
        taken = np.flatnonzero(verdicts)
        if not len(taken):
            return Split(taken, taken)
        kinds = verdicts[taken]
        self.counters["refused_port"] += int((kinds == Verdict.REFUSED_PORT).sum())
        self.counters["refused_tenant"] += int((kinds == Verdict.REFUSED_TENANT).sum())
        punt = taken[kinds == Verdict.PUNT]
        granted = self.bucket.take(len(punt), now)
        self.counters["punted"] += granted
        self.counters["rate_limited"] += len(punt) - granted
        return Split(punt[:granted], taken)


__all__ = ["Management", "Split", "TokenBucket", "Verdict", "classify_management"]
