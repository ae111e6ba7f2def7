"""TAP ports: the device lives with the port, and the kernel's stack is on its other side.

Each test makes its TAP device inside a fresh lab namespace (so the host's
interfaces and routes are never touched), puts an address on it, and talks to
that namespace's own IP stack through it: the kernel answering ARP and ping
proves it received what the port wrote; the kernel's ARP requests and
datagrams coming out prove the port reads what the kernel sends. Frames are
built and decoded with Scapy. Loops are bounded; nothing is timed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from portico.batch import Batch
from portico.io.tap import TapPort
from portico.lab import Lab, LabError

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or not os.path.exists("/dev/net/tun"),
    reason="TAP tests need root, iproute2 and /dev/net/tun")

TAP_MAC = "02:00:00:00:00:aa"
PEER_MAC = "02:00:00:00:00:bb"  # the host the tests pretend to be, behind the TAP
TAP_IP, PEER_IP = "10.9.0.1", "10.9.0.2"
DEADLINE = 10.0


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab({"name": "tap", "namespaces": ["ns"]}, prefix=f"pt{secrets.token_hex(3)}") as built:
        yield built


@pytest.fixture
def tap(lab: Lab) -> Iterator[TapPort]:
    with lab.inside("ns"):
        port = TapPort("tp0", port=4, mtu=1400, mac=TAP_MAC)
    try:
        lab.run("ns", "sysctl", "-qw", "net/ipv6/conf/tp0/disable_ipv6=1")
        lab.run("ns", "ip", "address", "add", f"{TAP_IP}/24", "dev", "tp0")
        yield port
    finally:
        port.close()


def collect(port: TapPort, want: int, *, batch: Batch | None = None,
            layer: type[Packet] | None = None) -> list[bytes]:
    """Frames from the TAP until ``want`` of them (with ``layer``, if given) came, or DEADLINE."""
    batch = batch or Batch(32)
    frames: list[bytes] = []
    deadline = time.monotonic() + DEADLINE
    for _ in range(10_000):
        if len(frames) >= want or time.monotonic() > deadline:
            break
        rows = port.receive(batch, timeout=0.2)
        assert all(int(batch.meta["port"][r]) == 4 for r in range(rows))
        frames += [f for f in batch.packets() if layer is None or layer in Ether(f)]
    return frames


def checksums_hold(frame: bytes) -> bool:
    """Scapy recomputes every checksum the frame carries; equal bytes mean they were right."""
    packet = Ether(frame)
    for layer in (IP, ICMP, UDP):
        if layer in packet:
            del packet[layer].chksum
    return bytes(Ether(bytes(packet))) == frame


def test_the_device_lives_as_long_as_the_port(lab: Lab) -> None:
    with lab.inside("ns"):
        port = TapPort("tp0", mtu=1400, mac=TAP_MAC)
    shown = lab.run("ns", "ip", "-d", "link", "show", "tp0").stdout
    assert "mtu 1400" in shown and "tun type tap" in shown and TAP_MAC in shown
    assert ",UP" in shown and port.link_up and port.mtu == 1400
    port.close()
    with pytest.raises(LabError, match="does not exist"):
        lab.run("ns", "ip", "link", "show", "tp0")


def test_the_kernel_picks_a_name_when_none_is_given(lab: Lab) -> None:
    with lab.inside("ns"):
        port = TapPort()
    try:
        assert port.name.startswith("tap")
        lab.run("ns", "ip", "link", "show", port.name)
    finally:
        port.close()


def test_the_kernel_answers_arp_and_ping_written_to_the_tap(tap: TapPort) -> None:
    request = bytes(Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff")
                    / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=TAP_IP))
    ping = bytes(Ether(src=PEER_MAC, dst=TAP_MAC) / IP(src=PEER_IP, dst=TAP_IP)
                 / ICMP(id=0x4242, seq=7) / b"through the tap")
    assert tap.send(Batch.from_packets([request, ping])) == 2
    assert tap.counters.tx_packets == 2 and tap.counters.tx_bytes == len(request) + len(ping)
    frames = collect(tap, 2, layer=None)
    for _ in range(3):  # the answers, plus whatever else the kernel says meanwhile
        answers = [Ether(f) for f in frames]
        if any(ARP in p for p in answers) and any(ICMP in p for p in answers):
            break
        frames += collect(tap, 1)
    arp = [p for p in answers if ARP in p and p[ARP].op == 2]
    assert arp and arp[0][ARP].hwsrc == TAP_MAC and arp[0][ARP].psrc == TAP_IP
    replies = [p for p in answers if ICMP in p and p[ICMP].type == 0]
    assert replies, [p.summary() for p in answers]
    reply = replies[0]
    assert (reply[IP].src, reply[IP].dst) == (TAP_IP, PEER_IP)
    assert (reply[ICMP].id, reply[ICMP].seq) == (0x4242, 7)
    assert bytes(reply[ICMP].payload) == b"through the tap"
    assert checksums_hold(bytes(reply))


def test_what_the_kernel_sends_out_of_the_tap_is_received(lab: Lab, tap: TapPort) -> None:
    with lab.inside("ns"):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"first", (PEER_IP, 9999))  # the kernel must ask who PEER_IP is
        frames = collect(tap, 1, layer=ARP)
        who = [Ether(f) for f in frames]
        assert who and who[0][ARP].op == 1 and who[0][ARP].pdst == PEER_IP
        assert who[0][ARP].hwsrc == TAP_MAC
        answer = bytes(Ether(src=PEER_MAC, dst=TAP_MAC)
                       / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst=TAP_MAC, pdst=TAP_IP))
        assert tap.send(Batch.from_packets([answer])) == 1
        datagrams = [Ether(f) for f in collect(tap, 1, layer=UDP)]
        assert datagrams, "the queued datagram did not follow the ARP answer"
        assert datagrams[0][Ether].dst == PEER_MAC
        assert datagrams[0][UDP].dport == 9999 and bytes(datagrams[0][UDP].payload) == b"first"
        assert checksums_hold(bytes(datagrams[0]))
    finally:
        sender.close()


def test_small_batches_take_every_frame(lab: Lab, tap: TapPort) -> None:
    lab.run("ns", "ip", "neigh", "add", PEER_IP, "lladdr", PEER_MAC, "dev", "tp0")
    with lab.inside("ns"):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(40):
            sender.sendto(f"datagram {i}".encode(), (PEER_IP, 9999))
        frames = collect(tap, 40, batch=Batch(4), layer=UDP)
        payloads = [bytes(Ether(f)[UDP].payload) for f in frames if UDP in Ether(f)]
        assert payloads == [f"datagram {i}".encode() for i in range(40)]
        assert tap.counters.rx_packets >= 40
    finally:
        sender.close()


def test_frames_that_cannot_go_are_counted_by_reason(tap: TapPort) -> None:
    good = bytes(Ether(src=PEER_MAC, dst=TAP_MAC) / IP(src=PEER_IP, dst=TAP_IP) / UDP()
                 / bytes(100))
    too_big = bytes(Ether(src=PEER_MAC, dst=TAP_MAC) / IP(src=PEER_IP, dst=TAP_IP) / UDP()
                    / bytes(1400))
    assert len(too_big) > tap.mtu + 14
    assert tap.send(Batch.from_packets([good, too_big, bytes(8)])) == 1
    assert tap.counters.tx_drops == {"oversized": 1, "runt": 1}
    assert tap.counters.tx_packets == 1
