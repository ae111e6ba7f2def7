"""Traffic for examples/two-tenants.yaml: what both tenants and the Internet would send.

    python examples/two_tenants_traffic.py out/two-tenants.pcapng [--flows 2000] [--seed 1]

Writes a pcapng whose interface 0 is the gateway's port "uplink" and
interface 1 its port "access" (tenant a on VLAN 10, tenant b on VLAN 20, both
numbering their hosts 10.0.0.0/24). In time order:

* each host asks for its router's MAC (ARP), as a host coming up does;
* outbound flows from both tenants (TCP with handshake, data and close; UDP
  request/response; ping), with the Internet's replies addressed to the
  tenant's public address and the source port the gateway will keep (port
  preservation, RFC 4787 REQ-3: every host here uses distinct ports, so none
  needs changing);
* inbound connections from Internet clients to tenant a's web server through
  its port forward (198.51.100.10:8080 -> 10.0.0.5:80);
* traffic that must not pass, so that the summary has drops to show: the
  Internet probing tenant b's public address and a's closed ports, a packet
  whose TTL runs out at the gateway, a mid-stream TCP segment no connection
  knows.

The replies here are what a real peer would send, which is how the gateway's
output can be checked without a live network.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portico.io.capture import CaptureWriter  # noqa: E402
from portico.io.pcap import Interface  # noqa: E402

UPLINK, ACCESS = 0, 1
UPSTREAM_MAC, UPLINK_MAC = "02:00:00:00:00:fe", "02:00:00:00:00:01"
TENANTS = {  # name: (VLAN, router MAC, public address)
    "a": (10, "02:00:00:00:0a:01", "198.51.100.10"),
    "b": (20, "02:00:00:00:0b:01", "198.51.100.20"),
}
WEB = "10.0.0.5"
US = 1_000  # ns
START = 1_700_000_000 * 1_000_000_000


def host_mac(tenant: str, host: int) -> str:
    return f"02:00:00:{0x10 if tenant == 'a' else 0x20:02x}:{host >> 8:02x}:{host & 0xFF:02x}"


def inside(tenant: str, host: int, packet: Packet) -> tuple[int, bytes]:
    vlan, router, _ = TENANTS[tenant]
    return ACCESS, bytes(Ether(src=host_mac(tenant, host), dst=router) / Dot1Q(vlan=vlan)
                         / packet)


def outside(packet: Packet) -> tuple[int, bytes]:
    return UPLINK, bytes(Ether(src=UPSTREAM_MAC, dst=UPLINK_MAC) / packet)


def generate(flows: int, seed: int) -> list[tuple[int, int, bytes]]:
    rng = random.Random(seed)
    events: list[tuple[int, int, bytes]] = []  # (time, port, frame)
    hosts = {t: list(range(10, 10 + max(2, min(200, flows // 20)))) for t in TENANTS}
    hosts["a"].append(5)  # the web server
    for tenant, numbers in hosts.items():
        vlan, router, _ = TENANTS[tenant]
        for k, h in enumerate(numbers):
            ask = (Ether(src=host_mac(tenant, h), dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=vlan)
                   / ARP(op=1, hwsrc=host_mac(tenant, h), psrc=f"10.0.0.{h}", pdst="10.0.0.1"))
            events.append((k * US, ACCESS, bytes(ask)))
    t0 = 10_000 * US
    ports = iter(rng.sample(range(20000, 60000), flows + 10))
    for f in range(flows):
        tenant = rng.choice(list(TENANTS))
        host = rng.choice(hosts[tenant][:-1] if tenant == "a" else hosts[tenant])
        me = f"10.0.0.{host}"
        public = TENANTS[tenant][2]
        peer = f"192.0.2.{rng.randrange(1, 255)}" if rng.random() < 0.5 else \
            f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        port = next(ports)
        t = t0 + f * 20 * US + rng.randrange(10 * US)
        kind = rng.random()
        steps: list[tuple[int, tuple[int, bytes]]] = []
        if kind < 0.6:  # TCP: handshake, a request and a response, close
            dport = rng.choice((80, 443))
            out = IP(src=me, dst=peer)
            back = IP(src=peer, dst=public)
            steps = [
                (0, inside(tenant, host, out / TCP(sport=port, dport=dport, flags="S", seq=1))),
                (300, outside(back / TCP(sport=dport, dport=port, flags="SA", seq=9, ack=2))),
                (310, inside(tenant, host, out / TCP(sport=port, dport=dport, flags="A", seq=2))),
            ]
            for k in range(rng.randrange(2, 8)):
                steps.append((320 + 20 * k, inside(tenant, host, out / TCP(
                    sport=port, dport=dport, flags="PA", seq=2) / (b"x" * 100))))
                steps.append((600 + 20 * k, outside(back / TCP(
                    sport=dport, dport=port, flags="PA", seq=10) / (b"y" * 1000))))
            steps += [
                (900, inside(tenant, host, out / TCP(sport=port, dport=dport, flags="FA"))),
                (1200, outside(back / TCP(sport=dport, dport=port, flags="FA"))),
                (1210, inside(tenant, host, out / TCP(sport=port, dport=dport, flags="A"))),
            ]
        elif kind < 0.85:  # UDP request / response, a few times
            for k in range(rng.randrange(1, 6)):
                steps.append((100 * k, inside(tenant, host, IP(src=me, dst=peer)
                                              / UDP(sport=port, dport=53) / b"query")))
                steps.append((100 * k + 40, outside(IP(src=peer, dst=public)
                                                    / UDP(sport=53, dport=port) / b"answer")))
        else:  # ping
            for k in range(rng.randrange(1, 4)):
                steps.append((1000 * k, inside(tenant, host, IP(src=me, dst=peer)
                                               / ICMP(type=8, id=port, seq=k))))
                steps.append((1000 * k + 30, outside(IP(src=peer, dst=public)
                                                     / ICMP(type=0, id=port, seq=k))))
        events += [(t + dt * US, p, frame) for dt, (p, frame) in steps]
    # Internet clients of tenant a's web server, through the port forward.
    for c in range(max(1, flows // 20)):
        client, cport = f"100.64.{c // 250}.{1 + c % 250}", 40000 + c
        t = t0 + rng.randrange(max(1, flows) * 20 * US)
        to_web = IP(src=client, dst=TENANTS["a"][2])
        from_web = IP(src=WEB, dst=client)
        for dt, (p, frame) in [
            (0, outside(to_web / TCP(sport=cport, dport=8080, flags="S"))),
            (200, inside("a", 5, from_web / TCP(sport=80, dport=cport, flags="SA"))),
            (400, outside(to_web / TCP(sport=cport, dport=8080, flags="A"))),
            (410, outside(to_web / TCP(sport=cport, dport=8080, flags="PA") / b"GET / HTTP/1.1")),
            (600, inside("a", 5, from_web / TCP(sport=80, dport=cport, flags="PA") / (b"z" * 500))),
            (800, outside(to_web / TCP(sport=cport, dport=8080, flags="FA"))),
            (900, inside("a", 5, from_web / TCP(sport=80, dport=cport, flags="FA"))),
            (1000, outside(to_web / TCP(sport=cport, dport=8080, flags="A"))),
        ]:
            events.append((t + dt * US, p, frame))
    # What must not pass.
    t = t0 + flows * 20 * US
    bad = [
        outside(IP(src="203.0.113.9", dst=TENANTS["b"][2]) / TCP(sport=5555, dport=22, flags="S")),
        outside(IP(src="203.0.113.9", dst=TENANTS["a"][2]) / TCP(sport=5556, dport=23, flags="S")),
        inside("a", 10, IP(src="10.0.0.10", dst="192.0.2.1", ttl=1) / UDP(sport=9, dport=9)),
        outside(IP(src="192.0.2.77", dst=TENANTS["a"][2]) / TCP(sport=80, dport=61000, flags="A")),
        inside("b", 10, IP(src="10.0.0.10", dst="10.0.0.1") / ICMP(type=8, id=7)),
    ]
    events += [(t + k * US, p, frame) for k, (p, frame) in enumerate(bad)]
    return [(START + time, port, frame) for time, port, frame in heapq.nsmallest(
        len(events), events, key=lambda e: e[0])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the pcapng to write")
    parser.add_argument("--flows", type=int, default=2000, help="outbound flows (default 2000)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    events = generate(args.flows, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with CaptureWriter(args.out, interfaces=[Interface("uplink", 1, 65535),
                                             Interface("access", 1, 65535)]) as writer:
        for time, port, frame in events:
            writer.write_packet(frame, timestamp_ns=time, interface=port)
    print(f"{args.out}: {len(events)} packets, {args.flows} outbound flows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
