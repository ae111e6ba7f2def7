"""pipeline-hit, -miss, -flows: each runs on the gateway, checks itself, and reports its shape.

Small sizes and no timing assertions: what is held here is that the workloads
run end to end through ``Gateway``, that their checks pass on a correct
gateway and fail on a wrong packet, and the keys the harness prints from.
"""

from __future__ import annotations

import argparse

import pytest

from bench import harness, pipeline
from bench.workloads import MismatchError

HIT = pipeline.PipelineSettings(packets=512, flows=64, batches=(64, 128), repeats=1,
                                samples=(("struct", 512), ("dpkt", 64), ("scapy", 16)))
MISS = pipeline.MissSettings(flows=300, batches=(64, 128), repeats=1, check=300)
FLOWS = pipeline.FlowsSettings(flows=(50, 200), packets=400, batches=(64,), repeats=1, check=400,
                               memory_flows=70_000)


def test_pipeline_hit_every_packet_hits_and_matches_the_peers() -> None:
    entries = pipeline.run_pipeline(HIT)  # each batch size replays the packets as received
    assert [(e["name"], e["batch"], e["hit_rate"]) for e in entries] == [
        ("pipeline-hit", 64, 1.0), ("pipeline-hit", 128, 1.0)]
    entry = entries[0]
    assert entry["pps"] > 0
    assert entry["opened"] == {"flows": 64, "syn_acks": 32}  # bench_spec: TCP/UDP 50/50
    assert set(entry["peers"]) == set(entry["ratios"]) == {"struct", "dpkt", "scapy"}
    assert entry["peer_packets"] == {"struct": 512, "dpkt": 64, "scapy": 16}
    assert pipeline.pipeline_target_lines([entry]) == []  # the targets are at batch 256
    assert any("pipeline-hit: the gateway" in line for line in pipeline.format_pipeline([entry]))


def test_pipeline_hit_target_lines_at_batch_256() -> None:
    entry = {"name": "pipeline-hit", "batch": 256, "pps": 6_000_000,
             "ratios": {"struct": 30.0, "dpkt": 40.0, "scapy": 2000.0}}
    lines = pipeline.pipeline_target_lines([entry])
    assert lines[0] == "pipeline-hit >= 5 Mpps at batch 256: 6.00 Mpps, met"
    assert "pipeline-hit >= 50x dpkt at batch 256: 40x, MISSED" in lines


def test_a_wrong_packet_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # The peers now write another upstream MAC than the gateway's config says.
    monkeypatch.setattr(pipeline, "OUT_MACS", b"\x02\x00\x00\x00\x00\x99" + pipeline.OUT_MACS[6:])
    with pytest.raises(MismatchError, match="portico packet 0 differs"):
        pipeline.run_pipeline(HIT)


def test_the_tables_are_sized_for_the_flows() -> None:
    gateway = pipeline.make_gateway(100_000, headroom=2)
    assert gateway.nat.capacity == gateway.conns.capacity == 100_000
    assert gateway.cache.capacity >= 4 * 100_000
    stages = [*gateway.pipeline.stages, *gateway.pipeline.finishers]
    held = [value for stage in stages for value in vars(stage).values()]
    assert any(value is gateway.nat for value in held)
    assert any(value is gateway.conns for value in held)


def test_pipeline_miss_makes_every_flow_and_checks_it() -> None:
    entries = pipeline.run_miss(MISS)
    assert [(e["name"], e["batch"]) for e in entries] == [("pipeline-miss", 64),
                                                          ("pipeline-miss", 128)]
    entry = entries[0]
    assert entry["flows"] == 300 and entry["tcp_syn"] + entry["udp"] == 300
    assert entry["fps"] > 0 and entry["checked_packets"] == 300
    lines = pipeline.format_pipeline(entries) + pipeline.pipeline_target_lines(entries)
    assert any(line.startswith("pipeline-miss >= 300k new flows/s at batch 64") for line in lines)


def test_pipeline_miss_refuses_a_wrong_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "OUT_MACS", b"\x02\x00\x00\x00\x00\x99" + pipeline.OUT_MACS[6:])
    with pytest.raises(MismatchError, match="pipeline-miss: portico packet 0 differs"):
        pipeline.run_miss(MISS)


def test_pipeline_miss_refuses_a_flow_not_made(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline.make_gateway

    def forgetful(flows: int, **kwargs: int) -> object:
        gateway = real(flows, **kwargs)
        gateway.datapath.counters["misses"] -= 1  # as if one packet had hit
        return gateway

    monkeypatch.setattr(pipeline, "make_gateway", forgetful)
    with pytest.raises(MismatchError, match="'misses': 299"):
        pipeline.run_miss(MISS)


def test_pipeline_flows_reports_cost_and_memory() -> None:
    entries = pipeline.run_flows(FLOWS)
    flows = [e for e in entries if e["name"] == "pipeline-flows"]
    assert [e["flows"] for e in flows] == [50, 200]
    for e in flows:
        assert e["hit_rate"] == 1.0 and e["ns_per_packet"] > 0
        parts = e["state_bytes"]
        assert parts["total"] == parts["flow_cache"] + parts["nat"] + parts["conntrack"]
        assert e["actions"]["count"] > 0 and e["actions"]["bytes"] > 0
    (memory,) = [e for e in entries if e["name"] == "pipeline-flows-memory"]
    assert memory["flows"] == 70_000 and memory["actions_bytes"] > 0
    assert memory["state_bytes"]["nat"] > flows[0]["state_bytes"]["nat"]  # 70k > 65,536
    lines = pipeline.format_pipeline(entries) + pipeline.pipeline_target_lines(entries)
    assert any(line.startswith("cost per packet, 200 flows against 50") for line in lines)
    assert any(line.startswith("tables for 70,000 flows") for line in lines)


def test_memory_target_line() -> None:
    entry = {"name": "pipeline-flows-memory", "flows": 1_000_000, "actions_bytes": 2**26,
             "state_bytes": {"flow_cache": 2**28, "nat": 2**28, "conntrack": 2**27,
                             "total": 5 * 2**27}}
    (line,) = pipeline.pipeline_target_lines([entry])
    assert line == ("pipeline-flows 1,000,000 cached flows <= 1 GiB (flow cache + NAT + "
                    "conntrack): 640 MiB, met; with the action table 704 MiB, met")


def test_the_harness_knows_the_workloads() -> None:
    for name in ("pipeline-hit", "pipeline-miss", "pipeline-flows"):
        assert name in harness.ALL_WORKLOADS
    args = argparse.Namespace(quick=True, packets=None, batch=[128])
    settings = harness.settings_from_args(args)
    assert settings.pipeline_miss == pipeline.QUICK_MISS.__class__(
        **{**vars(pipeline.QUICK_MISS), "batches": (128,)})
    assert settings.pipeline_flows.batches == (128,)
    assert settings.pipeline_flows.flows == pipeline.QUICK_FLOWS.flows
