"""flowdump: the flow cache's entries in words, filtered — ``ovs-appctl dpctl/dump-flows``.

Synopsis. ``dump_flows(gateway, tenant="a", dst="8.8.8.0/24")`` returns the
cached flows that match, each a ``Flow``: the decoded key (tenant, ingress
port, VLAN, addresses, ports, ICMP type, destination MAC), the decision in
words (``pop_vlan,set(ipv4(src=198.51.100.10)),dec_ttl,set(eth(...)),output:uplink``
or ``drop(denied)``), and the entry's packets, bytes, idle time and
generation. ``format_flows(flows)`` prints them one a line::

    tenant=a,in_port=access,vlan=10,eth_dst=02:00:00:00:0a:01,udp,10.0.0.5:5000>8.8.8.8:53 \
packets:3 bytes:180 used:0.2s actions:pop_vlan,set(ipv4(src=198.51.100.10)),dec_ttl,...

Theory of operation. The cache (``portico.datapath.flowcache``) stores a flow
as seven key words and an action id; nothing in it is a Python object. The
dump keeps it that way for as long as it can: ``decode_keys`` unpacks the key
words of every occupied slot into columns at once (the inverse of
``flowcache._key``, see "Key" there), each filter is a NumPy mask over those
columns (an address filter is a masked compare of the address words against
the prefix), and the matching slots are ordered by packets, heaviest first.
Only then, and only for the flows returned (``limit`` cuts first), is a
``Flow`` built. An action's words are computed once per distinct (action,
protocol, IP version), since many flows share one action (NAT, though, gives
each flow its own).

What is shown. A flow is an entry of the *current* generation by default:
entries made under older tables are dead (the next lookup that meets one
frees it) and ``stale=True`` adds them, marked. An entry idle past the
cache's timeout but not yet swept still shows, with its idle time, as OVS
shows a flow until its revalidator deletes it. The key is the packet *as
received* (before any rewrite): a NAT'd flow shows its inside source, and
the action shows what it becomes. Flows entering from the provider's uplinks
belong to tenant 0, shown as ``provider`` (they become a tenant's after
NAT-in; the action's ``set(ipv4(dst=...))`` says where to). Frames no
segment owns (an unknown port or VLAN) have tenant -1, shown as ``none``: the
ingress stage drops them, and the cache remembers the drop.

Key fields the cache stores narrower than the metadata: the port in 16 bits
(a port of -1, "none", reads as 65535; the datapath always sets it) and the
tenant in 24 bits (-1, "none yet", reads back as -1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv6Address, ip_network
from typing import TYPE_CHECKING

import numpy as np

from portico import drops
from portico.control.model import PROVIDER_TENANT_ID, mac_text
from portico.datapath.actions import ACTION_DTYPE, Op
from portico.datapath.flowcache import KEY_WORDS, SECOND

if TYPE_CHECKING:
    from portico.datapath.gateway import Gateway

PROVIDER = "provider"  # the name tenant 0's flows are shown under
NO_TENANT = "none"  # ... and those of frames no segment owns (tenant -1: dropped by ingress)
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "icmp6": 58}
_NAMES4 = {1: "icmp", 6: "tcp", 17: "udp"}
_NAMES6 = {6: "tcp6", 17: "udp6", 58: "icmp6"}
_ECHO = {1: (0, 8), 58: (128, 129)}  # echo reply/request types: the identifier is the port

# The fields of a flow key, one column each (see decode_keys).
KEY_DTYPE = np.dtype([
    ("eth_dst", "u8"),
    ("port", "i4"),
    ("tunnel_id", "u4"),
    ("vlan", "u2"),
    ("ip_version", "u1"),
    ("protocol", "u1"),
    ("sport", "u2"),
    ("dport", "u2"),
    ("icmp_type", "u1"),
    ("tenant", "i4"),
    ("src_hi", "u8"),
    ("src_lo", "u8"),
    ("dst_hi", "u8"),
    ("dst_lo", "u8"),
])

_U8, _U16, _U24, _U32, _U48 = (np.uint64(n) for n in (8, 16, 24, 32, 48))
_LOW8, _LOW16, _LOW24 = np.uint64(0xFF), np.uint64(0xFFFF), np.uint64(0xFFFFFF)
_NO_TENANT = 0xFFFFFF  # the tenant -1 of "none yet", as 24 bits
_LOW64 = (1 << 64) - 1


def decode_keys(keys: np.ndarray) -> np.ndarray:
    """The fields of flow keys, as a ``KEY_DTYPE`` array: the inverse of ``flowcache._key``.

    ``keys`` is either (n, KEY_WORDS) ``uint64`` words (``FlowCache.keys()``,
    ``FlowCache.flow_keys``) or a structured array with fields ``k0``..``k6``
    (``FlowCache.entries`` or a selection of it). Per the cache's key layout::

        w0  eth_dst (48) | port (16)
        w1  tunnel_id (32) | vlan (16) | ip_version (8) | protocol (8)
        w2  sport (16) | dport (16) | icmp_type (8, ICMP/ICMPv6 only) | tenant (24)
        w3, w4  source high, low 64 bits   (IPv4: 0, the address)
        w5, w6  destination high, low      (IPv4: 0, the address)

    ``icmp_type`` is 0 unless the protocol is ICMP or ICMPv6 (the key holds it
    only then); a tenant of -1 comes back as -1; a port of -1 as 65535.
    """
    if keys.dtype.names is not None:
        words = [np.asarray(keys[f"k{w}"], dtype=np.uint64) for w in range(KEY_WORDS)]
    else:
        if keys.ndim != 2 or keys.shape[1] != KEY_WORDS:
            raise ValueError(f"keys: expected (n, {KEY_WORDS}) words, got shape {keys.shape}")
        words = [keys[:, w].astype(np.uint64, copy=False) for w in range(KEY_WORDS)]
    w0, w1, w2, w3, w4, w5, w6 = words
    out = np.zeros(len(w0), dtype=KEY_DTYPE)
    out["eth_dst"] = w0 >> _U16
    out["port"] = w0 & _LOW16
    out["tunnel_id"] = w1 >> _U32
    out["vlan"] = (w1 >> _U16) & _LOW16
    out["ip_version"] = (w1 >> _U8) & _LOW8
    protocol = w1 & _LOW8
    out["protocol"] = protocol
    out["sport"] = w2 >> _U48
    out["dport"] = (w2 >> _U32) & _LOW16
    icmp = (protocol == 1) | (protocol == 58)
    out["icmp_type"] = np.where(icmp, (w2 >> _U24) & _LOW8, 0)
    tenant = (w2 & _LOW24).astype(np.int64)
    out["tenant"] = np.where(tenant == _NO_TENANT, -1, tenant)
    out["src_hi"], out["src_lo"], out["dst_hi"], out["dst_lo"] = w3, w4, w5, w6
    return out


@dataclass(frozen=True, kw_only=True)
class Flow:
    """One cached flow: its key decoded, its decision in words, its counters."""

    entry: int  # the cache slot
    tenant: str  # the tenant's name ("provider" for tenant 0, "none" for -1)
    tenant_id: int
    in_port: str  # the ingress port's name (its id, as text, if the config has none)
    in_port_id: int
    vlan: int | None  # the outer VLAN id; None: untagged
    tunnel_id: int  # VNI / TEID / GRE key; 0: none
    eth_dst: str
    ip_version: int  # 4 or 6 (0: not IP, which the datapath does not cache)
    protocol: int
    src: str | None  # None: not IP
    dst: str | None
    sport: int  # TCP/UDP ports; the ICMP echo identifier in both
    dport: int
    icmp_type: int | None  # ICMP and ICMPv6 only
    actions: str  # what the cached decision does, OVS-style
    out_port: str | None  # the port an output action sends to; None: none (a drop)
    drop: str | None  # the drop reason of a drop action; None: not a drop
    packets: int
    bytes: int  # as received (before any rewrite), captured bytes
    idle: float  # seconds since the flow's last packet
    generation: int
    current: bool  # made under the cache's current generation (else stale)

    @property
    def protocol_name(self) -> str:
        """``tcp``, ``udp``, ``icmp`` (``tcp6``... for IPv6), else ``ip``/``ipv6``."""
        names = _NAMES4 if self.ip_version == 4 else _NAMES6
        return names.get(self.protocol, "ipv6" if self.ip_version == 6 else "ip")

    def match(self) -> str:
        """The key as ``format_flows`` prints it."""
        words = [f"tenant={self.tenant}", f"in_port={self.in_port}"]
        if self.vlan is not None:
            words.append(f"vlan={self.vlan}")
        if self.tunnel_id:
            words.append(f"tunnel_id={self.tunnel_id}")
        words.append(f"eth_dst={self.eth_dst}")
        if self.ip_version not in (4, 6):
            return ",".join([*words, "non_ip"])
        name = self.protocol_name
        words.append(name if name not in ("ip", "ipv6") else f"{name},proto={self.protocol}")
        src, dst = self.src or "", self.dst or ""
        if self.protocol in (6, 17):
            if self.ip_version == 6:
                src, dst = f"[{src}]", f"[{dst}]"
            words.append(f"{src}:{self.sport}>{dst}:{self.dport}")
        else:
            words.append(f"{src}>{dst}")
        if self.icmp_type is not None:
            words.append(f"type={self.icmp_type}")
            if self.icmp_type in _ECHO.get(self.protocol, ()):
                words.append(f"id={self.sport}")
        return ",".join(words)

    def line(self) -> str:
        """The flow as one ``dpctl/dump-flows``-like line."""
        used = f"{self.idle:.3f}".rstrip("0").rstrip(".")
        stale = "" if self.current else f" generation:{self.generation}(stale)"
        return (f"{self.match()} packets:{self.packets} bytes:{self.bytes} used:{used}s"
                f"{stale} actions:{self.actions}")


def format_flows(flows: Iterable[Flow]) -> str:
    """One line a flow (``Flow.line``), like ``ovs-appctl dpctl/dump-flows``."""
    return "\n".join(flow.line() for flow in flows)


def describe_action(record: np.void | Mapping[str, int], *, protocol: int = 0,
                    ip_version: int = 4, ports: Mapping[int, str] | None = None) -> str:
    """An ``ACTION_DTYPE`` record (or a mapping of its fields) in OVS's datapath-action
    words, in the order the actions apply (``portico.datapath.actions``): ``pop_vlan``,
    ``set(ipv4(src=,dst=))``, ``set(tcp(src=,dst=))`` (``udp``; ``icmp(id=)`` for an
    echo), ``dec_ttl``, ``set(eth(src=,dst=))``, ``push_vlan(VID)``, ``output:PORT``;
    a drop is ``drop(REASON)``, an action that does nothing ``none``. ``protocol`` and
    ``ip_version`` are the flow's (which header the port rewrite names)."""
    r = {name: int(record[name]) for name in ACTION_DTYPE.names or ()}
    return _words(r, protocol, ip_version, ports or {})


