"""The reference classifier: the rules' meaning, written as the plainest possible loop.

Role. The fast batch classifier (``portico.classify.classifier``) is tested
against this module, and the ``classify`` benchmark runs it as the "linear
scan" peer. It is meant to be obviously correct rather than fast: one packet
at a time, one rule at a time, in match order, stopping at the first rule
whose every dimension matches. It shares nothing with the fast path but the
``Rule`` objects.

Theory. ``portico.classify.rules`` defines what each dimension means; this is
that definition, one function per dimension:

* a packet that is not IPv4 or IPv6 (``ip_version`` 0) matches no rule;
* addresses: ``any`` always; a literal prefix when the packet is of the
  prefix's family and the address is inside it (compared as integers:
  ``addr >> (bits - len) == net >> (bits - len)``); a container when
  ``holds(name, ip_version, address)`` says so. ``holds`` comes from the
  container store (tests pass a brute-force one, ``holds_from_prefixes``);
* protocol: any, or equal;
* ports: the full range always; a narrower range only for a packet whose
  protocol has ports (``PORT_PROTOCOLS``) and whose port is inside it;
* ICMP type/code: equal, when the rule sets them (the rule's protocol is
  then ICMP or ICMPv6, so the packet's protocol already had to be equal).

Packets are ``PacketKey`` tuples with addresses as Python ints (IPv6 as one
128-bit int). ``classify_rows`` reads them from a Batch's metadata records:
``src4``/``dst4`` for IPv4, ``src6_hi << 64 | src6_lo`` (and ``dst6_…``)
for IPv6, and the outer header's ``protocol``, ports and ICMP type/code.
It does not look at ``drop``: the caller picks the rows it wants classified.

Example::

    rules = ruleset.ordered()
    holds = holds_from_prefixes({"web": ["10.0.1.0/24", "2001:db8:1::/48"]})
    first_match(rules, PacketKey(4, src, dst, 6, 40000, 443, 0, 0), holds)
    classify_rows(rules, batch.meta[: batch.count], holds)  # int32, -1 = no match
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import NamedTuple

import numpy as np

from portico.classify.rules import PORT_PROTOCOLS, Match, PortRange, Rule

# holds(container_name, ip_version, address) -> is the address in the container?
Holds = Callable[[str, int, int], bool]

_BITS = {4: 32, 6: 128}


class PacketKey(NamedTuple):
    """What rules look at in a packet; addresses as ints (IPv6: 128-bit)."""

    ip_version: int
    src: int
    dst: int
    protocol: int = 0
    sport: int = 0
    dport: int = 0
    icmp_type: int = 0
    icmp_code: int = 0


def no_containers(name: str, ip_version: int, address: int) -> bool:
    """A ``holds`` for rule sets without containers: every container is empty."""
    return False


def holds_from_prefixes(
    containers: Mapping[str, Iterable[str | IPv4Network | IPv6Network]],
) -> Holds:
    """A brute-force ``holds`` over flat containers: name -> prefixes (either family)."""
    table: dict[str, list[tuple[int, int, int]]] = {}
    for name, prefixes in containers.items():
        entries = table.setdefault(name, [])
        for prefix in prefixes:
            net = ip_network(prefix) if isinstance(prefix, str) else prefix
            entries.append((net.version, int(net.network_address), net.prefixlen))

    def holds(name: str, ip_version: int, address: int) -> bool:
        bits = _BITS.get(ip_version)
        if bits is None:
            return False
        for version, network, length in table.get(name, ()):
            shift = bits - length
            if version == ip_version and address >> shift == network >> shift:
                return True
        return False

    return holds


def address_matches(match: Match, ip_version: int, address: int, holds: Holds) -> bool:
    if ip_version not in _BITS:
        return False
    if match.container is not None:
        return holds(match.container, ip_version, address)
    prefix = match.prefix
    if prefix is None:
        return True
    if prefix.version != ip_version:
        return False
    shift = _BITS[ip_version] - prefix.prefixlen
    return address >> shift == int(prefix.network_address) >> shift


def ports_match(ports: PortRange, protocol: int, port: int) -> bool:
    if ports.is_full:
        return True
    return protocol in PORT_PROTOCOLS and ports.lo <= port <= ports.hi


def matches(rule: Rule, packet: PacketKey, holds: Holds) -> bool:
    """Does every dimension of ``rule`` match ``packet``?"""
    if packet.ip_version not in _BITS:
        return False
    if rule.protocol is not None and packet.protocol != rule.protocol:
        return False
    if not ports_match(rule.sport, packet.protocol, packet.sport):
        return False
    if not ports_match(rule.dport, packet.protocol, packet.dport):
        return False
    if rule.icmp_type is not None and packet.icmp_type != rule.icmp_type:
        return False
    if rule.icmp_code is not None and packet.icmp_code != rule.icmp_code:
        return False
    return address_matches(rule.src, packet.ip_version, packet.src, holds) and address_matches(
        rule.dst, packet.ip_version, packet.dst, holds
    )


def first_match(rules: Sequence[Rule], packet: PacketKey, holds: Holds) -> Rule | None:
    """The first rule of ``rules`` (already in match order) that matches, or None."""
    for rule in rules:
        if matches(rule, packet, holds):
            return rule
    return None


def first_match_index(rules: Sequence[Rule], packet: PacketKey, holds: Holds) -> int:
    """Like ``first_match``, as an index into ``rules``; -1 for no match."""
    for index, rule in enumerate(rules):
        if matches(rule, packet, holds):
            return index
    return -1


def packet_keys(meta_rows: np.ndarray) -> list[PacketKey]:
    """The ``PacketKey`` of every record (Batch metadata rows, ``META_DTYPE``)."""
    columns = {
        name: meta_rows[name].tolist()
        for name in (
            "ip_version",
            "src4",
            "dst4",
            "src6_hi",
            "src6_lo",
            "dst6_hi",
            "dst6_lo",
            "protocol",
            "sport",
            "dport",
            "icmp_type",
            "icmp_code",
        )
    }
    keys = []
    for row in range(len(meta_rows)):
        version = columns["ip_version"][row]
        if version == 4:
            src, dst = columns["src4"][row], columns["dst4"][row]
        elif version == 6:
            src = columns["src6_hi"][row] << 64 | columns["src6_lo"][row]
            dst = columns["dst6_hi"][row] << 64 | columns["dst6_lo"][row]
        else:
            src = dst = 0
        keys.append(
            PacketKey(
                ip_version=version,
                src=src,
                dst=dst,
                protocol=columns["protocol"][row],
                sport=columns["sport"][row],
                dport=columns["dport"][row],
                icmp_type=columns["icmp_type"][row],
                icmp_code=columns["icmp_code"][row],
            )
        )
    return keys


def classify_rows(rules: Sequence[Rule], meta_rows: np.ndarray, holds: Holds) -> np.ndarray:
    """Per record, the index in ``rules`` (match order) of the first match, or -1 (int32)."""
    rules = list(rules)
    out = np.full(len(meta_rows), -1, dtype=np.int32)
    for row, key in enumerate(packet_keys(meta_rows)):
        out[row] = first_match_index(rules, key, holds)
    return out


__all__ = [
    "Holds",
    "PacketKey",
    "address_matches",
    "classify_rows",
    "first_match",
    "first_match_index",
    "holds_from_prefixes",
    "matches",
    "no_containers",
    "packet_keys",
    "ports_match",
]
