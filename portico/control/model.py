"""control.model: the desired state of a gateway, as typed, validated, immutable objects.

Role. Everything a config file (or, later, an API call) can say lives here:
gateway ports, the provider router, and tenants with their switches, router,
routes, neighbours, NAT and firewall. The YAML file and the REST API accept
the same ``Config``; the compiler reads it to build the datapath's tables. The
model says *what* is wanted; it holds no tables and touches no datapath state.

Theory of operation.

*The topology.* A gateway has **ports** (named; ``id`` is the datapath's port
number, in ``portico run`` the pcapng interface index). Frames enter a tenant
through a **switch** (an L2 segment) attached to a place on the wire: a port's
untagged frames (``{port: p}``), one VLAN of a port (``{port: p, vlan: 10}``)
or a VXLAN/Geneve VNI (``{vni: 5001}``). A place belongs to one switch (or
provider uplink) in the whole config, so "which tenant is this frame" is one
lookup (``Config.segment_map``). Each tenant has one **router**: its
distributed part routes between the tenant's switches (one interface per
switch); its centralized part does NAT and the firewall and reaches the
**provider router**, which holds the uplinks, static routes and neighbours
towards the outside. The link between a tenant router and the provider is
implicit (like OVN's join switch): what a tenant router cannot route itself
goes to the provider, through NAT, and the provider routes each tenant's
public (NAT) addresses back to it. Tenants are separate routing domains, so
their private addresses may overlap; their public ones may not, since they
share the provider's uplinks. A tenant's ``id`` is its number in the datapath
(the Batch's ``tenant`` column) and its conntrack zone; 0 is the provider's.

*The firewall* sits in the centralized router and sees the tenant's own
(inside) addresses: ingress rules (outside to inside) are matched after DNAT,
egress rules before SNAT. Rules and containers are the classifier's
(``portico.classify.rules``, ``portico.classify.containers``): a rule is
accepted exactly when ``Rule.from_dict`` accepts it, and its errors are
reported at their place in the config.

*NAT* is IPv4 only (NAT44, ``portico.datapath.nat``). SNAT entries translate
sources inside ``source`` to addresses of the tenant's pool; the NAT table
holds one pool per tenant, so all SNAT entries of a tenant share one pool.
DNAT entries forward an external ``(address, protocol, port)`` to an inside
endpoint; an external address may be one of the tenant's own pool addresses
(the NAT table steps dynamic allocation around the forwarded port).

*Validation* runs in three layers, each reporting every problem it finds:

1. fields: each value is parsed into its type (addresses and prefixes become
   ``ipaddress`` objects, MACs become ints, rules become ``Rule`` objects);
2. objects: checks within one object once its fields are good (a route's next
   hop is on a connected subnet of its router; an interface's switch exists;
   containers nest without cycles);
3. the whole: checks across sections once every section is good (port names
   exist; a port/VLAN or VNI is attached once; tenant ids are unique; NAT
   addresses are claimed by one tenant and are not the provider's).

A layer runs only where the ones before it passed: a router with a bad
route address gets no on-link checks, and cross-section checks wait until
every section is well-formed. Within a layer every problem is reported, so
a file with errors in several places gets them all in one answer; fixing a
field error may still reveal an object or cross-section error behind it
(as a compiler reports type errors only once the file parses).

*Changing a part.* A config is stored and changed by parts: a port, a tenant,
the provider. ``parse_part`` runs layers 1 and 2 on one part, and
``replace_parts`` layer 3 on a parsed config with some parts replaced (pydantic
takes the unchanged parts, model instances, as they are), so a change is
validated for the cost of what it changes, with the very problems and paths
``parse_config`` of the whole changed document gives. Rules are memoized by
their fields as written (types included: ``true`` is not ``1``), so a tenant's
unchanged rules cost a lookup each when the tenant is validated again.

*Errors.* ``parse_config`` and ``load_config`` raise ``ConfigError``: a
``ValueError`` carrying every ``(path, message)`` problem, one line each,
with paths written the way the config reads: mapping keys as ``.name``, list
items as ``[i]``, so ``tenants.a.router.routes[3].via: not an address``. The
checks inside pydantic raise pydantic ``ValidationError``s with the same
locations (``problems_of`` translates one), so the API can use the models
directly and give the same answers.

*Immutability.* Models are frozen and refuse unknown keys. A config is
accepted whole or not at all: nothing is built until everything is valid, so
nothing downstream ever sees a half-checked config. ``Config.model_construct``
skips validation and is not for input.

Example::

    config = load_config("examples/two-tenants.yaml")
    config.port_ids()                      # {'uplink': 0, 'access': 1}
    config.tenants["a"].router.nat.pool(config.tenants["a"].id)   # a nat.Pool
    parse_config("tenants: {a: {id: 0}}")  # ConfigError: tenants.a.id: 0 is outside 1..65535
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from portico.classify.rules import (
    CONTAINER_PREFIX,
    NAME_PATTERN,
    PROTOCOL_NAMES,
    RULE_FIELDS,
    Direction,
    Rule,
    RuleError,
)

if TYPE_CHECKING:
    from portico.datapath.nat import Pool, StaticMapping

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
IPInterface = IPv4Interface | IPv6Interface
Loc = tuple[str | int, ...]
Problem = tuple[str, str]

# The NAT table's limit on one pool (portico.datapath.nat.MAX_POOL_ADDRESSES,
# not imported: that module pulls in Numba, and the API should not pay for it).
MAX_POOL_ADDRESSES = 1 << 16
DEFAULT_MTU = 1500
PROVIDER_TENANT_ID = 0


# ----------------------------------------------------------------- errors and paths
class ConfigError(ValueError):
    """An invalid config: every problem, as ``(path, message)``, one line each in ``str``."""

    def __init__(self, problems: Iterable[Problem], *, source: str | None = None) -> None:
        self.problems: list[Problem] = list(dict.fromkeys(problems))
        self.source = source  # the file, when the config came from one
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.problems))


# A path element that needs no quoting; anything else (a name with a dot, say)
# is written as ['...'] so that paths stay unambiguous.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_path(loc: Iterable[str | int]) -> str:
    """``('tenants', 'a', 'routes', 3, 'via')`` -> ``tenants.a.routes[3].via``."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker after a mapping key that failed
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