# Plain ints: testing an IntFlag's members costs a microsecond each, and NAT gives
# every flow an action of its own.
_POP, _IP_SRC, _IP_DST = int(Op.POP_VLAN), int(Op.SET_IP_SRC), int(Op.SET_IP_DST)
_SPORT, _DPORT, _TTL = int(Op.SET_SPORT), int(Op.SET_DPORT), int(Op.DEC_TTL)
_ETH_SRC, _ETH_DST, _PUSH = int(Op.SET_ETH_SRC), int(Op.SET_ETH_DST), int(Op.PUSH_VLAN)
_OUTPUT, _DROP = int(Op.OUTPUT), int(Op.DROP)


def _words(r: Mapping[str, int], protocol: int, ip_version: int,
           ports: Mapping[int, str]) -> str:
    ops = r["ops"]
    if ops & _DROP:
        return f"drop({drops.name(r['reason'])})"
    words = []
    if ops & _POP:
        words.append("pop_vlan")
    if ops & (_IP_SRC | _IP_DST):
        ip = [f"{side}={_ipv4(r['ip_' + side])}"
              for side, op in (("src", _IP_SRC), ("dst", _IP_DST)) if ops & op]
        words.append(f"set(ipv{ip_version}({','.join(ip)}))")
    if protocol in _ECHO and ops & _SPORT:
        words.append(f"set({'icmp' if protocol == 1 else 'icmpv6'}(id={r['sport']}))")
    elif ops & (_SPORT | _DPORT):
        l4 = [f"{side}={r[field]}" for side, field, op in
              (("src", "sport", _SPORT), ("dst", "dport", _DPORT)) if ops & op]
        words.append(f"set({ {6: 'tcp', 17: 'udp'}.get(protocol, 'l4')}({','.join(l4)}))")
    if ops & _TTL:
        words.append("dec_ttl")
    if ops & (_ETH_SRC | _ETH_DST):
        eth = [f"{side}={_mac(r['eth_' + side])}"
               for side, op in (("src", _ETH_SRC), ("dst", _ETH_DST)) if ops & op]
        words.append(f"set(eth({','.join(eth)}))")
    if ops & _PUSH:
        tci = r["vlan_tci"]
        pcp = tci >> 13
        words.append(f"push_vlan({tci & 0x0FFF})" if not pcp
                     else f"push_vlan(vid={tci & 0x0FFF},pcp={pcp})")
    if ops & _OUTPUT:
        port = r["out_port"]
        words.append(f"output:{ports.get(port, str(port))}")
    return ",".join(words) or "none"


