"""The ``flowcache`` workload: the flow cache's lookups, inserts and memory against its size.

Issue 4's ``pipeline-flows`` figures for the table alone
(``portico.datapath.flowcache.FlowCache``): the cost per packet should stay
nearly flat from 1k to 1M flows, and 1M cached flows should fit in 1 GiB.

For each flow count F, the flows are F distinct IPv4 TCP/UDP flows made by
``portico.gen.generate`` and parsed: F / ``TENANTS`` distinct 5-tuples, each
repeated in every one of ``TENANTS`` tenants (tenants reuse addresses, so the
tenant must be part of the key). The table is
``FlowCache(capacity_for(F))`` (load <= 0.5). The run measures:

* **insert**: new flows per second, all F flows inserted into the empty table
  in batches of each size, with one ``now`` (so none is evicted: a flow whose
  bucket is full is an insert failure, counted and reported). The table is
  filled once untimed first (its pages are mapped, as a running gateway's
  are) and emptied with ``flush`` outside the timed region before each repeat.
* **lookup**: packets per second of ``lookup`` on the filled table, over
  ``packets`` packets whose flows are drawn uniformly from the F flows (the
  rows of one metadata array, cut into batches of each size). Every packet's
  flow was inserted, so the hit rate is 1 less the insert failures' share; it
  is measured (the lookups' results) and reported. ``ns_per_packet`` is the
  cost per packet: the "nearly flat" curve against F.
* **memory**: ``FlowCache.nbytes`` and bytes per flow.

The peer is a Python dict keyed by the flow's ``(tenant, source, destination,
protocol, sport, dport)`` tuple, holding every flow the cache holds (its entry
index as the value), looking up the first ``dict_sample`` packets of the same
traffic: the columns to lists, a tuple per packet, ``dict.get``. Before any
figure is reported the run checks, on those packets, that the dict and the
cache agree on hit or miss and on the entry, and that both miss every one of
them when the tenant is changed to one with no flows (``MismatchError``
otherwise).

Entries (``--json``), one per flow count and batch size::

    {"name": "flowcache", "flows": F, "batch": B, "packets": P, "pps": X,
     "ns_per_packet": X, "hit_rate": X, "insert_fps": X, "insert_failures": N,
     "capacity": C, "memory_bytes": N, "bytes_per_flow": X,
     "peers": {"dict": X}, "peer_packets": {"dict": N}, "ratios": {"dict": X}}

The flatness figure is ``ns_per_packet`` at the largest F over that at the
smallest, per batch size (``flatness``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.timing import median_seconds

TENANTS = 4  # every 5-tuple is repeated in this many tenants
MEMORY_TARGET = (1_000_000, 1 << 30)  # issue 4: 1M cached flows in <= 1 GiB
NOW = 1_000 * 1_000_000_000  # the clock (ns) of the inserts; lookups run 1 ns later


@dataclass(frozen=True)
class FlowcacheSettings:
    flows: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    batches: tuple[int, ...] = (256, 4096)
    packets: int = 1 << 20  # lookups per timed pass
    dict_sample: int = 100_000
    repeats: int = 5
    seed: int = 4


FULL_FLOWCACHE = FlowcacheSettings()
QUICK_FLOWCACHE = FlowcacheSettings(flows=(1_000, 1_000_000), packets=1 << 18,
                                    dict_sample=20_000, repeats=3)


def make_flows(count: int, seed: int = 4) -> np.ndarray:
    """Parsed metadata records of ``count`` distinct flows (a multiple of ``TENANTS``)."""
    from portico.datapath.stages.parse import parse
    from portico.gen import TrafficSpec, generate

    if count <= 0 or count % TENANTS:
        raise ValueError(f"flows must be a positive multiple of {TENANTS}, got {count}")
    tuples = count // TENANTS
    # Uniform traffic visits its flows with a stride coprime to their number, so
    # the first `tuples` packets are `tuples` distinct flows, each once.
    spec = TrafficSpec(packets=tuples, flows=tuples, seed=seed, mix={"tcp": 0.5, "udp": 0.5})
    parts = []
    for batch in generate(spec, batch_size=1 << 16):
        parse(batch)
        parts.append(batch.meta.copy())
    base = np.concatenate(parts)
    meta = np.tile(base, TENANTS)
    meta["tenant"] = np.repeat(np.arange(TENANTS, dtype=meta["tenant"].dtype), tuples)
    return meta


def dict_keys(meta: np.ndarray) -> list[tuple[int, ...]]:
    """The dict peer's key of every record: (tenant, src, dst, protocol, sport, dport)."""
    return list(zip(meta["tenant"].tolist(), meta["src4"].tolist(), meta["dst4"].tolist(),
                    meta["protocol"].tolist(), meta["sport"].tolist(), meta["dport"].tolist(),
                    strict=True))


