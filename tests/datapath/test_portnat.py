"""The NaaS port-range NAT: Scapy-built frames through parse and the stage, Scapy as the judge.

Two pods share 198.51.100.2 with disjoint blocks; each scenario of issue 7
gets a test (inbound to each range, outside every range, outbound from a pod,
sessions over ranges, policing, PSID sets, incremental changes, refused
config), checked by decoding the output with Scapy: addresses, ports, and
that Scapy recomputes the same checksums we kept incrementally. Last,
Hypothesis drives the table and a plain-Python model of it through random
pods, sessions and allow lists and compares every packet's fate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from portico import drops
from portico.batch import Batch
from portico.datapath.portnat import (
    NO_POD,
    PodMapping,
    PortNatTable,
    Session,
    SessionPort,
)
from portico.datapath.stages.parse import parse
from portico.datapath.stages.portnat import PortNat, PortNatDrop
from portico.services.naas.psid import port_set

SHARED = "198.51.100.2"
POD_A, POD_B = "10.20.0.2", "10.21.0.2"
PEER, PEER_FAR = "192.0.2.1", "203.0.113.9"
A_PORTS, B_PORTS = (40000, 40999), (41000, 41999)
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def ether() -> Packet:
    return Ether(src=MACS["src"], dst=MACS["dst"])

Check = Callable[[Packet], None]


def frame(src: str, dst: str, sport: int, dport: int, proto: str = "udp",
          payload: bytes = b"media") -> bytes:
    transport = (UDP(sport=sport, dport=dport) if proto == "udp"
                 else TCP(sport=sport, dport=dport, flags="S"))
    return bytes(ether() / IP(src=src, dst=dst) / transport / payload)


def run(table: PortNatTable, *frames: bytes) -> Batch:
    batch = Batch.from_packets(frames)
    parse(batch)
    PortNat(table).process(batch)
    return batch


def out(batch: Batch, row: int) -> Packet:
    return Ether(batch.packet(row))


def reason(batch: Batch, row: int) -> str | None:
    code = int(batch.meta["drop"][row])
    return drops.name(code) if code else None


def endpoints(pkt: Packet) -> tuple[str, int, str, int]:
    return pkt[IP].src, int(pkt.sport), pkt[IP].dst, int(pkt.dport)


def two_pods(**allow: Sequence[str] | None) -> PortNatTable:
    return PortNatTable([
        PodMapping.block(shared=SHARED, address=POD_A, first=A_PORTS[0], last=A_PORTS[1],
                         allow=allow.get("a")),
        PodMapping.block(shared=SHARED, address=POD_B, first=B_PORTS[0], last=B_PORTS[1],
                         allow=allow.get("b")),
    ])


# ---------------------------------------------------------------- inbound
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_inbound_to_each_range_reaches_its_pod(proto: str, checksums_valid: Check) -> None:
    table = two_pods()
    batch = run(table, frame(PEER, SHARED, 5004, 40000, proto),
                frame(PEER, SHARED, 5004, 40999, proto),
                frame(PEER, SHARED, 5006, 41000, proto),
                frame(PEER, SHARED, 5006, 41500, proto))
    want = [(PEER, 5004, POD_A, 40000), (PEER, 5004, POD_A, 40999),
            (PEER, 5006, POD_B, 41000), (PEER, 5006, POD_B, 41500)]
    for row, expected in enumerate(want):
        assert reason(batch, row) is None
        pkt = out(batch, row)
        assert endpoints(pkt) == expected
        checksums_valid(pkt)
        assert batch.meta["dst4"][row] == int(ipaddress.IPv4Address(expected[2]))
    assert table.counters()["translated-in"] == 4
    assert batch.meta["out_port"][:4].tolist() == [-1] * 4  # left to the stages after


def test_outside_every_range_is_dropped_and_counted() -> None:
    table = two_pods()
    sent = [frame(PEER, SHARED, 5004, port) for port in (39999, 42000, 53, 65535)]
    batch = run(table, *sent)
    assert [reason(batch, row) for row in range(4)] == ["outside-ranges"] * 4
    assert batch.packets() == sent  # refused packets are left as they came
    assert table.counters()["outside-ranges"] == 4
    assert drops.count(batch.meta["drop"][:4]) == {"outside-ranges": 4}
    assert drops.stage_of(PortNatDrop.OUTSIDE_RANGES) == "portnat"


def test_traffic_for_neither_side_is_left_alone() -> None:
    table = two_pods()
    sent = [frame(PEER, PEER_FAR, 1, 2), frame("10.99.0.1", PEER, 40000, 9)]
    batch = run(table, *sent)
    assert batch.packets() == sent
    assert not batch.meta["drop"][:2].any()


def test_what_has_no_ports_is_dropped_by_name() -> None:
    table = two_pods()
    ping_in = bytes(ether() / IP(src=PEER, dst=SHARED) / ICMP())
    ping_out = bytes(ether() / IP(src=POD_A, dst=PEER) / ICMP())
    batch = run(table, ping_in, ping_out)
    assert [reason(batch, 0), reason(batch, 1)] == ["not-tcp-udp"] * 2
    assert table.counters()["not-tcp-udp"] == 2


def test_a_udp_datagram_without_checksum_keeps_none() -> None:
    table = two_pods()
    pkt = ether() / IP(src=PEER, dst=SHARED) / UDP(sport=7, dport=40100, chksum=0) / b"x"
    batch = run(table, bytes(pkt))
    got = out(batch, 0)
    assert got[UDP].chksum == 0
    assert got[IP].dst == POD_A


# ---------------------------------------------------------------- outbound
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_outbound_leaves_from_the_shared_address_inside_the_range(
        proto: str, checksums_valid: Check) -> None:
    table = two_pods()
    batch = run(table, frame(POD_A, PEER, 40123, 5004, proto),
                frame(POD_B, PEER, 41999, 5004, proto))
    for row, port in enumerate((40123, 41999)):
        pkt = out(batch, row)
        assert endpoints(pkt) == (SHARED, port, PEER, 5004)
        checksums_valid(pkt)
    assert table.counters()["translated-out"] == 2


def test_a_source_port_outside_the_pods_range_is_dropped_by_name() -> None:
    table = two_pods()
    sent = [frame(POD_A, PEER, 41000, 5004),  # pod B's port: not A's
            frame(POD_A, PEER, 33000, 53)]  # an ephemeral port
    batch = run(table, *sent)
    assert [reason(batch, 0), reason(batch, 1)] == ["source-port-outside-range"] * 2
    assert batch.packets() == sent
    assert table.counters()["source-port-outside-range"] == 2


def test_a_pod_sending_to_a_neighbours_range_is_hairpinned(checksums_valid: Check) -> None:
    table = two_pods()
    batch = run(table, frame(POD_A, SHARED, 40001, 41001))
    pkt = out(batch, 0)
    assert endpoints(pkt) == (SHARED, 40001, POD_B, 41001)
    checksums_valid(pkt)


# ---------------------------------------------------------------- sessions
def rtp_pair(session_id: str = "call-1") -> Session:
    return Session(id=session_id, pod=POD_A, ports=(
        SessionPort(protocol=17, external_port=40200, pod_port=10000),
        SessionPort(protocol=17, external_port=40201, pod_port=10001)))


def test_a_session_overrides_the_range_and_goes_with_the_session(checksums_valid: Check
                                                                 ) -> None:
    table = two_pods()
    table.add_session(rtp_pair())
    assert table.lookup_in(SHARED, 17, 40200) == (POD_A, 10000)
    assert table.lookup_out(POD_A, 17, 10001) == (SHARED, 40201)
    sent = [frame(PEER, SHARED, 30000, 40200), frame(PEER, SHARED, 30001, 40201),
            frame(POD_A, PEER, 10000, 30000), frame(POD_A, PEER, 10001, 30001),
            frame(PEER, SHARED, 30000, 40200, "tcp")]  # the session is UDP only
    batch = run(table, *sent)
    assert endpoints(out(batch, 0)) == (PEER, 30000, POD_A, 10000)
    assert endpoints(out(batch, 1)) == (PEER, 30001, POD_A, 10001)
    assert endpoints(out(batch, 2)) == (SHARED, 40200, PEER, 30000)  # symmetric RTP
    assert endpoints(out(batch, 3)) == (SHARED, 40201, PEER, 30001)
    assert endpoints(out(batch, 4)) == (PEER, 30000, POD_A, 40200)  # TCP: the range
    for row in range(5):
        checksums_valid(out(batch, row))
    counted = table.counters()
    assert (counted["session-in"], counted["session-out"]) == (2, 2)

    table.remove_session("call-1")
    assert table.lookup_in(SHARED, 17, 40200) == (POD_A, 40200)
    assert table.lookup_out(POD_A, 17, 10000) is None
    held = table.port_map[table.port_map >= 0]
    assert not (held & np.int32(1 << 30)).any()  # no session flag left
    batch = run(table, *sent[:3])
    assert endpoints(out(batch, 0)) == (PEER, 30000, POD_A, 40200)  # back to the range
    assert endpoints(out(batch, 1)) == (PEER, 30001, POD_A, 40201)
    assert reason(batch, 2) == "source-port-outside-range"


def test_tcp_and_udp_sessions_on_one_port_keep_the_flag_until_both_go() -> None:
    table = two_pods()
    table.add_session(Session(id="u", pod=POD_A, ports=(
        SessionPort(protocol=17, external_port=40300, pod_port=7000),)))
    table.add_session(Session(id="t", pod=POD_A, ports=(
        SessionPort(protocol=6, external_port=40300, pod_port=7001),)))
    table.remove_session("u")
    assert table.lookup_in(SHARED, 6, 40300) == (POD_A, 7001)
    assert table.lookup_in(SHARED, 17, 40300) == (POD_A, 40300)
    table.remove_session("t")
    assert table.lookup_in(SHARED, 6, 40300) == (POD_A, 40300)


@pytest.mark.parametrize(("ports", "field"), [
    ((SessionPort(protocol=17, external_port=41000, pod_port=9),),
     r"session.ports\[0\].external_port: 41000 is not one of pod 10.20.0.2's ports"),
    ((SessionPort(protocol=17, external_port=40200, pod_port=9),),
     r"session.ports\[0\].external_port: udp 40200 is mapped by another session"),
    ((SessionPort(protocol=17, external_port=40300, pod_port=10000),),
     r"session.ports\[0\].pod_port: udp 10000 of 10.20.0.2 is mapped by another session"),
    ((SessionPort(protocol=17, external_port=40300, pod_port=9),
      SessionPort(protocol=17, external_port=40300, pod_port=8)),
     r"session.ports\[1\].external_port"),
])
def test_a_bad_session_is_refused_by_field_and_changes_nothing(
        ports: tuple[SessionPort, ...], field: str) -> None:
    table = two_pods()
    table.add_session(rtp_pair())
    before = (table.port_map.copy(), table.session_hash.copy(), table.version)
    with pytest.raises(ValueError, match=field):
        table.add_session(Session(id="call-2", pod=POD_A, ports=ports))
    assert np.array_equal(table.port_map, before[0])
    assert np.array_equal(table.session_hash, before[1])
    assert table.version == before[2]
    assert [s.id for s in table.sessions()] == ["call-1"]


@pytest.mark.parametrize(("make", "field"), [
    (lambda: SessionPort(protocol=1, external_port=1, pod_port=1), "session.protocol"),
    (lambda: SessionPort(protocol=17, external_port=0, pod_port=1), "session.external_port"),
    (lambda: SessionPort(protocol=17, external_port=1, pod_port=70000), "session.pod_port"),
    (lambda: Session(id="", pod=POD_A, ports=()), "session.id"),
    (lambda: Session(id="x", pod="10.0.0.300", ports=()), "session.pod"),
    (lambda: Session(id="x", pod=POD_A, ports=()), "session.ports"),
])
def test_bad_session_fields_are_named(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()


def test_removing_a_pod_takes_its_sessions() -> None:
    table = two_pods()
    table.add_session(rtp_pair())
    table.remove_pod(POD_A)
    assert table.sessions() == []
    assert (table.session_hash[:, 0] == -1).all()
    with pytest.raises(ValueError, match="session.id"):
        table.remove_session("call-1")


# ---------------------------------------------------------------- policing
def test_policing_refuses_a_peer_outside_the_allow_list(checksums_valid: Check) -> None:
    table = two_pods(b=["192.0.2.0/25"])
    batch = run(table, frame(PEER, SHARED, 5004, 41001),  # allowed peer -> pod B
                frame("192.0.2.200", SHARED, 5004, 41001),  # outside the /25
                frame(PEER_FAR, SHARED, 5004, 41001, "tcp"),
                frame(PEER_FAR, SHARED, 5004, 40001))  # pod A has no list: any peer
    assert [reason(batch, row) for row in range(4)] == [
        None, "peer-not-allowed", "peer-not-allowed", None]
    assert endpoints(out(batch, 0)) == (PEER, 5004, POD_B, 41001)
    checksums_valid(out(batch, 0))
    counted = table.counters()
    assert (counted["peer-not-allowed"], counted["translated-in"]) == (2, 2)

    table.set_allow(POD_B, ["203.0.113.0/24"])
    batch = run(table, frame(PEER, SHARED, 5004, 41001), frame(PEER_FAR, SHARED, 5004, 41001))
    assert [reason(batch, 0), reason(batch, 1)] == ["peer-not-allowed", None]
    table.set_allow(POD_B, ())  # nobody
    batch = run(table, frame(PEER_FAR, SHARED, 5004, 41001))
    assert reason(batch, 0) == "peer-not-allowed"
    table.set_allow(POD_B, None)  # anybody
    batch = run(table, frame("192.0.2.200", SHARED, 5004, 41001))
    assert reason(batch, 0) is None


def test_pods_with_one_allow_list_share_one_rule() -> None:
    table = two_pods(a=["192.0.2.0/25"], b=["192.0.2.0/25"])
    assert len(table.classifier.ruleset) == 1
    table.set_allow(POD_A, ["203.0.113.0/24"])
    assert len(table.classifier.ruleset) == 2
    batch = run(table, frame(PEER, SHARED, 1, 40001), frame(PEER, SHARED, 1, 41001),
                frame(PEER_FAR, SHARED, 1, 40001), frame(PEER_FAR, SHARED, 1, 41001))
    assert [reason(batch, row) for row in range(4)] == [
        "peer-not-allowed", None, None, "peer-not-allowed"]
    table.remove_pod(POD_B)
    table.set_allow(POD_A, None)
    assert len(table.classifier.ruleset) == 0
    assert table.classifier.store.containers == {}


def test_sessions_are_policed_as_their_pod() -> None:
    table = two_pods(a=["192.0.2.0/25"])
    table.add_session(rtp_pair())
    batch = run(table, frame(PEER, SHARED, 1, 40200), frame(PEER_FAR, SHARED, 1, 40200))
    assert endpoints(out(batch, 0))[2:] == (POD_A, 10000)
    assert reason(batch, 1) == "peer-not-allowed"


def test_a_bad_allow_list_names_the_field() -> None:
    table = two_pods()
    with pytest.raises(ValueError, match=r"pod.allow\[1\]: '10.0.0.1/8'"):
        table.set_allow(POD_A, ["10.0.0.0/8", "10.0.0.1/8"])
    assert table.pod(POD_A) is not None and table.pod(POD_A).allow is None  # type: ignore[union-attr]
    assert table.classifier is None


# ---------------------------------------------------------------- PSID port sets
def test_psid_port_sets(checksums_valid: Check) -> None:
    shared = "198.51.100.3"
    table = PortNatTable([
        PodMapping.psid(shared=shared, address=POD_A, psid=0x34, psid_length=8),
        PodMapping.psid(shared=shared, address=POD_B, psid=0x35, psid_length=8),
    ])
    runs_a = port_set(0x34, 8)
    assert runs_a[0] == (1232, 1235) and runs_a[-1] == (64720, 64723)  # RFC 7597 5.1
    firsts = [first for first, _ in runs_a]
    batch = run(table, *[frame(PEER, shared, 9, port) for port in (1232, 1235, 64722)],
                frame(PEER, shared, 9, 1236),  # PSID 0x35's first port
                frame(PEER, shared, 9, 1231),  # PSID 0x33's: no pod
                frame(PEER, shared, 9, 1000),  # below 1024: in no set
                frame(POD_A, PEER, firsts[10], 9),
                frame(POD_A, PEER, 1236, 9))  # B's port
    for row in range(3):
        assert out(batch, row)[IP].dst == POD_A
        checksums_valid(out(batch, row))
    assert endpoints(out(batch, 3))[2:] == (POD_B, 1236)
    assert [reason(batch, 4), reason(batch, 5)] == ["outside-ranges"] * 2
    assert endpoints(out(batch, 6)) == (shared, firsts[10], PEER, 9)
    assert reason(batch, 7) == "source-port-outside-range"
    # Any block of 1024 ports or more holds a port of every PSID set of this layout.
    with pytest.raises(ValueError, match=r"pod.ports: port 40144 of 198.51.100.3 is pod "
                                         r"10.20.0.2's"):
        table.add_pod(PodMapping.block(shared=shared, address="10.22.0.2", first=40000,
                                       last=41023))


def test_a_pod_from_a_naas_allocation() -> None:
    from portico.services.naas.allocator import Owner, new_allocation
    from portico.services.naas.pools import parse_pool
    from portico.services.naas.psid import PsidLayout

    pool = parse_pool("media=198.51.100.0/29", PsidLayout(8))
    allocation = new_allocation(pool, Owner(container_id="c1"), 0x34)
    pod = PodMapping.from_allocation(allocation, address=POD_A)
    assert pod.shared == "198.51.100.2" and pod.ports == port_set(0x34, 8)
    table = PortNatTable([pod])
    assert table.lookup_in("198.51.100.2", 6, 64721) == (POD_A, 64721)


# ---------------------------------------------------------------- changes
def test_adding_and_removing_pods_leaves_the_others_untouched() -> None:
    table = two_pods()
    slot_b = table.slot_of(POD_B)
    row = table.port_map[0]
    b_ports = row[B_PORTS[0] : B_PORTS[1] + 1].copy()
    table.add_pod(PodMapping.block(shared=SHARED, address="10.22.0.2", first=42000, last=42009))
    table.add_pod(PodMapping.block(shared="198.51.100.9", address="10.23.0.2", first=1024,
                                   last=2047))
    table.remove_pod(POD_A)
    assert (table.port_map[0, A_PORTS[0] : A_PORTS[1] + 1] == NO_POD).all()
    assert np.array_equal(table.port_map[0, B_PORTS[0] : B_PORTS[1] + 1], b_ports)
    assert table.slot_of(POD_B) == slot_b
    batch = run(table, frame(PEER, SHARED, 1, 40500), frame(PEER, SHARED, 1, 41500),
                frame(PEER, SHARED, 1, 42009), frame(POD_A, PEER, 40500, 1),
                frame(PEER, "198.51.100.9", 1, 2047))
    assert reason(batch, 0) == "outside-ranges"
    assert out(batch, 1)[IP].dst == POD_B
    assert out(batch, 2)[IP].dst == "10.22.0.2"
    assert reason(batch, 3) is None and out(batch, 3)[IP].src == POD_A  # no pod: untouched
    assert out(batch, 4)[IP].dst == "10.23.0.2"
    # The last pod of an address takes the address with it.
    table.remove_pod("10.23.0.2")
    assert table.shared() == [SHARED]
    batch = run(table, frame(PEER, "198.51.100.9", 1, 2047))
    assert reason(batch, 0) is None and out(batch, 0)[IP].dst == "198.51.100.9"


def test_a_pod_added_again_after_removal_gets_its_ports_back() -> None:
    table = two_pods()
    pod_a = table.remove_pod(POD_A)
    table.add_pod(pod_a)
    assert table.lookup_in(SHARED, 17, 40000) == (POD_A, 40000)


def test_the_tables_grow_past_their_first_size() -> None:
    table = PortNatTable(capacity=2)
    for k in range(40):  # 40 pods on 10 addresses: pods, hashes and port maps grow
        table.add_pod(PodMapping.block(shared=f"198.51.100.{10 + k % 10}",
                                       address=f"10.30.{k}.2", first=2000 + k * 10,
                                       last=2009 + k * 10))
    for k in range(0, 40, 2):
        table.add_session(Session(id=f"s{k}", pod=f"10.30.{k}.2", ports=(
            SessionPort(protocol=17, external_port=2000 + k * 10, pod_port=5000),)))
    batch = run(table, *[frame(PEER, f"198.51.100.{10 + k % 10}", 1, 2003 + k * 10)
                         for k in range(40)],
                frame(PEER, "198.51.100.10", 1, 2000))
    assert [out(batch, k)[IP].dst for k in range(40)] == [f"10.30.{k}.2" for k in range(40)]
    assert endpoints(out(batch, 40))[2:] == ("10.30.0.2", 5000)
    assert table.memory_bytes() >= 16 * 65536 * 4


@pytest.mark.parametrize(("make", "field"), [
    (lambda: PodMapping.block(shared=SHARED, address="10.22.0.2", first=40999, last=41000),
     r"pod.ports: port 40999 of 198.51.100.2 is pod 10.20.0.2's"),
    (lambda: PodMapping.block(shared="198.51.100.7", address=POD_A, first=1, last=2),
     r"pod.address: 10.20.0.2 already has a mapping"),
    (lambda: PodMapping.block(shared=POD_B, address="10.22.0.2", first=1, last=2),
     r"pod.shared: 10.21.0.2 is a pod's address"),
    (lambda: PodMapping.block(shared="198.51.100.7", address=SHARED, first=1, last=2),
     r"pod.address: 198.51.100.2 is a shared address"),
])
def test_a_conflicting_pod_is_refused_and_changes_nothing(make: Callable[[], PodMapping],
                                                          field: str) -> None:
    table = two_pods()
    before = (table.port_map.copy(), table.pod_hash.copy(), table.shared_hash.copy(),
              table.version)
    with pytest.raises(ValueError, match=field):
        table.add_pod(make())
    assert np.array_equal(table.port_map, before[0])
    assert np.array_equal(table.pod_hash, before[1])
    assert np.array_equal(table.shared_hash, before[2])
    assert table.version == before[3]
    assert [p.address for p in table.pods()] == [POD_A, POD_B]


@pytest.mark.parametrize(("make", "field"), [
    (lambda: PodMapping.block(shared="198.51.100.300", address=POD_A, first=1, last=2),
     "pod.shared"),
    (lambda: PodMapping.block(shared=SHARED, address="ten", first=1, last=2), "pod.address"),
    (lambda: PodMapping.block(shared=SHARED, address=SHARED, first=1, last=2),
     "pod.address: 198.51.100.2 is the shared address"),
    (lambda: PodMapping.block(shared=SHARED, address=POD_A, first=2, last=1),
     r"pod.ports\[0\]: first port 2 is above last port 1"),
    (lambda: PodMapping.block(shared=SHARED, address=POD_A, first=1, last=65536),
     r"pod.ports\[0\]"),
    (lambda: PodMapping(shared=SHARED, address=POD_A, ports=((1, 10), (5, 20))),
     "pod.ports: runs overlap at port 5"),
    (lambda: PodMapping(shared=SHARED, address=POD_A, ports=()), "pod.ports"),
    (lambda: PodMapping.block(shared=SHARED, address=POD_A, first=1, last=2, allow=["x"]),
     r"pod.allow\[0\]"),
    (lambda: PodMapping.psid(shared=SHARED, address=POD_A, psid=300, psid_length=8), "psid"),
])
def test_bad_pod_fields_are_named(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()


def test_removing_what_is_not_there_names_it() -> None:
    table = two_pods()
    with pytest.raises(ValueError, match="pod.address: no pod 10.99.0.1"):
        table.remove_pod("10.99.0.1")
    with pytest.raises(ValueError, match="session.pod: no pod 10.99.0.1"):
        table.add_session(Session(id="x", pod="10.99.0.1", ports=(
            SessionPort(protocol=17, external_port=1, pod_port=1),)))


# ---------------------------------------------------------------- against a model
SHAREDS = ("198.51.100.2", "198.51.100.3")
PODS = ("10.20.0.2", "10.20.0.3", "10.20.0.4", "10.20.0.5")
PEERS = ("192.0.2.1", "192.0.2.130", "203.0.113.9")
PORT_LO, PORT_HI = 1000, 1063  # a small universe, so that ranges collide often
PREFIXES = ("192.0.2.0/25", "192.0.2.128/25", "203.0.113.0/24", "198.51.100.0/24")


@dataclass
class Model:
    """The table's rules, written the plain way (the oracle)."""

    pods: dict[str, tuple[str, set[int], tuple[str, ...] | None]] = field(default_factory=dict)
    sessions: dict[str, tuple[str, list[tuple[int, int, int]]]] = field(default_factory=dict)

    def owner(self, shared: str, port: int) -> str | None:
        for address, (where, ports, _) in self.pods.items():
            if where == shared and port in ports:
                return address
        return None

    def add_pod(self, shared: str, address: str, ports: set[int],
                allow: tuple[str, ...] | None) -> bool:
        if (address in self.pods or address in {s for s, _, _ in self.pods.values()}
                or shared in self.pods or any(self.owner(shared, p) for p in ports)):
            return False
        self.pods[address] = (shared, ports, allow)
        return True

    def remove_pod(self, address: str) -> bool:
        if address not in self.pods:
            return False
        for session_id in [s for s, (pod, _) in self.sessions.items() if pod == address]:
            del self.sessions[session_id]
        del self.pods[address]
        return True

    def session_in(self, shared: str, proto: int, port: int) -> tuple[str, int] | None:
        for pod, ports in self.sessions.values():
            for p, external, pod_port in ports:
                if self.pods[pod][0] == shared and (p, external) == (proto, port):
                    return pod, pod_port
        return None

    def session_out(self, pod: str, proto: int, port: int) -> int | None:
        for owner, ports in self.sessions.values():
            for p, external, pod_port in ports:
                if owner == pod and (p, pod_port) == (proto, port):
                    return external
        return None

    def add_session(self, session_id: str, pod: str, ports: list[tuple[int, int, int]]) -> bool:
        if session_id in self.sessions or pod not in self.pods:
            return False
        shared, owned, _ = self.pods[pod]
        ins = [(p, e) for p, e, _ in ports]
        outs = [(p, q) for p, _, q in ports]
        if (len(set(ins)) < len(ins) or len(set(outs)) < len(outs)
                or any(e not in owned for _, e, _ in ports)
                or any(self.session_in(shared, p, e) for p, e in ins)
                or any(self.session_out(pod, p, q) is not None for p, q in outs)):
            return False
        self.sessions[session_id] = (pod, ports)
        return True

    def fate(self, proto: int, src: str, sport: int, dst: str, dport: int
             ) -> tuple[str | None, tuple[str, int, str, int]]:
        """(drop reason or None, the endpoints after translation)."""
        before = (src, sport, dst, dport)
        shareds = {s for s, _, _ in self.pods.values()}
        if dst not in shareds and src not in self.pods:
            return None, before
        if proto not in (6, 17):
            return "not-tcp-udp", before
        if src in self.pods:
            external = self.session_out(src, proto, sport)
            if external is None:
                if sport not in self.pods[src][1]:
                    return "source-port-outside-range", before
                external = sport
            src, sport = self.pods[src][0], external
        if dst in shareds:
            found = self.session_in(dst, proto, dport)
            if found is None:
                owner = self.owner(dst, dport)
                if owner is None:
                    return "outside-ranges", before
                found = (owner, dport)
            dst, dport = found
            allow = self.pods[dst][2]
            if allow is not None and not any(
                    ipaddress.IPv4Address(src) in ipaddress.IPv4Network(p) for p in allow):
                return "peer-not-allowed", (src, sport, dst, dport)
        return None, (src, sport, dst, dport)