@lru_cache(maxsize=1024)
def _mac(mac: int) -> str:
    return mac_text(mac)


def _ipv4(value: int) -> str:
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


# ------------------------------------------------------------------ the dump
def dump_flows(gateway: Gateway, *, tenant: str | int | None = None, src: str | None = None,
               dst: str | None = None, protocol: str | int | None = None,
               port: str | int | None = None, limit: int | None = None,
               now: int | None = None, stale: bool = False) -> list[Flow]:
    """The gateway's cached flows that match every filter given, heaviest first.

    ``tenant``: a tenant's name or id (``"provider"`` or 0: flows entering from
    the uplinks; ``"none"`` or -1: frames no segment owns, dropped at ingress).
    ``src``/``dst``: an address or a prefix (``10.0.0.0/24``, ``2001:db8::/32``),
    matched against the key's source/destination as the packet arrived.
    ``protocol``: a number or ``tcp``/``udp``/``icmp``/``icmpv6``. ``port``: the
    ingress port, by name or id. A name is looked up first, so the text of a
    number (``"1"``, from a query string) is an id unless something is named
    so. ``limit``: at most that many (the ones with the most packets). ``now``
    (ns): the clock idle times are measured against (default: the time of the
    gateway's last batch).
    ``stale``: include the entries of older generations. A bad filter raises
    ``ValueError`` naming it. No cache: no flows.
    """
    cache = gateway.cache
    if cache is None:
        return []
    config = gateway.config
    slots = cache.occupied()
    entries = cache.entries
    generation = entries["generation"][slots]
    keep = np.ones(len(slots), dtype=bool) if stale else generation == cache.generation
    words = np.stack([entries[f"k{w}"][slots] for w in range(KEY_WORDS)], axis=1) \
        if len(slots) else np.zeros((0, KEY_WORDS), dtype=np.uint64)
    keys = decode_keys(words)
    tenant_names = {t.id: name for name, t in config.tenants.items()}
    tenant_names.setdefault(PROVIDER_TENANT_ID, PROVIDER)
    tenant_names.setdefault(-1, NO_TENANT)
    port_names = {p.id: name for name, p in config.ports.items()}
    if tenant is not None:
        keep &= keys["tenant"] == _named("tenant", tenant, tenant_names)
    if port is not None:
        keep &= keys["port"] == _named("port", port, port_names)
    if protocol is not None:
        keep &= keys["protocol"] == _protocol_number(protocol)
    if src is not None:
        keep &= _within(keys, "src", src)
    if dst is not None:
        keep &= _within(keys, "dst", dst)
    picked = np.flatnonzero(keep)
    packets = entries["packets"][slots[picked]]
    picked = picked[np.lexsort((slots[picked], -packets))]  # most packets first, then slot
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit: must be >= 0, got {limit}")
        picked = picked[:limit]
    now = gateway.now if now is None else now
    chosen = keys[picked]
    at = slots[picked]
    # Columns to Python lists in bulk: no NumPy scalar is touched per flow.
    k = {name: chosen[name].tolist() for name in KEY_DTYPE.names or ()}
    e = {name: entries[name][at].tolist()
         for name in ("action", "packets", "bytes", "last_seen", "generation")}
    records = gateway.datapath.actions.records
    n_actions = len(gateway.datapath.actions)
    said: dict[tuple[int, int, int], tuple[str, str | None, str | None]] = {}
    current = cache.generation
    flows = []
    for j, slot in enumerate(at.tolist()):
        version, proto, action = k["ip_version"][j], k["protocol"][j], e["action"][j]
        decision = said.get((action, proto, version))
        if decision is None:
            decision = _decision(records, n_actions, action, proto, version, port_names)
            said[(action, proto, version)] = decision
        tenant_id, port_id, mac = k["tenant"][j], k["port"][j], k["eth_dst"][j]
        flows.append(Flow(
            entry=slot,
            tenant=tenant_names.get(tenant_id, str(tenant_id)), tenant_id=tenant_id,
            in_port=port_names.get(port_id, str(port_id)), in_port_id=port_id,
            vlan=k["vlan"][j] or None, tunnel_id=k["tunnel_id"][j], eth_dst=_mac(mac),
            ip_version=version, protocol=proto,
            src=_address(version, k["src_hi"][j], k["src_lo"][j]),
            dst=_address(version, k["dst_hi"][j], k["dst_lo"][j]),
            sport=k["sport"][j], dport=k["dport"][j],
            icmp_type=k["icmp_type"][j] if proto in _ECHO else None,
            actions=decision[0], out_port=decision[1], drop=decision[2],
            packets=e["packets"][j], bytes=e["bytes"][j],
            idle=max(0, now - e["last_seen"][j]) / SECOND,
            generation=e["generation"][j], current=e["generation"][j] == current,
        ))
    return flows


