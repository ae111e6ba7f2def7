"""AF_PACKET ports on real veth pairs: frames in and out, byte for byte, and link changes.

Each test gets a lab (``portico.lab``, removed whatever happens) of two
namespaces, ``gw`` (where the port under test lives) and ``peer``, joined by
two veth pairs (g0-p0, g1-p1) with IPv6 off so no solicitations join the
traffic. Frames are built with Scapy, sent and captured on the peer side with
plain packet sockets (or tshark), and decoded with Scapy: nothing on the peer
side is Portico's. Every loop is bounded in count and time; nothing asserts how
fast anything was.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.utils import rdpcap

from portico.batch import Batch
from portico.io.afpacket import AfPacketPort, wait
from portico.lab import Lab

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="live port tests need root and iproute2 (they build network namespaces)")

PEER_MAC = "02:00:00:00:0b:01"  # the source of every frame the tests send
PEER_MAC_BYTES = bytes.fromhex(PEER_MAC.replace(":", ""))
TOPOLOGY = {
    "name": "afp",
    "namespaces": ["gw", "peer"],
    "links": [
        {"name": "g0", "namespace": "gw", "ipv6": False,
         "peer": {"name": "p0", "namespace": "peer", "ipv6": False}},
        {"name": "g1", "namespace": "gw", "ipv6": False,
         "peer": {"name": "p1", "namespace": "peer", "ipv6": False}},
    ],
}
ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_AUXDATA = 263, 8
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
DEADLINE = 10.0  # seconds any one wait for frames may take before the test gives up


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(TOPOLOGY, prefix=f"pt{secrets.token_hex(3)}") as built:
        yield built


def open_port(lab: Lab, name: str = "g0", **options: object) -> AfPacketPort:
    with lab.inside("gw"):
        return AfPacketPort(name, port=7, **options)  # type: ignore[arg-type]


def peer_socket(lab: Lab, name: str = "p0") -> socket.socket:
    """A plain packet socket on the peer's end: the independent sender and receiver."""
    with lab.inside("peer"):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    sock.bind((name, ETH_P_ALL))
    sock.settimeout(DEADLINE)
    return sock


def udp_frame(index: int, size: int = 100, *, flow: int = 0) -> bytes:
    """An Ethernet/IPv4/UDP frame of ``size`` bytes whose payload says which one it is."""
    head = Ether(src=PEER_MAC, dst="02:00:00:00:0a:01") / IP(
        src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1000 + flow, dport=2000)
    payload = f"frame {index} ".encode()
    payload += bytes(max(0, size - len(head) - len(payload)))
    return bytes(head / payload)


def collect(port: AfPacketPort, batch: Batch, want: int) -> list[tuple[bytes, dict[str, int]]]:
    """The peer's frames (and metadata) from ``port`` until ``want`` came or DEADLINE passed."""
    got: list[tuple[bytes, dict[str, int]]] = []
    deadline = time.monotonic() + DEADLINE
    for _ in range(10_000):
        if len(got) >= want or time.monotonic() > deadline:
            break
        rows = port.receive(batch, timeout=0.2)
        for row in range(rows):
            meta = batch.meta[row]
            frame = batch.packet(row)
            if frame[6:12] == PEER_MAC_BYTES:  # anything else on the link is not the test's
                got.append((frame, {name: int(meta[name]) for name in (
                    "start", "length", "wire_length", "timestamp", "port")}))
    return got


def from_peer(got: list[tuple[bytes, dict[str, int]]]) -> list[tuple[bytes, dict[str, int]]]:
    return [(frame, meta) for frame, meta in got if Ether(frame).src == PEER_MAC]


def captured(sock: socket.socket, want: int) -> list[bytes]:
    """Frames arriving on a peer socket (not the ones it sent), up to ``want``."""
    frames: list[bytes] = []
    deadline = time.monotonic() + DEADLINE
    for _ in range(10_000):
        if len(frames) >= want or time.monotonic() > deadline:
            break
        try:
            data, ancillary, _flags, address = sock.recvmsg(65536, 64)
        except TimeoutError:
            break
        if address[2] == socket.PACKET_OUTGOING:
            continue
        for level, kind, value in ancillary:
            # The receiving kernel keeps a VLAN tag aside (struct tpacket_auxdata): put it back.
            if level == SOL_PACKET and kind == PACKET_AUXDATA:
                status, _len, _snap, _mac, _net, tci, tpid = struct.unpack_from("IIIHHHH", value)
                if status & TP_STATUS_VLAN_VALID:
                    tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                    data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
        frames.append(data)
    return frames


