"""Firewall rules over containers: the typed rule model and the versioned rule sets.

Role. This is what the control plane accepts and what the classifier compiles.
A ``Rule`` says what to do (``Action``, and whether to log) with the packets
that match all of its dimensions: source and destination (``Match``: any, a
container by name, or a literal prefix), protocol, source and destination
``PortRange`` and ICMP type/code. A ``RuleSet`` holds the rules of one tenant
in one direction (ingress or egress), keeps them in match order, knows which
rules use each container, and numbers its changes.

Theory of operation.

*Match order.* A packet is decided by the first rule that matches it in the
order ``(priority, id)``: a lower priority number first, and among equal
priorities the smaller id (plain string order). Ids are unique in a set, so
the order is total: the same rules always decide the same way, whatever
order they were added in. ``portico.classify.reference.first_match`` is that
definition written as a loop; the fast classifier must agree with it.

*What each dimension means.*

* addresses: ``any`` matches every IP packet; a literal prefix matches
  addresses of its own family inside it (an IPv4 prefix never matches an IPv6
  packet, nor the other way round); a container matches the addresses it
  holds, of either family (membership is the container store's business).
  A rule whose source and destination are literal prefixes of different
  families could never match and is refused.
* protocol: ``None`` is any; otherwise the IP protocol / IPv6 next header
  must be equal.
* ports: inclusive ranges. The full range 0-65535 is "no constraint" and
  matches every packet, with or without ports. Any narrower range matches
  only packets of a protocol that has ports (TCP, UDP, SCTP:
  ``PORT_PROTOCOLS``) whose port is inside it, so ``protocol: any,
  dport: 22`` matches TCP, UDP and SCTP to port 22 and never an ICMP packet
  (nftables' ``th dport`` works the same way). A narrower range with an
  explicit protocol that has no ports (ICMP, GRE, ...) could never match and
  is refused. ICMP is matched by type and code, never by ports: the parser
  stores the echo identifier in ``sport``/``dport`` for connection tracking,
  and a rule must not mistake it for a port.
* ICMP type/code: allowed only with protocol 1 (ICMP) or 58 (ICMPv6); a
  code needs a type. ``icmp`` with an IPv6 prefix (or ``icmpv6`` with an
  IPv4 one) is refused as the near-certain mistake it is.

Packets that are not IP (ARP, say) are outside the rules' domain: they match
no rule, not even one that says ``any`` everywhere. The datapath decides
what happens to them. Non-first fragments carry no transport header, so the
parser leaves their ports 0; a port rule sees port 0 (reassembly or fragment
policy is the datapath's business, not the rule model's).

*Versioning.* Every change to a ``RuleSet`` (``add``, ``update``, ``remove``,
``replace_all``) is all-or-nothing: it validates everything first, and on
bad input raises ``RuleError`` with the set untouched. A change that took
effect bumps ``version`` by one (``replace_all`` is one change however many
rules it touches) and returns a ``RuleChange`` naming the rule ids added,
removed and updated, so the datapath can invalidate exactly the flow-cache
entries those rules could affect. A call that changes nothing (updating a
rule to itself, replacing the rules with equal ones) returns an empty change
and leaves the version alone.

*Errors* name the field by its path, the way the config spells it:
``rules[web-in].dport: 80-20: lo 80 > hi 20``. ``RuleError`` is a
``ValueError`` with ``.path`` and ``.reason``.

Example::

    rules = RuleSet(tenant="acme", direction="ingress")
    change = rules.add(Rule.from_dict({
        "id": "web-in", "priority": 100, "action": "allow", "log": True,
        "src": "any", "dst": "container:web", "protocol": "tcp", "dport": "80-443",
    }))
    change.added          # frozenset({'web-in'})
    rules.ordered()       # [Rule(id='web-in', ...)]
    rules.containers_used()  # {'web': {'web-in'}}
"""

from __future__ import annotations

import re
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

Network = IPv4Network | IPv6Network

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132

# Protocols whose header starts with 16-bit source and destination ports.
PORT_PROTOCOLS: frozenset[int] = frozenset({PROTO_TCP, PROTO_UDP, PROTO_SCTP})
ICMP_PROTOCOLS: frozenset[int] = frozenset({PROTO_ICMP, PROTO_ICMPV6})

