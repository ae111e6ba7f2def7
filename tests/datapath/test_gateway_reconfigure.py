"""A config change under traffic: ``Gateway.reconfigure`` swaps tables under a new generation.

No packet may be decided by an entry made under the old tables; what the
gateway learned (MACs, neighbours, connections, NAT bindings when NAT did not
change) carries over, so established flows go on.
"""

from __future__ import annotations

from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

from portico import drops
from portico.batch import Batch
from portico.control.model import parse_config
from portico.datapath.gateway import Gateway

TEXT = (Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml").read_text()
HOST_MAC, ROUTER_MAC = "02:00:00:00:0a:05", "02:00:00:00:0a:01"
UPSTREAM, OTHER_UPSTREAM, UPLINK_MAC = "02:00:00:00:00:fe", "02:00:00:00:00:fd", "02:00:00:00:00:01"
SECOND = 1_000_000_000


def moved_upstream(text: str) -> str:
    """The default route moved to a second upstream router (with its static MAC)."""
    text = text.replace("{prefix: 0.0.0.0/0, via: 203.0.113.1}",
                        "{prefix: 0.0.0.0/0, via: 203.0.113.254}")
    return text.replace('- {address: 203.0.113.1, mac: "02:00:00:00:00:fe"}',
                        '- {address: 203.0.113.1, mac: "02:00:00:00:00:fe"}\n'
                        '      - {address: 203.0.113.254, mac: "02:00:00:00:00:fd"}')


def send(gw: Gateway, frames: list[tuple[int, Packet]], now: int) -> list[tuple[int, str, Packet]]:
    batch = Batch.from_packets([bytes(f) for _, f in frames])
    batch.meta["port"][: len(frames)] = [p for p, _ in frames]
    batch.meta["timestamp"][: len(frames)] = now
    gw.process(batch, now)
    m = batch.meta
    return [(int(m["out_port"][i]), drops.name(m["drop"][i]) if m["drop"][i] else "",
             Ether(batch.packet(i))) for i in range(batch.count)]


def query() -> tuple[int, Packet]:
    return 1, (Ether(src=HOST_MAC, dst=ROUTER_MAC) / Dot1Q(vlan=10)
               / IP(src="10.0.0.5", dst="8.8.8.8") / UDP(sport=5000, dport=53) / b"q")


def answer() -> tuple[int, Packet]:
    return 0, (Ether(src=UPSTREAM, dst=UPLINK_MAC) / IP(src="8.8.8.8", dst="198.51.100.10")
               / UDP(sport=53, dport=5000) / b"a")


def started() -> Gateway:
    gw = Gateway(parse_config(TEXT), seed=1)
    hello = Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=10) / ARP(
        op=1, hwsrc=HOST_MAC, psrc="10.0.0.5", pdst="10.0.0.1")
    assert send(gw, [(1, hello)], SECOND)[0][0] == 1
    for k in range(2):  # the flow is cached: the second query is a hit
        [(port, why, out)] = send(gw, [query()], (2 + k) * SECOND)
        assert (port, why, out.dst) == (0, "", UPSTREAM)
    assert gw.datapath.counters["hits"] == 1
    return gw


def test_a_route_change_decides_the_very_next_packet() -> None:
    gw = started()
    generation = gw.reconfigure(parse_config(moved_upstream(TEXT)))
    assert generation == 2 and gw.cache is not None and gw.cache.generation == 2
    hits = gw.datapath.counters["hits"]
    [(port, why, out)] = send(gw, [query()], 5 * SECOND)
    assert (port, why) == (0, "")
    assert out.dst == OTHER_UPSTREAM  # the new route, not the cached decision
    assert out[IP].src == "198.51.100.10" and out[UDP].sport == 5000  # the same binding
    assert gw.datapath.counters["hits"] == hits  # decided afresh, then cached again
    send(gw, [query()], 6 * SECOND)
    assert gw.datapath.counters["hits"] == hits + 1


def test_learned_state_carries_over() -> None:
    gw = started()
    bindings = [(b.internal, b.internal_port, b.external, b.external_port)
                for b in gw.nat.live() if not b.static]
    gw.reconfigure(parse_config(moved_upstream(TEXT)))
    assert [(b.internal, b.internal_port, b.external, b.external_port)
            for b in gw.nat.live() if not b.static] == bindings
    # The answer finds its binding and its connection, and the host's MAC is still
    # known (no ARP needed): delivered at once.
    [(port, why, out)] = send(gw, [answer()], 5 * SECOND)
    assert (port, why) == (1, "")
    assert (out.dst, out[Dot1Q].vlan, out[IP].dst) == (HOST_MAC, 10, "10.0.0.5")


def test_a_tenant_removed_takes_its_flows_with_it() -> None:
    gw = started()
    start = TEXT.index("  a:\n    # Unique")
    end = TEXT.index("  b:\n    id: 2")
    gw.reconfigure(parse_config(TEXT[:start] + TEXT[end:]))
    [(port, why, _)] = send(gw, [query()], 5 * SECOND)
    assert (port, why) == (-1, "no-segment")  # VLAN 10 belongs to no one now
