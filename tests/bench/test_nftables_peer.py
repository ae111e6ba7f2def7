"""The kernel peers of ``classify`` (bench/nftables.py) at a small size: the kernel
chooses, rule by rule, what Portico's classifier chooses, and the lab leaves nothing.

The frames are checked against Scapy's, the policy is loaded into a namespace and
the kernel's per-rule counters are compared with the classifier's choices, first
by hand (the scenario, step by step) and then through ``measure`` for nftables and
for ipset. No timing is asserted: figures depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from bench.classify import (
    ClassifySettings,
    add_kernel_peers,
    build_containers,
    format_kernel_peers,
    kernel_peers,
    make_rules,
    make_traffic,
)
from bench.nftables import (
    MAC_ELSEWHERE,
    MAC_HOST,
    POLICY,
    TABLE,
    Lab,
    Sender,
    frames,
    iptables_rule,
    lab_namespaces,
    measure,
    nft_rule,
    nft_text,
    unavailable,
)
from bench.workloads import MismatchError
from portico.batch import Batch
from portico.classify.classifier import Classifier
from portico.classify.containers import ContainerStore
from portico.classify.rules import Direction, Rule, RuleSet

SMALL = ClassifySettings(containers=20, prefixes=200, rules=100, packets=2000)


def needs(peer: str) -> None:
    reason = unavailable(peer)
    if reason is not None:
        pytest.skip(f"{peer}: {reason}")


@pytest.fixture(autouse=True)
def keep_affinity():  # type: ignore[no-untyped-def]  # measure pins the sender to one CPU
    allowed = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, allowed)


@pytest.fixture(scope="module")
def policy() -> dict[str, Any]:
    """The small workload: containers, rules, traffic, and the classifier's choices."""
    store, networks = build_containers(SMALL)
    rules = RuleSet(tenant="bench", direction=Direction.INGRESS)
    rules.replace_all(make_rules(SMALL.rules, SMALL.containers))
    traffic = make_traffic(networks, SMALL.packets)
    classifier = Classifier(store, rules)
    chosen = classifier.classify(traffic)
    classifier.close()
    return {"store": store, "rules": rules, "traffic": traffic, "chosen": chosen}


def rule(**fields: Any) -> Rule:
    return Rule.from_dict({"id": "r1", "priority": 1, "action": "allow", **fields})


def test_rules_translate_transport_first() -> None:
    assert nft_rule(rule(src="container:web", dst="10.7.0.0/16", protocol="tcp",
                         dport=443)) == (
        'tcp dport 443 ip saddr @_web ip daddr 10.7.0.0/16 counter accept comment "r1"')
    assert nft_rule(rule(dst="container:9db", protocol="udp", dport="1000-2000",
                         action="deny")) == (
        'udp dport 1000-2000 ip daddr @_9db counter drop comment "r1"')
    assert nft_rule(rule(dport=22)) == (
        'meta l4proto { tcp, udp, sctp } th dport 22 counter accept comment "r1"')
    assert nft_rule(rule(protocol="icmp", icmp_type=8, action="reject")) == (
        'icmp type 8 counter drop comment "r1"')
    assert nft_rule(rule()) == 'counter accept comment "r1"'
    assert iptables_rule(rule(src="container:web", dst="10.7.0.0/16", protocol="tcp",
                              dport="80-90")) == (
        "-p tcp -m tcp --dport 80:90 -d 10.7.0.0/16 -m set --match-set _web src -j ACCEPT")
    with pytest.raises(ValueError, match="IPv4 only"):
        nft_rule(rule(src="2001:db8::/32"))
    with pytest.raises(ValueError, match="one rule per protocol"):
        iptables_rule(rule(dport=22))