# Names accepted for ``protocol`` (and written back by ``to_dict``).
PROTOCOL_NAMES: Mapping[str, int] = {
    "icmp": PROTO_ICMP,
    "tcp": PROTO_TCP,
    "udp": PROTO_UDP,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": PROTO_ICMPV6,
    "sctp": PROTO_SCTP,
}
_PROTOCOL_BY_NUMBER = {number: name for name, number in PROTOCOL_NAMES.items()}

# Priorities are non-negative 32-bit numbers so compiled tables can hold them as int32.
PRIORITY_MAX = 2**31 - 1

# Ids and container names appear in paths (``rules[web-in]``) and in the
# ``container:NAME`` form, so they keep to a plain alphabet.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_NAME_RULE = "1-128 of letters, digits, '_', '.', '-', starting with a letter or digit"
CONTAINER_PREFIX = "container:"
ANY = "any"


class RuleError(ValueError):
    """Bad rule input; ``path`` names the field (``rules[web-in].dport``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"  # drop silently
    REJECT = "reject"  # drop and tell the sender (TCP RST / ICMP unreachable)


class Direction(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_name(value: object, path: str, what: str) -> str:
    if not isinstance(value, str):
        raise RuleError(path, f"{what} must be a string, got {type(value).__name__}")
    if not NAME_PATTERN.fullmatch(value):
        raise RuleError(path, f"{what} {value!r} is not valid ({_NAME_RULE})")
    return value


def _parse_prefix(text: str, path: str) -> Network:
    if "%" in text:
        raise RuleError(path, f"{text}: scoped addresses are not prefixes")
    try:
        return ip_network(text, strict=True)
    except ValueError as error:
        try:
            loose = ip_network(text, strict=False)
        except ValueError:
            raise RuleError(path, f"{text}: not an IPv4 or IPv6 prefix") from error
        raise RuleError(path, f"{text}: host bits set (the network is {loose})") from error


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    """One address dimension: any (both fields None), a container, or a literal prefix."""

    container: str | None = None
    prefix: Network | None = None

    def __post_init__(self) -> None:
        if self.container is not None and self.prefix is not None:
            raise RuleError("match", "give a container or a prefix, not both")
        if self.container is not None:
            _check_name(self.container, "match", "container name")
        if self.prefix is not None and not isinstance(self.prefix, IPv4Network | IPv6Network):
            raise RuleError("match", f"prefix must be an IP network, got {self.prefix!r}")

    @classmethod
    def any(cls) -> Match:
        return cls()

    @classmethod
    def of_container(cls, name: str) -> Match:
        return cls(container=name)

    @classmethod
    def of_prefix(cls, prefix: str | Network, *, path: str = "match") -> Match:
        """A literal prefix; a string with host bits set (``10.0.0.1/8``) is an error."""
        if isinstance(prefix, str):
            prefix = _parse_prefix(prefix, path)
        return cls(prefix=prefix)

    @classmethod
    def parse(cls, value: object, *, path: str = "match") -> Match:
        """``"any"``, ``"container:NAME"``, or a prefix (``"10.0.0.0/8"``, ``"2001:db8::/32"``).

        A bare address is its host prefix (/32 or /128).
        """
        if isinstance(value, Match):
            return value
        if not isinstance(value, str):
            raise RuleError(
                path,
                f"expected 'any', 'container:NAME' or a prefix, got {type(value).__name__}",
            )
        text = value.strip()
        if text == ANY:
            return cls()
        if text.startswith(CONTAINER_PREFIX):
            name = text[len(CONTAINER_PREFIX) :]
            return cls(container=_check_name(name, path, "container name"))
        return cls(prefix=_parse_prefix(text, path))

    @property
    def is_any(self) -> bool:
        return self.container is None and self.prefix is None

    @property
    def family(self) -> int | None:
        """4 or 6 for a literal prefix; None for any and containers (they may hold both)."""
        return None if self.prefix is None else self.prefix.version

    def to_value(self) -> str:
        if self.container is not None:
            return CONTAINER_PREFIX + self.container
        if self.prefix is not None:
            return str(self.prefix)
        return ANY

    def __str__(self) -> str:
        return self.to_value()


@dataclass(frozen=True, slots=True, kw_only=True)
class PortRange:
    """An inclusive port range; the default, 0-65535, is no constraint at all."""

    lo: int = 0
    hi: int = 65535

    def __post_init__(self) -> None:
        for name in ("lo", "hi"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= 65535:
                raise RuleError(f"ports.{name}", f"{value!r} is not a port (0..65535)")
        if self.lo > self.hi:
            raise RuleError("ports", f"{self.lo}-{self.hi}: lo {self.lo} > hi {self.hi}")

    @classmethod
    def single(cls, port: int) -> PortRange:
        return cls(lo=port, hi=port)

    @classmethod
    def parse(cls, value: object, *, path: str = "ports") -> PortRange:
        """``"any"``, a port (``80`` or ``"80"``) or a range ``"1024-65535"``."""
        if isinstance(value, PortRange):
            return value
        if _is_int(value):
            assert isinstance(value, int)
            lo = hi = value
        elif isinstance(value, str):
            text = value.strip()
            if text == ANY:
                return cls()
            lo_text, dash, hi_text = text.partition("-")
            lo_text = lo_text.strip()
            hi_text = hi_text.strip() if dash else lo_text
            if not (lo_text.isdecimal() and hi_text.isdecimal()):
                raise RuleError(path, f"{value!r}: expected 'any', a port or 'lo-hi'")
            lo, hi = int(lo_text), int(hi_text)
        else:
            raise RuleError(path, f"expected 'any', a port or 'lo-hi', got {type(value).__name__}")
        for port in (lo, hi):
            if not 0 <= port <= 65535:
                raise RuleError(path, f"{value}: port {port} is outside 0..65535")
        if lo > hi:
            raise RuleError(path, f"{value}: lo {lo} > hi {hi}")
        return cls(lo=lo, hi=hi)

    @property
    def is_full(self) -> bool:
        return self.lo == 0 and self.hi == 65535

    def __contains__(self, port: object) -> bool:
        if isinstance(port, bool) or not isinstance(port, int):
            return False
        return self.lo <= port <= self.hi

    def to_value(self) -> str | int:
        if self.is_full:
            return ANY
        if self.lo == self.hi:
            return self.lo
        return f"{self.lo}-{self.hi}"

    def __str__(self) -> str:
        return str(self.to_value())


FULL_PORTS = PortRange()
ANY_ADDRESS = Match()


def parse_protocol(value: object, *, path: str = "protocol") -> int | None:
    """``"any"``/None, a name from ``PROTOCOL_NAMES``, or a number 0..255."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == ANY:
            return None
        if text in PROTOCOL_NAMES:
            return PROTOCOL_NAMES[text]
        if not text.isdecimal():
            names = ", ".join(["any", *PROTOCOL_NAMES])
            raise RuleError(path, f"unknown protocol {value!r} (use a number or one of {names})")
        value = int(text)
    if not _is_int(value):
        raise RuleError(path, f"expected a protocol name or number, got {type(value).__name__}")
    assert isinstance(value, int)
    if not 0 <= value <= 255:
        raise RuleError(path, f"{value} is outside 0..255")
    return value


