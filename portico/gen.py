"""Synthetic traffic: ``portico gen`` and the ``generate`` library behind it.

Tests, benchmarks and ``make run`` need traffic with a known shape: so many
packets over so many flows, a protocol mix, a size distribution, an IPv6
share, VLAN tags, spread over gateway ports. This module makes it, fast enough
for millions of packets and byte-identical for a given seed.

Theory of operation. Building every packet with the scalar builder would cost
tens of microseconds each, so packets are assembled from parts instead:

1. **Flows** (``make_flows``): one row per flow in NumPy arrays: protocol,
   IP version, addresses, ports, VLAN id, gateway port. Sources are a
   bijection of the flow number, so flows are distinct by construction.
2. **Templates** (``_Templates``): one packet per *shape* (protocol x IP
   version x size class, tagged or not), built once with
   ``portico.packet.build`` so every length, next-header field and checksum is
   the builder's. Per-flow fields are left zero in the template.
3. **Flow bytes**: per flow, a header-wide row holding only its own fields
   (addresses, ports, ident, sequence number, VID), zero elsewhere. A packet's
   headers are ``template | flow bytes``, one fancy-indexed OR for a whole batch.
4. **Checksums** follow by RFC 1624: the template's checksum covers zeros where
   the flow's fields go, so the packet's checksum is ``~(~C + S)`` with S the
   one's-complement sum of the flow's words (its pseudo-header addresses
   included), folded; S is precomputed per flow. Payloads are zero bytes, which
   add nothing to any sum.

Which flow a packet belongs to is a stride permutation for ``uniform`` (every
flow gets its equal share, all flows seen within the first ``flows`` packets)
or an inverse-CDF draw for ``zipf`` (rank r has weight r**-a; ranks are
shuffled onto flows). Per-packet random draws come from streams keyed by
(seed, packet number), so the bytes do not depend on the batch size.

Sizes are captured frame lengths (no FCS): ``64``, ``imix`` (64, 576 and
1500 bytes at 7:4:1) or ``fixed:N``; a frame whose headers need more than its
size gets the smallest size that holds them; TCP segments carry at least one
byte, so each advances its flow's sequence number as a real stream's would
(IPv6 + TCP + VLAN: 79 bytes).
Timestamps advance at a steady ``--rate`` packets a second from a fixed epoch.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from portico.batch import DEFAULT_HEADROOM, Batch
from portico.packet.ethernet import Ethernet
from portico.packet.header import Header
from portico.packet.icmp import ECHO_REQUEST as ICMP_ECHO_REQUEST
from portico.packet.icmp import ICMP
from portico.packet.icmpv6 import ECHO_REQUEST as ICMPV6_ECHO_REQUEST
from portico.packet.icmpv6 import ICMPv6
from portico.packet.ipv4 import FLAG_DF, IPv4
from portico.packet.ipv6 import IPv6
from portico.packet.tcp import ACK, TCP
from portico.packet.udp import UDP
from portico.packet.vlan import Dot1Q
from portico.progress import Progress

if TYPE_CHECKING:
    from portico.io.capture import Format

PROTOCOLS = ("tcp", "udp", "icmp")
DEFAULT_MIX: dict[str, float] = {"tcp": 0.6, "udp": 0.35, "icmp": 0.05}
IMIX: tuple[tuple[int, int], ...] = ((64, 7), (576, 4), (1500, 1))  # (frame bytes, weight)
MIN_FRAME = 60  # Ethernet minimum without the FCS
MAX_FRAME = 9216  # jumbo
MAX_FLOWS = 1 << 24  # flow sources are a bijection of 24 bits
MAX_VLANS = 4094
START_NS = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z: fixed, so output is reproducible
DEFAULT_RATE = 1_000_000  # packets per second of synthetic time
DEFAULT_BATCH = 8192

# Destination ports by protocol. None of them is a tunnel port the parser would
# follow (4789 VXLAN, 6081 Geneve, 2152 GTP-U), so every packet parses to its 5-tuple.
# They are also ports whose Wireshark dissectors take zero payloads without complaint.
_TCP_DPORTS = np.array([80, 443, 8080, 8443, 25, 143], dtype=np.uint16)
_UDP_DPORTS = np.array([443, 514, 1812, 9, 7, 30000], dtype=np.uint16)

_MAC_SRC = 0x020000000001
_MAC_DST = 0x020000000002
_V4_SRC_NET = 10 << 24  # 10.0.0.0/8: flow sources
_V4_DST_NET = (198 << 24) | (18 << 16)  # 198.18.0.0/15: the benchmarking range (RFC 2544)
_V6_SRC_HI = 0xFD00_0000_0000_0000  # fd00::/8 unique local
_V6_DST_HI = 0x2001_0DB8_0000_0000  # 2001:db8::/32 documentation


class SpecError(ValueError):
    """A traffic spec is invalid; ``option`` is the CLI option to blame."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