def dict_lookup(table: dict[tuple[int, ...], int], meta: np.ndarray) -> list[int]:
    """The peer: each record's entry in ``table``, -1 where it has none."""
    get = table.get
    return [get(key, -1) for key in dict_keys(meta)]


def _cuts(count: int, size: int) -> list[np.ndarray]:
    rows = np.arange(count, dtype=np.intp)
    return [rows[first:first + size] for first in range(0, count, size)]


def run_flowcache(settings: FlowcacheSettings,
                  status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    rng = np.random.default_rng(settings.seed)
    entries: list[dict[str, Any]] = []
    for flows in settings.flows:
        entries += _run_one(flows, settings, rng, status)
    return entries


def _run_one(flows: int, settings: FlowcacheSettings, rng: np.random.Generator,
             status: Callable[[str], None]) -> list[dict[str, Any]]:
    """The entries of one flow count, one per batch size."""
    from portico.datapath.flowcache import FlowCache, capacity_for

    entries: list[dict[str, Any]] = []
    status(f"flowcache: making {flows} flows")
    meta = make_flows(flows, settings.seed)
    traffic = meta[rng.integers(0, flows, settings.packets)]
    cache = FlowCache(capacity_for(flows), seed=settings.seed)
    actions = np.arange(flows, dtype=np.int32)
    inserts: dict[int, tuple[float, int]] = {}
    placed = np.empty(0, dtype=np.int64)
    result: object = placed
    for size in settings.batches:
        status(f"flowcache: {flows} flows, inserting at batch {size}")
        cuts = _cuts(flows, size)

        def fill(cuts: list[np.ndarray] = cuts) -> np.ndarray:
            return np.concatenate([cache.insert(meta, rows, actions[rows], None, NOW)
                                   for rows in cuts])

        fill()  # map the table's pages; compile or load the kernels
        times = []
        for _ in range(settings.repeats):
            cache.flush()
            seconds, result = median_seconds(fill, 1)
            times.append(seconds)
        placed = np.asarray(result)
        inserts[size] = (flows / float(np.median(times)), int(np.count_nonzero(placed < 0)))
    # `placed` is the table as the last fill left it; the lookups run on it.
    status(f"flowcache: {flows} flows, the dict peer")
    table = dict(zip(dict_keys(meta), placed.tolist(), strict=True))
    if len(table) != flows:
        from bench.workloads import MismatchError

        raise MismatchError(f"flowcache: the {flows} generated flows are not distinct")
    for key in [key for key, entry in table.items() if entry < 0]:
        del table[key]  # the insert failures: the cache does not hold them either
    sample = min(settings.dict_sample, settings.packets)
    seconds, _ = median_seconds(lambda: dict_lookup(table, traffic[:sample]),
                                settings.repeats)
    dict_pps = sample / seconds
    verify(cache, table, traffic[:sample], NOW + 1)
    everything = cache.lookup(traffic, np.arange(settings.packets, dtype=np.intp), NOW + 1)
    hit_rate = float(np.mean(everything >= 0))
    for size in settings.batches:
        status(f"flowcache: {flows} flows, lookups at batch {size}")
        cuts = _cuts(settings.packets, size)

        def look(cuts: list[np.ndarray] = cuts) -> None:
            for rows in cuts:
                cache.lookup(traffic, rows, NOW + 1)

        look()
        pps = settings.packets / median_seconds(look, settings.repeats)[0]
        insert_fps, failures = inserts[size]
        entries.append({
            "name": "flowcache", "flows": flows, "batch": size,
            "packets": settings.packets, "pps": round(pps),
            "ns_per_packet": round(1e9 / pps, 1), "hit_rate": round(hit_rate, 5),
            "insert_fps": round(insert_fps), "insert_failures": failures,
            "capacity": cache.capacity, "memory_bytes": cache.nbytes,
            "bytes_per_flow": round(cache.nbytes / flows, 1),
            "peers": {"dict": round(dict_pps)}, "peer_packets": {"dict": sample},
            "ratios": {"dict": round(pps / dict_pps, 1)},
        })
    return entries


def verify(cache: Any, table: dict[tuple[int, ...], int], sample: np.ndarray,
           now: int) -> None:
    """Raise MismatchError unless the cache and the dict agree on every sampled packet.

    They must return the same entry (or both miss) for each packet, and both
    miss every packet once its tenant is one that holds no flows.
    """
    from bench.workloads import MismatchError

    rows = np.arange(len(sample), dtype=np.intp)
    got = cache.lookup(sample, rows, now).tolist()
    want = dict_lookup(table, sample)
    if got != want:
        bad = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        raise MismatchError(f"flowcache: packet {bad}: the cache says entry {got[bad]}, "
                            f"the dict {want[bad]} (-1: a miss)")
    strangers = sample.copy()
    strangers["tenant"] += TENANTS
    if np.any(cache.lookup(strangers, rows, now) >= 0):
        raise MismatchError("flowcache: the cache hit a packet of a tenant with no flows")
    if any(entry >= 0 for entry in dict_lookup(table, strangers)):
        raise MismatchError("flowcache: the dict hit a packet of a tenant with no flows")


def flatness(entries: Sequence[dict[str, Any]]) -> dict[int, tuple[int, int, float]]:
    """Per batch size: (fewest flows, most flows, ns/packet at most / at fewest)."""
    out = {}
    looks = [e for e in entries if e["name"] == "flowcache"]
    for size in dict.fromkeys(e["batch"] for e in looks):
        at = sorted((e for e in looks if e["batch"] == size), key=lambda e: e["flows"])
        if len(at) > 1:
            out[size] = (at[0]["flows"], at[-1]["flows"],
                         at[-1]["ns_per_packet"] / at[0]["ns_per_packet"])
    return out


def format_flowcache(entries: Sequence[dict[str, Any]]) -> list[str]:
    looks = [e for e in entries if e["name"] == "flowcache"]
    if not looks:
        return []
    first = looks[0]
    lines = ["", f"flowcache: lookups of {first['packets']} packets drawn uniformly from the "
             f"flows, table filled with every flow ({TENANTS} tenants sharing 5-tuples); "
             "inserts: every flow into an empty table",
             f"{'flows':>9}{'batch':>7}{'capacity':>10}{'memory':>10}{'B/flow':>8}"
             f"{'hit rate':>10}{'lookup pps':>13}{'ns/pkt':>8}{'insert/s':>12}"
             f"{'dict pps':>11}{'x dict':>8}"]
    for e in looks:
        lines.append(f"{e['flows']:>9}{e['batch']:>7}{e['capacity']:>10}"
                     f"{e['memory_bytes'] / 2**20:>6.1f} MiB{e['bytes_per_flow']:>8.0f}"
                     f"{e['hit_rate']:>10.2%}{e['pps'] / 1e6:>11.2f} M{e['ns_per_packet']:>8}"
                     f"{e['insert_fps'] / 1e6:>10.2f} M{e['peers']['dict'] / 1e6:>9.2f} M"
                     f"{e['ratios']['dict']:>8,.1f}")
    lines.append(f"dict: a Python dict keyed by (tenant, src, dst, protocol, sport, dport) "
                 f"over the first {first['peer_packets']['dict']} packets; entry or miss "
                 "checked equal to the cache's on them, and both miss them in a tenant "
                 "with no flows")
    misses = [f"{e['insert_failures']} of {e['flows']}" for e in looks
              if e["insert_failures"] and e["batch"] == first["batch"]]
    if misses:
        lines.append("insert failures (a full bucket; those flows' packets miss): "
                     + ", ".join(misses))
    for size, (low, high, ratio) in flatness(looks).items():
        lines.append(f"cost per packet, {high} flows against {low}, batch {size}: "
                     f"{ratio:.2f}x")
    return lines


def flowcache_target_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    looks = [e for e in entries if e["name"] == "flowcache"]
    if not looks:
        return []
    flows, budget = MEMORY_TARGET
    lines = []
    at = [e for e in looks if e["flows"] >= flows]
    if at:
        e = at[0]
        verdict = "met" if e["memory_bytes"] <= budget else "MISSED"
        lines.append(f"flowcache: {flows} flows in <= {budget >> 30} GiB: "
                     f"{e['memory_bytes'] / 2**20:.0f} MiB for {e['flows']} flows "
                     f"({e['bytes_per_flow']:.0f} B/flow, hit rate {e['hit_rate']:.2%}), "
                     f"{verdict}")
    else:
        lines.append(f"flowcache: {flows} flows in <= {budget >> 30} GiB: not measured "
                     f"(at most {max(e['flows'] for e in looks)} flows in this run)")
    for size, (low, high, ratio) in flatness(looks).items():
        lines.append(f"flowcache: cost per packet nearly flat from 1k to 1M flows: "
                     f"ns/packet at {high} flows / at {low}, batch {size}: {ratio:.2f}x "
                     "(no numeric target)")
    return lines