def protocol_value(protocol: int | None) -> str | int:
    """How ``to_dict`` writes a protocol: its name when it has one."""
    if protocol is None:
        return ANY
    return _PROTOCOL_BY_NUMBER.get(protocol, protocol)


def _parse_byte(value: object, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value.strip())
    if not _is_int(value):
        raise RuleError(path, f"expected a number 0..255, got {type(value).__name__}")
    assert isinstance(value, int)
    if not 0 <= value <= 255:
        raise RuleError(path, f"{value} is outside 0..255")
    return value


def _rebase(error: RuleError, old: str, new: str) -> RuleError:
    if old == new or not error.path.startswith(old):
        return error
    return RuleError(new + error.path[len(old) :], error.reason)


def _rule_path(where: str, rule_id: str) -> str:
    """``rules[3]`` names the rule by its id once it is known: ``rules[web-in]``."""
    if where.endswith("]") and "[" in where:
        return where[: where.rindex("[")] + f"[{rule_id}]"
    return where


# The keys of a rule's config mapping, in the order ``to_dict`` writes them.
RULE_FIELDS: tuple[str, ...] = (
    "id",
    "priority",
    "action",
    "log",
    "src",
    "dst",
    "protocol",
    "sport",
    "dport",
    "icmp_type",
    "icmp_code",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One firewall rule. Validated on construction; errors say ``rules[<id>].<field>``."""

    id: str
    priority: int
    action: Action
    log: bool = False
    src: Match = ANY_ADDRESS
    dst: Match = ANY_ADDRESS
    protocol: int | None = None
    sport: PortRange = FULL_PORTS
    dport: PortRange = FULL_PORTS
    icmp_type: int | None = None
    icmp_code: int | None = None

    def __post_init__(self) -> None:
        _check_name(self.id, "rules[?].id", "rule id")
        base = f"rules[{self.id}]"
        if not _is_int(self.priority) or not 0 <= self.priority <= PRIORITY_MAX:
            raise RuleError(f"{base}.priority", f"{self.priority!r} is not in 0..{PRIORITY_MAX}")
        if not isinstance(self.action, Action):
            try:
                object.__setattr__(self, "action", Action(self.action))
            except ValueError:
                raise RuleError(
                    f"{base}.action", f"{self.action!r}: use allow, deny or reject"
                ) from None
        if not isinstance(self.log, bool):
            raise RuleError(f"{base}.log", f"expected true or false, got {self.log!r}")
        for name in ("src", "dst"):
            if not isinstance(getattr(self, name), Match):
                raise RuleError(f"{base}.{name}", "expected a Match")
        for name in ("sport", "dport"):
            if not isinstance(getattr(self, name), PortRange):
                raise RuleError(f"{base}.{name}", "expected a PortRange")
        for name in ("protocol", "icmp_type", "icmp_code"):
            _check_byte(getattr(self, name), f"{base}.{name}")
        self._check_consistency(base)

    def _check_consistency(self, base: str) -> None:
        families = {m.family for m in (self.src, self.dst)} - {None}
        if len(families) > 1:
            raise RuleError(
                f"{base}.dst",
                f"{self.dst}: source {self.src} is another address family; "
                "the rule could never match",
            )
        proto = self.protocol
        for name in ("sport", "dport"):
            ports: PortRange = getattr(self, name)
            if not ports.is_full and proto is not None and proto not in PORT_PROTOCOLS:
                raise RuleError(
                    f"{base}.{name}",
                    f"{ports}: protocol {protocol_value(proto)} has no ports "
                    "(ports need tcp, udp, sctp or any; match ICMP by icmp_type/icmp_code)",
                )
        if self.icmp_type is not None and proto not in ICMP_PROTOCOLS:
            raise RuleError(
                f"{base}.icmp_type",
                f"needs protocol icmp or icmpv6, not {protocol_value(proto)}",
            )
        if self.icmp_code is not None and self.icmp_type is None:
            raise RuleError(f"{base}.icmp_code", "needs icmp_type")
        family = families.pop() if families else None
        if proto == PROTO_ICMP and family == 6:
            raise RuleError(
                f"{base}.protocol", "icmp is IPv4's ICMP; IPv6 prefixes need icmpv6 (58)"
            )
        if proto == PROTO_ICMPV6 and family == 4:
            raise RuleError(f"{base}.protocol", "icmpv6 is IPv6's; IPv4 prefixes need icmp (1)")

    @property
    def order_key(self) -> tuple[int, str]:
        """Match order: lower priority number first, ties by id."""
        return (self.priority, self.id)

    def containers(self) -> set[str]:
        """The container names this rule uses (source, destination, or both)."""
        return {m.container for m in (self.src, self.dst) if m.container is not None}

    @classmethod
    def from_dict(cls, data: object, *, where: str = "rules[0]") -> Rule:
        """Parse the config shape (YAML/JSON); errors name ``<where>.<field>``.

        ``where`` is the rule's path before its id is read; once the id is
        known, a trailing ``[...]`` in it is replaced by ``[<id>]``, so
        ``rules[3]`` becomes ``rules[web-in]`` in later errors.
        ``id``, ``priority`` and ``action`` are required; everything else
        defaults to "any" (``log`` to false).
        """
        if not isinstance(data, Mapping):
            raise RuleError(where, f"expected a mapping, got {type(data).__name__}")
        if "id" not in data:
            raise RuleError(f"{where}.id", "missing")
        rule_id = _check_name(data["id"], f"{where}.id", "rule id")
        base = _rule_path(where, rule_id)
        unknown = [str(key) for key in data if key not in RULE_FIELDS]
        if unknown:
            raise RuleError(
                f"{base}.{unknown[0]}", f"unknown field (expected one of {', '.join(RULE_FIELDS)})"
            )
        for required in ("priority", "action"):
            if required not in data:
                raise RuleError(f"{base}.{required}", "missing")
        priority = data["priority"]
        if isinstance(priority, str) and priority.strip().isdecimal():
            priority = int(priority)
        if not _is_int(priority) or not 0 <= priority <= PRIORITY_MAX:
            raise RuleError(f"{base}.priority", f"{priority!r} is not in 0..{PRIORITY_MAX}")
        action_text = data["action"]
        if not isinstance(action_text, str) or action_text.strip().lower() not in {
            a.value for a in Action
        }:
            raise RuleError(f"{base}.action", f"{action_text!r}: use allow, deny or reject")
        log = data.get("log", False)
        if not isinstance(log, bool):
            raise RuleError(f"{base}.log", f"expected true or false, got {log!r}")
        try:
            rule = cls(
                id=rule_id,
                priority=priority,
                action=Action(action_text.strip().lower()),
                log=log,
                src=Match.parse(data.get("src", ANY), path=f"{base}.src"),
                dst=Match.parse(data.get("dst", ANY), path=f"{base}.dst"),
                protocol=parse_protocol(data.get("protocol"), path=f"{base}.protocol"),
                sport=PortRange.parse(data.get("sport", ANY), path=f"{base}.sport"),
                dport=PortRange.parse(data.get("dport", ANY), path=f"{base}.dport"),
                icmp_type=_parse_byte(data.get("icmp_type"), f"{base}.icmp_type"),
                icmp_code=_parse_byte(data.get("icmp_code"), f"{base}.icmp_code"),
            )
        except RuleError as error:
            raise _rebase(error, f"rules[{rule_id}]", base) from None
        return rule

    def to_dict(self) -> dict[str, Any]:
        """The config shape; ``Rule.from_dict(rule.to_dict()) == rule``."""
        out: dict[str, Any] = {
            "id": self.id,
            "priority": self.priority,
            "action": self.action.value,
            "log": self.log,
            "src": self.src.to_value(),
            "dst": self.dst.to_value(),
            "protocol": protocol_value(self.protocol),
            "sport": self.sport.to_value(),
            "dport": self.dport.to_value(),
        }
        if self.icmp_type is not None:
            out["icmp_type"] = self.icmp_type
        if self.icmp_code is not None:
            out["icmp_code"] = self.icmp_code
        return out


def _check_byte(value: object, path: str) -> None:
    """A constructed rule's protocol / ICMP field: None or an int 0..255 (no strings)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise RuleError(path, f"{value!r} is not a number in 0..255 (or None)")


def parse_rules(items: object, *, where: str = "rules") -> list[Rule]:
    """A list of rule mappings (``where[0]``, ``where[1]``, ...); ids must be unique."""
    if not isinstance(items, list | tuple):
        raise RuleError(where, f"expected a list of rules, got {type(items).__name__}")
    rules = [Rule.from_dict(item, where=f"{where}[{i}]") for i, item in enumerate(items)]
    _check_unique(rules, where)
    return rules


def _check_unique(rules: Iterable[Rule], where: str = "rules") -> None:
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise RuleError(f"{where}[{rule.id}].id", f"duplicate id {rule.id!r}")
        seen.add(rule.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleChange:
    """What one change did: the set's new version and the rule ids it touched."""

    version: int
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    updated: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.updated)

    @property
    def affected(self) -> frozenset[str]:
        return self.added | self.removed | self.updated


Listener = Callable[[RuleChange], None]


@dataclass(kw_only=True)
class RuleSet:
    """The rules of one tenant in one direction, in match order, versioned.

    ``container_exists``, when given, is asked about every container a rule
    names; an unknown one is refused (``rules[web-in].dst: unknown container
    'web'``). Listeners (``subscribe``) are called with each non-empty change
    after it took effect.
    """

    tenant: int | str
    direction: Direction
    container_exists: Callable[[str], bool] | None = None
    version: int = field(default=0, init=False)
    _rules: dict[str, Rule] = field(default_factory=dict, init=False, repr=False)
    _order: list[tuple[int, str]] = field(default_factory=list, init=False, repr=False)
    _by_container: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)
    _listeners: list[Listener] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.direction, Direction):
            try:
                self.direction = Direction(self.direction)
            except ValueError:
                raise RuleError("direction", f"{self.direction!r}: use ingress or egress") from None

    # -- reading

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._rules

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.ordered())

    def get(self, rule_id: str) -> Rule | None:
        return self._rules.get(rule_id)

    def ordered(self) -> list[Rule]:
        """The rules in match order (priority, then id)."""
        return [self._rules[rule_id] for _, rule_id in self._order]

    def containers_used(self) -> dict[str, set[str]]:
        """Container name -> ids of the rules that use it (a copy)."""
        return {name: set(ids) for name, ids in self._by_container.items()}

    def rules_using(self, container: str) -> frozenset[str]:
        """Ids of the rules that use one container (cheap: no copy of the whole index)."""
        return frozenset(self._by_container.get(container, ()))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(change)`` after every change; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- changing (validate everything, then apply; never half-applied)

    def add(self, rule: Rule) -> RuleChange:
        self._check(rule)
        if rule.id in self._rules:
            raise RuleError(f"rules[{rule.id}].id", f"duplicate id {rule.id!r}")
        self._insert(rule)
        return self._commit(added={rule.id})

    def update(self, rule: Rule) -> RuleChange:
        """Replace the rule with the same id; updating a rule to itself changes nothing."""
        self._check(rule)
        old = self._rules.get(rule.id)
        if old is None:
            raise RuleError(f"rules[{rule.id}].id", f"unknown rule {rule.id!r}")
        if old == rule:
            return RuleChange(version=self.version)
        self._delete(old)
        self._insert(rule)
        return self._commit(updated={rule.id})

    def remove(self, rule_id: str) -> RuleChange:
        old = self._rules.get(rule_id)
        if old is None:
            raise RuleError(f"rules[{rule_id}].id", f"unknown rule {rule_id!r}")
        self._delete(old)
        return self._commit(removed={rule_id})

    def replace_all(self, rules: Iterable[Rule]) -> RuleChange:
        """Make the set exactly ``rules``: one change, reported as a diff by id."""
        new = list(rules)
        # A rule held as it is (the same object: rules are immutable) was checked when it
        # went in, and containers are never removed: only the others are checked and
        # compared, so one changed rule among 10k costs identity tests, not 10k checks.
        fresh = [rule for rule in new
                 if not isinstance(rule, Rule) or self._rules.get(rule.id) is not rule]
        for rule in fresh:
            self._check(rule)
        _check_unique(new)
        new_ids = {rule.id for rule in new}
        removed = {rule_id for rule_id in self._rules if rule_id not in new_ids}
        added: set[str] = set()
        updated: set[str] = set()
        for rule in fresh:
            old = self._rules.get(rule.id)
            if old is None:
                added.add(rule.id)
            elif old != rule:
                updated.add(rule.id)
        if not (added or removed or updated):
            return RuleChange(version=self.version)
        for rule_id in removed | updated:
            self._delete(self._rules[rule_id])
        for rule in fresh:
            if rule.id in added or rule.id in updated:
                self._insert(rule)
        return self._commit(added=added, removed=removed, updated=updated)

    # -- internals

    def _check(self, rule: object) -> None:
        if not isinstance(rule, Rule):
            raise RuleError("rules[?]", f"expected a Rule, got {type(rule).__name__}")
        if self.container_exists is None:
            return
        for name in ("src", "dst"):
            container = getattr(rule, name).container
            if container is not None and not self.container_exists(container):
                raise RuleError(f"rules[{rule.id}].{name}", f"unknown container {container!r}")

    def _insert(self, rule: Rule) -> None:
        self._rules[rule.id] = rule
        insort(self._order, rule.order_key)
        for container in rule.containers():
            self._by_container.setdefault(container, set()).add(rule.id)

    def _delete(self, rule: Rule) -> None:
        del self._rules[rule.id]
        key = rule.order_key
        del self._order[bisect_left(self._order, key)]
        for container in rule.containers():
            users = self._by_container[container]
            users.discard(rule.id)
            if not users:
                del self._by_container[container]

    def _commit(
        self,
        *,
        added: Iterable[str] = (),
        removed: Iterable[str] = (),
        updated: Iterable[str] = (),
    ) -> RuleChange:
        self.version += 1
        change = RuleChange(
            version=self.version,
            added=frozenset(added),
            removed=frozenset(removed),
            updated=frozenset(updated),
        )
        for listener in list(self._listeners):
            listener(change)
        return change


__all__ = [
    "ANY_ADDRESS",
    "FULL_PORTS",
    "ICMP_PROTOCOLS",
    "PORT_PROTOCOLS",
    "PROTOCOL_NAMES",
    "RULE_FIELDS",
    "Action",
    "Direction",
    "Match",
    "PortRange",
    "Rule",
    "RuleChange",
    "RuleError",
    "RuleSet",
    "parse_protocol",
    "parse_rules",
    "protocol_value",
]