# ---------------------------------------------------------------- the spec
def parse_mix(text: str) -> dict[str, float]:
    """``tcp=0.6,udp=0.35,icmp=0.05`` -> shares (normalised to sum 1 by the spec)."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip().lower()
        if not sep or name not in PROTOCOLS:
            raise SpecError("--mix", f"expected NAME=SHARE with NAME in {', '.join(PROTOCOLS)}, "
                            f"got {part.strip()!r}")
        if name in mix:
            raise SpecError("--mix", f"{name} given twice")
        try:
            share = float(value)
        except ValueError:
            raise SpecError("--mix", f"{name}: share {value!r} is not a number") from None
        mix[name] = share
    return mix


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``64`` | ``imix`` | ``fixed:N`` -> ((frame bytes, weight), ...)."""
    text = text.strip().lower()
    if text == "64":
        return ((64, 1),)
    if text == "imix":
        return IMIX
    kind, sep, value = text.partition(":")
    if kind != "fixed" or not sep:
        raise SpecError("--sizes", f"expected 64, imix or fixed:N, got {text!r}")
    try:
        size = int(value)
    except ValueError:
        raise SpecError("--sizes", f"fixed size {value!r} is not a whole number") from None
    if not MIN_FRAME <= size <= MAX_FRAME:
        raise SpecError("--sizes", f"fixed size {size} is outside {MIN_FRAME}..{MAX_FRAME} bytes")
    return ((size, 1),)


@dataclass(frozen=True, kw_only=True)
class TrafficSpec:
    """What to generate. Validated on creation; errors name the CLI option."""

    packets: int
    flows: int = 1
    seed: int = 0
    distribution: str = "uniform"  # or "zipf"
    zipf_exponent: float = 1.0
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    sizes: str = "64"
    ipv6_share: float = 0.0
    vlans: int = 0  # 0: untagged; N: one 802.1Q tag per packet, VIDs 1..N
    ports: int = 1
    rate: int = DEFAULT_RATE  # packets per second of timestamps
    start_ns: int = START_NS

    def __post_init__(self) -> None:
        if self.packets < 0:
            raise SpecError("--packets", f"must be 0 or more, got {self.packets}")
        if not 1 <= self.flows <= MAX_FLOWS:
            raise SpecError("--flows", f"must be 1..{MAX_FLOWS}, got {self.flows}")
        if self.seed < 0:
            raise SpecError("--seed", f"must be 0 or more, got {self.seed}")
        if self.distribution not in ("uniform", "zipf"):
            raise SpecError("--distribution", f"must be uniform or zipf, got {self.distribution!r}")
        if not (math.isfinite(self.zipf_exponent) and self.zipf_exponent > 0):
            raise SpecError("--zipf-exponent",
                            f"must be a positive number, got {self.zipf_exponent}")
        for name, share in self.mix.items():
            if name not in PROTOCOLS:
                raise SpecError("--mix", f"unknown protocol {name!r}")
            if not (math.isfinite(share) and share >= 0):
                raise SpecError("--mix", f"{name}: share must be 0 or more, got {share}")
        if sum(self.mix.values()) <= 0:
            raise SpecError("--mix", "shares add up to zero")
        parse_sizes(self.sizes)
        if not (math.isfinite(self.ipv6_share) and 0 <= self.ipv6_share <= 1):
            raise SpecError("--ipv6", f"must be a share in 0..1, got {self.ipv6_share}")
        if not 0 <= self.vlans <= MAX_VLANS:
            raise SpecError("--vlans", f"must be 0..{MAX_VLANS}, got {self.vlans}")
        if not 1 <= self.ports <= 65535:
            raise SpecError("--ports", f"must be 1..65535, got {self.ports}")
        if self.rate <= 0:
            raise SpecError("--rate", f"must be positive, got {self.rate}")

    @property
    def size_classes(self) -> tuple[tuple[int, int], ...]:
        return parse_sizes(self.sizes)


