"""The /metrics text as Prometheus reads it, after real traffic through a real gateway.

The exposition is parsed back by a small strict parser (the 0.0.4 text format:
HELP and TYPE once per family and before its samples, samples of a family
together, label values escaped), and by ``prometheus_client``'s parser when it
is installed. The values must be the gateway's own counters, and the per-port
counters the frames the test sent and saw leave, port by port.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from portico import drops
from portico.batch import Batch
from portico.control.metrics import (
    Exposition,
    PortCounters,
    escape_label_value,
    format_value,
    render,
)
from portico.control.model import load_config
from portico.datapath.gateway import Gateway
from portico.io.capture import open_capture
from portico.run import replay

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "two-tenants.yaml"
UPLINK, ACCESS = 0, 1
SECOND = 1_000_000_000
UPSTREAM_MAC, UPLINK_MAC = "02:00:00:00:00:fe", "02:00:00:00:00:01"
ROUTER_A, ROUTER_B = "02:00:00:00:0a:01", "02:00:00:00:0b:01"
CLIENT, CLIENT_MAC = "10.0.0.7", "02:00:00:00:00:77"
OUTSIDE, PUBLIC_A, PUBLIC_B = "8.8.8.8", "198.51.100.10", "198.51.100.20"


# ------------------------------------------------------------------ the parser
@dataclass
class Family:
    name: str
    kind: str
    help: str
    samples: dict[frozenset[tuple[str, str]], float] = field(default_factory=dict)

    def value(self, **labels: str) -> float:
        return self.samples[frozenset(labels.items())]

    def by(self, label: str) -> dict[str, float]:
        """Sample values keyed by one label's value (the others must not vary)."""
        out: dict[str, float] = {}
        for key, value in self.samples.items():
            mine = dict(key)[label]
            assert mine not in out, f"{self.name}: {label}={mine} twice"
            out[mine] = value
        return out


NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)=\"")
ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def parse_labels(text: str, where: str) -> frozenset[tuple[str, str]]:
    labels: dict[str, str] = {}
    i = 0
    while i < len(text):
        m = LABEL.match(text, i)
        assert m, f"{where}: bad label at {text[i:]!r}"
        name, i = m.group(1), m.end()
        value = []
        while True:
            assert i < len(text), f"{where}: unterminated label value"
            c = text[i]
            if c == "\\":
                assert text[i + 1] in ESCAPES, f"{where}: bad escape \\{text[i + 1]}"
                value.append(ESCAPES[text[i + 1]])
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                assert c != "\n", where
                value.append(c)
                i += 1
        assert name not in labels, f"{where}: label {name} twice"
        labels[name] = "".join(value)
        if i < len(text):
            assert text[i] == ",", f"{where}: expected ',' at {text[i:]!r}"
            i += 1
    return frozenset(labels.items())