def test_frames_are_the_packets_scapy_builds(policy: dict[str, Any]) -> None:
    meta = policy["traffic"].meta[: policy["traffic"].count]
    built = frames(meta)
    assert built.shape == (SMALL.packets, 60)
    for row in range(0, SMALL.packets, 7):
        m = meta[row]
        transport = (TCP(sport=int(m["sport"]), dport=int(m["dport"]), flags="S",
                         window=65535) if m["protocol"] == 6
                     else UDP(sport=int(m["sport"]), dport=int(m["dport"])))
        want = Ether(src=MAC_HOST.hex(":"), dst=MAC_ELSEWHERE.hex(":")) / IP(
            src=str(IPv4Address(int(m["src4"]))), dst=str(IPv4Address(int(m["dst4"]))),
            flags="DF", id=0, ttl=64) / transport
        raw = bytes(want)
        assert bytes(built[row]) == raw + bytes(60 - len(raw)), row


def test_the_kernel_counts_each_rule_as_the_classifier_chooses(policy: dict[str, Any]) -> None:
    """The scenario by hand: load the ruleset, send the frames, read every rule's counter."""
    needs("nftables")
    ordered = policy["rules"].ordered()
    with Lab("nft") as lab:
        lab.run("nft", "-f", "-", stdin=nft_text(policy["store"], ordered, lab.inside))
        lab.run("nft", "add", "rule", "netdev", TABLE, "ingress", "jump", POLICY)
        sender = Sender(lab.host, frames(policy["traffic"].meta[: SMALL.packets]))
        try:
            sender.send()
        finally:
            sender.close()
        listing = json.loads(lab.run("nft", "-j", "list", "chain", "netdev", TABLE, POLICY))
    counted = {item["rule"]["comment"]: next(e["counter"]["packets"]
                                             for e in item["rule"]["expr"] if "counter" in e)
               for item in listing["nftables"] if "rule" in item}
    want = np.bincount(policy["chosen"], minlength=len(ordered))
    assert counted == {r.id: int(n) for r, n in zip(ordered, want, strict=True)}
    assert 0 < want[-1] < SMALL.packets  # some packets meet a rule, the rest the default
    assert lab.namespace not in lab_namespaces()


@pytest.mark.parametrize("peer", ["nftables", "ipset"])
def test_measure_checks_every_rule_and_cleans_up(policy: dict[str, Any], peer: str) -> None:
    needs(peer)
    result = measure(peer, policy["store"], policy["rules"], policy["traffic"], repeats=1,
                     chosen=policy["chosen"])
    assert result["peer"] == peer
    assert result["packets"] == SMALL.packets and result["repeats"] == 1
    assert result["rules"] == SMALL.rules + 1 and result["sets"] == SMALL.containers
    assert result["load_s"] >= 0
    assert set(result["pass_ns_per_packet"]) == {"rules", "accept", "drop"}
    assert result["pps"] is None or result["pps"] > 0
    assert lab_namespaces() == []


@pytest.mark.parametrize("peer", ["nftables", "ipset"])
def test_nested_and_overlapping_prefixes_match_as_portico_says(peer: str) -> None:
    """A /8 holding a /16 holding a /32, a container inside another; names nft dislikes."""
    needs(peer)
    store = ContainerStore()
    store.create("tcp", ["10.1.2.0/24", "192.168.0.0/16", "192.168.7.7/32"])
    store.create("1outer", ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "11.0.0.0/16"],
                 includes=["tcp"])
    rules = RuleSet(tenant="t", direction=Direction.INGRESS)
    rules.replace_all([
        rule(id="in", src="container:tcp", protocol="tcp", dport=80),
        rule(id="out", priority=2, src="container:1outer", protocol="tcp", dport="80-90",
             action="deny"),
        rule(id="lit", priority=3, dst="10.1.0.0/16", protocol="udp"),
        rule(id="default", priority=9, action="deny"),
    ])
    sources = ["10.1.2.3", "10.1.2.200", "10.1.3.1", "10.200.0.1", "11.0.255.255", "11.1.0.0",
               "192.168.7.7", "192.168.200.1", "192.169.0.0", "9.255.255.255"]
    traffic = Batch(4 * len(sources), slot_size=256)
    traffic.reset(4 * len(sources))
    meta = traffic.meta
    meta["ip_version"] = 4
    meta["src4"] = [int(IPv4Address(a)) for a in sources] * 4
    meta["dst4"] = int(IPv4Address("10.1.9.9"))
    meta["protocol"] = [6] * 3 * len(sources) + [17] * len(sources)
    meta["sport"] = 40000
    meta["dport"] = [80] * len(sources) + [85] * len(sources) + [443] * 2 * len(sources)
    result = measure(peer, store, rules, traffic, repeats=1)  # chosen: by a Classifier
    assert result["packets"] == 4 * len(sources)
    assert result["elements"] == 3 + (4 + 3)  # 1outer's set holds tcp's prefixes too
    classifier = Classifier(store, rules)
    chosen = classifier.classify(traffic)
    classifier.close()
    assert set(chosen.tolist()) == {0, 1, 2, 3}  # every rule met by some packet
    assert lab_namespaces() == []