_OURS = "portico"  # the error type of every check in this module

# Short, human wording for pydantic's own error types (ours carry their message).
_MESSAGES: Mapping[str, str] = {
    "missing": "missing",
    "extra_forbidden": "unknown field",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "int_type": "expected an integer",
}


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == _OURS:
        return str(error["msg"])
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind == "literal_error":
        return f"expected {ctx.get('expected', 'one of the listed values')}"
    text = str(error["msg"])
    return text[:1].lower() + text[1:]


def problems_of(error: ValidationError) -> list[Problem]:
    """A pydantic ``ValidationError`` (from any model here) as ``(path, message)`` problems."""
    return [(format_path(e["loc"]), _message(e)) for e in error.errors()]


def _error(message: str) -> PydanticCustomError:
    # The message goes in as context, not as the template: user text may hold braces.
    return PydanticCustomError(_OURS, "{reason}", {"reason": message})


class _Problems:
    """Problems found by an object-level check, raised together at their own paths."""

    def __init__(self) -> None:
        self._details: list[InitErrorDetails] = []

    def add(self, loc: Loc, message: str, value: object = None) -> None:
        self._details.append(InitErrorDetails(type=_error(message), loc=loc, input=value))

    def raise_any(self, title: str) -> None:
        # pydantic merges a ValidationError raised inside a validator into the
        # outer one, each location prefixed with the validator's own: that is
        # how one check reports several problems, each at its field.
        if self._details:
            raise ValidationError.from_exception_data(title, self._details)


# ----------------------------------------------------------------- scalar types
# Each is a plain validator: our parsing, our messages, no lax coercion
# ("1" is not a port id, true is not a VLAN), and a JSON schema for the API.


def _int_in(lo: int, hi: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error("expected an integer")
        if not lo <= value <= hi:
            raise _error(f"{value} is outside {lo}..{hi}")
        return value

    return check


def _int_schema(lo: int, hi: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": lo, "maximum": hi})


PortId = Annotated[int, PlainValidator(_int_in(0, 65535)), _int_schema(0, 65535)]
Mtu = Annotated[int, PlainValidator(_int_in(68, 9000)), _int_schema(68, 9000)]
Vlan = Annotated[int, PlainValidator(_int_in(1, 4094)), _int_schema(1, 4094)]
Vni = Annotated[int, PlainValidator(_int_in(1, 2**24 - 1)), _int_schema(1, 2**24 - 1)]
TenantId = Annotated[int, PlainValidator(_int_in(1, 65535)), _int_schema(1, 65535)]
L4Port = Annotated[int, PlainValidator(_int_in(1, 65535)), _int_schema(1, 65535)]

# Names become path elements, so no dots (``tenants.a.b`` would be ambiguous).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _error("not a name (1-63 letters, digits, '_', '-'; starting with a letter or digit)")
    return value


Name = Annotated[
    str, PlainValidator(_name), WithJsonSchema({"type": "string", "pattern": _NAME.pattern})
]


def _container_name(value: object) -> str:
    # Rules refer to containers as "container:NAME", so the rule model's alphabet applies.
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise _error("not a container name (letters, digits, '_', '.', '-')")
    return value


ContainerName = Annotated[
    str,
    PlainValidator(_container_name),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN.pattern}),
]


def _address(value: object) -> IPAddress:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    if not isinstance(value, str) or "%" in value:
        raise _error("not an address")
    if "/" in value:
        raise _error("not an address (no prefix length here)")
    try:
        return ip_address(value.strip())
    except ValueError:
        raise _error("not an address") from None


def _ipv4_address(value: object) -> IPv4Address:
    address = _address(value)
    if not isinstance(address, IPv4Address):
        raise _error("not an IPv4 address (NAT is IPv4 only)")
    return address


def _network(value: object) -> IPNetwork:
    """A prefix with no host bits set; a bare address is its host prefix (as in rules)."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str) or "%" in value:
        raise _error("not a prefix")
    text = value.strip()
    try:
        return ip_network(text)
    except ValueError:
        try:
            loose = ip_network(text, strict=False)
        except ValueError:
            raise _error("not a prefix") from None
        raise _error(f"host bits set (the network is {loose})") from None


def _ipv4_network(value: object) -> IPv4Network:
    network = _network(value)
    if not isinstance(network, IPv4Network):
        raise _error("not an IPv4 prefix (NAT is IPv4 only)")
    return network


def _interface(value: object) -> IPInterface:
    """A router's address on a subnet: ``10.0.0.1/24``, a usable host address of it."""
    if isinstance(value, IPv4Interface | IPv6Interface):
        iface = value
    else:
        if not isinstance(value, str) or "%" in value:
            raise _error("not an address with a prefix length")
        text = value.strip()
        if "/" not in text:
            raise _error("needs a prefix length (e.g. 10.0.0.1/24)")
        try:
            iface = ip_interface(text)
        except ValueError:
            raise _error("not an address with a prefix length") from None
    host, net = iface.ip, iface.network
    if host.is_multicast or host.is_unspecified or host.is_loopback:
        raise _error("not a unicast address")
    # /31 and /32 (/127, /128) have no network or broadcast address (RFC 3021).
    if net.prefixlen < net.max_prefixlen - 1:
        if host == net.network_address:
            raise _error(f"{iface}: the subnet's network address, not a host address")
        if isinstance(net, IPv4Network) and host == net.broadcast_address:
            raise _error(f"{iface}: the subnet's broadcast address")
    return iface


