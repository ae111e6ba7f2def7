"""Workloads ``classify`` and ``classify-update``: the container classifier at scale.

``classify`` builds the issue's set: 1,000 containers holding 100,000 prefixes
in total, and 10,000 rules over them (sources and destinations drawn from the
containers, "any" and a few literal prefixes; TCP and UDP to ports drawn from
a couple of hundred service ports and some ranges; a default rule last).
Traffic is packet metadata whose addresses fall inside the containers'
prefixes (or just outside), so some packets meet a specific rule early and
the rest fall through to the default: the costly case for a first-match
classifier. Portico's figure is ``Classifier.classify`` over batches of the
given size; the peer is the brute-force linear scan
(``portico.classify.reference``) on a sample, and the run checks that both
choose the same rule for every sampled packet before either figure is
reported.

``classify-update`` times adding and removing one prefix of one container
(median and p99 over a few hundred of each) with 1k, 10k and 100k rules
installed: the cost must not grow with the number of rules. It also times adding
and removing one rule (at a random priority), which the classifier does in
place, without rebuilding its lists.

Linux nftables and ipset set lookups are the other peers the issue names
(``bench/nftables.py``, whose docstring says how they are built and
measured). The same containers and rules are written as an nftables ruleset
(one interval set per container, one rule per rule, in match order) and as
ipset sets matched by iptables rules, each loaded into a network namespace of
its own, and the first ``kernel_packets`` packets of the same traffic are
sent through as real frames. Each rule's kernel counter must equal the
number of those packets the classifier chose that rule for (the run fails
otherwise). The figure is the kernel's rule evaluation per packet (a pass
through the policy less a pass through a one-rule chain, in CPU time on the
sender's CPU, where the softirq runs) as packets per second of one CPU; the
ratios are Portico's pps over the peer's. Where a peer cannot run (not root,
a command missing) its pps is None and ``kernel_peers`` says why; the rest of
the run goes on.
"""

from __future__ import annotations

import ipaddress
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bench.timing import median_seconds
from portico.batch import Batch

SERVICE_PORTS = np.array(sorted({20, 21, 22, 23, 25, 53, 67, 68, 69, 80, 88, 110, 111, 123, 135,
                                 137, 138, 139, 143, 161, 162, 179, 389, 443, 445, 465, 500, 514,
                                 515, 520, 546, 547, 554, 587, 631, 636, 873, 902, 989, 990, 993,
                                 995, 1080, 1194, 1433, 1434, 1521, 1701, 1723, 1812, 1813, 1883,
                                 2049, 2082, 2083, 2181, 2375, 2376, 2379, 2380, 3000, 3128, 3260,
                                 3306, 3389, 3478, 3690, 4369, 4443, 4500, 5000, 5060, 5061, 5222,
                                 5432, 5601, 5672, 5900, 5984, 6379, 6443, 6881, 7001, 8000, 8008,
                                 8080, 8081, 8088, 8443, 8888, 9000, 9042, 9090, 9092, 9200, 9300,
                                 9418, 10250, 11211, 15672, 27017, 50000}))
TARGET_CLASSIFY = (10_000, 10.0)  # issue 3: >= 10 Mpps against 10k rules
TARGET_UPDATE_US = 50.0


@dataclass(frozen=True)
class ClassifySettings:
    containers: int = 1_000
    prefixes: int = 100_000
    rules: int = 10_000
    packets: int = 1 << 14
    batches: tuple[int, ...] = (256, 4096)
    linear_sample: int = 300
    update_rules: tuple[int, ...] = (1_000, 10_000, 100_000)
    updates: int = 300
    repeats: int = 5
    # The kernel peers (bench/nftables.py): which, over how many of the packets, how often.
    kernel_peers: tuple[str, ...] = ("nftables", "ipset")
    kernel_packets: int = 4096
    kernel_repeats: int = 3


FULL_CLASSIFY = ClassifySettings()
QUICK_CLASSIFY = ClassifySettings(prefixes=20_000, packets=1 << 12, linear_sample=100,
                                  update_rules=(1_000, 10_000), updates=100, repeats=3,
                                  kernel_packets=2048)


