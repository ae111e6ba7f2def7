"""ICMP errors across the NAT (RFC 5508 section 4, RFC 7857 section 2.9), through the gateway.

An error about a translated flow must reach the other side with its own
address *and* the packet it quotes translated, every checksum still right
(Scapy recomputes them), and only when the flow it quotes is one the firewall
tracks (conntrack's RELATED).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

from portico import drops
from portico.batch import Batch
from portico.control.model import load_config
from portico.datapath.gateway import Gateway

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"
HOST_MAC, ROUTER_MAC = "02:00:00:00:0a:05", "02:00:00:00:0a:01"
UPSTREAM, UPLINK_MAC = "02:00:00:00:00:fe", "02:00:00:00:00:01"
PUBLIC = "198.51.100.10"


def inside(packet: Packet) -> tuple[int, bytes]:
    return 1, bytes(Ether(src=HOST_MAC, dst=ROUTER_MAC) / Dot1Q(vlan=10) / packet)


def outside(packet: Packet) -> tuple[int, bytes]:
    return 0, bytes(Ether(src=UPSTREAM, dst=UPLINK_MAC) / packet)


def run(gw: Gateway, frames: list[tuple[int, bytes]], now: int) -> list[tuple[int, str, bytes]]:
    batch = Batch.from_packets([f for _, f in frames])
    batch.meta["port"][: len(frames)] = [p for p, _ in frames]
    batch.meta["timestamp"][: len(frames)] = now
    gw.process(batch, now)
    m = batch.meta
    return [(int(m["out_port"][i]), drops.name(m["drop"][i]) if m["drop"][i] else "",
             batch.packet(i)) for i in range(batch.count)]


@pytest.fixture(params=[True, False], ids=["cached", "uncached"])
def gw(request: pytest.FixtureRequest) -> Gateway:
    gateway = Gateway(load_config(CONFIG), cache=request.param, seed=1)
    announce = Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=10) / ARP(
        op=1, hwsrc=HOST_MAC, psrc="10.0.0.5", pdst="10.0.0.1")
    assert run(gateway, [(1, bytes(announce))], 10**9)[0][0] == 1  # answered
    return gateway


def test_an_error_from_outside_reaches_the_host_with_its_quote_translated(
        gw: Gateway, checksums_valid: Callable[[Packet], None]) -> None:
    sent = IP(src="10.0.0.5", dst="8.8.8.8") / UDP(sport=5000, dport=53) / b"query"
    [(port, why, _)] = run(gw, [inside(sent)], 2 * 10**9)
    assert (port, why) == (0, "")
    as_seen = IP(src=PUBLIC, dst="8.8.8.8") / UDP(sport=5000, dport=53) / b"query"
    error = IP(src="192.0.2.1", dst=PUBLIC) / ICMP(type=3, code=3) / bytes(as_seen)
    [(port, why, got)] = run(gw, [outside(error)], 3 * 10**9)
    assert (port, why) == (1, "")
    out = Ether(got)
    assert out[Dot1Q].vlan == 10 and out.dst == HOST_MAC
    assert out[IP].dst == "10.0.0.5" and (out[ICMP].type, out[ICMP].code) == (3, 3)
    assert (out[IPerror].src, out[IPerror].dst) == ("10.0.0.5", "8.8.8.8")
    assert (out[UDPerror].sport, out[UDPerror].dport) == (5000, 53)
    checksums_valid(out)
    rebuilt = out.copy()
    del rebuilt[IPerror].chksum
    del rebuilt[UDPerror].chksum
    assert Ether(bytes(rebuilt))[IPerror].chksum == out[IPerror].chksum
    assert Ether(bytes(rebuilt))[UDPerror].chksum == out[UDPerror].chksum


def test_an_error_from_the_host_leaves_with_the_public_endpoint(
        gw: Gateway, checksums_valid: Callable[[Packet], None]) -> None:
    syn = IP(src="100.64.0.50", dst=PUBLIC) / TCP(sport=40000, dport=8080, flags="S")
    [(port, why, _)] = run(gw, [outside(syn)], 2 * 10**9)
    assert (port, why) == (1, "")  # forwarded to 10.0.0.5:80
    quoted = IP(src="100.64.0.50", dst="10.0.0.5") / TCP(sport=40000, dport=80, flags="S")
    error = IP(src="10.0.0.5", dst="100.64.0.50") / ICMP(type=3, code=3) / bytes(quoted)[:28]
    [(port, why, got)] = run(gw, [inside(error)], 3 * 10**9)
    assert (port, why) == (0, "")
    out = Ether(got)
    assert (out.src, out.dst) == (UPLINK_MAC, UPSTREAM)
    assert (out[IP].src, out[IP].dst) == (PUBLIC, "100.64.0.50")
    assert (out[IPerror].src, out[IPerror].dst) == ("100.64.0.50", PUBLIC)
    assert (out[TCPerror].sport, out[TCPerror].dport) == (40000, 8080)
    checksums_valid(out)


def test_an_echo_error_maps_the_identifier(gw: Gateway) -> None:
    ping = IP(src="10.0.0.5", dst="8.8.8.8", ttl=30) / ICMP(type=8, id=777, seq=1)
    [(port, _, sent)] = run(gw, [inside(ping)], 2 * 10**9)
    assert port == 0
    public_id = Ether(sent)[ICMP].id
    as_seen = IP(src=PUBLIC, dst="8.8.8.8", ttl=1) / ICMP(type=8, id=public_id, seq=1)
    error = IP(src="192.0.2.9", dst=PUBLIC) / ICMP(type=11, code=0) / bytes(as_seen)
    [(port, why, got)] = run(gw, [outside(error)], 3 * 10**9)
    assert (port, why) == (1, "")
    assert Ether(got)[IPerror].src == "10.0.0.5"
    assert bytes(Ether(got)[IPerror].payload)[4:6] == (777).to_bytes(2, "big")


def test_errors_about_unknown_flows_are_refused(gw: Gateway) -> None:
    stranger = IP(src=PUBLIC, dst="8.8.8.8") / UDP(sport=6000, dport=53)
    error = IP(src="192.0.2.1", dst=PUBLIC) / ICMP(type=3, code=3) / bytes(stranger)
    [(port, why, _)] = run(gw, [outside(error)], 2 * 10**9)
    assert (port, why) == (-1, "no-binding")
    # A binding exists (the DNAT), but no tracked connection: not related, refused.
    probe = IP(src=PUBLIC, dst="8.8.8.8") / TCP(sport=8080, dport=9999)
    error = IP(src="192.0.2.1", dst=PUBLIC) / ICMP(type=3, code=1) / bytes(probe)[:28]
    [(port, why, _)] = run(gw, [outside(error)], 3 * 10**9)
    assert (port, why) == (-1, "denied")