_JSON_STRING = {"type": "string"}
Address = Annotated[
    IPAddress,
    PlainValidator(_address),
    PlainSerializer(str),
    WithJsonSchema({**_JSON_STRING, "format": "ipvanyaddress"}),
]
IPv4Addr = Annotated[
    IPv4Address,
    PlainValidator(_ipv4_address),
    PlainSerializer(str),
    WithJsonSchema({**_JSON_STRING, "format": "ipv4"}),
]
Prefix = Annotated[
    IPNetwork,
    PlainValidator(_network),
    PlainSerializer(str),
    WithJsonSchema({**_JSON_STRING, "format": "ipvanynetwork"}),
]
IPv4Prefix = Annotated[
    IPv4Network,
    PlainValidator(_ipv4_network),
    PlainSerializer(str),
    WithJsonSchema({**_JSON_STRING, "format": "ipv4network"}),
]
InterfaceAddress = Annotated[
    IPInterface,
    PlainValidator(_interface),
    PlainSerializer(str),
    WithJsonSchema({**_JSON_STRING, "format": "ipvanyinterface"}),
]

_MAC = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")


def _mac(value: object) -> int:
    # Strings only: an int would hide YAML 1.1 reading 10:00:00:00:00:01 as a number.
    if not isinstance(value, str) or not _MAC.fullmatch(value.strip()):
        raise _error("not a MAC address (six hex octets, e.g. 02:00:00:00:00:01)")
    mac = int(re.sub("[:-]", "", value.strip()), 16)
    if mac >> 40 & 1:
        raise _error("a multicast MAC (the first octet is odd); use a unicast one")
    if mac == 0:
        raise _error("the all-zero MAC")
    return mac


def mac_text(mac: int) -> str:
    """The canonical form of a MAC held as an int: ``02:00:00:00:0a:01``."""
    return ":".join(f"{octet:02x}" for octet in mac.to_bytes(6, "big"))


Mac = Annotated[
    int,
    PlainValidator(_mac),
    PlainSerializer(mac_text),
    WithJsonSchema({**_JSON_STRING, "pattern": _MAC.pattern}),
]


def _port_range(value: object) -> tuple[int, int]:
    if isinstance(value, tuple) and len(value) == 2:
        lo, hi = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", value):
        lo, hi = (int(part) for part in value.split("-"))
    else:
        raise _error("expected a port range 'lo-hi' (e.g. 1024-65535)")
    for port in (lo, hi):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise _error(f"{port!r} is outside 1..65535")
    if lo > hi:
        raise _error(f"{lo}-{hi}: lo {lo} > hi {hi}")
    return lo, hi


PortRange = Annotated[
    tuple[int, int],
    PlainValidator(_port_range),
    PlainSerializer(lambda ports: f"{ports[0]}-{ports[1]}"),
    WithJsonSchema({**_JSON_STRING, "pattern": r"^\d+-\d+$"}),
]


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """A container's member that is another container of the same tenant."""

    name: str

    def __str__(self) -> str:
        return CONTAINER_PREFIX + self.name


def _member(value: object) -> IPNetwork | ContainerRef:
    if isinstance(value, ContainerRef | IPv4Network | IPv6Network):
        return value
    if isinstance(value, str) and value.strip().startswith(CONTAINER_PREFIX):
        return ContainerRef(_container_name(value.strip()[len(CONTAINER_PREFIX) :]))
    if not isinstance(value, str):
        raise _error("expected a prefix or 'container:NAME'")
    return _network(value)


ContainerMember = Annotated[
    IPNetwork | ContainerRef,
    PlainValidator(_member),
    PlainSerializer(str),
    WithJsonSchema({**_JSON_STRING, "description": "a prefix, an address or 'container:NAME'"}),
]

# Rule.from_dict names errors "<where>.<field>"; with this root we know which part is ours.
_RULE_ROOT = "rule"


# Rules already parsed, by their fields as written: a daemon validates a changed tenant
# whole, and a tenant with 10k rules would parse all of them on every change. Rules are
# immutable, so a parsed one can be shared; the memo is bounded, emptied when full.
_PARSED_RULES: dict[tuple[Any, ...], Rule] = {}
_PARSED_RULES_MAX = 1 << 18


def _rule(value: object) -> Rule:
    if isinstance(value, Rule):
        return value
    key: tuple[Any, ...] | None = None
    if isinstance(value, dict):
        # The key: the fields as written with their types (True is not 1, 10.0 not 10,
        # and == alone would take one for the other), built in C. Field order counts:
        # the same rule written in another order only misses the memo. This runs for
        # each of a tenant's rules on every change to the tenant: it is kept to a lookup.
        try:
            key = (tuple(value.items()), tuple(map(type, value.values())))
            found = _PARSED_RULES.get(key)
        except TypeError:  # a list or a mapping where a rule takes scalars: refused below
            key = found = None
        if found is not None:
            return found
    try:
        rule = Rule.from_dict(value, where=_RULE_ROOT)
    except RuleError as error:
        if error.path == _RULE_ROOT or error.path.startswith(_RULE_ROOT + "."):
            loc: Loc = tuple(error.path.split(".")[1:])
            message = error.reason
        else:  # a path the rule model made up itself: keep it in the message
            loc, message = (), str(error)
        raise ValidationError.from_exception_data(
            "Rule", [InitErrorDetails(type=_error(message), loc=loc, input=value)]
        ) from None
    if key is not None:
        if len(_PARSED_RULES) >= _PARSED_RULES_MAX:
            _PARSED_RULES.clear()
        _PARSED_RULES[key] = rule
    return rule


