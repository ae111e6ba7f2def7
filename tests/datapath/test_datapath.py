"""The synthesizing datapath: the same output with and without the cache, and no stale hits.

Three toy stages stand in for the real ones (the datapath issue builds those):
a router (LPM on the destination: output port, TTL decrement, drop without a
route), a source NAT for 10.0.0.0/8, and a firewall that refuses UDP to port 9.
"""

from __future__ import annotations

import ipaddress
from enum import IntEnum
from typing import ClassVar

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from portico import drops
from portico.batch import Batch
from portico.classify.lpm4 import LPM4, NO_MATCH
from portico.datapath.actions import Op
from portico.datapath.datapath import Datapath
from portico.datapath.flowcache import FlowCache, TagKind, tag
from portico.datapath.pipeline import Decisions, Pipeline
from portico.gen import TrafficSpec, generate

NAT_ADDRESS = int(ipaddress.IPv4Address("203.0.113.1"))


class ToyDrop(IntEnum):
    NO_ROUTE = 240
    FIREWALL = 241


drops.register("toy-datapath", ToyDrop)


class Router:
    NAME: ClassVar[str] = "router"
    NEXT: ClassVar[tuple[str, ...]] = ("snat",)
    DROPS = ToyDrop

    def __init__(self) -> None:
        self.routes = LPM4()

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        route = self.routes.lookup(batch.meta["dst4"][rows].astype(np.uint32))
        none = route == NO_MATCH
        batch.meta["drop"][rows[none]] = ToyDrop.NO_ROUTE
        ok = rows[~none]
        decided.actions["ops"][ok] |= int(Op.OUTPUT | Op.DEC_TTL)
        decided.actions["out_port"][ok] = route[~none]
        decided.add_tag(ok, tag(TagKind.ROUTE, 1))
        decision[:] = 0


class SourceNat:
    NAME: ClassVar[str] = "snat"
    NEXT: ClassVar[tuple[str, ...]] = ("firewall",)
    DROPS = None

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        meta = batch.meta
        inside = rows[(meta["src4"][rows] >> 24 == 10) & np.isin(meta["protocol"][rows], (6, 17))]
        decided.actions["ops"][inside] |= int(Op.SET_IP_SRC | Op.SET_SPORT)
        decided.actions["ip_src"][inside] = NAT_ADDRESS
        decided.actions["sport"][inside] = 1024 + (meta["sport"][inside].astype(np.int64)
                                                   * 7 + meta["dport"][inside]) % 60000
        decided.add_tag(inside, tag(TagKind.NAT, 1))
        decision[:] = 0


class Firewall:
    NAME: ClassVar[str] = "firewall"
    NEXT: ClassVar[tuple[str, ...]] = ()
    DROPS = ToyDrop

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        meta = batch.meta
        discard = rows[(meta["protocol"][rows] == 17) & (meta["dport"][rows] == 9)]
        meta["drop"][discard] = ToyDrop.FIREWALL
        decision[:] = -1


def datapath(cached: bool) -> tuple[Datapath, Router]:
    router = Router()
    router.routes.add("198.0.0.0/9", 1)
    router.routes.add("198.128.0.0/9", 2)
    pipeline = Pipeline([router, SourceNat(), Firewall()], entry="router")
    cache = FlowCache(1024, seed=3) if cached else None
    return Datapath(pipeline, cache=cache), router


def traffic(seed: int) -> list[Batch]:
    spec = TrafficSpec(packets=600, flows=40, seed=seed, mix={"tcp": 0.5, "udp": 0.4, "icmp": 0.1})
    return list(generate(spec, batch_size=128))


def outcome(batch: Batch) -> list[tuple[bytes, int, int]]:
    m = batch.meta
    return [(batch.packet(r), int(m["out_port"][r]), int(m["drop"][r])) for r in range(batch.count)]


def test_cache_changes_nothing_but_speed() -> None:
    for seed in (1, 2, 3):
        with_cache, _ = datapath(cached=True)
        without, _ = datapath(cached=False)
        for now, (a, b) in enumerate(zip(traffic(seed), traffic(seed), strict=True), start=1):
            with_cache.process(a, now)
            without.process(b, now)
            assert outcome(a) == outcome(b)
        assert with_cache.counters["hits"] > with_cache.counters["misses"] > 0
        assert without.counters["hits"] == 0


