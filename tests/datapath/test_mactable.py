"""The learned MAC table: learning, moves, bounded eviction, isolation, and the tags it reports."""

from __future__ import annotations

import numpy as np
import pytest

from portico.control.model import parse_config
from portico.datapath.flowcache import NO_TAG
from portico.datapath.mactable import TAG_BASE, UNKNOWN, WAYS, MacTable
from portico.datapath.topology import NO_ATTACHMENT, Topology, compile_topology

CONFIG = """
ports: {p: {id: 1}, q: {id: 2}}
tenants:
  a:
    id: 1
    switches:
      lan:
        attach: [{port: p, vlan: 10}, {port: q, vlan: 10}]
        static_macs: [{mac: "02:00:00:00:0a:05", port: p, vlan: 10}]
    router:
      interfaces: [{switch: lan, addresses: [10.0.0.1/24], mac: "02:00:00:00:0a:01"}]
  b:
    id: 2
    switches:
      lan: {attach: [{port: p, vlan: 20}, {port: q, vlan: 20}]}
      quiet: {attach: [{port: p, vlan: 30}], mac_learning: false}
"""
HOST = 0x02000000_1001
STATIC = 0x02000000_0A05
ROUTER = 0x02000000_0A01


def setup(capacity: int = 64, config: str = CONFIG) -> tuple[Topology, MacTable, dict[str, int]]:
    t = compile_topology(parse_config(config))
    places = {f"{s.name}@{t.attachments[a].port}": a for s in t.segments for a in s.attachments}
    return t, MacTable(t, capacity=capacity, seed=1), places


def learn(macs: MacTable, segment: int, mac: int, attachment: int) -> None:
    macs.learn(np.array([segment]), np.array([mac], dtype=np.uint64), np.array([attachment]))


def locate(macs: MacTable, segment: int, mac: int) -> tuple[int, int]:
    where, tags = macs.locate(np.array([segment]), np.array([mac], dtype=np.uint64))
    return int(where[0]), int(tags[0])


def test_learn_locate_and_the_tags_of_each_answer() -> None:
    t, macs, at = setup()
    a = t.segment_of("a", "lan")
    # Unknown: tagged with the segment's "unknown" tag, so learning it re-decides the flow.
    assert locate(macs, a, HOST) == (NO_ATTACHMENT, TAG_BASE | (UNKNOWN + a))
    learn(macs, a, HOST, at["a.lan@1"])
    where, tag = locate(macs, a, HOST)
    assert where == at["a.lan@1"] and tag & ~0xFFFFFFF == TAG_BASE and tag & 0xFFFFFFF < UNKNOWN
    assert list(macs.take_changed_tags()) == [TAG_BASE | (UNKNOWN + a)]
    # Static entries are topology: no tag.
    assert locate(macs, a, STATIC) == (at["a.lan@1"], NO_TAG)
    assert macs.entries(a) == {HOST: at["a.lan@1"]}
    assert macs.counters(a) == {"learned": 1, "moved": 0, "evicted": 0, "refused": 0}


def test_a_move_reports_the_entry_tag_and_a_refresh_reports_nothing() -> None:
    t, macs, at = setup()
    a = t.segment_of("a", "lan")
    learn(macs, a, HOST, at["a.lan@1"])
    macs.take_changed_tags()
    _, tag = locate(macs, a, HOST)
    learn(macs, a, HOST, at["a.lan@1"])
    assert len(macs.take_changed_tags()) == 0
    learn(macs, a, HOST, at["a.lan@2"])
    assert list(macs.take_changed_tags()) == [tag]
    assert locate(macs, a, HOST) == (at["a.lan@2"], tag)
    assert macs.counters(a)["moved"] == 1


def test_a_full_bucket_evicts_its_least_recently_learned() -> None:
    t, macs, at = setup(capacity=WAYS)  # one bucket per segment
    a = t.segment_of("a", "lan")
    hosts = [HOST + i for i in range(WAYS)]
    macs.learn(np.full(WAYS, a), np.array(hosts, dtype=np.uint64), np.full(WAYS, at["a.lan@1"]))
    learn(macs, a, hosts[0], at["a.lan@1"])  # refreshed: hosts[1] is now the oldest
    _, oldest_tag = locate(macs, a, hosts[1])
    macs.take_changed_tags()
    learn(macs, a, HOST + 100, at["a.lan@2"])
    assert set(macs.entries(a)) == {*hosts[:1], *hosts[2:], HOST + 100}
    assert set(macs.take_changed_tags()) == {oldest_tag, TAG_BASE | (UNKNOWN + a)}
    assert macs.counters(a)["evicted"] == 1 and len(macs) == WAYS


def test_one_segment_flooding_sources_leaves_the_others_alone() -> None:
    t, macs, at = setup(capacity=WAYS)
    a, b = t.segment_of("a", "lan"), t.segment_of("b", "lan")
    learn(macs, b, HOST, at["b.lan@1"])
    spray = np.arange(1000, dtype=np.uint64) + np.uint64(0x02AA00000000)
    macs.learn(np.full(1000, a), spray, np.full(1000, at["a.lan@1"]))
    assert macs.entries(b) == {HOST: at["b.lan@1"]}
    assert len(macs.entries(a)) == WAYS and macs.counters(a)["evicted"] == 1000 - WAYS