def build_containers(settings: ClassifySettings, seed: int = 7) -> tuple[Any, np.ndarray]:
    """A store of ``containers`` holding ``prefixes`` IPv4 prefixes (mostly /24)."""
    from portico.classify.containers import ContainerStore

    rng = np.random.default_rng(seed)
    lengths = rng.choice([16, 20, 22, 24, 24, 24, 24, 26, 28, 32], settings.prefixes)
    raw = rng.integers(0, 2**32, settings.prefixes, dtype=np.uint64)
    masks = (np.uint64(0xFFFFFFFF) << (np.uint64(32) - lengths.astype(np.uint64))) & np.uint64(
        0xFFFFFFFF)
    networks = raw & masks
    owners = rng.integers(0, settings.containers, settings.prefixes)
    held: dict[int, set[ipaddress.IPv4Network]] = {}
    for network, length, owner in zip(networks.tolist(), lengths.tolist(), owners.tolist(),
                                      strict=True):
        held.setdefault(owner, set()).add(ipaddress.IPv4Network((network, length)))
    store = ContainerStore()
    for c in range(settings.containers):
        store.create(f"c{c}", sorted(held.get(c, ())))
    return store, networks


def make_rules(count: int, containers: int, seed: int = 8) -> list[Any]:
    from portico.classify.rules import Rule

    rng = np.random.default_rng(seed)

    def address() -> str:
        pick = rng.random()
        if pick < 0.15:
            return "any"
        if pick < 0.2:
            return str(ipaddress.IPv4Network((int(rng.integers(0, 2**16)) << 16, 16)))
        return f"container:c{rng.integers(containers)}"

    rules = []
    for r in range(count):
        protocol = "tcp" if rng.random() < 0.7 else "udp"
        if rng.random() < 0.9:
            dport: object = int(rng.choice(SERVICE_PORTS))
        else:
            lo = int(rng.choice(SERVICE_PORTS))
            dport = f"{lo}-{min(65535, lo + int(rng.integers(1, 2000)))}"
        rules.append(Rule.from_dict({
            "id": f"r{r}", "priority": r, "action": "allow" if rng.random() < 0.8 else "deny",
            "src": address(), "dst": address(), "protocol": protocol, "dport": dport,
        }))
    rules.append(Rule.from_dict({"id": "default", "priority": 2**31 - 1, "action": "deny"}))
    return rules


def make_traffic(networks: np.ndarray, count: int, seed: int = 9) -> Batch:
    """Packet metadata aimed at the containers' prefixes (and, 1 in 10, at random addresses)."""
    rng = np.random.default_rng(seed)
    batch = Batch(count, slot_size=256)
    batch.reset(count)
    meta = batch.meta
    for side in ("src4", "dst4"):
        inside = networks[rng.integers(0, len(networks), count)] + rng.integers(
            0, 256, count).astype(np.uint64)
        stray = rng.integers(0, 2**32, count, dtype=np.uint64)
        meta[side] = np.where(rng.random(count) < 0.9, inside, stray) & np.uint64(0xFFFFFFFF)
    meta["ip_version"] = 4
    meta["protocol"] = np.where(rng.random(count) < 0.7, 6, 17)
    meta["sport"] = rng.integers(1024, 65536, count)
    meta["dport"] = np.where(rng.random(count) < 0.8, rng.choice(SERVICE_PORTS, count),
                             rng.integers(0, 65536, count))
    return batch