ports_in_universe = st.integers(PORT_LO, PORT_HI)
allow_lists = st.one_of(st.none(), st.lists(st.sampled_from(PREFIXES), max_size=2,
                                            unique=True).map(tuple))
adds = st.one_of(
    st.tuples(st.just("block"), st.sampled_from(SHAREDS), st.sampled_from(PODS),
              ports_in_universe, st.integers(0, 12), allow_lists),
    st.tuples(st.just("psid"), st.sampled_from(SHAREDS), st.sampled_from(PODS),
              st.integers(0, 15), allow_lists),
)
# A session names its external ports by index into its pod's ports (most land there; a
# multiple of 5 is taken as a port of the universe instead, usually someone else's).
sessions = st.tuples(st.just("session"), st.sampled_from(("s1", "s2", "s3")),
                     st.sampled_from(PODS),
                     st.lists(st.tuples(st.sampled_from((6, 17)), st.integers(0, 200),
                                        st.integers(1, 65535)), min_size=1, max_size=3))
operations = st.one_of(
    adds, sessions, sessions, sessions,
    st.tuples(st.just("remove"), st.sampled_from(PODS)),
    st.tuples(st.just("end"), st.sampled_from(("s1", "s2", "s3"))),
    st.tuples(st.just("allow"), st.sampled_from(PODS), allow_lists),
)
packets = st.tuples(st.sampled_from((6, 17, 1)),
                    st.sampled_from(PODS + PEERS + SHAREDS), st.integers(990, 1070),
                    st.sampled_from(SHAREDS + PEERS + PODS), st.integers(990, 1070))