def test_the_same_mac_in_two_tenants_is_two_entries() -> None:
    t, macs, at = setup()
    a, b = t.segment_of("a", "lan"), t.segment_of("b", "lan")
    learn(macs, a, HOST, at["a.lan@1"])
    learn(macs, b, HOST, at["b.lan@2"])
    assert locate(macs, a, HOST)[0] == at["a.lan@1"]
    assert locate(macs, b, HOST)[0] == at["b.lan@2"]


def test_what_is_never_learned() -> None:
    t, macs, at = setup()
    a, quiet = t.segment_of("a", "lan"), t.segment_of("b", "quiet")
    for mac in (0, 0x01005E000001, 0xFFFFFFFFFFFF):  # zero, multicast, broadcast
        learn(macs, a, mac, at["a.lan@1"])
    learn(macs, a, ROUTER, at["a.lan@1"])  # the router's own MAC, claimed from the wire
    learn(macs, a, STATIC, at["a.lan@2"])  # a static MAC from elsewhere: static wins
    learn(macs, a, STATIC, at["a.lan@1"])  # ... from its own place: fine, and not counted
    learn(macs, quiet, HOST, at["b.quiet@1"])  # mac_learning: false
    assert len(macs) == 0 and len(macs.take_changed_tags()) == 0
    assert macs.counters(a)["refused"] == 2
    assert locate(macs, a, STATIC) == (at["a.lan@1"], NO_TAG)
    assert locate(macs, quiet, HOST) == (NO_ATTACHMENT, NO_TAG)  # nothing will ever teach it


def test_entries_carry_over_to_the_next_topology_where_their_place_still_is() -> None:
    t, macs, at = setup()
    a, b = t.segment_of("a", "lan"), t.segment_of("b", "lan")
    learn(macs, a, HOST, at["a.lan@1"])
    learn(macs, a, HOST + 1, at["a.lan@2"])
    learn(macs, b, HOST, at["b.lan@2"])
    # Next config: tenant a loses port q, a new tenant comes first (ids shift).
    changed = CONFIG.replace("[{port: p, vlan: 10}, {port: q, vlan: 10}]", "[{port: p, vlan: 10}]")
    changed = changed.replace("tenants:\n", "tenants:\n  c: {id: 3, switches: {x: {}}}\n")
    t2 = compile_topology(parse_config(changed), generation=2)
    fresh = MacTable(t2, capacity=64, seed=2)
    fresh.carry_over(macs)
    a2, b2 = t2.segment_of("a", "lan"), t2.segment_of("b", "lan")
    assert (a2, b2) != (a, b)
    assert fresh.entries(a2) == {HOST: t2.attachment_at(1, 10)}
    assert fresh.entries(b2) == {HOST: t2.attachment_at(2, 20)}
    assert fresh.counters() == {"learned": 0, "moved": 0, "evicted": 0, "refused": 0}
    assert len(fresh.take_changed_tags()) == 0


def test_sizes_are_checked() -> None:
    t = compile_topology(parse_config(CONFIG))
    for capacity in (0, 4, 100):
        with pytest.raises(ValueError, match="power of two"):
            MacTable(t, capacity=capacity)
    with pytest.raises(ValueError, match="exceed"):
        MacTable(t, capacity=1 << 26)


def test_static_entries_are_found_among_many() -> None:
    statics = {0x02000000_0100 + 7 * i: "p" if i % 3 else "q" for i in range(37)}
    lines = "".join(f'\n          - {{mac: "{":".join(f"{b:02x}" for b in m.to_bytes(6, "big"))}",'
                    f" port: {port}, vlan: 10}}" for m, port in statics.items())
    config = CONFIG.replace(
        '        static_macs: [{mac: "02:00:00:00:0a:05", port: p, vlan: 10}]',
        "        static_macs:" + lines)
    t, macs, at = setup(config=config)
    a, b = t.segment_of("a", "lan"), t.segment_of("b", "lan")
    probes = sorted({*statics, *(m + 1 for m in statics), 0, 0xFFFFFFFFFFFF, 0x020000000001})
    where, tags = macs.locate(np.full(len(probes), a), np.array(probes, dtype=np.uint64))
    for mac, w, tag in zip(probes, where, tags, strict=True):
        if mac in statics:
            assert (w, tag) == (at[f"a.lan@{1 if statics[mac] == 'p' else 2}"], NO_TAG)
        else:
            assert (w, tag) == (NO_ATTACHMENT, TAG_BASE | (UNKNOWN + a))
    # The same MACs are nobody's in tenant b.
    where, _ = macs.locate(np.full(len(statics), b), np.array(list(statics), dtype=np.uint64))
    assert (where == NO_ATTACHMENT).all()
