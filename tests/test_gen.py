"""portico gen: synthetic traffic is deterministic, shaped as asked, and valid.

Packets are checked with independent decoders (Scapy for checksums, dpkt for
flow keys, tshark for the file), never with Portico's own parser.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
from pathlib import Path

import dpkt
import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether

from portico import gen
from portico.gen import SpecError, TrafficSpec, generate


def packets_of(spec: TrafficSpec, **kwargs: int) -> list[bytes]:
    return [p for batch in generate(spec, **kwargs) for p in batch.packets()]


def flow_key(frame: bytes) -> tuple:
    """(version, src, dst, protocol, sport, dport, vid) decoded by dpkt."""
    eth = dpkt.ethernet.Ethernet(frame)
    vid = eth.vlan_tags[0].id if getattr(eth, "vlan_tags", None) else 0
    ip = eth.data
    l4 = ip.data
    if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
        ports = (l4.sport, l4.dport)
    else:  # ICMP / ICMPv6 echo: the ident
        ident = int.from_bytes(bytes(l4)[4:6], "big")
        ports = (ident, ident)
    proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
    return (ip.v, ip.src, ip.dst, proto, *ports, vid)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="portico gen")
    gen.add_arguments(parser)
    return gen.run(parser.parse_args(list(argv)))


# ---------------------------------------------------------------- determinism
def test_same_seed_gives_same_bytes_whatever_the_batching() -> None:
    spec = TrafficSpec(packets=3000, flows=200, seed=7, sizes="imix", ipv6_share=0.3,
                       distribution="zipf", vlans=3, ports=2)
    first = packets_of(spec, batch_size=256)
    assert first == packets_of(spec, batch_size=1000)
    assert first == packets_of(TrafficSpec(packets=3000, flows=200, seed=7, sizes="imix",
                                           ipv6_share=0.3, distribution="zipf", vlans=3,
                                           ports=2))


def test_other_seed_gives_other_bytes() -> None:
    assert packets_of(TrafficSpec(packets=100, flows=10, seed=1)) != packets_of(
        TrafficSpec(packets=100, flows=10, seed=2))


def test_cli_output_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    args = ["--packets", "2000", "--flows", "50", "--seed", "3", "--ports", "2", "--quiet"]
    assert run_cli(str(tmp_path / "a.pcapng"), *args) == 0
    assert run_cli(str(tmp_path / "b.pcapng"), *args) == 0
    assert (tmp_path / "a.pcapng").read_bytes() == (tmp_path / "b.pcapng").read_bytes()


# ---------------------------------------------------------------- shape
def test_uniform_gives_every_flow_an_equal_share() -> None:
    frames = packets_of(TrafficSpec(packets=5000, flows=400, seed=1))
    counts = collections.Counter(flow_key(f) for f in frames)
    assert len(counts) == 400
    assert set(counts.values()) <= {5000 // 400, 5000 // 400 + 1}


def test_all_flows_seen_when_packets_equal_flows() -> None:
    frames = packets_of(TrafficSpec(packets=1000, flows=1000, seed=4, ipv6_share=0.5))
    assert len({flow_key(f) for f in frames}) == 1000


def test_zipf_gives_rank_shares() -> None:
    flows, packets, exponent = 100, 40_000, 1.0
    frames = packets_of(TrafficSpec(packets=packets, flows=flows, seed=2,
                                    distribution="zipf", zipf_exponent=exponent))
    counts = sorted(collections.Counter(flow_key(f) for f in frames).values(), reverse=True)
    harmonic = sum(r ** -exponent for r in range(1, flows + 1))
    for rank in (1, 2, 10):
        expected = packets * rank ** -exponent / harmonic
        assert abs(counts[rank - 1] - expected) < 0.1 * expected + 30


def test_protocol_mix_and_ipv6_share_by_flow() -> None:
    frames = packets_of(TrafficSpec(packets=2000, flows=2000, seed=5, ipv6_share=0.25,
                                    mix={"tcp": 0.5, "udp": 0.3, "icmp": 0.2}))
    keys = {flow_key(f) for f in frames}
    protocols = collections.Counter(k[3] for k in keys)
    assert protocols[6] == 1000
    assert protocols[17] == 600
    assert protocols[1] + protocols[58] == 400
    assert sum(1 for k in keys if k[0] == 6) == 500


@pytest.mark.parametrize(("sizes", "allowed"), [("64", {64}), ("fixed:200", {200}),
                                                 ("imix", {64, 576, 1500})])
def test_sizes(sizes: str, allowed: set[int]) -> None:
    frames = packets_of(TrafficSpec(packets=6000, flows=100, seed=1, sizes=sizes,
                                    mix={"tcp": 1, "udp": 1}))
    lengths = collections.Counter(len(f) for f in frames)
    assert set(lengths) == allowed
    if sizes == "imix":  # 7:4:1
        assert abs(lengths[64] / 6000 - 7 / 12) < 0.03
        assert abs(lengths[576] / 6000 - 4 / 12) < 0.03


def test_frames_grow_to_hold_their_headers() -> None:
    frames = packets_of(TrafficSpec(packets=200, flows=20, seed=1, ipv6_share=1.0, vlans=2,
                                    mix={"tcp": 1.0}))
    assert {len(f) for f in frames} == {14 + 4 + 40 + 20 + 1}


def test_vlans_and_ports() -> None:
    spec = TrafficSpec(packets=3000, flows=600, seed=9, vlans=5, ports=3)
    vids = set()
    ports_of_flow: dict[tuple, set[int]] = collections.defaultdict(set)
    for batch in generate(spec):
        for row in range(batch.count):
            key = flow_key(batch.packet(row))
            vids.add(key[-1])
            ports_of_flow[key].add(int(batch.meta["port"][row]))
    assert vids == {1, 2, 3, 4, 5}
    assert all(len(p) == 1 for p in ports_of_flow.values())  # a flow stays on its port
    spread = collections.Counter(next(iter(p)) for p in ports_of_flow.values())
    assert spread == {0: 200, 1: 200, 2: 200}


def test_timestamps_advance_at_the_rate() -> None:
    batch = next(generate(TrafficSpec(packets=100, flows=3, rate=250_000)))
    assert set(np.diff(batch.meta["timestamp"][:100])) == {4000}


# ---------------------------------------------------------------- validity
_CHECKSUMMED = ((IP, "chksum"), (TCP, "chksum"), (UDP, "chksum"), (ICMP, "chksum"),
                (ICMPv6EchoRequest, "cksum"))


def assert_checksums_valid_by_scapy(frame: bytes) -> None:
    """Each checksum Scapy finds equals the one Scapy computes afresh."""
    parsed = Ether(frame)
    fresh = Ether(frame)
    checked = 0
    for layer, name in _CHECKSUMMED:
        if layer in fresh:
            setattr(fresh[layer], name, None)
            checked += 1
    rebuilt = Ether(bytes(fresh))
    for layer, name in _CHECKSUMMED:
        if layer in parsed:
            assert getattr(parsed[layer], name) == getattr(rebuilt[layer], name), (
                f"{layer.__name__} checksum wrong in {frame.hex()}")
    assert checked >= 1 + (IP in parsed)


@pytest.mark.parametrize("vlans", [0, 3])
def test_every_shape_has_valid_checksums_by_scapy(vlans: int) -> None:
    spec = TrafficSpec(packets=600, flows=300, seed=11, ipv6_share=0.5, vlans=vlans,
                       sizes="imix", mix={"tcp": 1, "udp": 1, "icmp": 1})
    seen = set()
    for frame in packets_of(spec):
        parsed = Ether(frame)
        assert (Dot1Q in parsed) == bool(vlans)
        shape = (IPv6 in parsed, TCP in parsed, UDP in parsed, len(frame))
        if shape in seen:
            continue
        seen.add(shape)
        assert_checksums_valid_by_scapy(frame)
    assert len({s[:3] for s in seen}) == 6  # tcp/udp/icmp over v4 and v6


def test_random_sample_has_valid_checksums_by_scapy() -> None:
    spec = TrafficSpec(packets=20_000, flows=5000, seed=12, ipv6_share=0.4, sizes="imix",
                       distribution="zipf")
    frames = packets_of(spec)
    for index in np.random.default_rng(0).choice(len(frames), 150, replace=False):
        assert_checksums_valid_by_scapy(frames[index])


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_the_file_clean(tmp_path: Path) -> None:
    out = tmp_path / "gen.pcapng"
    assert run_cli(str(out), "--packets", "3000", "--flows", "300", "--ipv6", "0.3",
                   "--vlans", "2", "--ports", "3", "--sizes", "imix", "--quiet") == 0
    checks = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
              "-o", "udp.check_checksum:TRUE"]
    fields = subprocess.run(
        ["tshark", "-r", str(out), *checks, "-T", "fields", "-e", "frame.interface_name",
         "-e", "_ws.expert.message"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(fields) == 3000
    names = collections.Counter(line.split("\t")[0] for line in fields)
    assert set(names) == {"port0", "port1", "port2"}
    assert [line for line in fields if line.split("\t")[1]] == []  # no expert messages


def test_pcap_format_by_suffix(tmp_path: Path) -> None:
    out = tmp_path / "gen.pcap"
    assert run_cli(str(out), "--packets", "10", "--quiet") == 0
    assert out.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(("option", "value"), [
    ("--flows", "0"), ("--packets", "-1"), ("--ipv6", "1.5"), ("--vlans", "5000"),
    ("--ports", "0"), ("--zipf-exponent", "0"), ("--seed", "-3"), ("--rate", "0"),
    ("--mix", "tcp=0,udp=0"),
])
def test_bad_values_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    assert run_cli(str(tmp_path / "x.pcapng"), option, value) == 2
    assert option in capsys.readouterr().err
    assert not (tmp_path / "x.pcapng").exists()


@pytest.mark.parametrize(("option", "value"), [
    ("--mix", "tcp=0.5,sctp=0.5"), ("--mix", "tcp=lots"), ("--sizes", "fixed:10"),
    ("--sizes", "huge"), ("--distribution", "pareto"), ("--flows", "many"),
])
def test_malformed_options_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli(str(tmp_path / "x.pcapng"), option, value)
    assert exited.value.code == 2
    assert option in capsys.readouterr().err


def test_pcap_with_several_ports_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(tmp_path / "x.pcap"), "--ports", "2") == 2
    assert "--ports" in capsys.readouterr().err


def test_unwritable_output_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(tmp_path / "missing" / "x.pcapng"), "--packets", "5") == 1
    assert "missing" in capsys.readouterr().err


def test_spec_errors_name_the_option() -> None:
    with pytest.raises(SpecError) as err:
        TrafficSpec(packets=1, flows=1, sizes="fixed:99999")
    assert err.value.option == "--sizes"


def test_quiet_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(tmp_path / "q.pcapng"), "--packets", "10", "--quiet") == 0
    assert capsys.readouterr() == ("", "")