PSID_LENGTH, PSID_OFFSET = 4, 10  # 16 sets of 64 single ports spread over 1024..65535


def apply(table: PortNatTable, model: Model, op: tuple) -> None:  # type: ignore[type-arg]
    kind = op[0]
    if kind in ("block", "psid"):
        if kind == "block":
            _, shared, address, first, width, allow = op
            pod = PodMapping.block(shared=shared, address=address, first=first,
                                   last=min(first + width, 65535), allow=allow)
        else:
            _, shared, address, psid, allow = op
            pod = PodMapping.psid(shared=shared, address=address, psid=psid,
                                  psid_length=PSID_LENGTH, offset=PSID_OFFSET, allow=allow)
        held = {p for first, last in pod.ports for p in range(first, last + 1)}
        accepted = model.add_pod(shared, address, held, pod.allow)
        try:
            table.add_pod(pod)
            assert accepted, f"the table took {pod}"
        except ValueError:
            assert not accepted, f"the table refused {pod}"
    elif kind == "remove":
        accepted = model.remove_pod(op[1])
        try:
            table.remove_pod(op[1])
            assert accepted
        except ValueError:
            assert not accepted
    elif kind == "session":
        _, session_id, pod_address, chosen = op
        if pod_address not in model.pods and model.pods and chosen[0][2] % 4:
            pod_address = sorted(model.pods)[chosen[0][1] % len(model.pods)]  # mostly a pod
        owned = sorted(model.pods[pod_address][1]) if pod_address in model.pods else []
        ports = [(p, owned[k % len(owned)] if owned and k % 5 else PORT_LO + k % 64, q)
                 for p, k, q in chosen]
        accepted = model.add_session(session_id, pod_address, ports)
        try:
            table.add_session(Session(id=session_id, pod=pod_address, ports=tuple(
                SessionPort(protocol=p, external_port=e, pod_port=q) for p, e, q in ports)))
            assert accepted
        except ValueError:
            assert not accepted
    elif kind == "end":
        accepted = op[1] in model.sessions
        if accepted:
            del model.sessions[op[1]]
        try:
            table.remove_session(op[1])
            assert accepted
        except ValueError:
            assert not accepted
    else:
        _, address, allow = op
        if address in model.pods:
            shared, held_ports, _ = model.pods[address]
            model.pods[address] = (shared, held_ports, allow)
            table.set_allow(address, allow)
        else:
            with pytest.raises(ValueError, match="pod.address"):
                table.set_allow(address, allow)


