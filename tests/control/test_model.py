"""The config model: the example loads, bad input is refused whole with exact paths."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address, IPv4Network, ip_interface
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from portico.classify.rules import Action, Rule
from portico.control.model import (
    MAX_POOL_ADDRESSES,
    Config,
    ConfigError,
    ContainerRef,
    Firewall,
    Segment,
    Tenant,
    Where,
    load_config,
    mac_text,
    parse_config,
    problems_of,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"
DELETE = object()


def example_data() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def edited(*changes: tuple[tuple[str | int, ...], object]) -> dict[str, Any]:
    """The example as a mapping with values set (or DELETEd) at the given key paths."""
    data = example_data()
    for loc, value in changes:
        parent: Any = data
        for key in loc[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[loc[-1]]
        else:
            parent[loc[-1]] = copy.deepcopy(value)
    return data


def problems(source: str | dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(source)
    return caught.value.problems


A = ("tenants", "a")
B = ("tenants", "b")
A_ROUTER = (*A, "router")
A_FW = (*A_ROUTER, "firewall")
PROVIDER = ("provider", "router")


# ------------------------------------------------------------------ the example
def test_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.port_ids() == {"uplink": 0, "access": 1}
    assert config.tenant_ids() == {"a": 1, "b": 2}
    a, b = config.tenants["a"], config.tenants["b"]
    # Both tenants number their LAN alike: separate address spaces.
    assert a.router.interfaces[0].addresses == b.router.interfaces[0].addresses
    assert a.router.interfaces[0].addresses[0] == ip_interface("10.0.0.1/24")
    assert a.router.interfaces[0].mac == 0x02000000_0A01
    assert mac_text(a.router.interfaces[0].mac) == "02:00:00:00:0a:01"
    assert config.provider.router.routes[0].via == IPv4Address("203.0.113.1")
    assert config.segment_map() == {
        Where(0, None, None): Segment(None, None, 0),
        Where(1, 10, None): Segment("a", "lan", None),
        Where(1, 20, None): Segment("b", "lan", None),
    }
    dnat = a.router.nat.dnat[0]
    assert (dnat.external, dnat.protocol_number, dnat.port, dnat.target_port) == (
        IPv4Address("198.51.100.10"),
        6,
        8080,
        80,
    )


def test_example_firewall_is_the_classifiers() -> None:
    firewall = load_config(EXAMPLE).tenants["a"].router.firewall
    web_in = firewall.rules("ingress")[0]
    assert isinstance(web_in, Rule)
    assert web_in == Rule.from_dict(
        {"id": "web-in", "priority": 10, "action": "allow", "dst": "container:web",
         "protocol": "tcp", "dport": 80}
    )
    assert firewall.rules("egress")[0].action is Action.ALLOW
    assert firewall.containers["inside"] == (ContainerRef("lan"),)
    assert firewall.prefixes("web") == [IPv4Network("10.0.0.5/32")]
    assert firewall.includes("inside") == ["lan"]
    order = firewall.container_order()
    assert sorted(order) == ["inside", "lan", "web"]
    assert order.index("lan") < order.index("inside")  # the store needs includes first


def test_example_nat_feeds_the_nat_table() -> None:
    from portico.datapath import nat

    config = load_config(EXAMPLE)
    pools = []
    statics = []
    for tenant in config.tenants.values():
        pool = tenant.router.nat.pool(tenant.id)
        assert pool is not None
        pools.append(pool)
        statics += tenant.router.nat.static_mappings(tenant.id)
    table = nat.NatTable(pools, statics=statics, capacity=64)
    assert [p.expanded() for p in table.pools] == [
        [int(IPv4Address("198.51.100.10"))],
        [int(IPv4Address("198.51.100.20"))],
    ]
    assert statics == [
        nat.StaticMapping(tenant=1, protocol=6, internal="10.0.0.5", internal_port=80,
                          external="198.51.100.10", external_port=8080)
    ]
    assert nat.MAX_POOL_ADDRESSES == MAX_POOL_ADDRESSES


# ------------------------------------------------------------------ bad input, one problem each
ROUTES_3_BAD = [
    {"prefix": "10.9.0.0/16", "via": "10.0.0.254"},
    {"prefix": "10.10.0.0/16", "via": "10.0.0.254"},
    {"prefix": "10.11.0.0/16", "via": "10.0.0.253"},
    {"prefix": "10.12.0.0/16", "via": "10.0.0.300"},
]

CASES: list[tuple[str, dict[str, Any] | str, str, str]] = [
    (
        "bad address",
        edited(((*A_ROUTER, "routes"), ROUTES_3_BAD)),
        "tenants.a.router.routes[3].via",
        "not an address",
    ),
    (
        "address given a prefix length",
        edited(((*PROVIDER, "neighbours", 0, "address"), "203.0.113.1/24")),
        "provider.router.neighbours[0].address",
        "not an address (no prefix length here)",
    ),
    (
        "bad prefix",
        edited(((*A_ROUTER, "routes"), [{"prefix": "10.9.0.0/33", "via": "10.0.0.254"}])),
        "tenants.a.router.routes[0].prefix",
        "not a prefix",
    ),
    (
        "prefix with host bits",
        edited(((*A_ROUTER, "nat", "snat", 0, "source"), "10.0.0.1/24")),
        "tenants.a.router.nat.snat[0].source",
        "host bits set (the network is 10.0.0.0/24)",
    ),
    (
        "interface on the network address",
        edited(((*A_ROUTER, "interfaces", 0, "addresses"), ["10.0.0.0/24"])),
        "tenants.a.router.interfaces[0].addresses[0]",
        "10.0.0.0/24: the subnet's network address, not a host address",
    ),
    (
        "interface without a prefix length",
        edited(((*A_ROUTER, "interfaces", 0, "addresses"), ["10.0.0.1"])),
        "tenants.a.router.interfaces[0].addresses[0]",
        "needs a prefix length (e.g. 10.0.0.1/24)",
    ),
    (
        "unknown port",
        edited(((*B, "switches", "lan", "attach", 0, "port"), "trunk")),
        "tenants.b.switches.lan.attach[0].port",
        "unknown port 'trunk'",
    ),
    (
        "unknown switch",
        edited(((*A_ROUTER, "interfaces", 0, "switch"), "wan")),
        "tenants.a.router.interfaces[0].switch",
        "unknown switch 'wan'",
    ),
    (
        "duplicate VLAN attachment across tenants",
        edited(((*B, "switches", "lan", "attach", 0, "vlan"), 10)),
        "tenants.b.switches.lan.attach[0]",
        "VLAN 10 on port 'access' is already attached to tenants.a.switches.lan",
    ),
    (
        "tenant switch on the provider's uplink port",
        edited(((*B, "switches", "lan", "attach"), [{"port": "uplink"}])),
        "tenants.b.switches.lan.attach[0]",
        "port 'uplink' (untagged) is already attached to provider.router.uplinks[0]",
    ),
    (
        "VLAN without a port",
        edited(((*A, "switches", "lan", "attach"), [{"vlan": 10}])),
        "tenants.a.switches.lan.attach[0].vlan",
        "a VLAN needs a port",
    ),
    (
        "static MAC where the switch is not attached",
        edited(((*A, "switches", "lan", "static_macs", 0, "vlan"), 11)),
        "tenants.a.switches.lan.static_macs[0]",
        "VLAN 11 on port 'access' is not attached to this switch",
    ),
    (
        "duplicate tenant id",
        edited(((*B, "id"), 1)),
        "tenants.b.id",
        "tenant id 1 is already used by tenants.a",
    ),
    (
        "tenant id 0 is the provider's",
        edited(((*A, "id"), 0)),
        "tenants.a.id",
        "0 is outside 1..65535",
    ),
    (
        "duplicate port id",
        edited((("ports", "access", "id"), 0)),
        "ports.access.id",
        "port id 0 is already used by ports.uplink",
    ),
    (
        "via off-link",
        edited(((*A_ROUTER, "routes"), [{"prefix": "10.9.0.0/16", "via": "10.1.0.254"}])),
        "tenants.a.router.routes[0].via",
        "10.1.0.254 is not on a connected subnet of this router",
    ),
    (
        "provider neighbour off-link",
        edited(((*PROVIDER, "neighbours", 0, "address"), "192.0.2.1")),
        "provider.router.neighbours[0].address",
        "192.0.2.1 is not on a connected subnet of this router",
    ),
    (
        "IPv4 route with an IPv6 next hop",
        edited(((*PROVIDER, "routes", 0, "via"), "2001:db8::1")),
        "provider.router.routes[0].via",
        "an IPv6 next hop for an IPv4 prefix",
    ),
    (
        "bad MAC",
        edited(((*PROVIDER, "uplinks", 0, "mac"), "02:00:00:00:00")),
        "provider.router.uplinks[0].mac",
        "not a MAC address (six hex octets, e.g. 02:00:00:00:00:01)",
    ),
    (
        "multicast MAC",
        edited(((*A_ROUTER, "interfaces", 0, "mac"), "01:00:5e:00:00:01")),
        "tenants.a.router.interfaces[0].mac",
        "a multicast MAC (the first octet is odd); use a unicast one",
    ),
    (
        "rule dport lo > hi",
        edited(((*A_FW, "ingress", 0, "dport"), "80-20")),
        "tenants.a.router.firewall.ingress[0].dport",
        "80-20: lo 80 > hi 20",
    ),
    (
        "rule with an unknown field",
        edited(((*A_FW, "egress", 0, "port"), 22)),
        "tenants.a.router.firewall.egress[0].port",
        "unknown field (expected one of id, priority, action, log, src, dst, protocol, "
        "sport, dport, icmp_type, icmp_code)",
    ),
    (
        "rule with ports on a protocol without ports",
        edited(((*A_FW, "ingress", 0, "protocol"), "gre")),
        "tenants.a.router.firewall.ingress[0].dport",
        "80: protocol gre has no ports (ports need tcp, udp, sctp or any; "
        "match ICMP by icmp_type/icmp_code)",
    ),
    (
        "duplicate rule id",
        edited(((*A_FW, "ingress", 1, "id"), "web-in")),
        "tenants.a.router.firewall.ingress[1].id",
        "duplicate id 'web-in' (also ingress[0])",
    ),
    (
        "unknown container in a rule",
        edited(((*A_FW, "ingress", 0, "dst"), "container:db")),
        "tenants.a.router.firewall.ingress[0].dst",
        "unknown container 'db'",
    ),
    (
        "unknown container in a container",
        edited(((*A_FW, "containers", "inside"), ["container:lam"])),
        "tenants.a.router.firewall.containers.inside[0]",
        "unknown container 'lam'",
    ),
    (
        "container cycle",
        edited(((*A_FW, "containers", "lan"), ["10.0.0.0/24", "container:inside"])),
        "tenants.a.router.firewall.containers.inside[0]",
        "makes a cycle: lan -> inside -> lan",
    ),
    (
        "container including itself",
        edited(((*A_FW, "containers", "web"), ["10.0.0.5", "container:web"])),
        "tenants.a.router.firewall.containers.web[1]",
        "a container cannot include itself",
    ),
    (
        "unknown top-level key",
        edited((("tenant",), {})),
        "tenant",
        "unknown field",
    ),
    (
        "unknown key deep down",
        edited(((*A_ROUTER, "nat", "dnat", 0, "internal_prot"), 80)),
        "tenants.a.router.nat.dnat[0].internal_prot",
        "unknown field",
    ),
    (
        "missing field",
        edited(((*A, "id"), DELETE)),
        "tenants.a.id",
        "missing",
    ),
    (
        "YAML syntax error",
        "ports:\n  uplink: {id: 0}\n  access:\n    id: 1\n     mtu: 1500\n",
        "line 5, column 9",
        "mapping values are not allowed here",
    ),
    (
        "YAML duplicate key",
        "tenants:\n  a: {id: 1}\n  a: {id: 2}\n",
        "line 3, column 3",
        "duplicate key 'a' (first on line 2)",
    ),
    (
        "mtu out of range",
        edited((("ports", "access", "mtu"), 9001)),
        "ports.access.mtu",
        "9001 is outside 68..9000",
    ),
    (
        "mtu not an integer",
        edited((("ports", "access", "mtu"), "1500")),
        "ports.access.mtu",
        "expected an integer",
    ),
    (
        "not true or false",
        edited(((*A, "switches", "lan", "mac_learning"), "yes")),
        "tenants.a.switches.lan.mac_learning",
        "expected true or false",
    ),
    (
        "name with a dot",
        edited((("tenants", "c.d"), {"id": 3})),
        "tenants['c.d']",
        "not a name (1-63 letters, digits, '_', '-'; starting with a letter or digit)",
    ),
    (
        "NAT pool collision across tenants",
        edited(((*B, "router", "nat", "snat", 0, "pool"), ["198.51.100.8/29"])),
        "tenants.b.router.nat.snat[0].pool[0]",
        "198.51.100.8/29 is already used by tenants.a.router.nat.snat[0].pool[0]",
    ),
    (
        "DNAT onto another tenant's pool address",
        edited(
            (
                (*B, "router", "nat", "dnat"),
                [{"external": "198.51.100.10", "protocol": "udp", "port": 53,
                  "internal": "10.0.0.53"}],
            )
        ),
        "tenants.b.router.nat.dnat[0].external",
        "198.51.100.10 is already used by tenants.a.router.nat.snat[0].pool[0]",
    ),
    (
        "NAT pool on the provider's own address",
        edited(((*B, "router", "nat", "snat", 0, "pool"), ["203.0.113.2"])),
        "tenants.b.router.nat.snat[0].pool[0]",
        "203.0.113.2 is the provider's address (provider.router.uplinks[0].addresses[0])",
    ),
    (
        "NAT is IPv4 only",
        edited(((*B, "router", "nat", "snat", 0, "pool"), ["2001:db8::/120"])),
        "tenants.b.router.nat.snat[0].pool[0]",
        "not an IPv4 prefix (NAT is IPv4 only)",
    ),
    (
        "empty NAT pool",
        edited(((*B, "router", "nat", "snat", 0, "pool"), [])),
        "tenants.b.router.nat.snat[0].pool",
        "must not be empty",
    ),
    (
        "two SNAT pools in one tenant",
        edited(
            (
                (*A_ROUTER, "nat", "snat"),
                [
                    {"source": "10.0.0.0/25", "pool": ["198.51.100.10"]},
                    {"source": "10.0.0.128/25", "pool": ["198.51.100.11"]},
                ],
            )
        ),
        "tenants.a.router.nat.snat[1].pool",
        "differs from snat[0].pool: a tenant has one SNAT pool "
        "(give every entry the same pool, ports and filtering)",
    ),
    (
        "DNAT protocol",
        edited(((*A_ROUTER, "nat", "dnat", 0, "protocol"), "icmp")),
        "tenants.a.router.nat.dnat[0].protocol",
        "expected 'tcp' or 'udp'",
    ),
    (
        "DNAT to an address the router cannot reach",
        edited(((*A_ROUTER, "nat", "dnat", 0, "internal"), "10.7.0.5")),
        "tenants.a.router.nat.dnat[0].internal",
        "10.7.0.5 is on no connected subnet or route of this router",
    ),
]


@pytest.mark.parametrize(
    ("source", "path", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_refused_at_its_path(
    source: dict[str, Any] | str, path: str, message: str
) -> None:
    assert problems(source) == [(path, message)]


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 15


# ------------------------------------------------------------------ several problems at once
def test_every_problem_of_a_layer_is_reported() -> None:
    data = edited(
        (("ports", "access", "mtu"), 20000),
        ((*A_ROUTER, "routes"), ROUTES_3_BAD),
        ((*A_FW, "ingress", 0, "dport"), "80-20"),
        ((*B, "router", "interfaces", 0, "switch"), "wan"),
        ((*PROVIDER, "uplinks", 0, "mac"), "nope"),
        (("extra",), 1),
    )
    assert problems(data) == [
        ("ports.access.mtu", "20000 is outside 68..9000"),
        ("provider.router.uplinks[0].mac",
         "not a MAC address (six hex octets, e.g. 02:00:00:00:00:01)"),
        ("tenants.a.router.routes[3].via", "not an address"),
        ("tenants.a.router.firewall.ingress[0].dport", "80-20: lo 80 > hi 20"),
        ("tenants.b.router.interfaces[0].switch", "unknown switch 'wan'"),
        ("extra", "unknown field"),
    ]


def test_every_cross_section_problem_is_reported() -> None:
    data = edited(
        ((*B, "id"), 1),
        ((*B, "switches", "lan", "attach"), [{"port": "access", "vlan": 10}, {"port": "trunk"}]),
        ((*B, "router", "nat", "snat", 0, "pool"), ["198.51.100.10", "203.0.113.2"]),
        (("ports", "spare"), {"id": 1}),
    )
    assert problems(data) == [
        ("ports.spare.id", "port id 1 is already used by ports.access"),
        ("tenants.b.switches.lan.attach[0]",
         "VLAN 10 on port 'access' is already attached to tenants.a.switches.lan"),
        ("tenants.b.switches.lan.attach[1].port", "unknown port 'trunk'"),
        ("tenants.b.id", "tenant id 1 is already used by tenants.a"),
        ("tenants.b.router.nat.snat[0].pool[0]",
         "198.51.100.10 is already used by tenants.a.router.nat.snat[0].pool[0]"),
        ("tenants.b.router.nat.snat[0].pool[1]",
         "203.0.113.2 is the provider's address (provider.router.uplinks[0].addresses[0])"),
    ]


def test_error_text_is_one_line_per_problem() -> None:
    data = edited((("ports", "access", "mtu"), 1), ((*A, "id"), "one"))
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    error = caught.value
    assert isinstance(error, ValueError)
    assert str(error) == (
        "ports.access.mtu: 1 is outside 68..9000\ntenants.a.id: expected an integer"
    )


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tenants: {a: {id: 0}}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert caught.value.problems == [("tenants.a.id", "0 is outside 1..65535")]


@pytest.mark.parametrize("text", ["", "# nothing\n", "[1, 2]", "just words"])
def test_not_a_mapping(text: str) -> None:
    assert len(problems(text)) == 1


# ------------------------------------------------------------------ round trip and typing
def test_round_trip_model_dict_model() -> None:
    config = load_config(EXAMPLE)
    as_json = config.model_dump(mode="json")
    assert parse_config(as_json) == config
    assert parse_config(config.model_dump()) == config
    assert parse_config(yaml.safe_dump(as_json)) == config
    assert parse_config(config.model_dump_json()) == config  # JSON is YAML
    assert parse_config(config.model_dump(mode="json", exclude_defaults=True)) == config


def test_typed_values_are_accepted_as_they_are() -> None:
    rule = Rule.from_dict({"id": "r", "priority": 1, "action": "deny", "src": "container:c"})
    firewall = Firewall(containers={"c": (ContainerRef("d"),), "d": (IPv4Network("10.0.0.0/8"),)},
                        ingress=(rule,))
    assert firewall.ingress == (rule,)
    assert firewall.container_order() == ["d", "c"]


def test_yaml_tags_cannot_run_code() -> None:
    assert problems("a: !!python/object/apply:os.system [true]") == [
        ("line 1, column 4",
         "could not determine a constructor for the tag "
         "'tag:yaml.org,2002:python/object/apply:os.system'")
    ]


def test_models_are_frozen() -> None:
    config = load_config(EXAMPLE)
    with pytest.raises(ValidationError):
        config.tenants["a"].id = 5  # type: ignore[misc]


def test_models_validate_when_built_in_python_too() -> None:
    # The API builds models directly; the same checks, the same paths.
    with pytest.raises(ValidationError) as caught:
        Tenant.model_validate(
            {"id": 1, "router": {"interfaces": [
                {"switch": "lan", "addresses": ["10.0.0.1/24"], "mac": "02:00:00:00:00:01"}]}}
        )
    assert problems_of(caught.value) == [
        ("router.interfaces[0].switch", "unknown switch 'lan'")
    ]


def test_json_schema_for_the_api() -> None:
    schema = Config.model_json_schema()
    assert set(schema["properties"]) == {"ports", "provider", "tenants"}
    assert schema["additionalProperties"] is False


def test_yaml_is_read_as_yaml_1_2() -> None:
    # YAML 1.1 would make the key "no" false and the MAC a base-60 number.
    config = parse_config(
        """
        ports: {no: {id: 010}}
        provider:
          router:
            uplinks: [{port: no, addresses: [192.0.2.2/24], mac: 10:00:00:00:00:01}]
        """
    )
    assert config.port_ids() == {"no": 10}
    assert mac_text(config.provider.router.uplinks[0].mac) == "10:00:00:00:00:01"


def test_ipv6_everywhere_but_nat() -> None:
    config = parse_config(
        {
            "ports": {"p": {"id": 0}},
            "provider": {"router": {
                "uplinks": [{"port": "p", "addresses": ["203.0.113.2/24", "2001:db8:f::2/64"],
                             "mac": "02:00:00:00:00:01"}],
                "routes": [{"prefix": "::/0", "via": "2001:db8:f::1"},
                           {"prefix": "0.0.0.0/0", "via": "203.0.113.1"}],
            }},
            "tenants": {"t": {"id": 7, "switches": {"s": {"attach": [{"vni": 5001}]}},
                              "router": {"interfaces": [{"switch": "s",
                                                         "addresses": ["2001:db8:1::1/64"],
                                                         "mac": "02:00:00:00:00:02"}]}}},
        }
    )
    assert config.segment_map()[Where(None, None, 5001)] == Segment("t", "s", None)
    assert problems(
        {"tenants": {"t": {"id": 7, "router": {"routes": [
            {"prefix": "2001:db8::/32", "via": "10.0.0.1"}]}}}}
    ) == [("tenants.t.router.routes[0].via", "an IPv4 next hop for an IPv6 prefix")]


def test_an_empty_mapping_is_an_empty_config() -> None:
    config = parse_config("{}")
    assert config.ports == {} and config.tenants == {}
    assert config.segment_map() == {}