# ---------------------------------------------------------------- receiving
def test_frames_arrive_as_sent_with_their_metadata(lab: Lab) -> None:
    port = open_port(lab)
    sender = peer_socket(lab)
    try:
        sizes = [60, 64, 100, 333, 512, 1000, 1499, 1514]
        frames = [udp_frame(i, size) for i, size in enumerate(sizes)]
        before = time.time_ns()
        for frame in frames:
            sender.send(frame)
        batch = Batch(64)
        got = from_peer(collect(port, batch, len(frames)))
        after = time.time_ns()
        assert [frame for frame, _ in got] == frames
        for (frame, meta), sent in zip(got, frames, strict=True):
            assert meta["start"] == batch.headroom
            assert meta["length"] == meta["wire_length"] == len(sent)
            assert meta["port"] == 7
            assert before <= meta["timestamp"] <= after
            decoded = Ether(frame)
            assert decoded[UDP].dport == 2000
            assert bytes(decoded[UDP].payload).startswith(f"frame {frames.index(sent)} ".encode())
        counters = port.statistics()
        assert counters.rx_packets >= len(frames) and counters.rx_kernel_drops == 0
    finally:
        sender.close()
        port.close()


def test_vlan_tags_the_kernel_took_off_are_put_back(lab: Lab) -> None:
    port = open_port(lab)
    sender = peer_socket(lab)
    try:
        inner = IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=5, dport=6) / b"tagged"
        tagged = bytes(Ether(src=PEER_MAC, dst="02:00:00:00:0a:01") / Dot1Q(vlan=10) / inner)
        qinq = bytes(Ether(src=PEER_MAC, dst="02:00:00:00:0a:01") / Dot1AD(vlan=100)
                     / Dot1Q(vlan=20) / inner)
        for frame in (tagged, qinq):
            sender.send(frame)
        got = from_peer(collect(port, Batch(8), 2))
        assert [frame for frame, _ in got] == [tagged, qinq]
        assert Ether(got[0][0])[Dot1Q].vlan == 10
        outer = Ether(got[1][0])
        assert outer[Dot1AD].vlan == 100 and outer[Dot1Q].vlan == 20
        assert bytes(outer[UDP].payload) == b"tagged"
        assert got[0][1]["wire_length"] == len(tagged)
    finally:
        sender.close()
        port.close()


def test_a_frame_longer_than_a_slot_is_cut_and_counted(lab: Lab) -> None:
    port = open_port(lab)
    sender = peer_socket(lab)
    try:
        frame = udp_frame(0, 1000)
        sender.send(frame)
        batch = Batch(4, slot_size=512, headroom=128)
        got = from_peer(collect(port, batch, 1))
        assert len(got) == 1
        data, meta = got[0]
        assert meta["length"] == batch.max_packet == 384
        assert meta["wire_length"] == 1000
        assert data == frame[:384]
        assert port.counters.rx_truncated == 1
    finally:
        sender.close()
        port.close()


def test_small_batches_take_every_frame_in_order(lab: Lab) -> None:
    port = open_port(lab, block_size=1 << 14, block_count=8)
    sender = peer_socket(lab)
    try:
        frames = [udp_frame(i, 60 + i % 200) for i in range(300)]
        for frame in frames:
            sender.send(frame)
        got = from_peer(collect(port, Batch(16), len(frames)))
        assert [frame for frame, _ in got] == frames
        assert port.statistics().rx_kernel_drops == 0
    finally:
        sender.close()
        port.close()