def built(proto: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    if proto == 1:
        return bytes(ether() / IP(src=src, dst=dst) / ICMP())
    return frame(src, dst, sport, dport, "udp" if proto == 17 else "tcp")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(adds, min_size=1, max_size=4), st.lists(operations, max_size=12),
       st.lists(packets, min_size=1, max_size=24))
def test_the_stage_agrees_with_a_plain_model(first: list, ops: list,  # type: ignore[type-arg]
                                             sent: list) -> None:  # type: ignore[type-arg]
    table = PortNatTable(capacity=2)
    model = Model()
    for op in first + ops:
        apply(table, model, op)
    # Aim a share of the packets at what is mapped: owned ports, both ends of sessions.
    owned = sorted((s, p) for s, ports, _ in model.pods.values() for p in ports)
    session_ends = sorted((pod, model.pods[pod][0], p, e, q)
                          for pod, ports in model.sessions.values() for p, e, q in ports)
    aimed = []
    for proto, src, sport, dst, dport in sent:
        pick = (sport + dport) % 6
        if owned and pick < 2:
            dst, dport = owned[(sport * 7 + dport) % len(owned)]
        elif session_ends and pick == 2:
            src, _, proto, _, sport = session_ends[dport % len(session_ends)]
        elif session_ends and pick == 3:
            _, dst, proto, dport, _ = session_ends[sport % len(session_ends)]
        aimed.append((proto, src, sport, dst, dport))
    batch = run(table, *[built(*p) for p in aimed])
    for row, (proto, src, sport, dst, dport) in enumerate(aimed):
        want_reason, want = model.fate(proto, src, sport, dst, dport)
        assert reason(batch, row) == want_reason, (row, aimed[row])
        if proto == 1:
            continue
        pkt = out(batch, row)
        assert endpoints(pkt) == want, (row, aimed[row])
        if want_reason is None:
            rebuilt = Ether(bytes(pkt))
            del rebuilt[IP].chksum
            layer = UDP if proto == 17 else TCP
            del rebuilt[layer].chksum
            rebuilt = Ether(bytes(rebuilt))
            assert (pkt[IP].chksum, pkt[layer].chksum) == (rebuilt[IP].chksum,
                                                           rebuilt[layer].chksum)
    # The scalar lookups say the same as the model.
    for shared in SHAREDS:
        for port in range(PORT_LO, PORT_HI + 1, 7):
            for proto in (6, 17):
                found = model.session_in(shared, proto, port)
                owner = model.owner(shared, port)
                want_in = found or ((owner, port) if owner else None)
                assert table.lookup_in(shared, proto, port) == want_in