def run_classify(settings: ClassifySettings, workloads: Sequence[str],
                 status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    from portico.classify.classifier import Classifier
    from portico.classify.rules import Direction, RuleSet

    status("classify: building containers")
    began = time.perf_counter()
    store, networks = build_containers(settings)
    containers_s = time.perf_counter() - began
    entries: list[dict[str, Any]] = []
    if "classify" in workloads:
        rules = RuleSet(tenant="bench", direction=Direction.INGRESS)
        rules.replace_all(make_rules(settings.rules, settings.containers))
        traffic = make_traffic(networks, settings.packets)
        entries += _classify_one(store, rules, traffic, settings, containers_s, status)
    if "classify-update" in workloads:
        rng = np.random.default_rng(11)
        for count in settings.update_rules:
            status(f"classify-update: {count} rules")
            rules = RuleSet(tenant="bench", direction=Direction.INGRESS)
            rules.replace_all(make_rules(count, settings.containers, seed=count))
            classifier = Classifier(store, rules)
            adds, removes = [], []
            for _ in range(settings.updates):
                prefix = ipaddress.IPv4Network((int(rng.integers(0, 2**24)) << 8, 24))
                name = f"c{rng.integers(settings.containers)}"
                if prefix in store.containers[name].prefixes:
                    continue
                began = time.perf_counter()
                store.add_prefix(name, prefix)
                adds.append(time.perf_counter() - began)
                began = time.perf_counter()
                store.remove_prefix(name, prefix)
                removes.append(time.perf_counter() - began)
            both = adds + removes
            # Rule changes too: one rule added and removed again (incremental, no rebuild).
            extra = make_rules(settings.updates, settings.containers, seed=count + 1)[:-1]
            rule_changes = []
            for n, new_rule in enumerate(extra):
                moved = replace(new_rule, id=f"extra{n}",
                                priority=int(rng.integers(0, 2**31 - 2)))
                began = time.perf_counter()
                rules.add(moved)
                rules.remove(moved.id)
                rule_changes.append((time.perf_counter() - began) / 2)
            entries.append({
                "name": "classify-update", "rules": count, "updates": len(both),
                "median_us": round(statistics.median(both) * 1e6, 1),
                "add_median_us": round(statistics.median(adds) * 1e6, 1),
                "remove_median_us": round(statistics.median(removes) * 1e6, 1),
                "p99_us": round(float(np.percentile(both, 99)) * 1e6, 1),
                "rule_change_median_us": round(statistics.median(rule_changes) * 1e6, 1),
                "peers": {"nftables": None},
            })
            classifier.close()
    return entries


def _classify_one(store: Any, rules: Any, traffic: Batch, settings: ClassifySettings,
                  containers_s: float,
                  status: Callable[[str], None]) -> list[dict[str, Any]]:
    """One classifier over ``rules``, timed per batch size."""
    from portico.classify.classifier import Classifier
    from portico.classify.reference import classify_rows

    entries: list[dict[str, Any]] = []
    began = time.perf_counter()
    classifier = Classifier(store, rules)
    compile_s = time.perf_counter() - began
    status("classify: linear scan (the reference) on a sample")
    sample = np.arange(min(settings.linear_sample, traffic.count))
    ordered = rules.ordered()
    began = time.perf_counter()
    want = classify_rows(ordered, traffic.meta[sample], store.holds)
    linear_pps = len(sample) / (time.perf_counter() - began)
    got = classifier.classify(traffic, sample)
    if list(got) != list(want):
        from bench.workloads import MismatchError

        bad = int(np.flatnonzero(np.asarray(got) != np.asarray(want))[0])
        raise MismatchError(f"classify: packet {bad}: classifier chose rule {got[bad]}, "
                            f"the linear scan {want[bad]}")
    everything = classifier.classify(traffic)
    specific = float(np.mean(everything < len(ordered) - 1))
    for size in settings.batches:
        status(f"classify: portico at batch {size}")
        cuts = [np.arange(first, min(first + size, traffic.count))
                for first in range(0, traffic.count, size)]

        def work(cuts: list[np.ndarray] = cuts) -> None:
            for rows in cuts:
                classifier.classify(traffic, rows)

        work()
        pps = traffic.count / median_seconds(work, settings.repeats)[0]
        entries.append({
            "name": "classify", "packets": traffic.count, "batch": size, "pps": round(pps),
            "anchored": classifier.list_lengths(),
            "rules": len(ordered), "containers": settings.containers,
            "prefixes": settings.prefixes, "specific_match_share": round(specific, 3),
            "peers": {"linear": round(linear_pps)},
            "peer_packets": {"linear": len(sample)},
            "ratios": {"linear": round(pps / linear_pps, 1)},
            "build_s": {"containers": round(containers_s, 2), "rules": round(compile_s, 2)},
            "memory_bytes": {"classifier": classifier.memory_bytes(),
                             "lpm4": store.lpm4.memory_bytes()},
            "trie_nodes": store.node_count(), "classes": store.class_count(),
        })
    kernel = kernel_peers(store, rules, traffic, everything, settings, status)
    for entry in entries:
        add_kernel_peers(entry, kernel)
    classifier.close()
    return entries


def kernel_peers(store: Any, rules: Any, traffic: Batch, chosen: np.ndarray,
                 settings: ClassifySettings,
                 status: Callable[[str], None] = lambda _: None) -> dict[str, dict[str, Any]]:
    """Each kernel peer's result (``bench.nftables.measure``), or its pps None and why.

    ``chosen`` is the classifier's rule for every packet of ``traffic``: the
    peers' counters are checked against it (``MismatchError`` propagates). A
    peer that cannot run here, or whose lab fails, is reported, not raised:
    the rest of the bench goes on without it.
    """
    from bench.nftables import PeerUnavailable, measure

    results: dict[str, dict[str, Any]] = {}
    for peer in settings.kernel_peers:
        try:
            result = measure(peer, store, rules, traffic, packets=settings.kernel_packets,
                             repeats=settings.kernel_repeats, chosen=chosen, status=status)
            results[peer] = {**result, "reason": None}
        except PeerUnavailable as error:
            results[peer] = {"peer": peer, "pps": None, "reason": str(error)}
        except subprocess.CalledProcessError as error:
            said = (error.stderr or "").strip().splitlines()
            results[peer] = {"peer": peer, "pps": None,
                             "reason": f"{' '.join(map(str, error.cmd[:5]))} failed: "
                                       f"{said[0] if said else error.returncode}"}
        except (OSError, subprocess.SubprocessError, ValueError) as error:
            results[peer] = {"peer": peer, "pps": None, "reason": f"failed: {error}"}
    return results


def add_kernel_peers(entry: dict[str, Any], kernel: dict[str, dict[str, Any]]) -> None:
    """A ``classify`` entry's peers, sample sizes and ratios, with the kernel peers'."""
    for peer, result in kernel.items():
        entry["peers"][peer] = result["pps"]
        if result["pps"]:
            entry["peer_packets"][peer] = result["packets"]
            entry["ratios"][peer] = round(entry["pps"] / result["pps"], 1)
    entry["kernel_peers"] = kernel


def format_classify(entries: Sequence[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    looks = [e for e in entries if e["name"] == "classify"]
    if looks:
        first = looks[0]
        lines += ["", f"classify: {first['rules']} rules over {first['containers']} containers "
                  f"holding {first['prefixes']} prefixes; {first['trie_nodes']} trie nodes, "
                  f"{first['classes']} classes; "
                  f"{first['specific_match_share']:.0%} of packets meet a rule before the default",
                  f"{'memory':>10}{'build s':>9}{'batch':>7}"
                  f"{'portico pps':>14}{'linear pps':>12}{'x linear':>10}"]
        for e in looks:
            lines.append(f"{e['memory_bytes']['classifier'] / 2**20:>6.1f} MiB"
                         f"{e['build_s']['rules']:>9}{e['batch']:>7}{e['pps'] / 1e6:>12.2f} M"
                         f"{e['peers']['linear']:>12,}{e['ratios']['linear']:>10,.0f}")
        lines.append(f"containers built in {first['build_s']['containers']} s; LPM "
                     f"{first['memory_bytes']['lpm4'] / 2**20:.0f} MiB")
        lines += format_kernel_peers(looks)
    updates = [e for e in entries if e["name"] == "classify-update"]
    if updates:
        lines += ["", "classify-update: one prefix added to / removed from one container",
                  f"{'rules':>8}{'median us':>11}{'add':>8}{'remove':>8}{'p99 us':>9}"
                  f"{'rule add/remove us':>20}"]
        for e in updates:
            lines.append(f"{e['rules']:>8}{e['median_us']:>11}{e['add_median_us']:>8}"
                         f"{e['remove_median_us']:>8}{e['p99_us']:>9}"
                         f"{e['rule_change_median_us']:>20}")
    return lines


def format_kernel_peers(looks: Sequence[dict[str, Any]]) -> list[str]:
    """One line per kernel peer: its cost per packet, Portico's ratio per batch, the load."""
    lines: list[str] = []
    kernel = looks[0].get("kernel_peers", {})
    for peer, result in kernel.items():
        if not result["pps"]:
            reason = result["reason"] or "below the noise (the policy pass cost no more)"
            lines.append(f"{peer}: not measured: {reason}")
            continue
        ratios = ", ".join(f"x{e['ratios'][peer]:,.0f} at batch {e['batch']}" for e in looks)
        lines += [f"{peer}: {result['ns_per_packet'] / 1e3:,.1f} us/packet of rule evaluation "
                  f"(one CPU: {result['pps']:,} pps); Portico {ratios}",
                  f"  {result['rules']} rules and {result['sets']} sets "
                  f"({result['elements']} prefixes) loaded in {result['load_s']} s; "
                  f"{result['packets']} packets, {result['rules_walked']:,.0f} rules walked "
                  f"each on average ({result['ns_per_rule_walked']} ns a rule); every rule's "
                  "counter equals the classifier's choices"]
    return lines


def classify_target_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    rules, mpps = TARGET_CLASSIFY
    for e in entries:
        if e["name"] == "classify" and e["batch"] == 256:
            value = e["pps"] / 1e6
            verdict = "met" if value >= mpps else "MISSED"
            lines.append(f"classify >= {mpps:g} Mpps at batch 256 against {rules} rules "
                         f"({e['rules']} here): {value:.2f} Mpps, "
                         f"{verdict}")
        if e["name"] == "classify-update":
            verdict = "met" if e["median_us"] <= TARGET_UPDATE_US else "MISSED"
            lines.append(f"classify-update <= {TARGET_UPDATE_US:g} us median with {e['rules']} "
                         f"rules: {e['median_us']} us, {verdict}")
    return lines
