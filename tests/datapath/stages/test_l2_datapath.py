"""Ingress, switch and output together: two tenants with the same MACs and addresses, cached
and not.

Tenants a and b number their hosts alike (the same four MACs, the same four
IPv4 addresses), a on VLANs 10/30, b on VLAN 20 and untagged. Random traffic
between them, to their routers, to unknown MACs and to broadcast runs through a
cached and an uncached datapath; both must send the same bytes to the same
ports, and each frame must leave exactly as Scapy says it should: on the
destination host's own port and VLAN in its own tenant, never the other's.

Two ways the cache used to be wrong are pinned: the datapath classifies
before it looks flows up (the flow key holds the tenant), and a 5-tuple whose
destination MAC changes is decided again (the key holds the destination MAC).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from l2net import (
    ACCESS,
    EDGE,
    GATEWAY_MAC,
    L2,
    ROUTER_A,
    ROUTER_B,
    TRUNK,
    UPLINK,
    UPLINK_MAC,
    mac_int,
    make_l2,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

from portico import drops
from portico.batch import Batch


@dataclass(frozen=True)
class Host:
    tenant: str
    mac: str
    ip: str
    port: int
    vlan: int | None  # None: untagged

    def tagged(self, frame: Packet) -> Packet:
        """``Ether / payload`` as it is on this host's wire (with its VLAN tag, if any)."""
        if self.vlan is None:
            return frame
        return Ether(src=frame.src, dst=frame.dst) / Dot1Q(vlan=self.vlan) / frame.payload


MACS = ["02:00:00:00:00:11", "02:00:00:00:00:12", "02:00:00:00:00:13", "02:00:00:00:00:14"]
IPS = ["10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"]
PLACES = {"a": [(ACCESS, 10), (EDGE, 30), (TRUNK, 10), (ACCESS, 10)],
          "b": [(ACCESS, 20), (EDGE, None), (ACCESS, 20), (EDGE, None)]}
HOSTS = [Host(t, MACS[i], IPS[i], *PLACES[t][i]) for t in ("a", "b") for i in range(4)]
A1, A2, B1, B2 = HOSTS[0], HOSTS[1], HOSTS[4], HOSTS[5]  # a1 and b1 alike, a2 and b2 alike
ROUTER = {"a": ROUTER_A, "b": ROUTER_B}
UNKNOWN_MAC = "02:00:00:00:ee:01"
BROADCAST = "ff:ff:ff:ff:ff:ff"


@dataclass(frozen=True)
class Flow:
    src: Host
    kind: str  # "host", "router", "unknown", "broadcast"
    dst: Host | None
    l4: Packet

    def frame(self, flags: str = "A") -> tuple[int, bytes]:
        ip_dst = {"host": self.dst.ip if self.dst else "", "router": "198.51.100.7",
                  "unknown": "10.0.0.99", "broadcast": "10.0.0.255"}[self.kind]
        mac_dst = {"host": self.dst.mac if self.dst else "", "router": ROUTER[self.src.tenant],
                   "unknown": UNKNOWN_MAC, "broadcast": BROADCAST}[self.kind]
        l4 = self.l4.copy()
        if TCP in l4:
            l4[TCP].flags = flags
        packet = Ether(src=self.src.mac, dst=mac_dst) / IP(src=self.src.ip, dst=ip_dst) / l4
        return self.src.port, bytes(self.src.tagged(packet))


def announcements() -> list[tuple[int, bytes]]:
    return [(h.port, bytes(h.tagged(Ether(src=h.mac, dst=BROADCAST) / ARP(hwsrc=h.mac,
                                                                          psrc=h.ip))))
            for h in HOSTS]


def random_flows(rng: np.random.Generator, n: int) -> list[Flow]:
    flows = []
    for _ in range(n):
        src = HOSTS[rng.integers(len(HOSTS))]
        kind = ["host", "host", "router", "unknown", "broadcast"][rng.integers(5)]
        peers = [h for h in HOSTS if h.tenant == src.tenant and h != src]
        dst = peers[rng.integers(len(peers))] if kind == "host" else None
        sport = int(rng.integers(1024, 65535))
        l4 = [UDP(sport=sport, dport=53) / b"query", TCP(sport=sport, dport=443),
              ICMP(id=sport, seq=1)][rng.integers(3)]
        flows.append(Flow(src, kind, dst, l4))
    return flows


def expect(flow: Flow, sent: bytes, got: bytes, port: int, drop: int,
           checksums_valid: Callable[[Packet], None]) -> None:
    """The egress Scapy expects for one frame of ``flow``."""
    reason = drops.name(drop) if drop else ""
    if flow.kind == "unknown":
        assert reason == "unknown-unicast"
    elif flow.kind == "broadcast":
        assert reason == "flood-unsupported"
    elif flow.kind == "router":  # the stub routes to the upstream gateway, untagged
        assert (reason, port) == ("", UPLINK)
        out = Ether(got)
        assert Dot1Q not in out and (out.src, out.dst) == (UPLINK_MAC, GATEWAY_MAC)
        assert out[IP].ttl == Ether(sent)[IP].ttl - 1
        checksums_valid(out)
    else:
        assert flow.dst is not None
        if (flow.dst.port, flow.dst.vlan) == (flow.src.port, flow.src.vlan):
            assert reason == "hairpin-l2"
            return
        assert (reason, port) == ("", flow.dst.port)
        # Exactly the frame that was sent, with the destination's own tag (or none).
        untagged = Ether(sent)
        if Dot1Q in untagged:
            untagged = Ether(src=untagged.src, dst=untagged.dst) / untagged[Dot1Q].payload
        assert got == bytes(flow.dst.tagged(untagged))
        checksums_valid(Ether(got))


