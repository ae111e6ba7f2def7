"""The rule model and rule sets: parsing, validation paths, match order, versions.

Every bad field must be refused with a path that names it, and a refused
change must leave the set exactly as it was (rules, order, version, the
container index). Match order is (priority, id) whatever the insertion order;
every change bumps the version once and reports the ids it touched.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portico.classify.rules import (
    Action,
    Direction,
    Match,
    PortRange,
    Rule,
    RuleChange,
    RuleError,
    RuleSet,
    parse_protocol,
    parse_rules,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rule(rule_id: str, priority: int = 100, **fields: object) -> Rule:
    return Rule.from_dict({"id": rule_id, "priority": priority, "action": "allow", **fields})


# -- field forms ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "container", "prefix"),
    [
        ("any", None, None),
        (" any ", None, None),
        ("container:web", "web", None),
        ("container:pods.app-x_1", "pods.app-x_1", None),
        ("10.0.0.0/8", None, IPv4Network("10.0.0.0/8")),
        ("10.1.2.3", None, IPv4Network("10.1.2.3/32")),
        ("0.0.0.0/0", None, IPv4Network("0.0.0.0/0")),
        ("2001:db8::/32", None, IPv6Network("2001:db8::/32")),
        ("2001:db8::1", None, IPv6Network("2001:db8::1/128")),
        ("::/0", None, IPv6Network("::/0")),
    ],
)
def test_match_forms(value: str, container: str | None, prefix: object) -> None:
    match = Match.parse(value, path="x")
    assert (match.container, match.prefix) == (container, prefix)
    assert Match.parse(match.to_value()) == match
    assert match.is_any == (container is None and prefix is None)
    assert match.family == (None if prefix is None else ip_network(str(prefix)).version)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10.0.0.1/8", "10.0.0.1/8: host bits set (the network is 10.0.0.0/8)"),
        ("2001:db8::1/32", "2001:db8::1/32: host bits set (the network is 2001:db8::/32)"),
        ("10.0.0.0/33", "10.0.0.0/33: not an IPv4 or IPv6 prefix"),
        ("300.0.0.0/8", "300.0.0.0/8: not an IPv4 or IPv6 prefix"),
        ("web", "web: not an IPv4 or IPv6 prefix"),
        ("fe80::1%eth0", "fe80::1%eth0: scoped addresses are not prefixes"),
        ("container:", "container name '' is not valid"),
        ("container:web servers", "container name 'web servers' is not valid"),
        (8, "expected 'any', 'container:NAME' or a prefix, got int"),
        (None, "expected 'any', 'container:NAME' or a prefix, got NoneType"),
    ],
)
def test_match_errors(value: object, reason: str) -> None:
    with pytest.raises(RuleError) as caught:
        Match.parse(value, path="rules[r].src")
    assert caught.value.path == "rules[r].src"
    assert caught.value.reason.startswith(reason)


def test_match_constructors() -> None:
    assert Match.any() == Match()
    assert Match.of_container("web") == Match(container="web")
    assert Match.of_prefix("10.0.0.0/8") == Match(prefix=IPv4Network("10.0.0.0/8"))
    assert Match.of_prefix(IPv6Network("2001:db8::/32")).family == 6
    with pytest.raises(RuleError, match="not both"):
        Match(container="web", prefix=IPv4Network("10.0.0.0/8"))


@pytest.mark.parametrize(
    ("value", "lo", "hi", "back"),
    [
        ("any", 0, 65535, "any"),
        (80, 80, 80, 80),
        ("80", 80, 80, 80),
        ("1024-65535", 1024, 65535, "1024-65535"),
        (" 1024 - 2048 ", 1024, 2048, "1024-2048"),
        ("0-65535", 0, 65535, "any"),
        (0, 0, 0, 0),
        ("443-443", 443, 443, 443),
    ],
)
def test_port_forms(value: object, lo: int, hi: int, back: object) -> None:
    ports = PortRange.parse(value)
    assert (ports.lo, ports.hi) == (lo, hi)
    assert ports.to_value() == back
    assert PortRange.parse(ports.to_value()) == ports


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("80-20", "80-20: lo 80 > hi 20"),
        (65536, "65536: port 65536 is outside 0..65535"),
        (-1, "-1: port -1 is outside 0..65535"),
        ("0-70000", "0-70000: port 70000 is outside 0..65535"),
        ("http", "'http': expected 'any', a port or 'lo-hi'"),
        ("80-", "'80-': expected 'any', a port or 'lo-hi'"),
        ("-5", "'-5': expected 'any', a port or 'lo-hi'"),
        (True, "expected 'any', a port or 'lo-hi', got bool"),
        (80.0, "expected 'any', a port or 'lo-hi', got float"),
    ],
)
def test_port_errors(value: object, reason: str) -> None:
    with pytest.raises(RuleError) as caught:
        PortRange.parse(value, path="rules[r].dport")
    assert str(caught.value) == f"rules[r].dport: {reason}"


def test_port_range_direct() -> None:
    assert 80 in PortRange(lo=80, hi=90) and 91 not in PortRange(lo=80, hi=90)
    assert PortRange.single(22) == PortRange(lo=22, hi=22)
    with pytest.raises(RuleError, match="lo 9 > hi 8"):
        PortRange(lo=9, hi=8)
    with pytest.raises(RuleError, match="not a port"):
        PortRange(lo=0, hi=70000)


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("any", None),
        (None, None),
        ("tcp", 6),
        ("TCP", 6),
        ("udp", 17),
        ("icmp", 1),
        ("icmpv6", 58),
        ("sctp", 132),
        ("gre", 47),
        (0, 0),
        (255, 255),
        ("99", 99),
    ],
)
def test_protocol_forms(value: object, number: int | None) -> None:
    assert parse_protocol(value) == number


@pytest.mark.parametrize(
    ("value", "reason"),
    [("tcpp", "unknown protocol 'tcpp'"), (256, "256 is outside 0..255"), (-1, "-1 is outside")],
)
def test_protocol_errors(value: object, reason: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_protocol(value, path="rules[r].protocol")
    assert caught.value.path == "rules[r].protocol"
    assert caught.value.reason.startswith(reason)


# -- whole rules ----------------------------------------------------------------


def test_from_dict_every_field() -> None:
    parsed = Rule.from_dict(
        {
            "id": "web-in",
            "priority": 100,
            "action": "allow",
            "log": True,
            "src": "10.0.0.0/8",
            "dst": "container:web",
            "protocol": "tcp",
            "sport": "1024-65535",
            "dport": 443,
        }
    )
    assert parsed == Rule(
        id="web-in",
        priority=100,
        action=Action.ALLOW,
        log=True,
        src=Match.of_prefix("10.0.0.0/8"),
        dst=Match.of_container("web"),
        protocol=6,
        sport=PortRange(lo=1024, hi=65535),
        dport=PortRange.single(443),
    )
    assert parsed.containers() == {"web"}
    ping = Rule.from_dict(
        {
            "id": "ping",
            "priority": 5,
            "action": "reject",
            "protocol": "icmp",
            "icmp_type": 8,
            "icmp_code": 0,
        }
    )
    assert (ping.protocol, ping.icmp_type, ping.icmp_code, ping.log) == (1, 8, 0, False)
    assert ping.src.is_any and ping.dst.is_any and ping.sport.is_full and ping.dport.is_full
    assert Rule.from_dict(ping.to_dict()) == ping


def test_defaults() -> None:
    r = Rule.from_dict({"id": "a", "priority": 0, "action": "deny"})
    assert r.to_dict() == {
        "id": "a",
        "priority": 0,
        "action": "deny",
        "log": False,
        "src": "any",
        "dst": "any",
        "protocol": "any",
        "sport": "any",
        "dport": "any",
    }


BAD_RULES = [
    # (fields over a valid base, path, start of the reason)
    ({"id": None}, "rules[3].id", "rule id must be a string"),
    ({"id": "a b"}, "rules[3].id", "rule id 'a b' is not valid"),
    ({"id": "x]"}, "rules[3].id", "rule id 'x]' is not valid"),
    ({"priority": -1}, "rules[r].priority", "-1 is not in 0.."),
    ({"priority": True}, "rules[r].priority", "True is not in 0.."),
    ({"priority": 1.5}, "rules[r].priority", "1.5 is not in 0.."),
    ({"priority": 2**31}, "rules[r].priority", "2147483648 is not in 0.."),
    ({"action": "drop"}, "rules[r].action", "'drop': use allow, deny or reject"),
    ({"action": 1}, "rules[r].action", "1: use allow, deny or reject"),
    ({"log": "yes"}, "rules[r].log", "expected true or false"),
    ({"src": "10.0.0.1/8"}, "rules[r].src", "10.0.0.1/8: host bits set"),
    ({"dst": "container:a/b"}, "rules[r].dst", "container name 'a/b' is not valid"),
    ({"protocol": "tcpp"}, "rules[r].protocol", "unknown protocol 'tcpp'"),
    ({"protocol": 300}, "rules[r].protocol", "300 is outside 0..255"),
    ({"sport": "x"}, "rules[r].sport", "'x': expected"),
    ({"protocol": "tcp", "dport": "80-20"}, "rules[r].dport", "80-20: lo 80 > hi 20"),
    ({"protocol": "icmp", "dport": 80}, "rules[r].dport", "80: protocol icmp has no ports"),
    ({"protocol": 47, "sport": "1-2"}, "rules[r].sport", "1-2: protocol gre has no ports"),
    ({"protocol": "tcp", "icmp_type": 8}, "rules[r].icmp_type", "needs protocol icmp or icmpv6"),
    ({"icmp_type": 8}, "rules[r].icmp_type", "needs protocol icmp or icmpv6, not any"),
    ({"protocol": "icmp", "icmp_code": 0}, "rules[r].icmp_code", "needs icmp_type"),
    ({"protocol": "icmp", "icmp_type": 256}, "rules[r].icmp_type", "256 is outside 0..255"),
    ({"protocol": "icmp", "icmp_type": "echo"}, "rules[r].icmp_type", "expected a number"),
    ({"dpot": 80}, "rules[r].dpot", "unknown field"),
    ({"src": "10.0.0.0/8", "dst": "2001:db8::/32"}, "rules[r].dst", "2001:db8::/32: source"),
    ({"protocol": "icmp", "dst": "2001:db8::/32"}, "rules[r].protocol", "icmp is IPv4's"),
    ({"protocol": "icmpv6", "src": "10.0.0.0/8"}, "rules[r].protocol", "icmpv6 is IPv6's"),
]


@pytest.mark.parametrize(("fields", "path", "reason"), BAD_RULES)
def test_bad_field_named(fields: dict[str, object], path: str, reason: str) -> None:
    data: dict[str, object] = {"id": "r", "priority": 1, "action": "allow", **fields}
    with pytest.raises(RuleError) as caught:
        Rule.from_dict(data, where="rules[3]")
    assert caught.value.path == path
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert str(caught.value) == f"{path}: {caught.value.reason}"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("missing", ["id", "priority", "action"])
def test_required_fields(missing: str) -> None:
    data: dict[str, object] = {"id": "r", "priority": 1, "action": "allow"}
    del data[missing]
    with pytest.raises(RuleError) as caught:
        Rule.from_dict(data)
    where = "rules[0]" if missing == "id" else "rules[r]"
    assert (caught.value.path, caught.value.reason) == (f"{where}.{missing}", "missing")


def test_where_prefix_kept() -> None:
    with pytest.raises(RuleError) as caught:
        Rule.from_dict(
            {"id": "web-in", "priority": 1, "action": "allow", "protocol": 6, "dport": "80-20"},
            where="tenants[acme].ingress[7]",
        )
    assert str(caught.value) == "tenants[acme].ingress[web-in].dport: 80-20: lo 80 > hi 20"
    with pytest.raises(RuleError) as caught:
        Rule.from_dict([], where="tenants[acme].ingress[7]")
    assert caught.value.path == "tenants[acme].ingress[7]"


def test_constructor_validates() -> None:
    assert Rule(id="a", priority=1, action="deny").action is Action.DENY  # type: ignore[arg-type]
    with pytest.raises(RuleError) as caught:
        Rule(id="a", priority=1, action=Action.ALLOW, protocol=1, dport=PortRange.single(7))
    assert caught.value.path == "rules[a].dport"
    with pytest.raises(RuleError) as caught:
        Rule(id="a", priority=1, action=Action.ALLOW, protocol=256)
    assert caught.value.path == "rules[a].protocol"
    with pytest.raises(RuleError) as caught:
        Rule(id="a", priority=1, action=Action.ALLOW, log=1)  # type: ignore[arg-type]
    assert caught.value.path == "rules[a].log"
    with pytest.raises(RuleError) as caught:
        Rule(id="a", priority=1, action=Action.ALLOW, protocol=1, icmp_type="8")  # type: ignore[arg-type]
    assert caught.value.path == "rules[a].icmp_type"
    with pytest.raises(RuleError) as caught:
        Rule(id="", priority=1, action=Action.ALLOW)
    assert caught.value.path == "rules[?].id"


def test_port_rules_allowed_for_port_protocols_and_any() -> None:
    for protocol in ("tcp", "udp", "sctp", "any"):
        assert rule("r", protocol=protocol, dport="22").dport == PortRange.single(22)


def test_icmpv6_with_type() -> None:
    r = rule("nd", protocol="icmpv6", icmp_type=135, dst="2001:db8::/32")
    assert (r.protocol, r.icmp_type, r.icmp_code) == (58, 135, None)


def test_parse_rules_list() -> None:
    rules = parse_rules(
        [
            {"id": "a", "priority": 2, "action": "allow"},
            {"id": "b", "priority": 1, "action": "deny"},
        ]
    )
    assert [r.id for r in rules] == ["a", "b"]
    with pytest.raises(RuleError) as caught:
        parse_rules(
            [
                {"id": "a", "priority": 2, "action": "allow"},
                {"id": "a", "priority": 1, "action": "deny"},
            ]
        )
    assert str(caught.value) == "rules[a].id: duplicate id 'a'"
    with pytest.raises(RuleError) as caught:
        parse_rules([{"id": "a", "priority": 2, "action": "allow"}, {"priority": 1}])
    assert caught.value.path == "rules[1].id"
    with pytest.raises(RuleError, match="expected a list"):
        parse_rules({"id": "a"})


# -- round trip (Hypothesis) ------------------------------------------------------

names = st.from_regex(r"[a-z0-9][a-z0-9_.\-]{0,12}", fullmatch=True)


@st.composite
def prefixes(draw: st.DrawFn, version: int) -> str:
    bits = 32 if version == 4 else 128
    length = draw(st.integers(0, bits))
    address = draw(st.integers(0, 2**bits - 1)) >> (bits - length) << (bits - length)
    network = IPv4Network if version == 4 else IPv6Network
    return str(network((address, length)))


@st.composite
def port_values(draw: st.DrawFn) -> object:
    lo = draw(st.integers(0, 65535))
    hi = draw(st.integers(lo, 65535))
    return draw(st.sampled_from(["any", lo, str(lo), f"{lo}-{hi}"]))


@st.composite
def rule_dicts(draw: st.DrawFn) -> dict[str, object]:
    family = draw(st.sampled_from([4, 6]))
    address = st.one_of(st.just("any"), names.map(lambda n: "container:" + n), prefixes(family))
    data: dict[str, object] = {
        "id": draw(names),
        "priority": draw(st.integers(0, 2**31 - 1)),
        "action": draw(st.sampled_from(["allow", "deny", "reject"])),
        "log": draw(st.booleans()),
        "src": draw(address),
        "dst": draw(address),
    }
    kind = draw(st.sampled_from(["ports", "icmp", "other"]))
    if kind == "ports":
        data["protocol"] = draw(st.sampled_from(["tcp", "udp", "sctp", "any", 6, 17, "132"]))
        data["sport"] = draw(port_values())
        data["dport"] = draw(port_values())
    elif kind == "icmp":
        data["protocol"] = "icmp" if family == 4 else "icmpv6"
        if draw(st.booleans()):
            data["icmp_type"] = draw(st.integers(0, 255))
            if draw(st.booleans()):
                data["icmp_code"] = draw(st.integers(0, 255))
    else:
        data["protocol"] = draw(st.integers(0, 255).filter(lambda p: p not in (1, 58)))
    return data


@FAST
@given(rule_dicts())
def test_round_trip(data: dict[str, object]) -> None:
    parsed = Rule.from_dict(data)
    again = Rule.from_dict(json.loads(json.dumps(parsed.to_dict())))
    assert again == parsed
    assert again.to_dict() == parsed.to_dict()


# -- rule sets ------------------------------------------------------------------


def snapshot(rules: RuleSet) -> tuple[object, ...]:
    return (rules.version, rules.ordered(), rules.containers_used(), len(rules))


def test_match_order_priority_then_id() -> None:
    rules = RuleSet(tenant="acme", direction="ingress")  # type: ignore[arg-type]
    assert rules.direction is Direction.INGRESS
    for r in [rule("b", 10), rule("a", 10), rule("z", 5), rule("c", 20), rule("A", 10)]:
        rules.add(r)
    assert [r.id for r in rules.ordered()] == ["z", "A", "a", "b", "c"]
    assert [r.id for r in rules] == ["z", "A", "a", "b", "c"]
    rules.update(rule("c", 1))
    assert [r.id for r in rules.ordered()] == ["c", "z", "A", "a", "b"]


@FAST
@given(st.lists(st.tuples(names, st.integers(0, 5)), unique_by=lambda t: t[0]), st.randoms())
def test_order_independent_of_insertion(pairs: list[tuple[str, int]], rng: object) -> None:
    made = [rule(i, p) for i, p in pairs]
    expected = sorted(made, key=lambda r: (r.priority, r.id))
    shuffled = list(made)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    one = RuleSet(tenant=1, direction=Direction.EGRESS)
    for r in shuffled:
        one.add(r)
    other = RuleSet(tenant=1, direction=Direction.EGRESS)
    other.replace_all(reversed(shuffled))
    assert one.ordered() == other.ordered() == expected


def test_versions_and_changes() -> None:
    rules = RuleSet(tenant=1, direction=Direction.INGRESS)
    seen: list[RuleChange] = []
    unsubscribe = rules.subscribe(seen.append)
    assert rules.version == 0
    assert rules.add(rule("a")) == RuleChange(version=1, added=frozenset({"a"}))
    assert rules.add(rule("b")) == RuleChange(version=2, added=frozenset({"b"}))
    assert rules.update(rule("a", 1)) == RuleChange(version=3, updated=frozenset({"a"}))
    unchanged = rules.update(rule("a", 1))
    assert unchanged == RuleChange(version=3) and unchanged.empty and rules.version == 3
    assert rules.remove("b") == RuleChange(version=4, removed=frozenset({"b"}))
    change = rules.replace_all([rule("a", 2), rule("c"), rule("d")])
    assert change == RuleChange(version=5, added=frozenset({"c", "d"}), updated=frozenset({"a"}))
    assert change.affected == {"a", "c", "d"}
    change = rules.replace_all([rule("c"), rule("a", 2)])
    assert change == RuleChange(version=6, removed=frozenset({"d"}))
    assert rules.replace_all([rule("a", 2), rule("c")]).empty and rules.version == 6
    assert [c.version for c in seen] == [1, 2, 3, 4, 5, 6]
    unsubscribe()
    rules.remove("a")
    assert len(seen) == 6 and rules.version == 7
    assert rules.get("c") == rule("c") and rules.get("a") is None
    assert "c" in rules and "a" not in rules


def test_replace_all_with_the_rules_held_checks_and_changes_only_the_others() -> None:
    known = {"web"}
    rules = RuleSet(tenant=1, direction=Direction.INGRESS, container_exists=known.__contains__)
    held = [rule(f"r{n}", n, src="container:web") for n in range(5)]
    rules.replace_all(held)
    assert rules.replace_all(held).empty  # the same objects: nothing to do
    assert rules.replace_all([rule(f"r{n}", n, src="container:web") for n in range(5)]).empty
    change = rules.replace_all([*held[:4], rule("r4", 40, src="container:web")])
    assert change.updated == {"r4"} and rules.get("r4").priority == 40  # type: ignore[union-attr]
    with pytest.raises(RuleError, match="unknown container 'db'"):  # a new rule is checked
        rules.replace_all([*held[:4], rule("r4", 4, src="container:db")])
    with pytest.raises(RuleError, match="duplicate id"):  # and ids stay unique
        rules.replace_all([*held, held[0]])
    assert rules.get("r4").priority == 40  # type: ignore[union-attr]


def test_containers_used() -> None:
    rules = RuleSet(tenant=1, direction=Direction.INGRESS)
    rules.add(rule("a", src="container:web", dst="container:db"))
    rules.add(rule("b", dst="container:web"))
    rules.add(rule("c", src="container:web", dst="container:web"))
    assert rules.containers_used() == {"web": {"a", "b", "c"}, "db": {"a"}}
    assert rules.rules_using("db") == {"a"} and rules.rules_using("nope") == frozenset()
    rules.update(rule("a", dst="container:db"))
    assert rules.containers_used() == {"web": {"b", "c"}, "db": {"a"}}
    rules.remove("a")
    assert rules.containers_used() == {"web": {"b", "c"}}
    rules.replace_all([rule("x", src="10.0.0.0/8")])
    assert rules.containers_used() == {}
    copy = rules.containers_used()
    copy["web"] = {"mutated"}
    assert rules.containers_used() == {}


def test_failed_changes_leave_the_set_unchanged() -> None:
    known = {"web", "db"}
    rules = RuleSet(tenant=1, direction=Direction.INGRESS, container_exists=known.__contains__)
    rules.add(rule("a", src="container:web"))
    rules.add(rule("b", 5, dst="container:db"))
    before = snapshot(rules)
    failures = [
        (lambda: rules.add(rule("a", 7)), "rules[a].id", "duplicate id 'a'"),
        (lambda: rules.update(rule("q")), "rules[q].id", "unknown rule 'q'"),
        (lambda: rules.remove("q"), "rules[q].id", "unknown rule 'q'"),
        (
            lambda: rules.add(rule("c", dst="container:cache")),
            "rules[c].dst",
            "unknown container 'cache'",
        ),
        (
            lambda: rules.update(rule("a", src="container:x")),
            "rules[a].src",
            "unknown container 'x'",
        ),
        (
            lambda: rules.replace_all([rule("a"), rule("c"), rule("a", 3)]),
            "rules[a].id",
            "duplicate id 'a'",
        ),
        (
            lambda: rules.replace_all([rule("c"), rule("d", src="container:nope")]),
            "rules[d].src",
            "unknown container 'nope'",
        ),
        (lambda: rules.add({"id": "z"}), "rules[?]", "expected a Rule, got dict"),  # type: ignore[arg-type]
    ]
    for call, path, reason in failures:
        with pytest.raises(RuleError) as caught:
            call()
        assert (caught.value.path, caught.value.reason) == (path, reason)
        assert snapshot(rules) == before


def test_bad_direction() -> None:
    with pytest.raises(RuleError) as caught:
        RuleSet(tenant=1, direction="sideways")  # type: ignore[arg-type]
    assert str(caught.value) == "direction: 'sideways': use ingress or egress"


# A random stream of operations against a plain dict model.
operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "update", "remove", "replace"]),
        st.lists(
            st.tuples(
                st.sampled_from("abcdef"),
                st.integers(0, 3),
                st.sampled_from(["any", "container:web", "container:db", "10.0.0.0/8"]),
            ),
            min_size=1,
            max_size=4,
        ),
    ),
    max_size=25,
)


@FAST
@given(operations)
def test_random_operations_match_a_model(ops: list[tuple[str, list[tuple[str, int, str]]]]) -> None:
    rules = RuleSet(tenant=1, direction=Direction.INGRESS)
    model: dict[str, Rule] = {}
    version = 0
    for op, specs in ops:
        made = [rule(i, p, src=s) for i, p, s in specs]
        first = made[0]
        before = dict(model)
        try:
            if op == "add":
                change = rules.add(first)
                model[first.id] = first
            elif op == "update":
                change = rules.update(first)
                model[first.id] = first
            elif op == "remove":
                change = rules.remove(first.id)
                del model[first.id]
            else:
                change = rules.replace_all(made)
                model = {r.id: r for r in made}
        except RuleError:
            assert model == before
            if op == "add":
                assert first.id in model
            elif op in ("update", "remove"):
                assert first.id not in model
            else:
                assert len({r.id for r in made}) < len(made)
        else:
            touched = {k for k in model.keys() | before.keys() if model.get(k) != before.get(k)}
            assert change.affected == touched
            assert change.added == model.keys() - before.keys()
            assert change.removed == before.keys() - model.keys()
            version += 0 if change.empty else 1
            assert change.version == version
        assert rules.version == version
        assert rules.ordered() == sorted(model.values(), key=lambda r: r.order_key)
        expected: dict[str, set[str]] = {}
        for r in model.values():
            for name in r.containers():
                expected.setdefault(name, set()).add(r.id)
        assert rules.containers_used() == expected
