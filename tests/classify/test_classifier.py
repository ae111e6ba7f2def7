"""Containers and the batch classifier, held to the brute-force reference.

The reference (``portico.classify.reference``) walks the rules one by one; the
classifier answers through tries, LPM class tables and bitsets. For random
containers, nesting, rules and packets, and through streams of updates, the
two must agree on every packet.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portico.batch import Batch
from portico.classify.classifier import Classifier
from portico.classify.containers import ContainerError, ContainerStore, Literal
from portico.classify.reference import classify_rows
from portico.classify.rules import Rule, RuleSet


def packets(*rows: dict[str, int | str]) -> Batch:
    """A Batch whose metadata says what the rows say (the classifier reads only metadata)."""
    batch = Batch(max(1, len(rows)))
    batch.reset(len(rows))
    for i, row in enumerate(rows):
        for name, value in row.items():
            if name in ("src", "dst"):
                address = ipaddress.ip_address(value)
                if address.version == 4:
                    batch.meta[name + "4"][i] = int(address)
                    batch.meta["ip_version"][i] = 4
                else:
                    batch.meta[name + "6_hi"][i] = int(address) >> 64
                    batch.meta[name + "6_lo"][i] = int(address) & (2**64 - 1)
                    batch.meta["ip_version"][i] = 6
            else:
                batch.meta[name][i] = value
    return batch


def rule(rule_id: str, priority: int, **fields: object) -> Rule:
    return Rule.from_dict({"id": rule_id, "priority": priority, "action": "allow", **fields})


def check_against_reference(store: ContainerStore, classifier: Classifier, batch: Batch) -> None:
    got = classifier.classify(batch)
    want = classify_rows(classifier.ruleset.ordered(), batch.meta[: batch.count], store.holds)
    assert list(got) == list(want)


# ---------------------------------------------------------------- the cases
def test_nested_prefixes_in_two_containers_both_match() -> None:
    store = ContainerStore()
    store.create("A", ["10.0.0.0/8"])
    store.create("B", ["10.1.0.0/16"])
    assert store.holders_of("10.1.2.3") == {"A", "B"}
    assert store.holders_of("10.2.0.1") == {"A"}


def test_shared_address_survives_removal_from_one_container() -> None:
    store = ContainerStore()
    store.create("A", ["192.0.2.0/24"])
    store.create("B", ["192.0.2.0/24"])
    store.remove_prefix("A", "192.0.2.0/24")
    assert store.holders_of("192.0.2.7") == {"B"}


def test_deleting_containers_leaves_no_nodes_and_no_classes() -> None:
    store = ContainerStore()
    store.create("A", ["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"])
    store.create("B", ["10.1.0.0/16", "10.2.0.0/16"], includes=["A"])
    store.create("C", [], includes=["B"])
    for name in ("C", "B", "A"):
        store.delete(name)
    assert store.node_count() == 0
    assert store.class_count() == 1  # only the empty class
    assert len(store.lpm4) == 0 and len(store.lpm6) == 0
    for trie in store.tries.values():
        trie.check()


def test_nesting_counts_every_way_a_prefix_is_held() -> None:
    store = ContainerStore()
    store.create("web", ["10.0.1.0/24"])
    store.create("frontend", includes=["web"])
    store.create("all", ["10.0.1.0/24"], includes=["frontend"])
    assert store.holders_of("10.0.1.1") == {"web", "frontend", "all"}
    store.exclude("all", "frontend")
    assert store.holders_of("10.0.1.1") == {"web", "frontend", "all"}  # all holds it directly
    store.remove_prefix("all", "10.0.1.0/24")
    assert store.holders_of("10.0.1.1") == {"web", "frontend"}
    store.remove_prefix("web", "10.0.1.0/24")
    assert store.holders_of("10.0.1.1") == set()
    assert store.node_count() == 0


def test_bad_input_is_refused_and_nothing_changes() -> None:
    store = ContainerStore()
    store.create("A", ["10.0.0.0/8"])
    store.create("B", includes=["A"])
    before = (store.version, store.node_count(), store.members("A"))
    for change, path in (
        (lambda: store.create("C", ["10.0.0.1/8"]), "containers.C.prefixes[0]"),
        (lambda: store.create("C", ["10.0.0.0/8"], includes=["nope"]), "containers.C.includes[0]"),
        (lambda: store.add_prefix("A", "not-a-prefix"), "containers.A.prefixes"),
        (lambda: store.add_prefix("nope", "10.0.0.0/8"), "containers.nope"),
        (lambda: store.remove_prefix("A", "11.0.0.0/8"), "containers.A.prefixes"),
        (lambda: store.include("A", "B"), "containers.A.includes"),  # a cycle
        (lambda: store.delete("A"), "containers.A"),  # B includes it
    ):
        with pytest.raises(ContainerError) as error:
            change()
        assert error.value.path == path
    assert "C" not in store.containers
    assert (store.version, store.node_count(), store.members("A")) == before


def test_changes_report_the_containers_affected() -> None:
    store = ContainerStore()
    store.create("web", ["10.0.1.0/24"])
    store.create("all", includes=["web"])
    change = store.add_prefix("web", "10.0.2.0/24")
    assert change.containers == {"web", "all"} and change.version == store.version


# ---------------------------------------------------------------- classifier cases
def test_first_matching_rule_over_containers_ports_and_icmp() -> None:
    store = ContainerStore()
    store.create("web", ["10.0.1.0/24", "2001:db8:1::/48"])
    rules = RuleSet(tenant="t", direction="ingress")
    rules.add(rule("ssh-block", 10, dst="container:web", protocol="tcp", dport=22))
    rules.add(rule("web-in", 20, dst="container:web", protocol="tcp", dport="80-443"))
    rules.add(rule("ping", 30, protocol="icmp", icmp_type=8))
    rules.add(rule("lan", 40, src="192.168.0.0/16"))
    classifier = Classifier(store, rules)
    batch = packets(
        {"src": "203.0.113.9", "dst": "10.0.1.5", "protocol": 6, "sport": 5000, "dport": 443},
        {"src": "203.0.113.9", "dst": "10.0.1.5", "protocol": 6, "sport": 5000, "dport": 22},
        {"src": "203.0.113.9", "dst": "10.0.9.5", "protocol": 6, "sport": 5000, "dport": 443},
        {"src": "203.0.113.9", "dst": "10.0.9.5", "protocol": 1, "icmp_type": 8, "sport": 22},
        {"src": "2001:db8:2::1", "dst": "2001:db8:1::7", "protocol": 6, "dport": 80},
        {"src": "192.168.3.4", "dst": "8.8.8.8", "protocol": 17, "dport": 53},
        {"src": "8.8.4.4", "dst": "8.8.8.8", "protocol": 17, "dport": 53},
    )
    ids = [classifier.rules[i].id if i >= 0 else None for i in classifier.classify(batch)]
    assert ids == ["web-in", "ssh-block", None, "ping", "web-in", "lan", None]
    check_against_reference(store, classifier, batch)


def test_address_and_rule_changes_take_effect_on_the_next_lookup() -> None:
    store = ContainerStore()
    store.create("blocked", [])
    rules = RuleSet(tenant="t", direction="ingress")
    rules.add(rule("block", 1, src="container:blocked"))
    classifier = Classifier(store, rules)
    batch = packets({"src": "198.51.100.7", "dst": "10.0.0.1", "protocol": 17, "dport": 53})
    assert list(classifier.classify(batch)) == [-1]
    store.add_prefix("blocked", "198.51.100.0/24")
    assert list(classifier.classify(batch)) == [0]
    store.remove_prefix("blocked", "198.51.100.0/24")
    assert list(classifier.classify(batch)) == [-1]
    rules.add(rule("dns", 0, protocol="udp", dport=53))
    assert classifier.rules[classifier.classify(batch)[0]].id == "dns"


# ---------------------------------------------------------------- differential
V4 = st.tuples(st.integers(0, 15), st.integers(8, 28)).map(
    lambda t: ipaddress.ip_network(
        (((10 << 24) | (t[0] << 20)) & (((1 << t[1]) - 1) << (32 - t[1])), t[1])))
V6 = st.tuples(st.integers(0, 15), st.integers(32, 64)).map(
    lambda t: ipaddress.ip_network(
        ((((0x20010DB8 << 96) | (t[0] << 92)) & (((1 << t[1]) - 1) << (128 - t[1]))), t[1])))
PREFIX = st.one_of(V4, V4, V6)
NAMES = ["a", "b", "c", "d"]
MATCH = st.one_of(st.just("any"), st.sampled_from(["container:" + n for n in NAMES]),
                  V4.map(str))
PORTS = st.one_of(st.just("any"), st.integers(0, 65535),
                  st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(
                      lambda t: f"{min(t)}-{max(t)}"))


@st.composite
def rule_sets(draw: st.DrawFn) -> list[Rule]:
    out = []
    for n in range(draw(st.integers(0, 12))):
        protocol = draw(st.sampled_from(["any", "tcp", "udp", "icmp"]))
        fields: dict[str, object] = {"src": draw(MATCH), "dst": draw(MATCH), "protocol": protocol}
        if protocol in ("any", "tcp", "udp"):
            fields["sport"] = draw(PORTS)
            fields["dport"] = draw(PORTS)
        elif draw(st.booleans()):
            fields["icmp_type"] = draw(st.integers(0, 3))
            if draw(st.booleans()):
                fields["icmp_code"] = draw(st.integers(0, 2))
        out.append(rule(f"r{n}", draw(st.integers(0, 5)), **fields))
    return out


def address_in(prefix: ipaddress.IPv4Network | ipaddress.IPv6Network, offset: int) -> str:
    return str(prefix.network_address + offset % prefix.num_addresses)


@st.composite
def traffic(draw: st.DrawFn, near: list) -> Batch:
    rows = []
    for _ in range(draw(st.integers(1, 24))):
        six = draw(st.booleans()) if any(p.version == 6 for p in near) else False
        pool = [p for p in near if p.version == (6 if six else 4)] or (
            [ipaddress.ip_network("2001:db8::/32" if six else "10.0.0.0/8")])
        src = address_in(draw(st.sampled_from(pool)), draw(st.integers(0, 2**20)))
        dst = address_in(draw(st.sampled_from(pool)), draw(st.integers(0, 2**20)))
        protocol = draw(st.sampled_from([6, 17, 1, 58, 47]))
        row: dict[str, int | str] = {"src": src, "dst": dst, "protocol": protocol,
                                     "sport": draw(st.integers(0, 65535)),
                                     "dport": draw(st.sampled_from([0, 22, 53, 80, 443, 65535]))}
        if protocol in (1, 58):
            row.update(icmp_type=draw(st.integers(0, 3)), icmp_code=draw(st.integers(0, 2)))
        rows.append(row)
    return packets(*rows)


SLOW = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SLOW
@given(st.data())
def test_classifier_equals_brute_force(data: st.DataObject) -> None:
    store = ContainerStore()
    held: list = []
    for name in NAMES:
        prefixes = data.draw(st.lists(PREFIX, max_size=4, unique=True))
        store.create(name, prefixes)
        held += prefixes
    if data.draw(st.booleans()):
        store.include("a", "b")
    if data.draw(st.booleans()):
        store.include("c", "b")
    rules = RuleSet(tenant="t", direction="ingress")
    rules.replace_all(data.draw(rule_sets()))
    classifier = Classifier(store, rules)
    check_against_reference(store, classifier, data.draw(traffic(held)))


@SLOW
@given(st.data())
def test_stream_of_updates_stays_equal_to_brute_force(data: st.DataObject) -> None:
    store = ContainerStore()
    for name in NAMES:
        store.create(name)
    rules = RuleSet(tenant="t", direction="ingress")
    rules.replace_all(data.draw(rule_sets()))
    classifier = Classifier(store, rules)
    held: list = []
    for _ in range(data.draw(st.integers(1, 15))):
        name = data.draw(st.sampled_from(NAMES))
        prefix = data.draw(PREFIX)
        if prefix in store.containers[name].prefixes:
            store.remove_prefix(name, prefix)
        else:
            store.add_prefix(name, prefix)
            held.append(prefix)
        if data.draw(st.integers(0, 4)) == 0:
            rules.replace_all(data.draw(rule_sets()))
        check_against_reference(store, classifier, data.draw(traffic(held)))
    for name in NAMES:
        store.delete(name)
    # What is left belongs to the rules' literal prefixes, and goes with the rules.
    for trie in store.tries.values():
        trie.check()
        assert all(isinstance(key, Literal) for node in trie for key in node.holders)
    rules.replace_all([])
    assert store.node_count() == 0 and store.class_count() == 1



def test_many_rules_over_every_kind_of_list() -> None:
    """700 rules over key, port and wide lists, long enough to relocate them in the pool."""
    rng = np.random.default_rng(4)
    store = ContainerStore()
    for n, name in enumerate(NAMES):
        store.create(name, [f"10.{n}.0.0/16", f"10.{n}.{n}.0/24"])
    made = []
    for n in range(700):
        fields: dict[str, object] = {
            "src": str(rng.choice(["any", "any", "any", "container:a", "10.2.0.0/16"])),
            "dst": str(rng.choice(["any", "any", "any", "container:c"])),
            "protocol": str(rng.choice(["tcp", "udp"])),
        }
        if n % 7:
            fields["dport"] = int(rng.integers(0, 40))
        elif n % 2:  # a range within a few port buckets, or so wide that it is a wide rule
            fields["dport"] = f"{n}-{n + 30}" if n % 3 else f"{n}-{n + 20000}"
        elif n < 560:  # late rules take any port (early ones would shadow everything)
            fields["dport"] = n
        made.append(rule(f"r{n:03d}", n, **fields))
    rules = RuleSet(tenant="t", direction="ingress")
    rules.replace_all(made)
    classifier = Classifier(store, rules)
    spread = classifier.list_lengths()
    assert sum(spread.values()) == 700 and min(spread.values()) > 10, spread
    rows = [{"src": f"10.{rng.integers(0, 5)}.{rng.integers(0, 5)}.9",
             "dst": f"10.{rng.integers(0, 5)}.{rng.integers(0, 5)}.7",
             "protocol": int(rng.choice([6, 17])), "dport": int(rng.integers(0, 750))}
            for _ in range(1000)]
    batch = packets(*rows)
    check_against_reference(store, classifier, batch)
    found = classifier.classify(batch)
    assert (found >= 400).sum() > 10 and len(np.unique(found)) > 30  # late rules, many rules
    # Remove every other rule, one at a time, then put them back: lists shrink, move, compact.
    for n in range(0, 700, 2):
        rules.remove(f"r{n:03d}")
    check_against_reference(store, classifier, batch)
    assert sum(classifier.list_lengths().values()) == 350
    for n in range(0, 700, 2):
        rules.add(made[n])
    check_against_reference(store, classifier, batch)
    assert [r.id for r in classifier.rules] == [r.id for r in rules.ordered()]


def test_one_rule_change_touches_one_list() -> None:
    """Adding a rule writes its record and one list; no other list moves or changes."""
    store = ContainerStore()
    store.create("a", ["10.0.0.0/24"])
    store.create("b", ["10.1.0.0/24"])
    rules = RuleSet(tenant="t", direction="ingress")
    rules.replace_all([rule(f"r{n}", 10 * n, src="container:a", protocol="tcp", dport=80 + n)
                       for n in range(50)])
    classifier = Classifier(store, rules)
    lists_before = classifier.lists.copy()
    rules.add(rule("new", 15, dst="container:b", protocol="udp", dport=53))
    changed = np.flatnonzero((classifier.lists != lists_before[: len(classifier.lists)]).any(
        axis=1))
    assert len(changed) == 1
    assert classifier.list_lengths()["destination key"] == 1
    check_against_reference(store, classifier, packets(
        {"src": "10.0.0.9", "dst": "10.1.0.4", "protocol": 17, "dport": 53},
        {"src": "10.0.0.9", "dst": "10.1.0.4", "protocol": 6, "dport": 81},
        {"src": "10.0.0.9", "dst": "10.1.0.4", "protocol": 6, "dport": 82},
    ))
    assert list(classifier.classify(packets(
        {"src": "10.0.0.9", "dst": "10.1.0.4", "protocol": 17, "dport": 53}))) == [2]