FirewallRule = Annotated[
    Rule,
    PlainValidator(_rule),
    PlainSerializer(Rule.to_dict),
    WithJsonSchema(
        {
            "type": "object",
            "description": "a firewall rule, as portico.classify.rules.Rule.from_dict takes it",
            "properties": {name: {} for name in RULE_FIELDS},
            "required": ["id", "priority", "action"],
            "additionalProperties": False,
        }
    ),
]


# ----------------------------------------------------------------- models
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    # Lists that must not be empty. Checked here rather than with min_length,
    # which counts only the items that validated and so adds "too short" to
    # every list whose one item was bad.
    _not_empty: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _check_not_empty(self) -> Self:
        problems = _Problems()
        for name in self._not_empty:
            if not getattr(self, name):
                problems.add((name,), "must not be empty")
        problems.raise_any(type(self).__name__)
        return self


# In the JSON schema, what _not_empty says.
_NON_EMPTY = Field(json_schema_extra={"minItems": 1})


def _family_text(version: int) -> str:
    return "IPv4" if version == 4 else "IPv6"


class Port(_Model):
    """A gateway port."""

    id: PortId
    """The datapath's port number; in ``portico run``, the pcapng interface index."""
    mtu: Mtu = DEFAULT_MTU
    """Largest IP packet the port carries, in bytes."""


class Where(NamedTuple):
    """A place frames enter by: a port (by id) and a VLAN (None: untagged), or a VNI."""

    port: int | None
    vlan: int | None
    vni: int | None


class Segment(NamedTuple):
    """What a place belongs to: a tenant's switch, or a provider uplink (tenant None)."""

    tenant: str | None
    switch: str | None
    uplink: int | None


def _place_text(port: str | None, vlan: int | None, vni: int | None) -> str:
    if vni is not None:
        return f"VNI {vni}"
    if vlan is not None:
        return f"VLAN {vlan} on port {port!r}"
    return f"port {port!r} (untagged)"


class Attachment(_Model):
    """Where a switch meets the wire: a port's untagged frames, a port's VLAN, or a VNI."""

    port: Name | None = None
    vlan: Vlan | None = None
    """With ``port``: frames tagged with this VLAN id (the tag is removed inside the switch)."""
    vni: Vni | None = None
    """Instead of a port: a VXLAN/Geneve network identifier."""

    @model_validator(mode="after")
    def _one_place(self) -> Self:
        problems = _Problems()
        if self.vni is not None and (self.port is not None or self.vlan is not None):
            problems.add(("vni",), "give a port (and VLAN) or a VNI, not both")
        elif self.vlan is not None and self.port is None:
            problems.add(("vlan",), "a VLAN needs a port")
        elif self.port is None and self.vni is None:
            problems.add((), "give a port (with an optional vlan) or a vni")
        problems.raise_any(type(self).__name__)
        return self

    @property
    def place(self) -> tuple[str | None, int | None, int | None]:
        return (self.port, self.vlan, self.vni)

    def describe(self) -> str:
        return _place_text(*self.place)


class StaticMac(Attachment):
    """A MAC address the switch knows without learning, and where it lives."""

    mac: Mac


