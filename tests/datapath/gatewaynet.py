"""Shared by the gateway scenario tests: the two-tenant example, its variants, and a driver.

(A module, not fixtures, because the tests want its constants and helpers;
``conftest.py`` puts this directory on the import path.)

The network is ``examples/two-tenants.yaml``: tenants a and b both number
their LAN 10.0.0.0/24, behind VLAN 10 (a) and VLAN 20 (b) of port ``access``
(id 1); the provider's uplink is port 0, towards the upstream router
203.0.113.1 (static MAC 02:00:00:00:00:fe). a's SNAT address is
198.51.100.10, and TCP 198.51.100.10:8080 is forwarded to a's web server
10.0.0.5:80; b's SNAT address is 198.51.100.20.

The hosts the tests use: ``WEB`` (10.0.0.5, MAC 02:00:00:00:0a:05, a's
static MAC entry and its DNAT target) and ``CLIENT`` (10.0.0.7), which both
tenants have, with the same MAC in both. ``Net.announce`` has them ARP for
their router, which is how the gateway learns them.

``Net.send`` runs frames through a ``Gateway`` and returns one ``Out`` per
frame (where it went, or why it was dropped, decoded by Scapy) plus the
frames the gateway sent of its own accord; every frame that leaves is held
to Scapy's checksums on the way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

from portico import drops
from portico.batch import Batch
from portico.control.model import Config, parse_config
from portico.datapath.gateway import Gateway

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"

UPLINK, ACCESS = 0, 1
VLAN_A, VLAN_B = 10, 20
UPLINK_MAC = "02:00:00:00:00:01"  # the provider router on the uplink
UPSTREAM_MAC = "02:00:00:00:00:fe"  # the upstream router 203.0.113.1
UPLINK_IP, UPSTREAM_IP = "203.0.113.2", "203.0.113.1"
ROUTER_A, ROUTER_B = "02:00:00:00:0a:01", "02:00:00:00:0b:01"
ROUTER_IP = "10.0.0.1"  # both tenants' router address on their LAN
PUBLIC_A, PUBLIC_B = "198.51.100.10", "198.51.100.20"
DNAT_PORT = 8080
WEB, WEB_MAC = "10.0.0.5", "02:00:00:00:0a:05"
CLIENT, CLIENT_MAC = "10.0.0.7", "02:00:00:00:00:77"  # in both tenants, same MAC
OUTSIDE = "8.8.8.8"
# The ``with_dmz`` variant: a's second segment, and IPv6.
DMZ = 2
ROUTER_DMZ, ROUTER_DMZ_MAC = "10.1.0.1", "02:00:00:00:0a:02"
DMZ_HOST, DMZ_HOST_MAC = "10.1.0.9", "02:00:00:00:01:09"
ROUTER6_A, ROUTER6_DMZ = "2001:db8:a::1", "2001:db8:1::1"
CLIENT6, DMZ_HOST6 = "2001:db8:a::7", "2001:db8:1::9"

SECOND = 1_000_000_000
T0 = 1_000 * SECOND  # the tests' clock starts here

Checker = Callable[[Packet], None]


# ------------------------------------------------------------------- configs
def example() -> dict[str, Any]:
    """The example config as a mapping, to change into a variant."""
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return data


def variant(change: Callable[[dict[str, Any]], None] | None = None) -> Config:
    """The example config, changed in place by ``change`` first."""
    data = copy.deepcopy(example())
    if change is not None:
        change(data)
    return parse_config(data)


def tenant(data: dict[str, Any], name: str) -> dict[str, Any]:
    t: dict[str, Any] = data["tenants"][name]
    return t


def with_dmz(data: dict[str, Any]) -> None:
    """A second segment in tenant a, on a small-MTU port, and IPv6 on both of a's segments:
    port ``dmz`` (id 2, MTU 1280, untagged) is a's switch ``dmz``, 10.1.0.0/24 and
    2001:db8:1::/64; a's LAN gets 2001:db8:a::/64 beside 10.0.0.0/24."""
    data["ports"]["dmz"] = {"id": DMZ, "mtu": 1280}
    a = tenant(data, "a")
    a["switches"]["dmz"] = {"attach": [{"port": "dmz"}]}
    a["router"]["interfaces"][0]["addresses"].append(f"{ROUTER6_A}/64")
    a["router"]["interfaces"].append(
        {"switch": "dmz", "addresses": [f"{ROUTER_DMZ}/24", f"{ROUTER6_DMZ}/64"],
         "mac": ROUTER_DMZ_MAC})


def without_default_route(data: dict[str, Any]) -> None:
    data["provider"]["router"]["routes"] = []


def with_tiny_pool(data: dict[str, Any]) -> None:
    """Tenant a's SNAT pool gets two ports."""
    tenant(data, "a")["router"]["nat"]["snat"][0]["ports"] = "1024-1025"


# -------------------------------------------------------------------- frames
@dataclass(frozen=True)
class Frame:
    port: int
    packet: Packet


def from_a(l3: Packet, *, src: str = CLIENT_MAC, dst: str = ROUTER_A) -> Frame:
    return Frame(ACCESS, Ether(src=src, dst=dst) / Dot1Q(vlan=VLAN_A) / l3)


def from_b(l3: Packet, *, src: str = CLIENT_MAC, dst: str = ROUTER_B) -> Frame:
    return Frame(ACCESS, Ether(src=src, dst=dst) / Dot1Q(vlan=VLAN_B) / l3)


def from_outside(l3: Packet) -> Frame:
    return Frame(UPLINK, Ether(src=UPSTREAM_MAC, dst=UPLINK_MAC) / l3)