# ---------------------------------------------------------------- flows
@dataclass(frozen=True)
class Flows:
    """One row per flow. ICMP flows carry their echo ident as both sport and dport,
    the way ``parse`` reports it."""

    kind: np.ndarray  # uint8 index into PROTOCOLS
    ip_version: np.ndarray  # uint8, 4 or 6
    src4: np.ndarray  # uint32 (0 for IPv6 flows)
    dst4: np.ndarray
    src6: np.ndarray  # (F, 2) uint64: high, low halves (0 for IPv4 flows)
    dst6: np.ndarray
    sport: np.ndarray  # uint16
    dport: np.ndarray
    seq: np.ndarray  # uint32 initial TCP sequence number (0 otherwise)
    vlan: np.ndarray  # uint16 VID, 0 untagged
    port: np.ndarray  # int32 gateway port (pcapng interface)

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def protocol(self) -> np.ndarray:
        """IP protocol number of each flow (ICMPv6 for ICMP over IPv6)."""
        numbers = np.array([6, 17, 1], dtype=np.uint8)[self.kind]
        return np.where((self.kind == 2) & (self.ip_version == 6), np.uint8(58), numbers)


def _shares_to_counts(shares: list[float], total: int) -> np.ndarray:
    """Whole counts summing to ``total`` in the given proportions (largest remainder)."""
    weights = np.asarray(shares, dtype=np.float64)
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def _bijection(rng: np.random.Generator, count: int, bits: int) -> np.ndarray:
    """``count`` distinct values below 2**bits: an odd-multiplier affine map of 0..count-1."""
    mask = (1 << bits) - 1
    multiplier = int(rng.integers(0, 1 << (bits - 1))) * 2 + 1
    offset = int(rng.integers(0, 1 << bits))
    index = np.arange(count, dtype=np.int64)
    return (index * multiplier + offset) & mask


