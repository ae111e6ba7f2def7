"""Containers: named, changing sets of addresses, merged into one trie per family.

A container is a named set of IPv4/IPv6 prefixes and of other containers, per
tenant ("web" = 10.0.1.0/24 + 2001:db8:1::/48 + the container "web-canary").
``ContainerStore`` holds one tenant's containers.

Theory of operation.

*Contributions.* Every prefix a container holds, directly or through
containers it includes, is counted in the family's ``PrefixTrie`` under the
container's name, once per way it is held: if "all" includes "web" twice over
(directly and through "frontend"), each of web's prefixes counts twice for
"all". Changing membership adds or removes exactly those counts, so an address
held by two containers stays matched for one when the other lets go, and a
deleted container leaves no node behind. Rule literals (a rule matching
"10.0.0.0/8" rather than a container) are contributed the same way under a
``Literal`` key, so the classifier treats both alike.

*Classes.* What a packet's address matches is decided by the deepest trie node
covering it: the holders of that node and of all its ancestors. That set of
keys is the node's *class*. Classes are interned (one id per distinct set, id 0
is the empty set), and each node with holders maps its prefix to its class id
in a longest-prefix-match table (``LPM4``/``LPM6``), so the datapath answers
"which containers hold this address" with one LPM lookup per address. When a
node's set of holders changes, the classes of it and of the nodes below it are
recomputed, and only those LPM entries are rewritten. Listeners (classifiers)
are told when a class id comes into use and when it is released, so they keep
a row of rule bits per class.

*Versions.* Every change bumps ``version`` and returns a ``ContainerChange``
naming the containers whose membership changed (those including the changed
one too), so rules that use them can be found.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from portico.classify.lpm4 import LPM4
from portico.classify.lpm6 import LPM6
from portico.classify.trie import Node, PrefixTrie

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
EMPTY_CLASS = 0


class ContainerError(ValueError):
    """A change was refused; ``path`` names the offending field, nothing was changed."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class Literal(NamedTuple):
    """A prefix a rule names directly, held in the trie like a one-prefix container."""

    network: Network


class ClassListener(Protocol):
    def class_added(self, class_id: int, keys: frozenset[Hashable]) -> None: ...
    def class_removed(self, class_id: int) -> None: ...


@dataclass(frozen=True)
class ContainerChange:
    version: int
    containers: frozenset[str]  # whose membership (as seen through nesting) changed


@dataclass
class Container:
    name: str
    prefixes: set[Network] = field(default_factory=set)
    includes: set[str] = field(default_factory=set)