def test_two_tenants_alike_cached_and_not(checksums_valid: Callable[[Packet], None]) -> None:
    rng = np.random.default_rng(4)
    flows = random_flows(rng, 120)
    batches = [[flows[i] for i in rng.integers(len(flows), size=64)] for _ in range(6)]
    nets = {cached: make_l2(cached=cached) for cached in (True, False)}
    for net in nets.values():
        net.run(announcements(), now=1)
    for now, chosen in enumerate(batches, start=2):
        # A few SYNs and FINs: the stages see those whatever the cache holds.
        frames = [f.frame(flags=["A", "A", "A", "S", "FA"][rng.integers(5)]) for f in chosen]
        out = {cached: net.run(frames, now=now) for cached, net in nets.items()}
        for row, flow in enumerate(chosen):
            got = [(b.packet(row), int(b.meta["out_port"][row]), int(b.meta["drop"][row]))
                   for b in out.values()]
            assert got[0] == got[1], (row, flow)
            expect(flow, frames[row][1], *got[0], checksums_valid)
    cached = nets[True].datapath.counters
    assert cached["hits"] > cached["misses"] > 0
    # Same MACs, both tenants: each learned where it is in its own tenant only.
    for net in nets.values():
        for tenant in ("a", "b"):
            entries = net.macs.entries(net.segment(f"{tenant}.lan"))
            assert entries == {mac_int(h.mac): net.topology.attachment_at(h.port, h.vlan or 0)
                               for h in HOSTS if h.tenant == tenant}
        drops_seen = net.counted("switch")
        assert set(drops_seen) == {"unknown-unicast", "flood-unsupported", "hairpin-l2"}


def test_a_host_that_moves_takes_its_cached_flows_along() -> None:
    net = make_l2(cached=True)
    x, y = A1, A2  # on access VLAN 10 and edge VLAN 30
    flow = Flow(y, "host", x, UDP(sport=5000, dport=53))
    net.run(announcements(), now=1)
    assert net.run([flow.frame()], now=2).meta["out_port"][0] == ACCESS
    assert net.run([flow.frame()], now=3).meta["out_port"][0] == ACCESS
    hits = net.datapath.counters["hits"]
    assert hits == 1
    # X turns up behind trunk VLAN 10: a new flow key (port, VLAN), so the stages see it,
    # learn the move, and the flows switched to X are dropped from the cache.
    moved = Host("a", x.mac, x.ip, TRUNK, 10)
    net.run([Flow(moved, "host", y, UDP(sport=5001, dport=53)).frame()], now=4)
    assert net.cache is not None and net.cache.counters["invalidations"] >= 1
    batch = net.run([flow.frame()], now=5)
    assert (batch.meta["out_port"][0], Ether(batch.packet(0))[Dot1Q].vlan) == (TRUNK, 10)
    assert net.macs.counters()["moved"] == 1


def test_a_cached_unknown_unicast_drop_ends_when_the_mac_is_learned() -> None:
    net = make_l2(cached=True)
    x, y = A1, A2
    flow = Flow(y, "host", x, UDP(sport=5000, dport=53))
    # Y first: learning Y would re-decide a.lan's unknown destinations, this one included.
    net.run(announcements()[1:2], now=1)
    for now in (2, 3):  # the second is decided by the cache
        assert drops.name(net.run([flow.frame()], now=now).meta["drop"][0]) == "unknown-unicast"
    assert net.datapath.counters["hits"] == 1
    net.run(announcements()[:1], now=4)  # X's ARP: learned, and a.lan's unknowns re-decided
    batch = net.run([flow.frame()], now=5)
    assert (batch.meta["drop"][0], batch.meta["out_port"][0]) == (0, ACCESS)


def test_same_addresses_in_two_tenants_are_two_flows() -> None:
    net = make_l2(cached=True)
    net.run(announcements(), now=1)
    a_flow = Flow(A2, "host", A1, UDP(sport=7, dport=7))
    b_flow = Flow(B2, "host", B1, UDP(sport=7, dport=7))
    # The same MACs, IPs and ports; only where they enter differs.
    assert Ether(a_flow.frame()[1])[IP] == Ether(b_flow.frame()[1])[IP]
    for now in (2, 3):
        batch = net.run([a_flow.frame(), b_flow.frame()], now=now)
        tags = [Ether(p)[Dot1Q].vlan for p in batch.packets()]
        assert (list(batch.meta["out_port"][:2]), tags) == ([ACCESS, ACCESS], [10, 20])
        assert list(batch.meta["tenant"][:2]) == [1, 2]
    assert net.datapath.counters["hits"] == 2


def run_twice(net: L2, frame: tuple[int, bytes]) -> Batch:
    net.run([frame], now=1)
    return net.run([frame], now=2)


def test_the_cache_hits_when_the_datapath_runs_alone() -> None:
    net = make_l2(cached=True)
    net.run(announcements(), now=1)
    run_twice(net, Flow(A2, "host", A1, UDP(sport=9, dport=9)).frame())
    assert net.datapath.counters["hits"] == 1


def test_a_flow_whose_destination_mac_changes_is_decided_again() -> None:
    outs = []
    for cached in (True, False):
        net = make_l2(cached=cached)
        net.run(announcements(), now=1)
        x, y = A1, A2
        to_x = Flow(y, "host", x, UDP(sport=9, dport=9)).frame()
        net.run([to_x], now=2)
        # The same 5-tuple, now to the router (as after an address moved to another MAC).
        port, frame = to_x
        to_router = bytes.fromhex(ROUTER_A.replace(":", "")) + frame[6:]
        outs.append(net.run([(port, to_router)], now=3).meta["out_port"][0])
    assert outs[0] == outs[1] == UPLINK
