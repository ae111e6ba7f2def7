"""The ``flowcache`` workload: it runs in a tiny setting, reports the documented shape,
and its check between the cache and the dict peer catches a disagreement.

No timing is asserted: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest

from bench import harness
from bench.flowcache import (
    MEMORY_TARGET,
    NOW,
    TENANTS,
    FlowcacheSettings,
    dict_keys,
    dict_lookup,
    flatness,
    flowcache_target_lines,
    format_flowcache,
    make_flows,
    run_flowcache,
    verify,
)
from bench.workloads import MismatchError
from portico.datapath.flowcache import FlowCache, capacity_for

TINY = FlowcacheSettings(flows=(64, 256), batches=(32, 128), packets=512, dict_sample=100,
                         repeats=1)
KEYS = {"name", "flows", "batch", "packets", "pps", "ns_per_packet", "hit_rate", "insert_fps",
        "insert_failures", "capacity", "memory_bytes", "bytes_per_flow", "peers",
        "peer_packets", "ratios"}


@pytest.fixture(autouse=True)
def keep_affinity():  # type: ignore[no-untyped-def]  # run_bench pins to one CPU
    allowed = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, allowed)


@pytest.fixture(scope="module")
def entries() -> list[dict]:
    return run_flowcache(TINY)


def filled(flows: int) -> tuple[FlowCache, dict[tuple[int, ...], int], np.ndarray]:
    """A cache holding ``flows`` flows, the dict of what it holds, and the flows' records."""
    meta = make_flows(flows)
    cache = FlowCache(capacity_for(flows), seed=1)
    rows = np.arange(flows, dtype=np.intp)
    placed = cache.insert(meta, rows, rows.astype(np.int32), None, NOW)
    table = {k: e for k, e in zip(dict_keys(meta), placed.tolist(), strict=True) if e >= 0}
    return cache, table, meta


def test_flows_are_distinct_and_spread_over_tenants() -> None:
    meta = make_flows(400)
    assert len(meta) == 400
    assert len(set(dict_keys(meta))) == 400
    assert np.bincount(meta["tenant"]).tolist() == [400 // TENANTS] * TENANTS
    # the tenants share their 5-tuples: the tenant is what tells their flows apart
    assert len({key[1:] for key in dict_keys(meta)}) == 400 // TENANTS
    with pytest.raises(ValueError):
        make_flows(402)


def test_run_reports_every_flow_count_and_batch(entries: list[dict]) -> None:
    assert [(e["flows"], e["batch"]) for e in entries] == [(64, 32), (64, 128), (256, 32),
                                                           (256, 128)]
    for e in entries:
        assert set(e) >= KEYS
        assert e["name"] == "flowcache" and e["packets"] == 512
        assert e["pps"] > 0 and e["insert_fps"] > 0 and e["ns_per_packet"] > 0
        assert e["capacity"] == capacity_for(e["flows"])
        assert e["memory_bytes"] == FlowCache(e["capacity"]).nbytes
        assert e["bytes_per_flow"] == pytest.approx(e["memory_bytes"] / e["flows"], abs=0.1)
        assert 0 < e["hit_rate"] <= 1
        assert 0 <= e["insert_failures"] < e["flows"]
        if e["insert_failures"] == 0:  # every packet's flow is in the table
            assert e["hit_rate"] == 1
        assert e["peer_packets"] == {"dict": 100}
        assert set(e["peers"]) == set(e["ratios"]) == {"dict"} and e["peers"]["dict"] > 0


def test_table_and_target_lines(entries: list[dict]) -> None:
    lines = format_flowcache(entries)
    assert sum(line.lstrip().startswith(("64 ", "256 ")) for line in lines) == 4
    assert set(flatness(entries)) == {32, 128}
    targets = flowcache_target_lines(entries)
    assert "not measured" in targets[0]  # no 1M flows in the tiny run
    assert sum("nearly flat" in line for line in targets) == 2
    flows, budget = MEMORY_TARGET
    big = [{**entries[-1], "flows": flows, "memory_bytes": budget},
           {**entries[-1], "flows": flows, "memory_bytes": budget + 1}]
    assert flowcache_target_lines(big[:1])[0].endswith(", met")
    assert flowcache_target_lines(big[1:])[0].endswith(", MISSED")
    assert format_flowcache([]) == flowcache_target_lines([]) == []


def test_verify_passes_when_the_dict_holds_what_the_cache_holds() -> None:
    cache, table, meta = filled(256)
    traffic = meta[np.random.default_rng(0).integers(0, 256, 300)]
    verify(cache, table, traffic, NOW + 1)
    assert dict_lookup(table, traffic) == cache.lookup(
        traffic, np.arange(300, dtype=np.intp), NOW + 1).tolist()


def test_verify_catches_a_disagreement() -> None:
    cache, table, meta = filled(256)
    forgetful = dict(table)
    del forgetful[next(iter(forgetful))]
    with pytest.raises(MismatchError, match="packet 0"):
        verify(cache, forgetful, meta, NOW + 1)
    wrong = {key: entry + 1 for key, entry in table.items()}
    with pytest.raises(MismatchError):
        verify(cache, wrong, meta, NOW + 1)


def test_verify_catches_a_peer_that_ignores_the_tenant() -> None:
    cache, table, meta = filled(256)
    careless = dict(table)
    for key, entry in table.items():  # also answers for every other tenant
        careless[(key[0] + TENANTS, *key[1:])] = entry
    with pytest.raises(MismatchError, match="tenant with no flows"):
        verify(cache, careless, meta, NOW + 1)


def test_harness_runs_and_reports_the_workload() -> None:
    assert "flowcache" in harness.ALL_WORKLOADS
    settings = harness.Settings(packets=256, batches=(32,), repeats=1, flowcache=TINY)
    report = harness.run_bench(settings, ("flowcache",))
    assert {e["name"] for e in report["workloads"]} == {"flowcache"}
    table = harness.format_table(report)
    assert "flowcache: lookups of 512 packets" in table
    assert any(line.startswith("flowcache: ") for line in harness.target_lines(report))


def test_batch_option_applies_to_the_workload() -> None:
    parser = argparse.ArgumentParser()
    harness.add_arguments(parser)
    quick = harness.settings_from_args(parser.parse_args(["--quick"]))
    assert quick.flowcache == harness.QUICK.flowcache
    assert harness.FULL.flowcache.flows == (1_000, 10_000, 100_000, 1_000_000)
    chosen = harness.settings_from_args(parser.parse_args(["--quick", "--batch", "64"]))
    assert chosen.flowcache.batches == (64,)
    assert chosen.flowcache.flows == harness.QUICK.flowcache.flows