def arp_from(vlan: int | None, ip: str, mac: str, *, target: str = ROUTER_IP, op: int = 1,
             port: int = ACCESS, router: str | None = None) -> Frame:
    """A host's ARP: a request for ``target`` (broadcast), or with ``op=2`` a reply to
    ``router`` (by default the router of the tenant ``vlan`` belongs to)."""
    if op == 1:
        dst, hwdst = "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"
    else:
        dst = hwdst = router or (ROUTER_A if vlan == VLAN_A else ROUTER_B)
    l2 = Ether(src=mac, dst=dst)
    if vlan is not None:
        l2 = l2 / Dot1Q(vlan=vlan)
    return Frame(port, l2 / ARP(op=op, hwsrc=mac, psrc=ip, pdst=target, hwdst=hwdst))


# -------------------------------------------------------------------- driver
@dataclass
class Out:
    """What became of one frame: the port it left by (-1: none), the drop reason
    ("": not dropped), the frame as it left (Scapy), and whether it was held."""

    port: int
    drop: str
    packet: Packet | None
    raw: bytes = b""  # the frame's bytes as it left

    @property
    def held(self) -> bool:
        return self.port < 0 and not self.drop

    @property
    def vlan(self) -> int | None:
        assert self.packet is not None
        return int(self.packet[Dot1Q].vlan) if Dot1Q in self.packet else None

    def verdict(self) -> tuple[object, ...]:
        """(port, vlan) when it left, ("drop", reason) when dropped, ("held",) else."""
        if self.drop:
            return ("drop", self.drop)
        if self.port < 0:
            return ("held",)
        return (self.port, self.vlan)

    def __repr__(self) -> str:
        what = self.packet.summary() if self.packet is not None else ""
        return f"Out({self.verdict()}, {what})"


@dataclass
class Net:
    """A gateway and the clock the tests drive it with."""

    gateway: Gateway
    check: Checker
    now: int = T0
    emitted: list[Out] = field(default_factory=list)  # everything ``send`` got back, in order
    last_emitted: list[Out] = field(default_factory=list)  # what the last ``send`` got back

    def send(self, frames: Iterable[Frame], *, at: int | None = None,
             advance: int = SECOND) -> list[Out]:
        """One batch of ``frames`` at ``at`` (default: the clock, then moved by ``advance``);
        the fate of each frame. What the gateway sent because of it is ``last_emitted``."""
        frames = list(frames)
        now = self.now if at is None else at
        self.now = max(self.now, now) + advance
        batch = Batch.from_packets([bytes(f.packet) for f in frames])
        n = len(frames)
        batch.meta["port"][:n] = [f.port for f in frames]
        batch.meta["timestamp"][:n] = now
        sent = self.gateway.process(batch, now)
        outs = outcomes(batch, self.check)
        self.last_emitted = [out for b in sent for out in outcomes(b, self.check)]
        self.emitted.extend(self.last_emitted)
        return outs

    def one(self, frame: Frame, **kw: Any) -> Out:
        return self.send([frame], **kw)[0]

    def announce(self, *hosts: tuple[int, str, str]) -> None:
        """Hosts (vlan, ip, mac) on ``access`` ARP for their router: the gateway learns them."""
        outs = self.send([arp_from(vlan, ip, mac) for vlan, ip, mac in hosts])
        for out in outs:
            assert out.port >= 0, out  # answered: the router's ARP reply


def outcomes(batch: Batch, check: Checker) -> list[Out]:
    """Every row of a processed batch as an ``Out``; frames that leave are checked."""
    outs = []
    for row in range(batch.count):
        port = int(batch.meta["out_port"][row])
        code = int(batch.meta["drop"][row])
        packet, raw = None, b""
        if code == 0 and port >= 0:
            raw = bytes(batch.packet(row))
            packet = Ether(raw)
            if IP in packet:
                check(packet)
            if IPv6 in packet:
                checksum6_valid(packet)
        outs.append(Out(port, drops.name(code) if code else "", packet, raw))
    return outs


def checksum6_valid(packet: Packet) -> None:
    """The checksum of what an IPv6 header carries (ICMPv6, UDP, TCP) is the one Scapy
    computes (the ``checksums_valid`` fixture judges IPv4 and its transports)."""
    upper = packet[IPv6].payload
    names = {f.name for f in upper.fields_desc}
    name = "cksum" if "cksum" in names else "chksum" if "chksum" in names else None
    if name is None:
        return
    rebuilt = packet.copy()
    delattr(rebuilt[IPv6].payload, name)
    rebuilt = Ether(bytes(rebuilt))
    assert getattr(rebuilt[IPv6].payload, name) == getattr(upper, name), type(upper).__name__


def verdicts(outs: Sequence[Out]) -> list[tuple[object, ...]]:
    return [o.verdict() for o in outs]


def gateway(config: Config | None = None, *, cache: bool = True, seed: int = 1) -> Gateway:
    return Gateway(config if config is not None else variant(), cache=cache, seed=seed)


def net(check: Checker, config: Config | None = None, *, cache: bool = True,
        announce: bool = True) -> Net:
    """A gateway over ``config`` (the example by default) with the hosts announced."""
    n = Net(gateway(config, cache=cache), check)
    if announce:
        n.announce((VLAN_A, WEB, WEB_MAC), (VLAN_A, CLIENT, CLIENT_MAC),
                   (VLAN_B, WEB, WEB_MAC), (VLAN_B, CLIENT, CLIENT_MAC))
    return n
