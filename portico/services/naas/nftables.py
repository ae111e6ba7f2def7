"""services.naas.nftables: NaaS port-range NAT done by the Linux kernel, programmed with nftables.

Role. The second back-end of issue 7: the same allocations as the datapath's
``portico.datapath.portnat.PortNatTable`` (pods on shared addresses, their
port blocks or PSID sets, session mappings, allow lists), written as one
nftables table, ``ip portico_naas``, so that the kernel's netfilter NAT does
the rewriting on a Linux router instead of Portico's datapath. The table is
generated from a ``PortNatTable``, so both back-ends are fed by one model,
validated once.

Theory of operation. Everything per pod is an element of a named set or
map, so the ruleset is a fixed ten rules whatever the number of pods, and a
lookup is a hash or a ``pipapo`` interval match, not a walk over rules:

* ``shared``, ``pods``: the shared addresses and the pod addresses;
* ``port_map`` (``shared . port-run : pod``, intervals): who owns a port, one
  element per run (a block is one run, a PSID set 63);
* ``session_in`` (``shared . protocol . port : pod . pod-port``) and
  ``session_out`` (``pod . protocol . pod-port : shared . port``);
* ``pod_ports`` (``pod . port-run``, intervals): the ports a pod may send
  from;
* ``snat_block`` (``pod : shared . lo-hi``) for pods whose ports are one
  block, ``snat_address`` (``pod : shared``) for the others (PSID sets);
* ``policed``, ``allowed`` (``pod . peer-prefix``, intervals): allow lists.

The chains, in the order a packet meets them::

    guard_in   filter prerouting, priority dstnat - 10 (before translation)
        to a shared address, not TCP/UDP                -> counter not_tcp_udp, drop
        to a shared address . port not in port_map      -> counter outside_ranges, drop
    dnat_in    nat prerouting (dstnat)
        dnat to session_in[shared . protocol . port]       (sessions first: nat is terminal)
        dnat to port_map[shared . port]                    (the address; the port is kept)
    guard_fwd  filter forward (after DNAT, before SNAT)
        from a pod, not TCP/UDP                         -> counter not_tcp_udp, drop
        from a pod . port in neither session_out nor pod_ports
                                                        -> counter source_port_outside_range, drop
        to a policed pod . from a peer not in allowed   -> counter peer_not_allowed, drop
    snat_out   nat postrouting (srcnat)
        snat to session_out[pod . protocol . port]
        snat to snat_block[pod]     i.e. "to shared:lo-hi"
        snat to snat_address[pod]

The named counters carry the datapath's drop reasons (``-`` as ``_``), so the
two back-ends are read the same way. Netfilter's NAT decides the first packet
of a connection and conntrack carries the decision to the rest and to the
replies, so a session's first packet may come from either side. The source
port rule is the datapath's (``datapath.stages.portnat`` says why a media
relay wants it): a port outside the pod's set is dropped, never translated.
The SNAT's port range still matters: should a pod's in-range port clash with
a connection already using the same tuple, netfilter picks another port, and
the range keeps it inside the block. A PSID set is not one range, so those
pods get an address-only SNAT that keeps the (already checked) port.

What differs from the datapath is not what is translated or dropped (the
same packets are, under the same counter names) but when a change takes
effect: conntrack keeps a connection's translation after its mapping is
removed, until the connection expires, where the datapath decides every
packet afresh; and the kernel sees only the traffic routed through it.

Applying is one ``nft -f -`` transaction that creates the table empty,
deletes it and writes it whole, so the kernel switches from the old ruleset to
the new one atomically (counters restart at zero); ``add_session`` /
``remove_session`` add and delete the elements of one session in one
transaction, for a signalling service that should not rewrite every pod;
``remove`` is ``nft delete table``. ``namespace`` runs ``nft`` in a network
namespace (``ip netns exec``).

Example::

    table = PortNatTable([PodMapping.block(shared="198.51.100.2", address="10.20.0.2",
                                           first=40000, last=40999)])
    kernel = NftablesBackend(namespace="router")
    kernel.apply(table)
    kernel.counters()["outside_ranges"]
    kernel.remove()
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence

from portico.datapath.portnat import PROTOCOLS, PortNatTable, Session

TABLE = "portico_naas"
FAMILY = "ip"
COUNTERS = ("outside_ranges", "source_port_outside_range", "peer_not_allowed", "not_tcp_udp")
COMMAND_TIMEOUT = 30.0  # s for one nft command


class NftablesError(RuntimeError):
    """nft refused a ruleset or a command (its message is in the text)."""


def unavailable() -> str | None:
    """Why this back-end cannot run here, or None."""
    if shutil.which("nft") is None:
        return "nft is not installed (Debian package nftables)"
    if os.geteuid() != 0:
        return "programming nftables needs root"
    return None


# ---------------------------------------------------------------- the ruleset
def _elements(items: Sequence[str]) -> list[str]:
    """An ``elements = { ... }`` line, or nothing: nft refuses an empty one."""
    if not items:
        return []
    return ["        elements = { " + ",\n                     ".join(items) + " }"]


def _set(name: str, kind: str, items: Sequence[str], *, interval: bool = False) -> list[str]:
    flags = ["        flags interval"] if interval else []
    return [f"    set {name} {{", f"        type {kind}", *flags, *_elements(items), "    }"]


def _map(name: str, kind: str, items: Sequence[str], *, interval: bool = False) -> list[str]:
    flags = ["        flags interval"] if interval else []
    return [f"    map {name} {{", f"        type {kind}", *flags, *_elements(items), "    }"]


def _run(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _session_elements(table: PortNatTable, session: Session) -> tuple[list[str], list[str]]:
    """A session's elements of ``session_in`` and of ``session_out``."""
    pod = table.pod(session.pod)
    if pod is None:
        raise ValueError(f"session.pod: no pod {session.pod}")
    inbound = [f"{pod.shared} . {PROTOCOLS[p.protocol]} . {p.external_port} : "
               f"{pod.address} . {p.pod_port}" for p in session.ports]
    outbound = [f"{pod.address} . {PROTOCOLS[p.protocol]} . {p.pod_port} : "
                f"{pod.shared} . {p.external_port}" for p in session.ports]
    return inbound, outbound