def test_outputs_are_what_the_stages_decided() -> None:
    dp, _ = datapath(cached=True)
    batches = traffic(4)
    for now, batch in enumerate(batches, start=1):
        dp.process(batch, now)
    reasons = set()
    for batch in batches:
        for row in range(batch.count):
            pkt = batch.packet(row)
            port, drop = batch.meta["out_port"][row], batch.meta["drop"][row]
            parsed = Ether(pkt)
            if drop:
                reasons.add(drops.name(drop))
                continue
            assert port in (1, 2) and parsed[IP].ttl == 63
            assert ipaddress.IPv4Address(parsed[IP].dst) in (
                ipaddress.IPv4Network("198.0.0.0/9") if port == 1 else
                ipaddress.IPv4Network("198.128.0.0/9"))
            if TCP in parsed or UDP in parsed:
                assert parsed[IP].src == "203.0.113.1"
                for layer in (IP, TCP, UDP):
                    if layer in parsed:
                        copy = parsed.copy()
                        del copy[layer].chksum
                        assert Ether(bytes(copy))[layer].chksum == parsed[layer].chksum
    assert "firewall" in reasons  # UDP to port 9 was generated and refused every time


def test_a_route_change_takes_effect_on_the_next_packet() -> None:
    dp, router = datapath(cached=True)
    assert dp.cache is not None
    packet = bytes(Ether() / IP(src="10.0.0.5", dst="198.200.0.1") / TCP(sport=5000, dport=80,
                                                                          flags="A"))
    first = Batch.from_packets([packet] * 4)
    dp.process(first, 1)
    assert list(first.meta["out_port"][:4]) == [2] * 4
    router.routes.remove("198.128.0.0/9")
    router.routes.add("198.128.0.0/9", 7)
    dropped = dp.cache.invalidate_tags([tag(TagKind.ROUTE, 1)])
    assert dropped >= 1
    second = Batch.from_packets([packet])
    dp.process(second, 2)
    assert second.meta["out_port"][0] == 7


def test_control_packets_always_see_the_stages() -> None:
    dp, _ = datapath(cached=True)
    ack = Ether() / IP(src="10.0.0.5", dst="198.1.0.1") / TCP(sport=5000, dport=80, flags="A")
    syn = Ether() / IP(src="10.0.0.5", dst="198.1.0.1") / TCP(sport=5000, dport=80, flags="S")
    dp.process(Batch.from_packets([bytes(ack)]), 1)
    before = dict(dp.counters)
    dp.process(Batch.from_packets([bytes(syn), bytes(ack)]), 2)
    assert dp.counters["forced"] - before["forced"] == 1
    assert dp.counters["hits"] - before["hits"] == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=40),
       st.lists(st.binary(min_size=34, max_size=80), max_size=20))
def test_arbitrary_bytes_never_break_the_datapath(junk: list[bytes], mutated: list[bytes]) -> None:
    """Every packet ends output or dropped with a named reason; nothing raises."""
    base = bytes(Ether() / IP(src="10.0.0.5", dst="198.1.0.1") / UDP(sport=1, dport=2))
    frames = junk + [base[:14] + m[14:] for m in mutated]
    for cached in (True, False):
        dp, _ = datapath(cached=cached)
        for now in (1, 2):  # the second pass meets whatever the first one cached
            batch = Batch.from_packets(frames)
            dp.process(batch, now)
            m = batch.meta[: batch.count]
            for row in range(batch.count):
                if m["drop"][row]:
                    assert not drops.name(m["drop"][row]).startswith("unknown")
                else:
                    assert m["out_port"][row] in (1, 2)


def test_unused_actions_are_forgotten_and_cached_flows_keep_theirs() -> None:
    """NAT gives each flow an action; the table must not keep those of flows gone."""
    from portico.datapath.actions import Action

    dp, _ = datapath(cached=True)
    assert dp.cache is not None
    for port in range(5000):  # actions of flows long gone
        dp.actions.add(Action(ops=Op.SET_SPORT, sport=port + 1))

    def flows() -> Batch:
        return Batch.from_packets([bytes(Ether() / IP(src="10.0.0.1", dst="198.1.2.3")
                                         / UDP(sport=1000 + k, dport=53)) for k in range(4)])

    dp.process(flows(), now=1)
    cached = {int(e): int(dp.cache.entries["action"][e]) for e in dp.cache.occupied()}
    before = {e: dp.actions.records[a].tobytes() for e, a in cached.items()}
    assert dp.compact_actions()
    assert len(dp.actions) == len(set(cached.values())) == 4
    after = {e: dp.actions.records[dp.cache.entries["action"][e]].tobytes() for e in cached}
    assert after == before  # every cached flow still names the same action
    again = flows()
    dp.process(again, now=2)
    assert dp.counters["hits"] == 4
    assert again.meta["out_port"][:4].tolist() == [1] * 4
    assert not dp.compact_actions()  # nothing more to forget