@pytest.mark.parametrize("waker", [True, False], ids=["waker", "slices"])
def test_a_frame_is_taken_from_the_open_block_before_its_retire(lab: Lab, waker: bool) -> None:
    # The block timer is a minute: a frame seen now came from the block being filled.
    port = open_port(lab, retire_ms=60_000, waker=waker)
    sender = peer_socket(lab)
    try:
        frame = udp_frame(1)
        sender.send(frame)
        got = from_peer(collect(port, Batch(8), 1))
        assert [data for data, _ in got] == [frame]
        assert port.counters.rx_early == port.counters.rx_packets
    finally:
        sender.close()
        port.close()


def test_without_reading_the_open_block_a_frame_waits_for_the_retire(lab: Lab) -> None:
    port = open_port(lab, retire_ms=60_000, read_open_block=False, waker=False)
    sender = peer_socket(lab)
    try:
        sender.send(udp_frame(1))
        # The block is neither full nor timed out, so plain TPACKET_V3 has nothing to give.
        assert port.receive(Batch(8), timeout=0.3) == 0
        assert port.counters.rx_early == 0
    finally:
        sender.close()
        port.close()


def test_a_sleeping_receive_is_woken_by_the_first_frame(lab: Lab) -> None:
    # Without the waker, this receive would sleep for link_check (60 s) and the
    # block would not retire for a minute: the frame comes only through the waker.
    port = open_port(lab, retire_ms=60_000, link_check=60.0)
    sender = peer_socket(lab)
    batch = Batch(8)
    result: list[int] = []
    started = threading.Event()

    def receive() -> None:
        started.set()
        result.append(port.receive(batch, timeout=30.0))

    try:
        waiter = threading.Thread(target=receive, daemon=True)
        waiter.start()
        started.wait(DEADLINE)
        time.sleep(0.2)  # let it fall asleep in ppoll (the test holds either way)
        frame = udp_frame(3)
        sender.send(frame)
        waiter.join(40.0)
        assert result and result[0] >= 1
        assert frame in batch.packets()[: result[0]]
        assert port.counters.rx_early >= 1
    finally:
        sender.close()
        port.close()


def test_wait_returns_when_any_port_has_frames(lab: Lab) -> None:
    quiet, busy = open_port(lab, "g0", link_check=60.0), open_port(lab, "g1", link_check=60.0)
    sender = peer_socket(lab, "p1")
    try:
        frame = udp_frame(9)
        sender.send(frame)
        batch = Batch(8)
        got: list[bytes] = []
        deadline = time.monotonic() + DEADLINE
        while not got and time.monotonic() < deadline:
            wait([quiet, busy], 1.0)
            assert quiet.receive(batch) == 0
            busy.receive(batch)
            got += batch.packets()
        assert frame in got
    finally:
        sender.close()
        quiet.close()
        busy.close()


def test_fanout_spreads_flows_over_the_group_and_keeps_each_flow_together(lab: Lab) -> None:
    group = secrets.randbelow(0xFFFF)
    ports = [open_port(lab, fanout=group) for _ in range(2)]
    sender = peer_socket(lab)
    try:
        frames = [udp_frame(i, flow=i % 64) for i in range(192)]
        for frame in frames:
            sender.send(frame)
        batch = Batch(64)
        seen: list[list[bytes]] = [[], []]
        deadline = time.monotonic() + DEADLINE
        while sum(map(len, seen)) < len(frames) and time.monotonic() < deadline:
            wait(ports, 0.2)
            for i, port in enumerate(ports):
                port.receive(batch)
                seen[i] += [f for f in batch.packets() if Ether(f).src == PEER_MAC]
        assert sorted(seen[0] + seen[1]) == sorted(frames)
        flows = [{Ether(f)[UDP].sport for f in frames_of} for frames_of in seen]
        assert flows[0] and flows[1], "one worker got no flow at all"
        assert not flows[0] & flows[1], "a flow was split between workers"
    finally:
        sender.close()
        for port in ports:
            port.close()