def _decision(records: np.ndarray, count: int, action: int, protocol: int, version: int,
              ports: Mapping[int, str]) -> tuple[str, str | None, str | None]:
    """(words, output port name, drop reason) of action ``action``."""
    if not 0 <= action < count:
        return f"unknown_action({action})", None, None
    r = dict(zip(ACTION_DTYPE.names or (), records[action].tolist(), strict=True))
    ops, out = r["ops"], r["out_port"]
    return (_words(r, protocol, version, ports),
            ports.get(out, str(out)) if ops & _OUTPUT else None,
            drops.name(r["reason"]) if ops & _DROP else None)


def _address(version: int, hi: int, lo: int) -> str | None:
    if version == 4:
        return _ipv4(lo & 0xFFFFFFFF)
    if version == 6:
        return str(IPv6Address(hi << 64 | lo))
    return None


def _named(what: str, value: str | int, names: Mapping[int, str]) -> int:
    """The id of a tenant or port given by name or id (a number's text included)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    ids = {name: ident for ident, name in names.items()}
    if value in ids:
        return ids[value]
    text = str(value)
    if text.lstrip("-").isdigit():
        return int(text)
    raise ValueError(f"{what}: no {what} {value!r} ({what}s: {', '.join(sorted(ids))})")


def _protocol_number(protocol: str | int) -> int:
    if isinstance(protocol, int) and not isinstance(protocol, bool):
        if not 0 <= protocol <= 255:
            raise ValueError(f"protocol: {protocol} is outside 0..255")
        return protocol
    text = str(protocol).lower()
    if text.isdigit():
        return _protocol_number(int(text))
    if text not in PROTOCOLS:
        raise ValueError(f"protocol: {protocol!r} is not a number or one of "
                         f"{', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[text]


def _within(keys: np.ndarray, side: str, prefix: str) -> np.ndarray:
    """Which keys' ``side`` address (src or dst) is in ``prefix`` (an address or a prefix)."""
    try:
        network = ip_network(prefix, strict=False)
    except ValueError:
        raise ValueError(f"{side}: {prefix!r} is not an address or a prefix") from None
    bits = network.max_prefixlen
    mask = ((1 << bits) - 1) ^ ((1 << (bits - network.prefixlen)) - 1)
    value = int(network.network_address)
    hi, lo = keys[f"{side}_hi"], keys[f"{side}_lo"]
    if network.version == 4:
        return (keys["ip_version"] == 4) & ((lo & np.uint64(mask)) == np.uint64(value))  # type: ignore[no-any-return]
    return ((keys["ip_version"] == 6)  # type: ignore[no-any-return]
            & ((hi & np.uint64(mask >> 64)) == np.uint64(value >> 64))
            & ((lo & np.uint64(mask & _LOW64)) == np.uint64(value & _LOW64)))


__all__ = ["Flow", "KEY_DTYPE", "decode_keys", "describe_action", "dump_flows", "format_flows"]
