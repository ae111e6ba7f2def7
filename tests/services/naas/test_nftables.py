"""The nftables back-end of NaaS: the kernel translating for two pods behind one shared address.

The live tests build their own namespaces (``portico.lab.Lab``, names with a
random prefix, removed at the end whatever happens): ``outside`` (a peer,
192.0.2.1 and 192.0.2.200), ``router`` (forwarding, the back-end's table
programmed into it) and two pods, ``poda`` (10.20.0.2, ports 40000-40999) and
``podb`` (10.21.0.2, ports 41000-41999, reachable from 192.0.2.0/25 only),
sharing 198.51.100.2. Real sockets talk across it; what is dropped is read
from the table's named counters. Every wait is bounded (socket timeouts, a
bounded poll of the counters); nothing is timed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from portico.datapath.portnat import PodMapping, PortNatTable, Session, SessionPort
from portico.lab import Lab
from portico.services.naas.nftables import (
    COUNTERS,
    NftablesBackend,
    NftablesError,
    replacing,
    ruleset,
    unavailable,
)

SHARED = "198.51.100.2"
POD_A, POD_B = "10.20.0.2", "10.21.0.2"
PEER, PEER_REFUSED = "192.0.2.1", "192.0.2.200"
TIMEOUT = 10.0  # s a socket waits for what should arrive

live = pytest.mark.skipif(unavailable() is not None or shutil.which("ip") is None
                          or shutil.which("ethtool") is None,
                          reason=f"needs root, iproute2, ethtool and nft ({unavailable()})")

TOPOLOGY = {
    "name": "naas",
    "namespaces": {"outside": {}, "router": {"forwarding": True}, "poda": {}, "podb": {}},
    "links": [
        {"name": "o0", "namespace": "outside", "addresses": [f"{PEER}/24", f"{PEER_REFUSED}/24"],
         "ipv6": False,
         "peer": {"name": "r0", "namespace": "router", "addresses": ["192.0.2.254/24"],
                  "ipv6": False}},
        {"name": "a0", "namespace": "poda", "addresses": [f"{POD_A}/24"], "ipv6": False,
         "peer": {"name": "ra", "namespace": "router", "addresses": ["10.20.0.1/24"],
                  "ipv6": False}},
        {"name": "b0", "namespace": "podb", "addresses": [f"{POD_B}/24"], "ipv6": False,
         "peer": {"name": "rb", "namespace": "router", "addresses": ["10.21.0.1/24"],
                  "ipv6": False}},
    ],
    "routes": [
        {"namespace": "outside", "to": f"{SHARED}/32", "via": "192.0.2.254"},
        {"namespace": "poda", "to": "default", "via": "10.20.0.1"},
        {"namespace": "podb", "to": "default", "via": "10.21.0.1"},
    ],
}


def naas_table() -> PortNatTable:
    table = PortNatTable([
        PodMapping.block(shared=SHARED, address=POD_A, first=40000, last=40999),
        PodMapping.block(shared=SHARED, address=POD_B, first=41000, last=41999,
                         allow=["192.0.2.0/25"]),
    ])
    table.add_session(Session(id="call-1", pod=POD_A, ports=(
        SessionPort(protocol=17, external_port=40050, pod_port=10000),
        SessionPort(protocol=17, external_port=40051, pod_port=10001))))
    return table


# ---------------------------------------------------------------- the text (no kernel)
def test_the_ruleset_stays_ten_rules_however_many_pods() -> None:
    table = PortNatTable([PodMapping.block(shared=f"198.51.100.{2 + k // 60}",
                                           address=f"10.{30 + k // 200}.{k % 200}.2",
                                           first=1024 + (k % 60) * 1000,
                                           last=2023 + (k % 60) * 1000) for k in range(600)])
    text = ruleset(table)
    rules = [line for line in text.splitlines()
             if any(verb in line for verb in (" drop", " dnat ", " snat "))]
    assert len(rules) == 10
    assert "198.51.100.2 . 1024-2023 : 10.30.0.2" in text
    assert "10.30.0.2 : 198.51.100.2 . 1024-2023" in text  # snat to shared:lo-hi
    assert text.count("counter name ") == 5 and all(f"counter {c} " in text for c in COUNTERS)


def test_psid_pods_keep_their_port_and_sessions_are_elements() -> None:
    table = naas_table()
    table.add_pod(PodMapping.psid(shared="198.51.100.3", address="10.22.0.2", psid=0x34,
                                  psid_length=8))
    text = ruleset(table)
    assert "198.51.100.3 . 1232-1235 : 10.22.0.2" in text  # one element per run
    assert "198.51.100.3 . 64720-64723 : 10.22.0.2" in text
    assert "10.22.0.2 : 198.51.100.3" in text  # snat_address: the port is kept
    assert "198.51.100.2 . udp . 40050 : 10.20.0.2 . 10000" in text
    assert "10.20.0.2 . udp . 10000 : 198.51.100.2 . 40050" in text
    assert "10.21.0.2 . 192.0.2.0/25" in text


def test_an_empty_table_has_no_empty_element_lists() -> None:
    text = replacing(ruleset(PortNatTable()))
    assert "elements" not in text
    assert text.startswith("table ip portico_naas {\n}\ndelete table ip portico_naas\n")


# ---------------------------------------------------------------- the kernel
@dataclass
class NaasLab:
    lab: Lab
    table: PortNatTable
    kernel: NftablesBackend

    def socket(self, namespace: str, kind: int, bind: tuple[str, int]) -> socket.socket:
        with self.lab.inside(namespace):
            made = socket.socket(socket.AF_INET, kind)
        made.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        made.settimeout(TIMEOUT)
        made.bind(bind)
        return made

    def counter_rises(self, name: str, above: int) -> int:
        """The counter once it is above ``above`` (polled, at most ~10 s), or its value."""
        value = self.kernel.counters()[name]
        for _ in range(200):
            if value > above:
                break
            time.sleep(0.05)
            value = self.kernel.counters()[name]
        return value


def namespaces_named(tag: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True, timeout=30).stdout.splitlines()
    return [line.split()[0] for line in listed if line.startswith(tag)]


@pytest.fixture(scope="module")
def naas() -> Iterator[NaasLab]:
    if unavailable() is not None or os.geteuid() != 0:
        pytest.skip(unavailable() or "needs root")
    tag = f"pn{secrets.token_hex(3)}"
    try:
        with Lab(TOPOLOGY, prefix=tag) as lab:
            table = naas_table()
            kernel = NftablesBackend(namespace=lab.namespace("router"))
            kernel.apply(table)
            yield NaasLab(lab, table, kernel)
    finally:
        leftover = namespaces_named(tag)
        for name in leftover:  # Lab removes them; this only guards against its failure
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                           check=False)
        assert leftover == []


@live
@pytest.mark.parametrize(("port", "pod", "namespace"), [
    (40005, POD_A, "poda"), (40999, POD_A, "poda"), (41000, POD_B, "podb"),
    (41777, POD_B, "podb")])
def test_udp_to_each_range_reaches_the_right_pod(naas: NaasLab, port: int, pod: str,
                                                 namespace: str) -> None:
    listener = naas.socket(namespace, socket.SOCK_DGRAM, (pod, port))
    sender = naas.socket("outside", socket.SOCK_DGRAM, (PEER, 0))
    try:
        sender.sendto(b"to %d" % port, (SHARED, port))
        data, source = listener.recvfrom(100)
        assert data == b"to %d" % port
        assert source == (PEER, sender.getsockname()[1])
        listener.sendto(b"back", source)  # the reply leaves from the shared address
        assert sender.recvfrom(100) == (b"back", (SHARED, port))
    finally:
        listener.close()
        sender.close()


@live
def test_tcp_to_a_pods_range_connects_to_that_pod(naas: NaasLab) -> None:
    server = naas.socket("podb", socket.SOCK_STREAM, (POD_B, 41005))
    server.listen(1)
    client = naas.socket("outside", socket.SOCK_STREAM, (PEER, 0))
    try:
        client.connect((SHARED, 41005))
        accepted, peer = server.accept()
        with accepted:
            assert peer == (PEER, client.getsockname()[1])
            client.sendall(b"hello pod b")
            assert accepted.recv(100) == b"hello pod b"
            accepted.sendall(b"hello peer")
            assert client.recv(100) == b"hello peer"
    finally:
        client.close()
        server.close()


@live
def test_a_port_outside_every_range_is_dropped_and_counted(naas: NaasLab) -> None:
    sender = naas.socket("outside", socket.SOCK_DGRAM, (PEER, 0))
    try:
        before = naas.kernel.counters()["outside_ranges"]
        for port in (39999, 42000, 50000):
            sender.sendto(b"nobody's", (SHARED, port))
        assert naas.counter_rises("outside_ranges", before + 2) == before + 3
    finally:
        sender.close()


@live
@pytest.mark.parametrize(("namespace", "pod", "port"), [("poda", POD_A, 40007),
                                                        ("podb", POD_B, 41999)])
def test_outbound_udp_leaves_from_the_shared_address_inside_the_range(
        naas: NaasLab, namespace: str, pod: str, port: int) -> None:
    receiver = naas.socket("outside", socket.SOCK_DGRAM, (PEER, 0))
    sender = naas.socket(namespace, socket.SOCK_DGRAM, (pod, port))
    try:
        sender.sendto(b"from the pod", receiver.getsockname())
        data, source = receiver.recvfrom(100)
        assert data == b"from the pod"
        assert source == (SHARED, port)
    finally:
        receiver.close()
        sender.close()


@live
def test_outbound_tcp_keeps_its_port_in_the_block(naas: NaasLab) -> None:
    server = naas.socket("outside", socket.SOCK_STREAM, (PEER, 0))
    server.listen(1)
    client = naas.socket("poda", socket.SOCK_STREAM, (POD_A, 40444))
    try:
        client.connect(server.getsockname())
        accepted, peer = server.accept()
        accepted.close()
        assert peer == (SHARED, 40444)
    finally:
        client.close()
        server.close()


@live
def test_a_pod_sending_from_outside_its_range_is_dropped_and_counted(naas: NaasLab) -> None:
    receiver = naas.socket("outside", socket.SOCK_DGRAM, (PEER, 0))
    stray = naas.socket("poda", socket.SOCK_DGRAM, (POD_A, 41500))  # pod B's port
    try:
        before = naas.kernel.counters()["source_port_outside_range"]
        stray.sendto(b"stray", receiver.getsockname())
        assert naas.counter_rises("source_port_outside_range", before) == before + 1
    finally:
        receiver.close()
        stray.close()


@live
def test_a_session_mapping_overrides_the_range_both_ways(naas: NaasLab) -> None:
    media = naas.socket("poda", socket.SOCK_DGRAM, (POD_A, 10000))
    peer = naas.socket("outside", socket.SOCK_DGRAM, (PEER, 0))
    try:
        peer.sendto(b"rtp in", (SHARED, 40050))
        data, source = media.recvfrom(100)
        assert (data, source) == (b"rtp in", peer.getsockname())
        media.sendto(b"rtp out", peer.getsockname())
        assert peer.recvfrom(100) == (b"rtp out", (SHARED, 40050))
    finally:
        media.close()
        peer.close()


@live
def test_a_session_added_and_removed_alone(naas: NaasLab) -> None:
    session = Session(id="call-2", pod=POD_A, ports=(
        SessionPort(protocol=17, external_port=40060, pod_port=10010),))
    naas.table.add_session(session)
    naas.kernel.add_session(naas.table, session)
    media = naas.socket("poda", socket.SOCK_DGRAM, (POD_A, 10010))
    ranged = naas.socket("poda", socket.SOCK_DGRAM, (POD_A, 40060))
    first = naas.socket("outside", socket.SOCK_DGRAM, (PEER, 0))
    second = naas.socket("outside", socket.SOCK_DGRAM, (PEER, 0))  # a new flow after
    try:
        first.sendto(b"in the call", (SHARED, 40060))
        assert media.recvfrom(100)[0] == b"in the call"
        naas.kernel.remove_session(naas.table, session)
        naas.table.remove_session("call-2")
        second.sendto(b"after the call", (SHARED, 40060))
        assert ranged.recvfrom(100) == (b"after the call", second.getsockname())
    finally:
        for made in (media, ranged, first, second):
            made.close()


@live
def test_policing_refuses_a_peer_outside_the_allow_list(naas: NaasLab) -> None:
    listener = naas.socket("podb", socket.SOCK_DGRAM, (POD_B, 41006))
    allowed = naas.socket("outside", socket.SOCK_DGRAM, (PEER, 0))
    refused = naas.socket("outside", socket.SOCK_DGRAM, (PEER_REFUSED, 0))
    try:
        before = naas.kernel.counters()["peer_not_allowed"]
        refused.sendto(b"not you", (SHARED, 41006))
        assert naas.counter_rises("peer_not_allowed", before) == before + 1
        allowed.sendto(b"you", (SHARED, 41006))
        assert listener.recvfrom(100) == (b"you", allowed.getsockname())  # not "not you"
    finally:
        for made in (listener, allowed, refused):
            made.close()


@live
def test_applying_again_replaces_the_table_and_remove_deletes_it(naas: NaasLab) -> None:
    kernel = naas.kernel
    kernel.apply(naas.table)  # the same again: one transaction, no error
    assert kernel.installed()
    listed = kernel.listing()
    assert listed.count("chain ") == 4
    bad = NftablesBackend(namespace=naas.lab.namespace("router"), nft="false")
    with pytest.raises(NftablesError):
        bad.apply(naas.table)
    assert kernel.installed()  # a failed apply leaves the table as it was
    scratch = NftablesBackend(namespace=naas.lab.namespace("outside"))
    scratch.apply(PortNatTable())
    assert scratch.installed()
    assert scratch.remove() is True
    assert scratch.remove() is False
    assert not scratch.installed()
