"""The compiled topology: segment ids, attachments and the lookups the stages index."""

from __future__ import annotations

from ipaddress import ip_interface
from pathlib import Path

import numpy as np
import pytest

from portico.control.model import load_config, parse_config
from portico.datapath.topology import NO_ATTACHMENT, NO_MAC, VLAN_IDS, compile_topology

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"
STATIC_A = 0x02000000_0A05


def test_the_example_compiles_to_three_segments() -> None:
    config = load_config(EXAMPLE)
    t = compile_topology(config, generation=7)
    assert t.generation == 7
    # Provider uplinks first, then each tenant's switches, in config order.
    assert [s.name for s in t.segments] == ["provider.uplinks[0]", "a.lan", "b.lan"]
    uplink, a_lan, b_lan = 0, t.segment_of("a", "lan"), t.segment_of("b", "lan")
    assert (a_lan, b_lan) == (1, 2) and t.uplink_segment(0) == uplink
    assert list(t.segment_tenant) == [0, 1, 2]
    assert [hex(m) for m in t.segment_router_mac] == ["0x20000000001", "0x20000000a01",
                                                      "0x20000000b01"]
    assert t.segments[a_lan].addresses == (ip_interface("10.0.0.1/24"),)
    assert t.segments[uplink].addresses == (ip_interface("203.0.113.2/24"),)
    assert list(t.segment_learning) == [True, True, True]  # b.lan learns by default

    # Attachments: where each segment meets the wire (uplink port 0, access port 1).
    assert [(a.segment, a.port, a.vlan, a.vni) for a in t.attachments] == [
        (uplink, 0, None, None), (a_lan, 1, 10, None), (b_lan, 1, 20, None)]
    assert [s.attachments for s in t.segments] == [(0,), (1,), (2,)]

    # The lookups: port id and outer VLAN (0 untagged) -> segment.
    assert t.segment_at(port=1, vlan=10) == a_lan
    assert t.segment_at(port=1, vlan=20) == b_lan
    assert t.segment_at(port=0) == uplink
    for port, vlan in ((1, 0), (1, 30), (0, 10), (2, 10), (65535, 10), (1, VLAN_IDS)):
        assert t.segment_at(port, vlan) == NO_ATTACHMENT, (port, vlan)
    assert t.by_port_vlan.shape == (2, VLAN_IDS)

    # Static MACs are per segment: tenant b does not see a's entry.
    assert t.static_mac(a_lan, STATIC_A) == t.attachment_at(1, 10)
    assert t.static_mac(b_lan, STATIC_A) == NO_ATTACHMENT
    assert t.static_mac(a_lan, STATIC_A + 1) == NO_ATTACHMENT


def test_tables_are_immutable() -> None:
    t = compile_topology(load_config(EXAMPLE))
    for array in (t.by_port_vlan, t.port_index, t.segment_tenant, t.static_keys,
                  t.attachment_vlan, t.router_addresses):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = array[0]


CONFIG = """
ports: {p1: {id: 1}, far: {id: 4000}}
provider:
  router:
    uplinks:
      - {port: p1, vlan: 100, addresses: [203.0.113.2/24, "2001:db8::2/64"],
         mac: "02:00:00:00:00:01"}
tenants:
  t:
    id: 9
    switches:
      empty: {}
      vx:
        attach: [{vni: 7000}, {vni: 5}, {port: far}]
        mac_learning: false
        static_macs: [{mac: "02:00:00:00:00:33", vni: 5}]
    router:
      interfaces: [{switch: empty, addresses: ["fd00::1/64"], mac: "02:00:00:00:00:09"}]
"""


def test_vnis_sparse_ports_and_switches_without_attachments() -> None:
    t = compile_topology(parse_config(CONFIG))
    empty, vx = t.segment_of("t", "empty"), t.segment_of("t", "vx")
    assert [s.name for s in t.segments] == ["provider.uplinks[0]", "t.empty", "t.vx"]
    assert t.segments[empty].attachments == () and t.segment_tenant[empty] == 9
    assert t.segment_router_mac[vx] == NO_MAC and not t.segment_learning[vx]
    # A tagged uplink, and a port id far past the others: two rows, not 4001.
    assert t.segment_at(1, 100) == 0 and t.segment_at(1, 0) == NO_ATTACHMENT
    assert t.segment_at(4000) == vx and t.by_port_vlan.shape == (2, VLAN_IDS)
    assert len(t.port_index) == 4001 and t.port_index[2] == -1
    # VNIs by binary search over sorted keys.
    assert list(t.vni_keys) == [5, 7000]
    assert t.attachment_segment[t.attachment_of_vni(5)] == vx
    assert t.attachment_segment[t.attachment_of_vni(7000)] == vx
    assert t.attachment_of_vni(6) == NO_ATTACHMENT
    assert t.static_mac(vx, 0x020000000033) == t.attachment_of_vni(5)
    assert t.attachment_port[t.attachment_of_vni(5)] == -1
    # Router addresses, one record each; IPv4 in lo, IPv6 in hi/lo.
    records = {(int(r["segment"]), int(r["version"]), int(r["prefixlen"]), int(r["hi"]),
                int(r["lo"])) for r in t.router_addresses}
    assert records == {
        (0, 4, 24, 0, 0xCB007102),
        (0, 6, 64, 0x20010DB800000000, 2),
        (empty, 6, 64, 0xFD00000000000000, 1),
    }


def test_by_port_vlan_agrees_with_the_segment_map() -> None:
    config = parse_config(CONFIG)
    t = compile_topology(config)
    for where, segment in config.segment_map().items():
        if where.vni is not None:
            a = t.attachment_of_vni(where.vni)
        else:
            assert where.port is not None
            a = t.attachment_at(where.port, where.vlan or 0)
        assert t.segments[int(t.attachment_segment[a])].key == segment
    assert np.count_nonzero(t.by_port_vlan >= 0) + len(t.vni_keys) == len(t.attachments)