def parse(text: str) -> dict[str, Family]:
    """The families of an exposition; anything the 0.0.4 format does not allow fails."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    current: str | None = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        assert line, f"line {number}: blank"
        if line.startswith("# HELP "):
            m = re.fullmatch(rf"# HELP ({NAME}) (.*)", line)
            assert m, where
            assert m.group(1) not in helps and m.group(1) not in families, where
            helps[m.group(1)] = m.group(2).replace("\\n", "\n").replace("\\\\", "\\")
            continue
        if line.startswith("# TYPE "):
            m = re.fullmatch(rf"# TYPE ({NAME}) (counter|gauge|untyped)", line)
            assert m, where
            name = m.group(1)
            assert name not in families, f"{where}: a second TYPE"
            families[name] = Family(name, m.group(2), helps.get(name, ""))
            current = name
            continue
        assert not line.startswith("#"), where
        m = re.fullmatch(rf"({NAME})(?:\{{(.*)\}})? (\S+)", line)
        assert m, where
        name = m.group(1)
        assert name == current, f"{where}: not in its family's block (or no TYPE before it)"
        labels = parse_labels(m.group(2) or "", where)
        family = families[name]
        assert labels not in family.samples, f"{where}: the same series twice"
        value = float(m.group(3))  # Go's syntax: NaN, +Inf, -Inf, 1e-05 all parse
        if family.kind == "counter":
            assert name.endswith("_total") and value >= 0, where
        family.samples[labels] = value
    for name in helps:
        assert name in families, f"HELP without TYPE: {name}"
    return families


# ------------------------------------------------------------------ the driver
@dataclass
class Wire:
    """A gateway, its port counters, and what the test saw pass, port by port."""

    gateway: Gateway
    ports: PortCounters = field(default_factory=PortCounters)
    now: int = 1_000 * SECOND
    rx: Counter[int] = field(default_factory=Counter)
    rx_bytes: Counter[int] = field(default_factory=Counter)
    tx: Counter[int] = field(default_factory=Counter)
    tx_bytes: Counter[int] = field(default_factory=Counter)
    dropped: Counter[tuple[int, str]] = field(default_factory=Counter)
    verdicts: list[list[str]] = field(default_factory=list)

    def send(self, *frames: tuple[int, Packet]) -> list[str]:
        raw = [bytes(p) for _, p in frames]
        batch = Batch.from_packets(raw)
        batch.meta["port"][: len(raw)] = [port for port, _ in frames]
        batch.meta["timestamp"][: len(raw)] = self.now
        sent = self.gateway.process(batch, self.now)
        self.ports.count(batch)
        for extra in sent:
            self.ports.count(extra, received=False)
        self.now += SECOND
        for (port, _), data in zip(frames, raw, strict=True):
            self.rx[port] += 1
            self.rx_bytes[port] += len(data)
        verdicts = []
        for b in (batch, *sent):
            for row in range(b.count):
                out, code = int(b.meta["out_port"][row]), int(b.meta["drop"][row])
                if code:
                    self.dropped[(int(b.meta["port"][row]), drops.name(code))] += 1
                    verdicts.append(drops.name(code))
                elif out >= 0:
                    self.tx[out] += 1
                    self.tx_bytes[out] += len(b.packet(row))  # the frame as it leaves
                    verdicts.append(f"out {out}")
                else:
                    verdicts.append("held")
        self.verdicts.append(verdicts)
        return verdicts


def inside(vlan: int, router: str, l3: Packet) -> tuple[int, Packet]:
    return ACCESS, Ether(src=CLIENT_MAC, dst=router) / Dot1Q(vlan=vlan) / l3


def outside(l3: Packet) -> tuple[int, Packet]:
    return UPLINK, Ether(src=UPSTREAM_MAC, dst=UPLINK_MAC) / l3


def arp(vlan: int, op: int = 1, router: str = "ff:ff:ff:ff:ff:ff") -> tuple[int, Packet]:
    return ACCESS, (Ether(src=CLIENT_MAC, dst=router) / Dot1Q(vlan=vlan)
                    / ARP(op=op, hwsrc=CLIENT_MAC, psrc=CLIENT, pdst="10.0.0.1",
                          hwdst="00:00:00:00:00:00" if op == 1 else router))


def dns(vlan: int, router: str) -> tuple[int, Packet]:
    return inside(vlan, router, IP(src=CLIENT, dst=OUTSIDE) / UDP(sport=5000, dport=53)
                  / Raw(b"query"))


def answer(public: str) -> tuple[int, Packet]:
    return outside(IP(src=OUTSIDE, dst=public) / UDP(sport=53, dport=5000) / Raw(b"answer!"))


@pytest.fixture(scope="module")
def wire() -> Wire:
    """a's client announces itself; both tenants' client 10.0.0.7 asks 8.8.8.8 several
    times; b's answer waits for b's client to be resolved (the gateway asks by ARP, on
    VLAN 20, and sends it once b's client answers); the Internet probes b's public
    address; a stray host on VLAN 30 is dropped."""
    w = Wire(Gateway(load_config(CONFIG), seed=1))
    stray = (ACCESS, Ether(src="02:00:00:00:00:99", dst=ROUTER_A) / Dot1Q(vlan=30)
             / IP(src="10.9.9.9", dst=OUTSIDE) / UDP(sport=1, dport=2))
    probe = outside(IP(src="203.0.113.9", dst=PUBLIC_B) / TCP(sport=5555, dport=22, flags="S"))
    assert w.send(arp(10)) == ["out 1"]
    assert w.send(dns(10, ROUTER_A), dns(20, ROUTER_B), stray, probe) == [
        "out 0", "out 0", "no-segment", "no-binding"]
    # b's answer is held, and the gateway asks for b's client (out of access).
    assert w.send(answer(PUBLIC_A), answer(PUBLIC_B), dns(10, ROUTER_A), dns(20, ROUTER_B)) == [
        "out 1", "held", "out 0", "out 0", "out 1"]
    # b's client answers the ARP request: the held answer goes out.
    assert w.send(arp(20, op=2, router=ROUTER_B), answer(PUBLIC_A), dns(10, ROUTER_A)) == [
        "arp-consumed", "out 1", "out 0", "out 1"]  # the last: b's answer, released
    for _ in range(3):
        w.send(dns(10, ROUTER_A), answer(PUBLIC_A))
    return w


# ------------------------------------------------------------------ the tests
def test_per_port_counters_are_the_frames_sent_and_seen_leaving(wire: Wire) -> None:
    families = parse(render(wire.gateway, ports=wire.ports))
    packets = families["portico_port_packets_total"]
    octets = families["portico_port_bytes_total"]
    assert packets.kind == octets.kind == "counter"
    for port, name in ((UPLINK, "uplink"), (ACCESS, "access")):
        assert packets.value(port=name, direction="rx") == wire.rx[port]
        assert packets.value(port=name, direction="tx") == wire.tx[port]
        assert octets.value(port=name, direction="rx") == wire.rx_bytes[port]
        assert octets.value(port=name, direction="tx") == wire.tx_bytes[port]
    # In the scenario's own terms: a probe and 6 answers came in by the uplink, and 8
    # queries left by it; b's held answer left by access once (when released).
    assert (wire.rx[UPLINK], wire.tx[UPLINK]) == (7, 8)
    assert len(packets.samples) == len(octets.samples) == 4
    dropped = families["portico_port_drops_total"]
    assert {(dict(k)["port"], dict(k)["reason"]): v for k, v in dropped.samples.items()} == {
        ({UPLINK: "uplink", ACCESS: "access"}[port], reason): n
        for (port, reason), n in wire.dropped.items()}
    assert dropped.value(port="access", reason="no-segment") == 1
    assert dropped.value(port="uplink", reason="no-binding") == 1


def test_stage_counters_are_the_pipelines(wire: Wire) -> None:
    families = parse(render(wire.gateway, ports=wire.ports))
    counters = wire.gateway.pipeline.counters
    assert families["portico_stage_packets_total"].by("stage") == {
        s: c.packets for s, c in counters.items()}
    assert families["portico_stage_calls_total"].by("stage") == {
        s: c.calls for s, c in counters.items()}
    seconds = families["portico_stage_seconds_total"].by("stage")
    assert seconds == pytest.approx({s: c.nanoseconds / 1e9 for s, c in counters.items()})
    assert all(v > 0 for v in seconds.values())
    drops_total = families["portico_stage_drops_total"]
    assert {(dict(k)["stage"], dict(k)["reason"]): v for k, v in drops_total.samples.items()} == {
        (s, reason): n for s, c in counters.items() for reason, n in c.drops.items()}
    assert drops_total.value(stage="ingress", reason="no-segment") == 1


def test_cache_and_table_gauges_are_the_gateways(wire: Wire) -> None:
    gw = wire.gateway
    families = parse(render(gw, ports=wire.ports))

    def one(name: str) -> float:
        [value] = families[name].samples.values()
        return value

    assert gw.cache is not None
    c = gw.cache.counters
    assert (one("portico_flow_cache_hits_total"), one("portico_flow_cache_misses_total")) == (
        c["hits"], c["misses"])
    assert c["hits"] >= 6  # the repeated queries and answers
    assert one("portico_flow_cache_hit_ratio") == pytest.approx(
        c["hits"] / (c["hits"] + c["misses"]))
    assert one("portico_flow_cache_entries") == len(gw.cache) > 0
    assert one("portico_flow_cache_capacity") == gw.cache.capacity
    assert families["portico_flow_cache_events_total"].by("event") == {
        k: v for k, v in c.items() if k not in ("hits", "misses")}
    assert one("portico_nat_bindings") == len(gw.nat.live()) == 3  # a, b, a's port forward
    assert one("portico_conntrack_connections") == len(gw.conns) > 0
    assert one("portico_neighbours") == len(gw.neighbours)
    assert one("portico_generation") == gw.topology.generation == 1
    assert one("portico_pending_packets") == len(gw.pending) == 0
    assert one("portico_datapath_packets_total") == gw.datapath.counters["packets"]
    assert families["portico_nat_events_total"].by("event") == gw.nat.counters()
    assert families["portico_conntrack_events_total"].by("event") == gw.conns.counters()
    assert families["portico_gateway_events_total"].by("event") == gw.counters
    assert gw.counters["released"] == 1 and gw.counters["solicitations"] >= 1
    for name in ("portico_flow_cache_hit_ratio", "portico_nat_bindings",
                 "portico_flow_cache_entries", "portico_generation"):
        assert families[name].kind == "gauge"


def test_reconfiguring_shows_the_new_generation(wire: Wire) -> None:
    gw = Gateway(load_config(CONFIG), seed=2)
    gw.reconfigure(gw.config)
    families = parse(render(gw))
    assert families["portico_generation"].value() == 2
    assert math.isnan(families["portico_flow_cache_hit_ratio"].value())  # no lookup yet
    assert "portico_port_packets_total" not in families  # no PortCounters given


def test_without_a_cache_there_are_no_cache_families() -> None:
    w = Wire(Gateway(load_config(CONFIG), cache=False, seed=1))
    w.send(arp(10))
    w.send(dns(10, ROUTER_A), dns(10, ROUTER_A))
    families = parse(render(w.gateway, ports=w.ports))
    assert not [name for name in families if name.startswith("portico_flow_cache")]
    assert families["portico_port_packets_total"].value(port="uplink", direction="tx") == 2
    assert families["portico_stage_packets_total"].value(stage="ingress") == 3


def test_extra_gauges_and_refused_names(wire: Wire) -> None:
    text = render(wire.gateway, extra={"portico_scrape_duration_seconds": 0.125,
                                       "portico_reconfigurations_total": 3})
    family = parse(text)["portico_scrape_duration_seconds"]
    assert (family.kind, family.value()) == ("gauge", 0.125)
    family = parse(text)["portico_reconfigurations_total"]
    assert (family.kind, family.value()) == ("counter", 3)
    with pytest.raises(ValueError, match="portico_generation.*twice"):
        render(wire.gateway, extra={"portico_generation": 1.0})
    with pytest.raises(ValueError, match="not"):
        render(wire.gateway, extra={"scrape time": 1.0})


def test_label_values_and_help_are_escaped() -> None:
    out = Exposition()
    nasty = 'a "quoted" \\ back\nslash'
    out.family("x_total", "counter", "Help with a \\ and\na newline.",
               [({"port": nasty, "direction": "rx"}, 3), ({"port": "plain", "direction": "rx"}, 4)])
    out.family("y", "gauge", "Odd values.", [({"kind": "nan"}, math.nan),
                                             ({"kind": "inf"}, math.inf),
                                             ({"kind": "small"}, 1e-7), ({"kind": "int"}, 2.0)])
    text = out.text()
    assert f'x_total{{port="{escape_label_value(nasty)}",direction="rx"}} 3' in text
    assert '\\"quoted\\" \\\\ back\\nslash' in text
    families = parse(text)
    assert families["x_total"].value(port=nasty, direction="rx") == 3
    assert families["x_total"].help == "Help with a \\ and\na newline."
    y = families["y"].by("kind")
    assert math.isnan(y["nan"]) and y["inf"] == math.inf and y["small"] == 1e-7
    assert [format_value(v) for v in (math.nan, -math.inf, 2.0, 7, 0.5)] == [
        "NaN", "-Inf", "2", "7", "0.5"]
    with pytest.raises(ValueError, match="label name"):
        out.family("z", "gauge", "", [({"bad-label": "x"}, 1)])


def test_prometheus_client_reads_it(wire: Wire) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    text = render(wire.gateway, ports=wire.ports)
    theirs = {f.name: f for f in parser.text_string_to_metric_families(text)}
    mine = parse(text)
    for name, family in mine.items():
        base = name.removesuffix("_total") if family.kind == "counter" else name
        got = {frozenset(s.labels.items()): s.value for s in theirs[base].samples
               if s.name == name}
        assert got.keys() == family.samples.keys(), name
        for key, value in family.samples.items():
            assert got[key] == value or (math.isnan(got[key]) and math.isnan(value)), name


def test_a_replayed_capture_counts_as_portico_run_does(tmp_path: Path) -> None:
    """The example's generated traffic (what both tenants and the Internet send), fed batch
    by batch: the per-port counters must agree with ``portico run``'s own accounting of
    the same capture, and every packet of the capture is counted in on its port."""
    capture, out = tmp_path / "two-tenants.pcapng", tmp_path / "out.pcapng"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "two_tenants_traffic.py"),
                           str(capture), "--flows", "40", "--seed", "5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    config = load_config(CONFIG)
    report = replay(config, str(capture), str(out))
    gateway = Gateway(config, seed=1)
    ports = PortCounters()
    arrived: Counter[int] = Counter()
    with open_capture(str(capture)) as reader:
        for batch in reader.batches(256):  # replay's batch size
            n = batch.count
            arrived.update(batch.meta["port"][:n].tolist())
            now = int(batch.meta["timestamp"][:n].max())
            sent = gateway.process(batch, now)
            ports.count(batch)
            for extra in sent:
                ports.count(extra, received=False)
    families = parse(render(gateway, ports=ports))
    packets = families["portico_port_packets_total"]
    assert sum(arrived.values()) == report["packets"]["in"]
    assert {name: packets.value(port=name, direction="rx")
            for name in ("uplink", "access")} == {"uplink": arrived[0], "access": arrived[1]}
    assert {name: packets.value(port=name, direction="tx")
            for name in ("uplink", "access")} == report["ports"]
    dropped: Counter[str] = Counter()
    for key, value in families["portico_port_drops_total"].samples.items():
        dropped[dict(key)["reason"]] += int(value)
    assert dict(dropped) == report["drops"]
    assert families["portico_stage_packets_total"].by("stage") == {
        s: c["packets"] for s, c in report["stages"].items()}
    assert families["portico_nat_bindings"].value() == len(gateway.nat.live()) > 20