def parse_prefix(text: str | Network, path: str) -> Network:
    """A prefix from "10.0.0.0/8", "2001:db8::/32", or an address (a host prefix)."""
    if isinstance(text, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return text
    try:
        return ipaddress.ip_network(str(text), strict=True)
    except ValueError as error:
        raise ContainerError(path, f"not a prefix: {text!r} ({error})") from None


class ContainerStore:
    """One tenant's containers, their merged tries, and the address -> class LPM tables."""

    def __init__(self, tenant: str = "default") -> None:
        self.tenant = tenant
        self.containers: dict[str, Container] = {}
        self._included_by: dict[str, set[str]] = {}  # name -> containers that include it
        self.tries = {4: PrefixTrie(32), 6: PrefixTrie(128)}
        self.lpm4 = LPM4()
        self.lpm6 = LPM6()
        self.version = 0
        self._class_ids: dict[frozenset[Hashable], int] = {frozenset(): EMPTY_CLASS}
        self._class_keys: dict[int, frozenset[Hashable]] = {EMPTY_CLASS: frozenset()}
        self._class_users: Counter[int] = Counter()
        self._free_ids: list[int] = []
        self._node_class: dict[tuple[int, int, int], int] = {}  # (version, net, len) -> id
        self._literal_uses: Counter[Literal] = Counter()
        self._listeners: list[ClassListener] = []

    # ---------------------------------------------------------------- queries
    def holders_of(self, address: str | int, version: int | None = None) -> set[str]:
        """Names of every container holding ``address`` (literals left out)."""
        version, value = self._address(address, version)
        return {k for k in self.tries[version].holders_of(value) if isinstance(k, str)}

    def holds(self, name: str, version: int, address: int) -> bool:
        """Does container ``name`` hold the address? (the reference classifier's question)"""
        return name in self.tries[version].holders_of(address)

    def members(self, name: str) -> set[Network]:
        """Every prefix ``name`` holds, through nesting too."""
        self._known(name, "containers")
        return set(self._expanded(name))

    def class_keys(self, class_id: int) -> frozenset[Hashable]:
        return self._class_keys[class_id]

    def class_count(self) -> int:
        return len(self._class_keys)

    def node_count(self) -> int:
        return sum(trie.node_count for trie in self.tries.values())

    def class_of(self, address: str | int, version: int | None = None) -> int:
        """The class id the LPM gives ``address`` (what the batch classifier reads)."""
        version, value = self._address(address, version)
        node = None
        for node in self.tries[version].path(value):  # noqa: B007 - the deepest one is wanted
            pass
        return EMPTY_CLASS if node is None else self._node_class[self._key(version, node)]

    def subscribe(self, listener: ClassListener) -> None:
        """Tell ``listener`` about every class in use now and from now on."""
        self._listeners.append(listener)
        for class_id, keys in self._class_keys.items():
            listener.class_added(class_id, keys)

    def unsubscribe(self, listener: ClassListener) -> None:
        self._listeners.remove(listener)

    # ---------------------------------------------------------------- changes
    def create(self, name: str, prefixes: Iterable[str | Network] = (),
               includes: Iterable[str] = ()) -> ContainerChange:
        path = f"containers.{name}"
        if not name or not isinstance(name, str):
            raise ContainerError("containers", f"a container needs a name, got {name!r}")
        if name in self.containers:
            raise ContainerError(path, "already exists")
        parsed = [parse_prefix(p, f"{path}.prefixes[{i}]") for i, p in enumerate(prefixes)]
        included = list(includes)
        for i, other in enumerate(included):
            self._known(other, f"{path}.includes[{i}]")
        self.containers[name] = Container(name)
        self._included_by[name] = set()
        for prefix in dict.fromkeys(parsed):
            self._add_prefix(name, prefix)
        for other in dict.fromkeys(included):
            self._include(name, other, f"{path}.includes")
        return self._changed({name})

    def delete(self, name: str) -> ContainerChange:
        path = f"containers.{name}"
        self._known(name, path)
        users = sorted(self._included_by[name])
        if users:
            raise ContainerError(path, f"still included by {', '.join(users)}")
        container = self.containers[name]
        for other in list(container.includes):
            self._exclude(name, other)
        for prefix in list(container.prefixes):
            self._remove_prefix(name, prefix)
        del self.containers[name]
        del self._included_by[name]
        return self._changed({name})

    def add_prefix(self, name: str, prefix: str | Network) -> ContainerChange:
        path = f"containers.{name}.prefixes"
        self._known(name, f"containers.{name}")
        parsed = parse_prefix(prefix, path)
        if parsed in self.containers[name].prefixes:
            raise ContainerError(path, f"already holds {parsed}")
        self._add_prefix(name, parsed)
        return self._changed(self._includers(name))

    def remove_prefix(self, name: str, prefix: str | Network) -> ContainerChange:
        path = f"containers.{name}.prefixes"
        self._known(name, f"containers.{name}")
        parsed = parse_prefix(prefix, path)
        if parsed not in self.containers[name].prefixes:
            raise ContainerError(path, f"does not hold {parsed}")
        self._remove_prefix(name, parsed)
        return self._changed(self._includers(name))

    def include(self, name: str, other: str) -> ContainerChange:
        path = f"containers.{name}.includes"
        self._known(name, f"containers.{name}")
        self._known(other, path)
        self._include(name, other, path)
        return self._changed(self._includers(name))

    def exclude(self, name: str, other: str) -> ContainerChange:
        path = f"containers.{name}.includes"
        self._known(name, f"containers.{name}")
        if other not in self.containers[name].includes:
            raise ContainerError(path, f"does not include {other!r}")
        self._exclude(name, other)
        return self._changed(self._includers(name))

    def add_literal(self, prefix: str | Network) -> Literal:
        """Hold a rule's literal prefix (reference-counted across rules)."""
        literal = Literal(parse_prefix(prefix, "rule prefix"))
        if not self._literal_uses[literal]:
            self._contribute(literal, Counter({literal.network: 1}), +1)
        self._literal_uses[literal] += 1
        return literal

    def remove_literal(self, literal: Literal) -> None:
        if self._literal_uses[literal] <= 0:
            raise ContainerError("rule prefix", f"{literal.network} is not held")
        self._literal_uses[literal] -= 1
        if not self._literal_uses[literal]:
            del self._literal_uses[literal]
            self._contribute(literal, Counter({literal.network: 1}), -1)

    # ---------------------------------------------------------------- membership internals
    def _add_prefix(self, name: str, prefix: Network) -> None:
        self.containers[name].prefixes.add(prefix)
        for holder, ways in self._paths_up(name).items():
            self._contribute(holder, Counter({prefix: ways}), +1)

    def _remove_prefix(self, name: str, prefix: Network) -> None:
        self.containers[name].prefixes.discard(prefix)
        for holder, ways in self._paths_up(name).items():
            self._contribute(holder, Counter({prefix: ways}), -1)

    def _include(self, name: str, other: str, path: str) -> None:
        if other in self.containers[name].includes:
            raise ContainerError(path, f"already includes {other!r}")
        if other == name or name in self._paths_down(other):
            raise ContainerError(path, f"including {other!r} in {name!r} makes a cycle")
        self.containers[name].includes.add(other)
        self._included_by[other].add(name)
        self._nest(name, other, +1)

    def _exclude(self, name: str, other: str) -> None:
        self._nest(name, other, -1)
        self.containers[name].includes.discard(other)
        self._included_by[other].discard(name)

    def _nest(self, name: str, other: str, sign: int) -> None:
        """Count (sign +1) or uncount other's prefixes for name and everything above it."""
        below = self._expanded(other)
        for holder, ways in self._paths_up(name).items():
            self._contribute(holder, Counter({p: n * ways for p, n in below.items()}), sign)

    def _expanded(self, name: str) -> Counter[Network]:
        """name's prefixes with the number of ways it holds each (through nesting)."""
        total: Counter[Network] = Counter(dict.fromkeys(self.containers[name].prefixes, 1))
        for other in self.containers[name].includes:
            total.update(self._expanded(other))
        return total

    def _paths_up(self, name: str) -> Counter[str]:
        """Containers that hold name's prefixes, with how many include paths lead to name."""
        ways: Counter[str] = Counter({name: 1})
        for includer in self._included_by[name]:
            for holder, n in self._paths_up(includer).items():
                ways[holder] += n
        return ways

    def _paths_down(self, name: str) -> set[str]:
        found: set[str] = set()
        for other in self.containers[name].includes:
            found |= {other} | self._paths_down(other)
        return found

    def _includers(self, name: str) -> set[str]:
        return set(self._paths_up(name))

    # ---------------------------------------------------------------- trie and classes
    def _contribute(self, holder: Hashable, prefixes: Counter[Network], sign: int) -> None:
        for prefix, count in prefixes.items():
            if count <= 0:
                continue
            trie = self.tries[prefix.version]
            network, length = int(prefix.network_address), prefix.prefixlen
            if sign > 0:
                node, changed = trie.add(network, length, holder, count)
            else:
                changed, node, still_there = trie.remove(network, length, holder, count)
                if not still_there:  # spliced out: what hung below it lost its holders
                    self._forget(prefix.version, node)
                    for child in node.children:  # still the (re-hung) subtrees
                        if child is not None:
                            self._reclass(prefix.version, child)
                    continue
            if changed:
                self._reclass(prefix.version, node)

    def _key(self, version: int, node: Node) -> tuple[int, int, int]:
        return (version, node.network, node.length)

    def _path_keys(self, version: int, node: Node) -> frozenset[Hashable]:
        keys: set[Hashable] = set(node.holders)
        up = self.tries[version].covering(node)
        while up is not None:
            keys.update(up.holders)
            up = self.tries[version].covering(up)
        return frozenset(keys)

    def _reclass(self, version: int, top: Node) -> None:
        """Recompute the class of ``top`` and of every node with holders below it."""
        trie = self.tries[version]
        for node in trie.below(top):
            key = self._key(version, node)
            if not node.holders:
                if key in self._node_class:
                    self._forget(version, node)
                continue
            self._assign(version, node, self._intern(self._path_keys(version, node)))

    def _assign(self, version: int, node: Node, class_id: int) -> None:
        key = self._key(version, node)
        old = self._node_class.get(key)
        if old == class_id:
            self._release(class_id)  # _intern counted one use too many
            return
        self._node_class[key] = class_id
        lpm = self.lpm4 if version == 4 else self.lpm6
        lpm.add((node.network, node.length), class_id)
        if old is not None:
            self._release(old)

    def _forget(self, version: int, node: Node) -> None:
        old = self._node_class.pop(self._key(version, node), None)
        if old is None:
            return
        lpm = self.lpm4 if version == 4 else self.lpm6
        lpm.remove((node.network, node.length))
        self._release(old)

    def _intern(self, keys: frozenset[Hashable]) -> int:
        """The class id of ``keys``, counted as one more use."""
        class_id = self._class_ids.get(keys)
        if class_id is None:
            class_id = self._free_ids.pop() if self._free_ids else len(self._class_keys)
            while class_id in self._class_keys:
                class_id += 1
            self._class_ids[keys] = class_id
            self._class_keys[class_id] = keys
            for listener in self._listeners:
                listener.class_added(class_id, keys)
        self._class_users[class_id] += 1
        return class_id

    def _release(self, class_id: int) -> None:
        self._class_users[class_id] -= 1
        if self._class_users[class_id] > 0 or class_id == EMPTY_CLASS:
            return
        del self._class_users[class_id]
        keys = self._class_keys.pop(class_id)
        del self._class_ids[keys]
        self._free_ids.append(class_id)
        for listener in self._listeners:
            listener.class_removed(class_id)

    # ---------------------------------------------------------------- small helpers
    def _known(self, name: str, path: str) -> None:
        if name not in self.containers:
            raise ContainerError(path, f"no container named {name!r}")

    def _changed(self, names: set[str]) -> ContainerChange:
        self.version += 1
        return ContainerChange(self.version, frozenset(names))

    @staticmethod
    def _address(address: str | int, version: int | None) -> tuple[int, int]:
        if isinstance(address, str):
            parsed = ipaddress.ip_address(address)
            return parsed.version, int(parsed)
        if version not in (4, 6):
            raise ValueError("an integer address needs version=4 or 6")
        return version, address