class Switch(_Model):
    """A tenant's L2 segment."""

    attach: tuple[Attachment, ...] = ()
    """Places whose frames belong to this switch."""
    mac_learning: StrictBool = True
    """Learn source MACs; unknown destinations are flooded. Off: only static entries."""
    static_macs: tuple[StaticMac, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems = _Problems()
        places = {a.place for a in self.attach}
        first: dict[int, int] = {}
        for i, entry in enumerate(self.static_macs):
            if entry.place not in places:
                problems.add(
                    ("static_macs", i), f"{entry.describe()} is not attached to this switch"
                )
            if entry.mac in first:
                problems.add(
                    ("static_macs", i, "mac"),
                    f"{mac_text(entry.mac)} is already in static_macs[{first[entry.mac]}]",
                )
            first.setdefault(entry.mac, i)
        problems.raise_any("Switch")
        return self


class Route(_Model):
    """A static route."""

    prefix: Prefix
    via: Address
    """The next hop; on a connected subnet of the router, of the prefix's family."""

    @model_validator(mode="after")
    def _same_family(self) -> Self:
        if self.via.version != self.prefix.version:
            problems = _Problems()
            problems.add(
                ("via",),
                f"an {_family_text(self.via.version)} next hop for "
                f"an {_family_text(self.prefix.version)} prefix",
            )
            problems.raise_any("Route")
        return self


class Neighbour(_Model):
    """A static ARP / neighbour-discovery entry."""

    address: Address
    mac: Mac


def _check_routing(
    problems: _Problems,
    connected: Sequence[tuple[Loc, IPInterface]],
    routes: Sequence[Route],
    neighbours: Sequence[Neighbour],
) -> None:
    """What every router needs: distinct subnets, next hops and neighbours on them."""
    for j, (loc, iface) in enumerate(connected):
        for other_loc, other in connected[:j]:
            if iface.network.overlaps(other.network):
                problems.add(
                    loc, f"{iface.network} overlaps {other} ({format_path(other_loc)})", str(iface)
                )
                break
    own = {iface.ip: loc for loc, iface in connected}

    def on_link(address: IPAddress) -> bool:
        return any(address in iface.network for _, iface in connected)

    seen_routes: dict[IPNetwork, int] = {}
    for r, route in enumerate(routes):
        if route.prefix in seen_routes:
            problems.add(
                ("routes", r, "prefix"),
                f"duplicate route for {route.prefix} (routes[{seen_routes[route.prefix]}])",
            )
        seen_routes.setdefault(route.prefix, r)
        if route.via in own:
            problems.add(("routes", r, "via"), f"{route.via} is this router's own address")
        elif not on_link(route.via):
            problems.add(
                ("routes", r, "via"), f"{route.via} is not on a connected subnet of this router"
            )
    seen_neighbours: dict[IPAddress, int] = {}
    for n, neighbour in enumerate(neighbours):
        address = neighbour.address
        if address in seen_neighbours:
            problems.add(
                ("neighbours", n, "address"),
                f"duplicate neighbour {address} (neighbours[{seen_neighbours[address]}])",
            )
        seen_neighbours.setdefault(address, n)
        if address in own:
            problems.add(("neighbours", n, "address"), f"{address} is this router's own address")
        elif not on_link(address):
            problems.add(
                ("neighbours", n, "address"),
                f"{address} is not on a connected subnet of this router",
            )


class Snat(_Model):
    """Source NAT: sources inside ``source`` leave with an address and port of the pool."""

    source: IPv4Prefix
    pool: Annotated[tuple[IPv4Prefix, ...], _NON_EMPTY]
    """External addresses: addresses or prefixes (a prefix means every address of it)."""
    ports: PortRange = (1024, 65535)
    """External ports to allocate from (well-known ports stay out of dynamic pools)."""
    filtering: Literal["address-and-port-dependent", "endpoint-independent"] = (
        "address-and-port-dependent"
    )
    """Who may send to a binding from outside: only the peers it talked to, or anyone."""
    _not_empty = ("pool",)

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems = _Problems()
        total = 0
        for k, network in enumerate(self.pool):
            for j, other in enumerate(self.pool[:k]):
                if network.overlaps(other):
                    problems.add(("pool", k), f"{_net_text(network)} overlaps pool[{j}]")
                    break
            total += network.num_addresses
        if total > MAX_POOL_ADDRESSES:
            problems.add(("pool",), f"{total} addresses; a pool holds at most {MAX_POOL_ADDRESSES}")
        problems.raise_any("Snat")
        return self


def _net_text(network: IPNetwork) -> str:
    """A host prefix as its address, anything else as the prefix."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


class Dnat(_Model):
    """Destination NAT / port forwarding: ``external:port`` goes to ``internal:internal_port``."""

    external: IPv4Addr
    protocol: Literal["tcp", "udp"]
    port: L4Port
    internal: IPv4Addr
    internal_port: L4Port | None = None
    """Defaults to ``port``."""

    @property
    def target_port(self) -> int:
        return self.port if self.internal_port is None else self.internal_port

    @property
    def protocol_number(self) -> int:
        return PROTOCOL_NAMES[self.protocol]


class Nat(_Model):
    """A tenant's NAT (IPv4 only), done by the centralized router towards the provider."""

    snat: tuple[Snat, ...] = ()
    dnat: tuple[Dnat, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems = _Problems()
        if self.snat:
            first = self.snat[0]
            for i, entry in enumerate(self.snat[1:], start=1):
                for name in ("pool", "ports", "filtering"):
                    if getattr(entry, name) != getattr(first, name):
                        problems.add(
                            ("snat", i, name),
                            f"differs from snat[0].{name}: a tenant has one SNAT pool "
                            "(give every entry the same pool, ports and filtering)",
                        )
        sources: dict[IPv4Network, int] = {}
        for i, entry in enumerate(self.snat):
            if entry.source in sources:
                problems.add(
                    ("snat", i, "source"),
                    f"{entry.source} is already in snat[{sources[entry.source]}]",
                )
            sources.setdefault(entry.source, i)
        outside: dict[tuple[IPv4Address, str, int], int] = {}
        inside: dict[tuple[IPv4Address, str, int], int] = {}
        for i, d in enumerate(self.dnat):
            key = (d.external, d.protocol, d.port)
            if key in outside:
                problems.add(
                    ("dnat", i),
                    f"{d.protocol} {d.external}:{d.port} is already forwarded by "
                    f"dnat[{outside[key]}]",
                )
            outside.setdefault(key, i)
            # The NAT table keys bindings by the inside endpoint too: one forward each.
            target = (d.internal, d.protocol, d.target_port)
            if target in inside:
                problems.add(
                    ("dnat", i),
                    f"{d.protocol} {d.internal}:{d.target_port} is already the target of "
                    f"dnat[{inside[target]}]",
                )
            inside.setdefault(target, i)
        problems.raise_any("Nat")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.snat or self.dnat)

    def claims(self) -> Iterator[tuple[Loc, IPv4Network]]:
        """Every external address this NAT uses, with where the config names it."""
        for i, entry in enumerate(self.snat):
            for k, network in enumerate(entry.pool):
                yield ("snat", i, "pool", k), network
        for i, d in enumerate(self.dnat):
            yield ("dnat", i, "external"), IPv4Network(d.external)

    def pool(self, tenant: int) -> Pool | None:
        """The tenant's ``nat.Pool`` (None without SNAT)."""
        from portico.datapath.nat import Filtering, Pool

        if not self.snat:
            return None
        first = self.snat[0]
        return Pool(
            tenant=tenant,
            addresses=[str(network) for network in first.pool],
            ports=first.ports,
            filtering=Filtering(first.filtering),
        )

    def static_mappings(self, tenant: int) -> list[StaticMapping]:
        """The tenant's DNAT entries as ``nat.StaticMapping`` objects."""
        from portico.datapath.nat import StaticMapping

        return [
            StaticMapping(
                tenant=tenant,
                protocol=d.protocol_number,
                internal=str(d.internal),
                internal_port=d.target_port,
                external=str(d.external),
                external_port=d.port,
            )
            for d in self.dnat
        ]


class Firewall(_Model):
    """A tenant's containers and its rules per direction (the classifier's model)."""

    containers: dict[ContainerName, tuple[ContainerMember, ...]] = {}
    """Container name -> members: prefixes, addresses, or 'container:NAME' of this tenant."""
    ingress: tuple[FirewallRule, ...] = ()
    """From the provider towards the tenant (after DNAT)."""
    egress: tuple[FirewallRule, ...] = ()
    """From the tenant towards the provider (before SNAT)."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems = _Problems()
        self._check_members(problems)
        self._check_cycles(problems)
        for direction in ("ingress", "egress"):
            rules: tuple[Rule, ...] = getattr(self, direction)
            # First in bulk (a tenant may hold 10k rules, checked on every change to it);
            # the rule by rule walk below only runs to say where a problem is.
            ids = {rule.id for rule in rules}
            used = {rule.src.container for rule in rules} | {rule.dst.container for rule in rules}
            used.discard(None)
            if len(ids) == len(rules) and used <= self.containers.keys():
                continue
            first: dict[str, int] = {}
            for k, rule in enumerate(rules):
                if rule.id in first:
                    problems.add(
                        (direction, k, "id"),
                        f"duplicate id {rule.id!r} (also {direction}[{first[rule.id]}])",
                    )
                first.setdefault(rule.id, k)
                for side in ("src", "dst"):
                    name = getattr(rule, side).container
                    if name is not None and name not in self.containers:
                        problems.add((direction, k, side), f"unknown container {name!r}")
        problems.raise_any("Firewall")
        return self

    def _check_members(self, problems: _Problems) -> None:
        for name, members in self.containers.items():
            first: dict[IPNetwork | ContainerRef, int] = {}
            for i, member in enumerate(members):
                loc = ("containers", name, i)
                if member in first:
                    problems.add(loc, f"{member} is listed twice (also [{first[member]}])")
                    continue
                first[member] = i
                if isinstance(member, ContainerRef):
                    if member.name == name:
                        problems.add(loc, "a container cannot include itself")
                    elif member.name not in self.containers:
                        problems.add(loc, f"unknown container {member.name!r}")

    def _check_cycles(self, problems: _Problems) -> None:
        # Depth-first, without recursion (API input may nest deeply); every edge
        # that closes a cycle is reported at the member that makes it.
        graph = {
            name: [
                (i, m.name)
                for i, m in enumerate(members)
                if isinstance(m, ContainerRef) and m.name in self.containers and m.name != name
            ]
            for name, members in self.containers.items()
        }
        done: set[str] = set()
        for root in graph:
            if root in done:
                continue
            path = [root]
            on_path = {root}
            edges = [iter(graph[root])]
            while edges:
                step = next(edges[-1], None)
                if step is None:
                    done.add(path[-1])
                    on_path.discard(path.pop())
                    edges.pop()
                    continue
                i, other = step
                if other in on_path:
                    cycle = [*path[path.index(other) :], other]
                    problems.add(
                        ("containers", path[-1], i), "makes a cycle: " + " -> ".join(cycle)
                    )
                elif other not in done:
                    path.append(other)
                    on_path.add(other)
                    edges.append(iter(graph[other]))

    def prefixes(self, name: str) -> list[IPNetwork]:
        """The prefixes a container lists itself (not through the containers it includes)."""
        return [m for m in self.containers[name] if not isinstance(m, ContainerRef)]

    def includes(self, name: str) -> list[str]:
        return [m.name for m in self.containers[name] if isinstance(m, ContainerRef)]

    def container_order(self) -> list[str]:
        """Every container after the ones it includes: the order ``ContainerStore.create`` needs."""
        order: list[str] = []
        placed: set[str] = set()

        def place(root: str) -> None:
            stack = [(root, iter(self.includes(root)))]
            while stack:
                name, pending = stack[-1]
                other = next(pending, None)
                if other is None:
                    stack.pop()
                    if name not in placed:
                        placed.add(name)
                        order.append(name)
                elif other not in placed:
                    stack.append((other, iter(self.includes(other))))

        for name in self.containers:
            place(name)
        return order

    def rules(self, direction: Direction | str) -> tuple[Rule, ...]:
        rules: tuple[Rule, ...] = getattr(self, Direction(direction).value)
        return rules


class RouterInterface(_Model):
    """The tenant router's interface on one of the tenant's switches."""

    switch: Name
    addresses: Annotated[tuple[InterfaceAddress, ...], _NON_EMPTY]
    """The router's addresses with their subnets (IPv4 and/or IPv6): 10.0.0.1/24."""
    mac: Mac
    _not_empty = ("addresses",)


class TenantRouter(_Model):
    """A tenant's router: distributed (between its switches) and centralized (NAT, firewall)."""

    interfaces: tuple[RouterInterface, ...] = ()
    routes: tuple[Route, ...] = ()
    """Static routes inside the tenant; what no route covers goes to the provider."""
    neighbours: tuple[Neighbour, ...] = ()
    nat: Nat = Nat()
    firewall: Firewall = Firewall()

    def connected(self) -> list[tuple[Loc, IPInterface]]:
        """Every interface address with its place (``interfaces[i].addresses[k]``)."""
        return [
            (("interfaces", i, "addresses", k), address)
            for i, iface in enumerate(self.interfaces)
            for k, address in enumerate(iface.addresses)
        ]

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems = _Problems()
        connected = self.connected()
        _check_routing(problems, connected, self.routes, self.neighbours)
        # NAT is IPv4: what it translates must be reachable through IPv4 subnets or routes.
        v4 = [iface for _, iface in connected if isinstance(iface, IPv4Interface)]
        reach = [iface.network for iface in v4] + [
            route.prefix for route in self.routes if isinstance(route.prefix, IPv4Network)
        ]
        for i, entry in enumerate(self.nat.snat):
            if not any(entry.source.overlaps(network) for network in reach):
                problems.add(
                    ("nat", "snat", i, "source"),
                    f"{entry.source} is on no connected subnet or route of this router",
                )
        for i, d in enumerate(self.nat.dnat):
            if any(d.internal == iface.ip for iface in v4):
                problems.add(
                    ("nat", "dnat", i, "internal"), f"{d.internal} is this router's own address"
                )
            elif not any(d.internal in network for network in reach):
                problems.add(
                    ("nat", "dnat", i, "internal"),
                    f"{d.internal} is on no connected subnet or route of this router",
                )
        problems.raise_any("TenantRouter")
        return self


class Tenant(_Model):
    """One tenant: its own switches and router, in its own address space."""

    id: TenantId
    """The tenant's number in the datapath and its conntrack zone; unique (0 is the provider)."""
    switches: dict[Name, Switch] = {}
    router: TenantRouter = TenantRouter()

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems = _Problems()
        served: dict[str, int] = {}
        for i, iface in enumerate(self.router.interfaces):
            loc = ("router", "interfaces", i, "switch")
            if iface.switch not in self.switches:
                problems.add(loc, f"unknown switch {iface.switch!r}")
            elif iface.switch in served:
                problems.add(
                    loc,
                    f"switch {iface.switch!r} already has a router interface "
                    f"(interfaces[{served[iface.switch]}])",
                )
            served.setdefault(iface.switch, i)
        problems.raise_any("Tenant")
        return self


class Uplink(_Model):
    """A provider-router interface towards the outside."""

    port: Name
    vlan: Vlan | None = None
    """Tagged uplink: frames on the port with this VLAN id (None: untagged)."""
    addresses: Annotated[tuple[InterfaceAddress, ...], _NON_EMPTY]
    mac: Mac
    _not_empty = ("addresses",)

    @property
    def place(self) -> tuple[str | None, int | None, int | None]:
        return (self.port, self.vlan, None)


class ProviderRouter(_Model):
    """The router shared by all tenants: uplinks, static routes, neighbours."""

    uplinks: tuple[Uplink, ...] = ()
    routes: tuple[Route, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()

    def connected(self) -> list[tuple[Loc, IPInterface]]:
        return [
            (("uplinks", i, "addresses", k), address)
            for i, uplink in enumerate(self.uplinks)
            for k, address in enumerate(uplink.addresses)
        ]

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems = _Problems()
        _check_routing(problems, self.connected(), self.routes, self.neighbours)
        problems.raise_any("ProviderRouter")
        return self


class Provider(_Model):
    """The provider side of the gateway."""

    router: ProviderRouter = ProviderRouter()


class Config(_Model):
    """The root: everything one gateway is configured with."""

    ports: dict[Name, Port] = {}
    provider: Provider = Provider()
    tenants: dict[Name, Tenant] = {}

    # -- what the compiler reads

    def port_ids(self) -> dict[str, int]:
        """Port name -> port id."""
        return {name: port.id for name, port in self.ports.items()}

    def tenant_ids(self) -> dict[str, int]:
        """Tenant name -> tenant id (the datapath's tenant number and conntrack zone)."""
        return {name: tenant.id for name, tenant in self.tenants.items()}

    def segment_map(self) -> dict[Where, Segment]:
        """Which switch (or provider uplink) each place belongs to: the port-to-tenant map."""
        ids = self.port_ids()
        return {
            Where(None if port is None else ids[port], vlan, vni): segment
            for _, (port, vlan, vni), segment in self._places()
        }

    def _places(
        self,
    ) -> Iterator[tuple[Loc, tuple[str | None, int | None, int | None], Segment]]:
        for i, uplink in enumerate(self.provider.router.uplinks):
            yield ("provider", "router", "uplinks", i), uplink.place, Segment(None, None, i)
        for t, tenant in self.tenants.items():
            for s, switch in tenant.switches.items():
                for j, attachment in enumerate(switch.attach):
                    loc = ("tenants", t, "switches", s, "attach", j)
                    yield loc, attachment.place, Segment(t, s, None)

    # -- checks across sections

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems = _Problems()
        self._check_ports(problems)
        self._check_places(problems)
        self._check_tenant_ids(problems)
        self._check_nat(problems)
        problems.raise_any("Config")
        return self

    def _check_ports(self, problems: _Problems) -> None:
        owner: dict[int, str] = {}
        for name, port in self.ports.items():
            if port.id in owner:
                problems.add(
                    ("ports", name, "id"),
                    f"port id {port.id} is already used by ports.{owner[port.id]}",
                )
            owner.setdefault(port.id, name)

    def _check_places(self, problems: _Problems) -> None:
        owner: dict[tuple[str | None, int | None, int | None], Loc] = {}
        for loc, place, segment in self._places():
            port = place[0]
            if port is not None and port not in self.ports:
                problems.add((*loc, "port"), f"unknown port {port!r}")
                continue
            # A switch is named by its path; an uplink, which has no name, by its own.
            here = loc if segment.tenant is None else loc[:4]
            if place in owner:
                first = owner[place]
                where = "listed twice in this switch" if first == here else (
                    f"already attached to {format_path(first)}"
                )
                problems.add(loc, f"{_place_text(*place)} is {where}")
                continue
            owner[place] = here

    def _check_tenant_ids(self, problems: _Problems) -> None:
        owner: dict[int, str] = {}
        for name, tenant in self.tenants.items():
            if tenant.id in owner:
                problems.add(
                    ("tenants", name, "id"),
                    f"tenant id {tenant.id} is already used by tenants.{owner[tenant.id]}",
                )
            owner.setdefault(tenant.id, name)

    def _check_nat(self, problems: _Problems) -> None:
        # Public addresses share the provider's uplinks: each belongs to one tenant,
        # and none is the provider's own (its traffic would be taken for a tenant's).
        provider: list[tuple[IPv4Address, Loc]] = [
            (iface.ip, ("provider", "router", *loc))
            for loc, iface in self.provider.router.connected()
            if isinstance(iface, IPv4Interface)
        ]
        claimed: list[tuple[str, IPv4Network, Loc]] = []
        for name, tenant in self.tenants.items():
            nat = tenant.router.nat
            base: Loc = ("tenants", name, "router", "nat")
            if nat.enabled and not provider:
                problems.add(base, "NAT needs a provider uplink with an IPv4 address")
            for sub, network in nat.claims():
                loc = (*base, *sub)
                clash = next((where for ip, where in provider if ip in network), None)
                if clash is not None:
                    problems.add(
                        loc,
                        f"{_net_text(network)} is the provider's address ({format_path(clash)})",
                    )
                    continue
                for other, taken, where in claimed:
                    if other != name and network.overlaps(taken):
                        problems.add(
                            loc, f"{_net_text(network)} is already used by {format_path(where)}"
                        )
                        break
                claimed.append((name, network, loc))


# ----------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars and duplicate keys refused.

    YAML 1.1 (PyYAML's default) reads ``10:00:00:00:00:01`` as a base-60
    number, ``010`` as octal and ``no``/``off`` as false: a MAC becomes an
    int, a tenant named ``no`` becomes ``False``. Config files want 1.2's
    core schema: true/false only, decimal (or 0x/0o) integers.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # A repeated key would silently replace the first (a second tenant "a"
        # erasing the first); refuse it. Keys merged in with "<<" may be overridden.
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.get(key)
            except TypeError:  # unhashable: construct_mapping reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first + 1})",
                    key_node.start_mark,
                )
            lines[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_BOOL, _INT, _FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)  # "010" is ten, as YAML 1.2 says


_Loader.add_constructor(_INT, _construct_int)


def _read_yaml(text: str) -> object:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "not valid YAML"
        if mark is None:
            raise ConfigError([("", f"YAML: {problem}")]) from None
        raise ConfigError([(f"line {mark.line + 1}, column {mark.column + 1}", problem)]) from None
    except yaml.YAMLError as error:
        raise ConfigError([("", f"YAML: {error}")]) from None


def parse_config(source: str | Mapping[str, Any]) -> Config:
    """A ``Config`` from YAML (or JSON) text or from an already-parsed mapping.

    Raises ``ConfigError`` with every problem found (see the module docstring).
    """
    data = _read_yaml(source) if isinstance(source, str) else source
    if data is None:
        raise ConfigError([("", "the config is empty (an empty config is written {})")])
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(problems_of(error)) from None


# The parts a config is stored and changed by (``portico.control.store`` keeps one object
# each): a port, a tenant, or the provider.
Part = Port | Provider | Tenant
PART_MODELS: Mapping[str, type[Port] | type[Provider] | type[Tenant]] = {
    "ports": Port, "provider": Provider, "tenants": Tenant}


def parse_part(section: str, name: str | None, value: object) -> Part:
    """One part of a config validated alone: ``("ports", name)``, ``("tenants", name)`` or
    ``("provider", None)``. Its fields and its own checks (layers 1 and 2) run; the checks
    across parts wait for ``replace_parts``. Raises ``ConfigError`` with every problem,
    its path from the config's root (``tenants.a.router.routes[3].via``), as
    ``parse_config`` would name it."""
    model = PART_MODELS[section]
    loc: Loc = (section,) if name is None else (section, name)
    problems: list[Problem] = []
    if name is not None:
        try:
            _name(name)
        except PydanticCustomError as error:
            problems.append((format_path(loc), error.message()))
    try:
        part = model.model_validate(value)
    except ValidationError as error:
        problems += [(format_path((*loc, *e["loc"])), _message(e)) for e in error.errors()]
    if problems:
        raise ConfigError(problems)
    return part


def replace_parts(config: Config, parts: Mapping[tuple[str, str | None], Part | None]) -> Config:
    """``config`` with some parts replaced, added, or removed (None; the provider goes back
    to its default), and the checks across parts (layer 3) run on the result: what
    ``parse_config`` of the whole changed document gives, at the cost of the changed parts
    only. Each part must come from ``parse_part`` (or be one of a ``Config``'s): pydantic
    takes a model instance as it is, without validating it again. Raises ``ConfigError``.
    """
    ports: dict[str, Port] = dict(config.ports)
    tenants: dict[str, Tenant] = dict(config.tenants)
    data: dict[str, Any] = {"ports": ports, "tenants": tenants}
    if "provider" in config.model_fields_set:
        data["provider"] = config.provider
    for (section, name), part in parts.items():
        if section == "provider":
            if part is None:
                data.pop("provider", None)
            else:
                data["provider"] = part
            continue
        members: dict[str, Any] = ports if section == "ports" else tenants
        if section not in ("ports", "tenants") or name is None:
            raise ValueError(f"{section}/{name}: not a part of a config")
        if part is None:
            members.pop(name, None)
        else:
            members[name] = part
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(problems_of(error)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """``parse_config`` of a file; the ``ConfigError``'s ``source`` names the file.

    I/O failures (a missing file, say) raise ``OSError`` as they are.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        return parse_config(text)
    except ConfigError as error:
        raise ConfigError(error.problems, source=os.fspath(path)) from None


__all__ = [
    "Attachment",
    "Config",
    "ConfigError",
    "ContainerRef",
    "Dnat",
    "Firewall",
    "Nat",
    "Neighbour",
    "PART_MODELS",
    "Part",
    "Port",
    "Problem",
    "Provider",
    "ProviderRouter",
    "Route",
    "RouterInterface",
    "Segment",
    "Snat",
    "StaticMac",
    "Switch",
    "Tenant",
    "TenantRouter",
    "Uplink",
    "Where",
    "format_path",
    "load_config",
    "mac_text",
    "parse_config",
    "parse_part",
    "problems_of",
    "replace_parts",
]