# ---------------------------------------------------------------- sending
def test_send_puts_the_selected_rows_on_the_wire(lab: Lab) -> None:
    port = open_port(lab)
    receiver = peer_socket(lab)
    try:
        frames = [udp_frame(i, 64 + 50 * i) for i in range(6)]
        batch = Batch.from_packets(frames)
        assert port.send(batch, np.array([0, 2, 4])) == 3
        mask = np.zeros(batch.count, dtype=bool)
        mask[[1, 5]] = True
        assert port.send(batch, mask) == 2
        got = captured(receiver, 5)
        assert got == [frames[i] for i in (0, 2, 4, 1, 5)]
        assert [Ether(f)[UDP].sport for f in got] == [1000] * 5
        assert port.counters.tx_packets == 5
        assert port.counters.tx_bytes == sum(len(frames[i]) for i in (0, 2, 4, 1, 5))
        assert port.counters.tx_errors == 0
    finally:
        receiver.close()
        port.close()


def test_sent_frames_as_tshark_sees_them(lab: Lab, tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    out = f"{tmp_path}/sent.pcapng"
    tshark = subprocess.Popen(lab.exec_args("peer", "tshark", "-i", "p0", "-c", "4", "-w", out),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port = open_port(lab)
    try:
        assert tshark.stderr is not None
        said = ""
        deadline = time.monotonic() + 20
        while "Capture started" not in said and time.monotonic() < deadline:
            # dumpcap is capturing only once tshark says "Capture started" ("Capturing
            # on" comes a little earlier); select keeps a silent tshark from hanging us.
            ready, _, _ = select.select([tshark.stderr], [], [], 0.5)
            if ready:
                chunk = os.read(tshark.stderr.fileno(), 4096)  # unbuffered: select stays true
                if not chunk:
                    break
                said += chunk.decode(errors="replace")
        assert "Capture started" in said, said
        frames = [udp_frame(i, 80 + i) for i in range(4)]
        batch = Batch.from_packets(frames)
        assert port.send(batch) == 4
        tshark.wait(timeout=30)
        assert [bytes(p) for p in rdpcap(out)] == frames
    finally:
        if tshark.poll() is None:
            tshark.kill()
            tshark.wait(timeout=30)
        port.close()


def test_frames_that_cannot_go_are_counted_by_reason(lab: Lab) -> None:
    port = open_port(lab)
    receiver = peer_socket(lab)
    try:
        assert port.mtu == 1500
        fits = udp_frame(0, 1514)
        tagged = bytes(Ether(src=PEER_MAC, dst="02:00:00:00:0a:01") / Dot1Q(vlan=7)
                       / IP(src="192.0.2.1", dst="192.0.2.2") / UDP() / bytes(1472))
        assert len(tagged) == 1518
        too_big = udp_frame(1, 1515)
        runt = bytes(10)
        batch = Batch.from_packets([fits, too_big, runt, tagged])
        assert port.send(batch) == 2
        assert captured(receiver, 2) == [fits, tagged]
        assert port.counters.tx_drops == {"oversized": 1, "runt": 1}
        # A smaller MTU is read again; frames over it are refused from then on.
        lab.run("gw", "ip", "link", "set", "g0", "mtu", "1000")
        port.check_link()
        assert port.mtu == 1000
        assert port.send(Batch.from_packets([udp_frame(2, 1100), udp_frame(3, 1014)])) == 1
        assert port.counters.tx_drops["oversized"] == 2
        assert captured(receiver, 1) == [udp_frame(3, 1014)]
    finally:
        receiver.close()
        port.close()


def test_a_port_does_not_receive_what_it_sent(lab: Lab) -> None:
    port = open_port(lab)
    try:
        frames = [udp_frame(i) for i in range(3)]
        assert port.send(Batch.from_packets(frames)) == 3
        assert port.receive(Batch(8), timeout=0.3) == 0
    finally:
        port.close()


def test_promiscuous_mode_is_held_while_the_port_is_open(lab: Lab) -> None:
    def promiscuity() -> int:
        shown = lab.run("gw", "ip", "-d", "link", "show", "g0").stdout.split()
        return int(shown[shown.index("promiscuity") + 1])

    port = open_port(lab)
    assert promiscuity() == 1
    port.close()
    assert promiscuity() == 0
    port = open_port(lab, promiscuous=False)
    assert promiscuity() == 0
    port.close()


# ---------------------------------------------------------------- link changes
def test_a_link_that_goes_down_and_up_carries_on(lab: Lab) -> None:
    port = open_port(lab)
    sender = peer_socket(lab)
    batch = Batch(8)
    try:
        sender.send(udp_frame(0))
        assert len(from_peer(collect(port, batch, 1))) == 1
        lab.run("gw", "ip", "link", "set", "g0", "down")
        assert port.send(Batch.from_packets([udp_frame(1), udp_frame(2)])) == 0
        assert port.counters.tx_drops == {"link-down": 2}
        assert not port.link_up and port.counters.link_downs == 1
        lab.run("gw", "ip", "link", "set", "g0", "up")
        frame = udp_frame(3)
        got: list[bytes] = []
        for _ in range(50):  # until the carrier is back and a frame gets through
            sender.send(frame)
            got += [f for f, _ in from_peer(collect(port, batch, 1))]
            if got:
                break
        assert got and got[0] == frame
        port.check_link()
        assert port.link_up and port.counters.reopens == 0
    finally:
        sender.close()
        port.close()


def test_a_deleted_and_recreated_interface_is_reopened(lab: Lab) -> None:
    port = open_port(lab)
    batch = Batch(8)
    try:
        old_index = port.ifindex
        lab.run("gw", "ip", "link", "del", "g0")  # takes p0 with it
        assert port.receive(batch, timeout=0.3) == 0
        assert port.gone
        assert port.send(Batch.from_packets([udp_frame(0)])) == 0
        assert port.counters.tx_drops == {"no-device": 1}
        recreate_g0(lab)
        sender = peer_socket(lab)
        try:
            frame = udp_frame(5)
            got: list[bytes] = []
            for _ in range(50):
                sender.send(frame)
                got += [f for f, _ in from_peer(collect(port, batch, 1))]
                if got:
                    break
            assert got and got[0] == frame
        finally:
            sender.close()
        assert port.counters.reopens == 1
        assert port.ifindex != old_index and not port.gone
        receiver = peer_socket(lab)
        try:
            assert port.send(Batch.from_packets([udp_frame(6)])) == 1
            assert captured(receiver, 1) == [udp_frame(6)]
        finally:
            receiver.close()
    finally:
        port.close()


def recreate_g0(lab: Lab) -> None:
    lab.run("gw", "ip", "link", "add", "g0", "type", "veth", "peer", "name", "p0",
            "netns", lab.namespace("peer"))
    for namespace, name in (("gw", "g0"), ("peer", "p0")):
        lab.run(namespace, "sysctl", "-qw", f"net/ipv6/conf/{name}/disable_ipv6=1")
        lab.run(namespace, "ip", "link", "set", name, "up")


def test_a_fanout_group_comes_back_with_its_recreated_interface(lab: Lab) -> None:
    group = secrets.randbelow(0xFFFF)
    ports = [open_port(lab, fanout=group) for _ in range(2)]
    batch = Batch(64)
    try:
        lab.run("gw", "ip", "link", "del", "g0")
        recreate_g0(lab)
        sender = peer_socket(lab)
        try:
            frames = [udp_frame(i, flow=i % 64) for i in range(128)]
            seen: list[list[bytes]] = [[], []]
            deadline = time.monotonic() + DEADLINE
            for _ in range(200):  # resend until both members are back in one group
                if len(set(seen[0] + seen[1])) >= len(frames) or time.monotonic() > deadline:
                    break
                for frame in frames:
                    sender.send(frame)
                for _ in range(5):
                    wait(ports, 0.1)
                    for i, port in enumerate(ports):
                        port.receive(batch)
                        seen[i] += [f for f in batch.packets() if Ether(f).src == PEER_MAC]
        finally:
            sender.close()
        assert set(seen[0] + seen[1]) == set(frames)
        assert all(port.counters.reopens == 1 for port in ports)
        flows = [{Ether(f)[UDP].sport for f in frames_of} for frames_of in seen]
        assert not flows[0] & flows[1], "a flow was split between workers"
    finally:
        for port in ports:
            port.close()


def test_opening_a_missing_interface_says_so(lab: Lab) -> None:
    with pytest.raises(OSError, match="nope0: no such interface"), lab.inside("gw"):
        AfPacketPort("nope0")