def test_a_disagreement_names_the_first_differing_rule(policy: dict[str, Any]) -> None:
    needs("nftables")
    wrong = policy["chosen"].copy()
    first = int(np.flatnonzero(wrong < len(policy["rules"]) - 1)[0])
    wrong[first] = len(policy["rules"]) - 1  # claim a specific match was the default
    rule_id = policy["rules"].ordered()[int(policy["chosen"][first])].id
    with pytest.raises(MismatchError, match=rf"nftables first pass: rule \d+ \({rule_id}\)"):
        measure("nftables", policy["store"], policy["rules"], policy["traffic"], repeats=1,
                chosen=wrong)
    assert lab_namespaces() == []


def test_the_lab_is_removed_when_its_user_fails() -> None:
    needs("nftables")
    with pytest.raises(RuntimeError, match="midway"), Lab("nft") as lab:
        assert lab.namespace in lab_namespaces()
        assert Path(f"/sys/class/net/{lab.host}").exists()
        raise RuntimeError("midway")
    assert lab.namespace not in lab_namespaces()
    assert not Path(f"/sys/class/net/{lab.host}").exists()
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert lab.namespace not in done.stdout


def test_the_bench_reports_the_peers_beside_portico(policy: dict[str, Any]) -> None:
    needs("nftables")
    needs("ipset")
    settings = ClassifySettings(containers=20, prefixes=200, rules=100, packets=2000,
                                kernel_packets=500, kernel_repeats=1)
    found = kernel_peers(policy["store"], policy["rules"], policy["traffic"],
                         policy["chosen"], settings)
    assert set(found) == {"nftables", "ipset"}
    entry: dict[str, Any] = {"pps": 1_000_000, "batch": 256, "peers": {"linear": 5},
                             "peer_packets": {"linear": 10}, "ratios": {"linear": 2e5}}
    add_kernel_peers(entry, found)
    for peer, result in found.items():
        assert result["reason"] is None and result["packets"] == 500
        assert entry["peers"][peer] == result["pps"]
        if result["pps"]:
            assert entry["ratios"][peer] == round(1_000_000 / result["pps"], 1)
            assert entry["peer_packets"][peer] == 500
    lines = format_kernel_peers([entry])
    assert [line.split(":")[0] for line in lines if not line.startswith(" ")] == [
        "nftables", "ipset"]
    assert lab_namespaces() == []


def test_a_peer_that_cannot_run_is_reported_not_raised(policy: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    found = kernel_peers(policy["store"], policy["rules"], policy["traffic"],
                         policy["chosen"], SMALL)
    reason = "needs root (network namespaces, AF_PACKET)"
    assert found == {"nftables": {"peer": "nftables", "pps": None, "reason": reason},
                     "ipset": {"peer": "ipset", "pps": None, "reason": reason}}
    entry: dict[str, Any] = {"pps": 1_000_000, "batch": 256, "peers": {"linear": 5},
                             "peer_packets": {"linear": 10}, "ratios": {"linear": 2e5}}
    add_kernel_peers(entry, found)
    assert entry["peers"] == {"linear": 5, "nftables": None, "ipset": None}
    assert entry["ratios"] == {"linear": 2e5}
    assert format_kernel_peers([entry]) == [f"nftables: not measured: {reason}",
                                            f"ipset: not measured: {reason}"]