def ruleset(table: PortNatTable) -> str:
    """The ``ip portico_naas`` table for the table's pods, sessions and allow lists."""
    pods = table.pods()
    port_map = [f"{p.shared} . {_run(lo, hi)} : {p.address}" for p in pods for lo, hi in p.ports]
    pod_ports = [f"{p.address} . {_run(lo, hi)}" for p in pods for lo, hi in p.ports]
    snat_block = [f"{p.address} : {p.shared} . {_run(*p.ports[0])}"
                  for p in pods if len(p.ports) == 1]
    snat_address = [f"{p.address} : {p.shared}" for p in pods if len(p.ports) > 1]
    policed = [p.address for p in pods if p.allow is not None]
    allowed = [f"{p.address} . {prefix}" for p in pods for prefix in p.allow or ()]
    session_in: list[str] = []
    session_out: list[str] = []
    for session in table.sessions():
        inbound, outbound = _session_elements(table, session)
        session_in += inbound
        session_out += outbound
    lines = [f"table {FAMILY} {TABLE} {{"]
    lines += _set("shared", "ipv4_addr", table.shared())
    lines += _set("pods", "ipv4_addr", [p.address for p in pods])
    lines += _map("port_map", "ipv4_addr . inet_service : ipv4_addr", port_map, interval=True)
    lines += _map("session_in", "ipv4_addr . inet_proto . inet_service : "
                  "ipv4_addr . inet_service", session_in)
    lines += _map("session_out", "ipv4_addr . inet_proto . inet_service : "
                  "ipv4_addr . inet_service", session_out)
    lines += _set("pod_ports", "ipv4_addr . inet_service", pod_ports, interval=True)
    lines += _map("snat_block", "ipv4_addr : interval ipv4_addr . inet_service", snat_block)
    lines += _map("snat_address", "ipv4_addr : ipv4_addr", snat_address)
    lines += _set("policed", "ipv4_addr", policed)
    lines += _set("allowed", "ipv4_addr . ipv4_addr", allowed, interval=True)
    lines += [f"    counter {name} {{\n    }}" for name in COUNTERS]
    ports = "meta l4proto { tcp, udp }"
    lines += [
        "    chain guard_in {",
        "        type filter hook prerouting priority dstnat - 10; policy accept;",
        "        ip daddr @shared meta l4proto != { tcp, udp } counter name not_tcp_udp drop",
        "        ip daddr @shared ip daddr . th dport != @port_map"
        " counter name outside_ranges drop",
        "    }",
        "    chain dnat_in {",
        "        type nat hook prerouting priority dstnat; policy accept;",
        f"        ip daddr @shared {ports}"
        " dnat ip to ip daddr . meta l4proto . th dport map @session_in",
        f"        ip daddr @shared {ports} dnat ip to ip daddr . th dport map @port_map",
        "    }",
        "    chain guard_fwd {",
        "        type filter hook forward priority filter; policy accept;",
        "        ip saddr @pods meta l4proto != { tcp, udp } counter name not_tcp_udp drop",
        "        ip saddr @pods ip saddr . meta l4proto . th sport != @session_out"
        " ip saddr . th sport != @pod_ports counter name source_port_outside_range drop",
        "        ip daddr @policed ip daddr . ip saddr != @allowed"
        " counter name peer_not_allowed drop",
        "    }",
        "    chain snat_out {",
        "        type nat hook postrouting priority srcnat; policy accept;",
        f"        ip saddr @pods {ports}"
        " snat ip to ip saddr . meta l4proto . th sport map @session_out",
        f"        ip saddr @pods {ports} snat ip to ip saddr map @snat_block",
        f"        ip saddr @pods {ports} snat ip to ip saddr map @snat_address",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def replacing(text: str) -> str:
    """One transaction that replaces the table (or makes it) with ``text``."""
    return f"table {FAMILY} {TABLE} {{\n}}\ndelete table {FAMILY} {TABLE}\n{text}"


# ---------------------------------------------------------------- the kernel
class NftablesBackend:
    """Programs the ``ip portico_naas`` table with ``nft``, here or in a network namespace."""

    def __init__(self, *, namespace: str | None = None, nft: str = "nft",
                 timeout: float = COMMAND_TIMEOUT) -> None:
        self.namespace = namespace
        self.nft = nft
        self.timeout = timeout

    def _command(self, *args: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.namespace] if self.namespace else []
        return [*prefix, self.nft, *args]

    def _nft(self, *args: str, script: str | None = None) -> str:
        command = self._command(*args)
        try:
            done = subprocess.run(command, input=script, capture_output=True, text=True,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise NftablesError(f"{' '.join(command)}: no answer in {self.timeout:g} s") from None
        if done.returncode != 0:
            raise NftablesError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def apply(self, table: PortNatTable) -> None:
        """Replace the kernel's ``portico_naas`` table with the table's, atomically."""
        self._nft("-f", "-", script=replacing(ruleset(table)))

    def add_session(self, table: PortNatTable, session: Session) -> None:
        """Add one session's mappings (already in ``table``), in one transaction."""
        self._nft("-f", "-", script=self._session_script("add", table, session))

    def remove_session(self, table: PortNatTable, session: Session) -> None:
        """Delete one session's mappings (its pod still in ``table``), in one transaction."""
        self._nft("-f", "-", script=self._session_script("delete", table, session))

    @staticmethod
    def _session_script(verb: str, table: PortNatTable, session: Session) -> str:
        inbound, outbound = _session_elements(table, session)
        return (f"{verb} element {FAMILY} {TABLE} session_in {{ {', '.join(inbound)} }}\n"
                f"{verb} element {FAMILY} {TABLE} session_out {{ {', '.join(outbound)} }}\n")

    def remove(self) -> bool:
        """Delete the table; False if there was none."""
        try:
            self._nft("delete", "table", FAMILY, TABLE)
        except NftablesError as error:
            if "No such file or directory" in str(error):
                return False
            raise
        return True

    def installed(self) -> bool:
        listed = json.loads(self._nft("-j", "list", "tables", FAMILY))
        return any(item.get("table", {}).get("name") == TABLE
                   for item in listed.get("nftables", []))

    def counters(self) -> dict[str, int]:
        """Packets per named counter (``COUNTERS``)."""
        listed = json.loads(self._nft("-j", "list", "counters", "table", FAMILY, TABLE))
        return {c["name"]: int(c["packets"]) for item in listed.get("nftables", [])
                if (c := item.get("counter")) is not None}

    def listing(self) -> str:
        return self._nft("list", "table", FAMILY, TABLE)