def make_flows(spec: TrafficSpec) -> Flows:
    """The flow table for ``spec`` (deterministic for its seed)."""
    rng = np.random.default_rng([spec.seed, 0])
    n = spec.flows
    counts = _shares_to_counts([spec.mix.get(name, 0.0) for name in PROTOCOLS], n)
    kind = rng.permutation(np.repeat(np.arange(len(PROTOCOLS), dtype=np.uint8), counts))
    v6_count = int(round(spec.ipv6_share * n))
    ip_version = np.full(n, 4, dtype=np.uint8)
    ip_version[rng.permutation(n)[:v6_count]] = 6
    is_v6 = ip_version == 6

    low = _bijection(rng, n, 24).astype(np.uint64)
    src4 = np.where(is_v6, 0, _V4_SRC_NET | low).astype(np.uint32)
    dst4 = np.where(is_v6, 0, _V4_DST_NET | rng.integers(0, 1 << 17, n)).astype(np.uint32)
    src6 = np.zeros((n, 2), dtype=np.uint64)
    dst6 = np.zeros((n, 2), dtype=np.uint64)
    site = np.uint64(int(rng.integers(0, 1 << 40)) << 16)
    src6[is_v6, 0] = np.uint64(_V6_SRC_HI) | site
    src6[is_v6, 1] = low[is_v6]
    dst6[is_v6, 0] = np.uint64(_V6_DST_HI) | rng.integers(0, 1 << 32, n, dtype=np.uint64)[is_v6]
    dst6[is_v6, 1] = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64,
                                  endpoint=True)[is_v6]

    sport = rng.integers(49152, 65536, n)  # the dynamic range (RFC 6335)
    dport = np.where(kind == 0, rng.choice(_TCP_DPORTS, n), rng.choice(_UDP_DPORTS, n))
    ident = rng.integers(1, 65536, n)
    is_icmp = kind == 2
    sport = np.where(is_icmp, ident, sport).astype(np.uint16)
    dport = np.where(is_icmp, ident, dport).astype(np.uint16)
    seq = np.where(kind == 0, rng.integers(0, 1 << 32, n), 0).astype(np.uint32)
    vlan = (rng.integers(1, spec.vlans + 1, n) if spec.vlans else np.zeros(n)).astype(np.uint16)
    port = (np.arange(n) % spec.ports).astype(np.int32)
    return Flows(kind, ip_version, src4, dst4, src6, dst6, sport, dport, seq, vlan, port)


# ---------------------------------------------------------------- templates
def _build(*headers: Header, payload: bytes) -> bytes:
    from portico.packet.build import build  # written alongside; imported late on purpose

    return build(*headers, payload=payload)


def _put(buf: np.ndarray, rows: np.ndarray, offset: int, values: np.ndarray, width: int) -> None:
    """Write ``values`` big-endian, ``width`` bytes at ``offset`` of each selected row."""
    values = values.astype(np.uint64)
    for k in range(width - 1, -1, -1):
        buf[rows, offset + k] = (values & np.uint64(0xFF)).astype(np.uint8)
        values = values >> np.uint64(8)


def _fold(total: np.ndarray) -> np.ndarray:
    for _ in range(3):
        total = (total & 0xFFFF) + (total >> 16)
    return total


@dataclass
class _Shape:
    """Where things sit in one protocol x IP version shape (same for all its sizes)."""

    kind: int
    version: int
    l3: int
    l4: int
    header_len: int
    l4_checksum_at: int  # absolute offset in the frame


class _Templates:
    """Template packets per (shape, size class) plus each flow's bytes and checksum sums."""

    def __init__(self, spec: TrafficSpec, flows: Flows) -> None:
        tagged = spec.vlans > 0
        self.size_classes = spec.size_classes
        l3 = 14 + (4 if tagged else 0)
        self.shapes: list[_Shape] = []
        for kind in range(len(PROTOCOLS)):
            for version in (4, 6):
                l4 = l3 + (20 if version == 4 else 40)
                l4_size, at = ((20, 16), (8, 6), (8, 2))[kind]
                self.shapes.append(_Shape(kind, version, l3, l4, l4 + l4_size, l4 + at))
        width = max(s.header_len for s in self.shapes)
        self.width = width + (width & 1)  # whole 16-bit words
        n_sizes = len(self.size_classes)
        n_templates = len(self.shapes) * n_sizes
        self.header = np.zeros((n_templates, self.width), dtype=np.uint8)
        self.frame_len = np.zeros(n_templates, dtype=np.int32)
        self.payload_len = np.zeros(n_templates, dtype=np.int64)
        self.ip_checksum = np.zeros(n_templates, dtype=np.int64)
        self.l4_checksum = np.zeros(n_templates, dtype=np.int64)
        self.l4_checksum_at = np.zeros(n_templates, dtype=np.intp)
        self.is_udp = np.zeros(n_templates, dtype=bool)
        self.is_tcp = np.zeros(n_templates, dtype=bool)
        for s, shape in enumerate(self.shapes):
            for c, (size, _) in enumerate(self.size_classes):
                t = s * n_sizes + c
                least = 1 if shape.kind == 0 else 0  # every TCP segment advances seq
                frame = _build(*self._headers(shape, tagged),
                               payload=bytes(max(least, size - shape.header_len)))
                head = np.frombuffer(frame[: shape.header_len], dtype=np.uint8)
                self.header[t, : shape.header_len] = head
                self.frame_len[t] = len(frame)
                self.payload_len[t] = len(frame) - shape.header_len
                if shape.version == 4:
                    self.ip_checksum[t] = int.from_bytes(frame[l3 + 10 : l3 + 12], "big")
                at = shape.l4_checksum_at
                self.l4_checksum[t] = int.from_bytes(frame[at : at + 2], "big")
                self.l4_checksum_at[t] = at
                self.is_udp[t] = shape.kind == 1
                self.is_tcp[t] = shape.kind == 0
        self._flow_parts(flows, tagged, l3)

    @staticmethod
    def _headers(shape: _Shape, tagged: bool) -> list[Header]:
        headers: list[Header] = [Ethernet(dst=_MAC_DST, src=_MAC_SRC)]
        if tagged:
            headers.append(Dot1Q(vid=0))
        if shape.version == 4:
            headers.append(IPv4(ttl=64, flags=FLAG_DF))
        else:
            headers.append(IPv6(hop_limit=64))
        if shape.kind == 0:
            headers.append(TCP(flags=ACK, window=65535))
        elif shape.kind == 1:
            headers.append(UDP())
        elif shape.version == 4:
            headers.append(ICMP(type=ICMP_ECHO_REQUEST))
        else:
            headers.append(ICMPv6(type=ICMPV6_ECHO_REQUEST))
        return headers

    def _flow_parts(self, flows: Flows, tagged: bool, l3: int) -> None:
        """Each flow's own header bytes, and the one's-complement sums they add."""
        n = len(flows)
        n_sizes = len(self.size_classes)
        self.flow_bytes = np.zeros((n, self.width), dtype=np.uint8)
        self.flow_template = (flows.kind.astype(np.int64) * 2
                              + (flows.ip_version == 6)) * n_sizes
        self.flow_is_v4 = flows.ip_version == 4
        everyone = np.arange(n)
        if tagged:
            _put(self.flow_bytes, everyone, 14, flows.vlan, 2)
        v4, v6 = np.flatnonzero(self.flow_is_v4), np.flatnonzero(~self.flow_is_v4)
        _put(self.flow_bytes, v4, l3 + 12, flows.src4[v4], 4)
        _put(self.flow_bytes, v4, l3 + 16, flows.dst4[v4], 4)
        for half in (0, 1):
            _put(self.flow_bytes, v6, l3 + 8 + 8 * half, flows.src6[v6, half], 8)
            _put(self.flow_bytes, v6, l3 + 24 + 8 * half, flows.dst6[v6, half], 8)
        l4 = np.where(self.flow_is_v4, l3 + 20, l3 + 40)
        for version, rows in ((4, v4), (6, v6)):
            at = l3 + (20 if version == 4 else 40)
            icmp = rows[flows.kind[rows] == 2]
            ports = rows[flows.kind[rows] != 2]
            _put(self.flow_bytes, ports, at, flows.sport[ports], 2)
            _put(self.flow_bytes, ports, at + 2, flows.dport[ports], 2)
            _put(self.flow_bytes, icmp, at + 4, flows.dport[icmp], 2)  # echo ident

        words = (self.flow_bytes[:, 0::2].astype(np.int64) << 8) | self.flow_bytes[:, 1::2]
        running = np.zeros((n, words.shape[1] + 1), dtype=np.int64)
        np.cumsum(words, axis=1, out=running[:, 1:])
        addr_from = np.where(self.flow_is_v4, l3 + 12, l3 + 8) // 2
        addr_to = np.where(self.flow_is_v4, l3 + 20, l3 + 40) // 2
        addresses = running[everyone, addr_to] - running[everyone, addr_from]
        transport = running[:, -1] - running[everyone, l4 // 2]
        pseudo = (flows.kind != 2) | ~self.flow_is_v4  # ICMPv4 has no pseudo-header
        self.ip_sum = np.where(self.flow_is_v4, addresses, 0)
        self.l4_sum = transport + np.where(pseudo, addresses, 0)

    def templates_for(self, flow: np.ndarray, size_class: np.ndarray) -> np.ndarray:
        return self.flow_template[flow] + size_class

    def headers_for(self, flow: np.ndarray, t: np.ndarray, seq: np.ndarray) -> np.ndarray:
        """Finished header bytes (rows x width) of packets of ``flow`` from templates ``t``.

        ``seq`` is each packet's TCP sequence number (ignored for other protocols).
        """
        headers = self.header[t] | self.flow_bytes[flow]
        rows = np.arange(len(flow))
        v4 = self.flow_is_v4[flow]
        tcp = rows[self.is_tcp[t]]
        seq_at = self.l4_checksum_at[t[tcp]] - 12
        for k in range(4):
            headers[tcp, seq_at + k] = (seq[tcp] >> (24 - 8 * k)).astype(np.uint8)
        seq_sum = np.where(self.is_tcp[t], (seq >> 16) + (seq & 0xFFFF), 0)
        ip = ~_fold((~self.ip_checksum[t] & 0xFFFF) + self.ip_sum[flow]) & 0xFFFF
        l4 = ~_fold((~self.l4_checksum[t] & 0xFFFF) + self.l4_sum[flow] + seq_sum) & 0xFFFF
        l4[(l4 == 0) & self.is_udp[t]] = 0xFFFF  # RFC 768: a computed zero is sent as ones
        ip_at = self.shapes[0].l3 + 10
        headers[rows[v4], ip_at] = (ip[v4] >> 8).astype(np.uint8)
        headers[rows[v4], ip_at + 1] = (ip[v4] & 0xFF).astype(np.uint8)
        at = self.l4_checksum_at[t]
        headers[rows, at] = (l4 >> 8).astype(np.uint8)
        headers[rows, at + 1] = (l4 & 0xFF).astype(np.uint8)
        return headers


# ---------------------------------------------------------------- per-packet draws
class _PacketDraws:
    """Uniform [0, 1) draws indexed by packet number, whatever the batching.

    Draws come in chunks of 64 Ki packets, each chunk from its own generator
    seeded with (seed, purpose, chunk number).
    """

    CHUNK = 1 << 16

    def __init__(self, seed: int, purpose: int) -> None:
        self.key = (seed, purpose)
        self._chunk_index = -1
        self._chunk = np.empty(0)

    def uniform(self, first: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.float64)
        done = 0
        while done < count:
            chunk, offset = divmod(first + done, self.CHUNK)
            if chunk != self._chunk_index:
                self._chunk = np.random.default_rng([*self.key, chunk]).random(self.CHUNK)
                self._chunk_index = chunk
            take = min(count - done, self.CHUNK - offset)
            out[done : done + take] = self._chunk[offset : offset + take]
            done += take
        return out


class _FlowPicker:
    """Which flow each packet belongs to."""

    def __init__(self, spec: TrafficSpec) -> None:
        rng = np.random.default_rng([spec.seed, 1])
        n = spec.flows
        self.flows = n
        self.zipf = spec.distribution == "zipf"
        if self.zipf:
            weights = np.arange(1, n + 1, dtype=np.float64) ** -spec.zipf_exponent
            self.cdf = np.cumsum(weights)
            self.cdf /= self.cdf[-1]
            self.rank_to_flow = rng.permutation(n)
            self.draws = _PacketDraws(spec.seed, 2)
        else:
            self.stride = 1
            if n > 1:
                while True:
                    self.stride = int(rng.integers(1, n))
                    if math.gcd(self.stride, n) == 1:
                        break
            self.offset = int(rng.integers(0, n))

    def pick(self, first: int, count: int) -> np.ndarray:
        if self.zipf:
            rank = np.searchsorted(self.cdf, self.draws.uniform(first, count), side="right")
            return self.rank_to_flow[np.minimum(rank, self.flows - 1)]
        packet = np.arange(first, first + count, dtype=np.int64)
        return (packet * self.stride + self.offset) % self.flows


# ---------------------------------------------------------------- generate
def _bytes_before(flow: np.ndarray, size: np.ndarray) -> np.ndarray:
    """For each packet, the sizes of the earlier packets of its flow in this batch, summed."""
    order = np.argsort(flow, kind="stable")
    grouped, sizes = flow[order], size[order]
    before = np.cumsum(sizes) - sizes
    starts = np.r_[True, grouped[1:] != grouped[:-1]]
    group_first = np.flatnonzero(starts)[np.cumsum(starts) - 1]
    out = np.empty_like(before)
    out[order] = before - before[group_first]
    return out


def max_frame(spec: TrafficSpec) -> int:
    """Longest frame ``spec`` produces (slot sizing)."""
    header = 14 + (4 if spec.vlans else 0) + 40 + 20 + 1
    return max(header, max(size for size, _ in spec.size_classes))


def generate(
    spec: TrafficSpec,
    *,
    batch_size: int = DEFAULT_BATCH,
    slot_size: int | None = None,
    headroom: int = DEFAULT_HEADROOM,
) -> Iterator[Batch]:
    """Yield ``spec.packets`` packets as Batches of up to ``batch_size`` rows.

    Each Batch is new (callers may keep them). ``slot_size`` defaults to the
    smallest multiple of 64 that holds the headroom and the longest frame.
    """
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if slot_size is None:
        slot_size = -(-(headroom + max(max_frame(spec), 64) + 1) // 64) * 64
    flows = make_flows(spec)
    templates = _Templates(spec, flows)
    picker = _FlowPicker(spec)
    weights = np.array([w for _, w in spec.size_classes], dtype=np.float64)
    size_cdf = np.cumsum(weights) / weights.sum()
    size_draws = _PacketDraws(spec.seed, 3)
    width = templates.width
    sent = np.zeros(spec.flows, dtype=np.int64)  # payload bytes per flow so far: TCP seq
    first = 0
    while first < spec.packets:
        count = min(batch_size, spec.packets - first)
        flow = picker.pick(first, count)
        if len(size_cdf) == 1:
            size_class = np.zeros(count, dtype=np.int64)
        else:
            size_class = np.searchsorted(size_cdf, size_draws.uniform(first, count), side="right")
            size_class = np.minimum(size_class, len(size_cdf) - 1)
        t = templates.templates_for(flow, size_class)
        payload = templates.payload_len[t]
        seq = (flows.seq[flow] + sent[flow] + _bytes_before(flow, payload)) & 0xFFFFFFFF
        np.add.at(sent, flow, payload)
        headers = templates.headers_for(flow, t, seq)
        frame_len = templates.frame_len[t]
        batch = Batch(count, slot_size=slot_size, headroom=headroom)
        batch.reset(count)
        # Fresh slots are zero, and payloads are zero: only the headers need writing.
        batch.data[:, headroom : headroom + width] = headers
        meta = batch.meta
        meta["length"] = frame_len
        meta["wire_length"] = frame_len
        meta["port"] = flows.port[flow]
        packet = np.arange(first, first + count, dtype=np.int64)
        meta["timestamp"] = spec.start_ns + packet * 10**9 // spec.rate
        yield batch
        first += count


# ---------------------------------------------------------------- CLI
def _argtype(parse, option: str):  # type: ignore[no-untyped-def]
    """Wrap a parser so argparse reports its SpecError as the option's error (exit 2)."""

    def convert(text: str):  # type: ignore[no-untyped-def]
        try:
            return parse(text)
        except SpecError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{option}: ")) from None

    convert.__name__ = option.lstrip("-")
    return convert


def _sizes_text(text: str) -> str:
    parse_sizes(text)
    return text.strip().lower()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``portico gen``."""
    parser.add_argument("out", metavar="OUT", help="capture file to write (.pcapng or .pcap)")
    parser.add_argument("--packets", type=int, default=10_000, help="packets (default 10000)")
    parser.add_argument("--flows", type=int, default=100, help="distinct flows (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--distribution", choices=("uniform", "zipf"), default="uniform",
                        help="packets per flow: equal shares, or Zipf by flow rank")
    parser.add_argument("--zipf-exponent", type=float, default=1.0, metavar="A",
                        help="Zipf exponent: rank r gets weight r**-A (default 1.0)")
    parser.add_argument("--mix", type=_argtype(parse_mix, "--mix"),
                        default=dict(DEFAULT_MIX), metavar="tcp=S,udp=S,icmp=S",
                        help="protocol shares of flows (default tcp=0.6,udp=0.35,icmp=0.05)")
    parser.add_argument("--sizes", type=_argtype(_sizes_text, "--sizes"), default="64",
                        metavar="64|imix|fixed:N",
                        help="captured frame sizes (default 64; imix = 64/576/1500 at 7:4:1)")
    parser.add_argument("--ipv6", type=float, default=0.0, metavar="SHARE",
                        help="share of flows over IPv6, 0..1 (default 0)")
    parser.add_argument("--vlans", type=int, default=0, metavar="N",
                        help="tag packets with 802.1Q VIDs 1..N (default 0: untagged)")
    parser.add_argument("--ports", type=int, default=1, metavar="N",
                        help="gateway ports = pcapng interfaces port0..portN-1 (default 1)")
    parser.add_argument("--rate", type=int, default=DEFAULT_RATE, metavar="PPS",
                        help=f"timestamp rate in packets/s (default {DEFAULT_RATE})")
    parser.add_argument("--format", choices=("pcapng", "pcap"), default=None,
                        help="capture format (default: from OUT's suffix, else pcapng)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def spec_from_args(args: argparse.Namespace) -> TrafficSpec:
    return TrafficSpec(
        packets=args.packets,
        flows=args.flows,
        seed=args.seed,
        distribution=args.distribution,
        zipf_exponent=args.zipf_exponent,
        mix=args.mix,
        sizes=args.sizes,
        ipv6_share=args.ipv6,
        vlans=args.vlans,
        ports=args.ports,
        rate=args.rate,
    )


def run(args: argparse.Namespace) -> int:
    """``portico gen``: 0 on success, 2 for a bad option, 1 if the file cannot be written."""
    try:
        spec = spec_from_args(args)
    except SpecError as err:
        print(f"portico gen: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    fmt: Format = args.format or ("pcap" if out.suffix.lower() == ".pcap" else "pcapng")
    if fmt == "pcap" and spec.ports > 1:
        print("portico gen: error: --ports: a pcap file has one interface; use --format pcapng",
              file=sys.stderr)
        return 2
    from portico.io.capture import CaptureWriter

    began = time.perf_counter()
    interfaces = [f"port{i}" for i in range(spec.ports)]
    try:
        with (
            CaptureWriter(out, format=fmt, interfaces=interfaces, nanosecond=True) as writer,
            Progress(spec.packets, label="gen", quiet=args.quiet) as bar,
        ):
            for batch in generate(spec):
                writer.write(batch, port_column="port")
                bar.advance(batch.count)
    except OSError as err:
        print(f"portico gen: error: {out}: {err.strerror or err}", file=sys.stderr)
        return 1
    if not args.quiet:
        took = time.perf_counter() - began
        print(f"wrote {spec.packets} packets over {spec.flows} flows on {spec.ports} "
              f"port(s) to {out} ({fmt}, {took:.2f} s)")
    return 0
