"""Linux nftables and ipset as peers of the ``classify`` workload: the same policy, in the kernel.

Role. Issue 3 asks for Portico's classifier beside what a Linux user would
deploy for the same policy: nftables rules over named sets, or iptables rules
over ipset sets. This module writes the ``classify`` workload's containers
and rules in each form, loads them into a network namespace of its own,
sends the workload's packets through as real frames, checks that the kernel
chose the same rule as Portico for every packet, and measures what the
kernel's rule evaluation costs per packet.

Theory of operation.

*The nftables policy, as its users write it.* One table, family ``netdev``,
so that no routing or addresses are needed: its base chain hangs on the
``ingress`` hook of the namespace's end of a veth pair. Every container is a
named set (``type ipv4_addr; flags interval; auto-merge``) holding the
container's prefixes as elements, as given: nested and overlapping prefixes
are nft's to merge (``auto-merge``), which the counter check below would
catch going wrong. Every Portico rule, in match order
(``RuleSet.ordered()``), is one nftables rule: the transport match first
(``tcp dport 443``, ``udp dport 1000-2000``, ``meta l4proto tcp``), then
``ip saddr @_c12`` (``set_name``), ``ip daddr @_c40`` or a literal prefix
(``ip daddr 10.7.0.0/16``), "any" omitted, then ``counter``, the verdict
(allow: ``accept``; deny and reject: ``drop``, since a reject would send
packets back and the figure is about classification) and the rule id as a
comment. The default rule, last, is a bare ``counter drop``. Transport first
is how a user who cares writes it, and it matters: the port test turns most
rules down in ~20 ns, while a rule that starts with an interval-set lookup
costs ~200 ns; with the addresses first the same 10k-rule policy costs ~9
times as much per packet (955 against 108 us at the quick size, measured
while writing this). The figure is for the rule list as written, one nftables
rule per Portico rule; a ruleset refactored by hand (a verdict map on the
port jumping to per-port chains, every port-less rule copied into each) would
walk fewer rules, but that is a compiler's job, the one Portico's classifier
does. The rules live in a regular chain; the base chain holds one ``jump``,
so the measurement can switch the policy in and out without reloading it.
Sets, rules and chains are one file loaded with one ``nft -f`` (from stdin);
its wall time is the load time.

*The ipset policy.* One ``hash:net`` set per container (nested prefixes are
separate entries; a lookup tries each prefix length the set holds, longest
first), loaded with ``ipset restore``, and one iptables rule per Portico rule
in the ``raw`` table (legacy x_tables, ``iptables-legacy``: the classic ipset
deployment, independent of nftables' code)::

    -p tcp -m tcp --dport 443 -m set --match-set _c12 src -m set --match-set _c40 dst -j ACCEPT

the protocol and literal prefixes in the rule's IP header match, the ports
next, the sets last; the default rule is a bare ``-j DROP``. Every iptables
rule counts its packets. Its earliest hook is ``raw PREROUTING``, inside the
IP stack, so its frames are addressed to the namespace's end (an IP stack
drops frames for other hosts before the hook) and, when accepted, go on to a
route lookup that fails (the namespace has no addresses nor routes) and are
dropped there. Its load time is ``ipset restore`` and
``iptables-legacy-restore`` together. A port rule without a protocol would
need one iptables rule per protocol and is refused (``ValueError``), as are
IPv6 policies for both peers: the translations cover what the workload has.

*The lab.* ``Lab`` creates a namespace ``portico-<peer>-<pid>`` and a veth
pair with one end in it (IPv6 off on both ends, no addresses, so nothing but
our frames crosses it) and removes both on the way out, whatever happened (an
error, Ctrl-C: SIGINT is held back while it cleans up). The frames are built
from the workload's packet metadata (``frames``: Ethernet, IPv4 and TCP or
UDP with valid checksums, 60 bytes) and sent from an AF_PACKET socket bound
to the host end, in ``sendmmsg`` calls of up to 1024 (``Sender``). veth hands
each frame to the other end with ``__netif_rx`` (the per-CPU backlog), and
the softirq that drains it runs when the send path re-enables bottom halves,
on the sender's CPU, inside the sender's system call: the hook, and so the
rule evaluation, runs synchronously in the sender's time. On the 6.18 kernel
this was written on (2 CPUs), ksoftirqd took under 0.2% of a pass through the
10k-rule policy (the softirq hands over to it only when it has run too long
or another task wants the CPU) and none of a baseline pass, and on a quiet
machine the sender's CPU time and the wall time of a pass agree within about
1%. For nftables the frames' destination MAC is neither end's, so an accepted
frame is dropped by ``ip_rcv`` as "other host" right after the hook.

*The measurement.* The sender is pinned to one CPU. The cost of one pass (N
frames) is the sender thread's CPU time (``time.thread_time_ns``, which on a
kernel without ``IRQ_TIME_ACCOUNTING`` includes the softirq work run in its
context) plus the CPU time ksoftirqd of that CPU used meanwhile
(``/proc/<pid>/schedstat``), so that work deferred to it, if any, counts too.
CPU time rather than wall time, because the wall time also counts whatever
else ran on that CPU meanwhile (under load it read up to 1.5 times the CPU
time); it is reported beside it. ``/proc/stat``'s softirq column would not
do: without ``IRQ_TIME_ACCOUNTING`` it is sampled at the tick (4 ms here).
Three configurations are timed, interleaved, ``repeats`` times each: the
hook's chain jumping to the policy, to a chain holding only an accepting
rule, and to one holding only a dropping rule (each counts, as the policy's
matching rule does). The cost of the policy per packet is the median of the
first less the baseline, the medians of the other two weighted by the share
of packets the policy accepts and drops (accepted and dropped frames take
different paths after the hook), divided by N. What is left is the evaluation
of the rules a packet walks through before its match and the sets looked up
on the way: the system call, the skb, veth, the hook, the jump, one counter
and the verdict's aftermath are in both terms. ``pps`` is 1e9 over that:
packets per second of one CPU doing nothing but that rule evaluation,
comparable with Portico's single-core figure and generous to the kernel:
everything but the rule walk has been taken away.

*The check.* Before any figure is kept, one pass goes through the policy and
each rule's counter must equal the number of packets for which Portico's
classifier chose that rule (``Classifier(store, ruleset).classify(batch)``,
or the ``chosen`` the caller already has); the first rule that differs raises
``bench.workloads.MismatchError``. After the timed passes the counters are
read again and must be (1 + repeats) times that (no frame lost on the way),
and each baseline's counter must be repeats times N.

Requirements: Linux, root (namespaces, AF_PACKET), ``ip`` (iproute2),
``nft`` (Debian package ``nftables``) for the one, ``ipset`` and
``iptables-legacy`` (packages ``ipset``, ``iptables``) for the other;
``make system-deps`` installs them. ``unavailable(peer)`` says why a peer
cannot run, or None.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from portico.batch import Batch

PEERS = ("nftables", "ipset")
TABLE = "portico"  # the nftables table
POLICY = "rules"  # nftables: the policy's chain
IPT_POLICY = "PORTICO"  # iptables: the policy's chain (raw table)
MAC_HOST = bytes.fromhex("02504f000001")  # the host end of the veth pair
MAC_LAB = bytes.fromhex("02504f000002")  # the namespace end
MAC_ELSEWHERE = bytes.fromhex("02504f000003")  # neither end
FRAME_BYTES = 60  # Ethernet minimum less the FCS: the TCP frames' 54 bytes, padded
SEND_CHUNK = 1024  # UIO_MAXIOV: the most messages one sendmmsg takes
COMMAND_TIMEOUT_S = 300.0  # a 10k-rule load takes about a second; near this it is stuck
COMMANDS = {"nftables": (("ip", "iproute2"), ("nft", "nftables")),
            "ipset": (("ip", "iproute2"), ("ipset", "ipset"),
                      ("iptables-legacy", "iptables"), ("iptables-legacy-restore", "iptables"),
                      ("iptables-legacy-save", "iptables"))}


class PeerUnavailable(RuntimeError):
    """The kernel peer cannot run here (not Linux, not root, a command missing)."""


def unavailable(peer: str = "nftables") -> str | None:
    """Why ``peer`` (``PEERS``) cannot run on this machine, or None if it can."""
    if not sys.platform.startswith("linux"):
        return f"needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET)"
    for command, package in COMMANDS[peer]:
        if shutil.which(command) is None:
            return f"`{command}` is missing (Debian package {package}; `make system-deps`)"
    return None


# ---------------------------------------------------------------- the policies
def set_name(container: str) -> str:
    """A container's set: its name after a ``_`` (``@_c12``).

    nft takes neither its keywords (a container called ``tcp``) nor names
    that start with a digit as set names, and will not have them quoted. No
    keyword starts with ``_`` and no container name does, so the prefix makes
    every name valid and no two alike.
    """
    return "_" + container


def _ports(ports: Any, separator: str) -> str:
    return str(ports.lo) if ports.lo == ports.hi else f"{ports.lo}{separator}{ports.hi}"


def _ipv4_only(rule: Any) -> None:
    for match in (rule.src, rule.dst):
        if match.prefix is not None and match.prefix.version != 4:
            raise ValueError(f"rule {rule.id}: {match.prefix}: the kernel peers are IPv4 only")
    if rule.protocol == 58:
        raise ValueError(f"rule {rule.id}: icmpv6: the kernel peers are IPv4 only")


def _limited_ports(rule: Any) -> list[tuple[str, Any]]:
    return [(side, pr) for side, pr in (("sport", rule.sport), ("dport", rule.dport))
            if not pr.is_full]


def _protocol_name(protocol: int) -> str:
    from portico.classify.rules import PROTOCOL_NAMES

    names = {number: name for name, number in PROTOCOL_NAMES.items()}
    return names.get(protocol, str(protocol))


def nft_rule(rule: Any) -> str:
    """One Portico rule as one nftables rule (the body of ``add rule``)."""
    from portico.classify.rules import Action

    _ipv4_only(rule)
    ports = _limited_ports(rule)
    parts: list[str] = []
    if rule.protocol is None:
        if ports:  # Portico's port ranges match only protocols that have ports (rules.py)
            parts = ["meta l4proto { tcp, udp, sctp }",
                     *(f"th {side} {_ports(pr, '-')}" for side, pr in ports)]
    elif ports:  # the rule model refuses ports with a protocol that has none
        parts = [f"{_protocol_name(rule.protocol)} {side} {_ports(pr, '-')}"
                 for side, pr in ports]
    elif rule.icmp_type is not None:
        parts = [f"icmp type {rule.icmp_type}"]
        if rule.icmp_code is not None:
            parts.append(f"icmp code {rule.icmp_code}")
    else:
        parts = [f"meta l4proto {_protocol_name(rule.protocol)}"]
    for side, match in (("saddr", rule.src), ("daddr", rule.dst)):
        if match.container is not None:
            parts.append(f"ip {side} @{set_name(match.container)}")
        elif match.prefix is not None:
            parts.append(f"ip {side} {match.prefix}")
    verdict = "accept" if rule.action == Action.ALLOW else "drop"
    return " ".join([*parts, "counter", verdict, f'comment "{rule.id}"'])


def nft_text(store: Any, ordered: Sequence[Any], device: str) -> str:
    """The whole nftables policy as one ``nft -f`` file: sets, rules, baselines, the hook."""
    lines = [f"table netdev {TABLE} {{"]
    for name, members in _members(store).items():
        lines.append(f"  set {set_name(name)} {{ type ipv4_addr; flags interval; auto-merge;")
        if members:
            lines.append("    elements = { " + ", ".join(members) + " }")
        lines.append("  }")
    lines.append(f"  chain {POLICY} {{")
    lines += [f"    {nft_rule(rule)}" for rule in ordered]
    lines.append("  }")
    lines += ["  chain base_accept { counter accept; }", "  chain base_drop { counter drop; }",
              f'  chain ingress {{ type filter hook ingress device "{device}" priority 0; '
              "policy accept; }", "}"]
    return "\n".join(lines) + "\n"


def iptables_rule(rule: Any) -> str:
    """One Portico rule as one iptables rule (after ``-A CHAIN``)."""
    from portico.classify.rules import Action

    _ipv4_only(rule)
    ports = _limited_ports(rule)
    parts: list[str] = []
    if rule.protocol is None:
        if ports:
            raise ValueError(f"rule {rule.id}: ports without a protocol: iptables needs one "
                             "rule per protocol")
    else:
        name = _protocol_name(rule.protocol)
        parts.append(f"-p {name}")
        if ports:
            parts.append(f"-m {name}")
            parts += [f"--{side} {_ports(pr, ':')}" for side, pr in ports]
        elif rule.icmp_type is not None:
            code = "" if rule.icmp_code is None else f"/{rule.icmp_code}"
            parts.append(f"-m icmp --icmp-type {rule.icmp_type}{code}")
    for flag, match in (("-s", rule.src), ("-d", rule.dst)):
        if match.prefix is not None:
            parts.append(f"{flag} {match.prefix}")
    for side, match in (("src", rule.src), ("dst", rule.dst)):
        if match.container is not None:
            parts.append(f"-m set --match-set {set_name(match.container)} {side}")
    parts.append("-j ACCEPT" if rule.action == Action.ALLOW else "-j DROP")
    return " ".join(parts)


def ipset_text(store: Any) -> str:
    """Every container as a ``hash:net`` set, for ``ipset restore -exist``."""
    lines = []
    for name, members in _members(store).items():
        lines.append(f"create {set_name(name)} hash:net family inet "
                     f"maxelem {max(65536, len(members))}")
        lines += [f"add {set_name(name)} {member}" for member in members]
    return "\n".join(lines) + "\n"


def iptables_text(ordered: Sequence[Any], device: str) -> str:
    """The raw table for ``iptables-legacy-restore``: the policy, baselines, the hook."""
    lines = ["*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             f":{IPT_POLICY} - [0:0]", ":BASE_ACCEPT - [0:0]", ":BASE_DROP - [0:0]"]
    lines += [f"-A {IPT_POLICY} {iptables_rule(rule)}" for rule in ordered]
    lines += ["-A BASE_ACCEPT -j ACCEPT", "-A BASE_DROP -j DROP",
              f"-A PREROUTING -i {device} -j {IPT_POLICY}", "COMMIT"]
    return "\n".join(lines) + "\n"


def _members(store: Any) -> dict[str, list[str]]:
    """Every container's prefixes (through nesting too), as text; IPv4 only."""
    held = {}
    for name in sorted(store.containers):
        members = sorted(store.members(name), key=lambda n: (n.version, n))
        if any(network.version != 4 for network in members):
            raise ValueError(f"container {name}: holds IPv6 prefixes: the kernel peers are "
                             "IPv4 only")
        held[name] = [str(network) for network in members]
    return held


# ---------------------------------------------------------------- frames
def _fold(total: np.ndarray) -> np.ndarray:
    """One's-complement of the folded 16-bit sums (RFC 1071), per row."""
    for _ in range(3):  # a sum of < 2**16 words of 16 bits folds within three rounds
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def _words(frames: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Sum of the big-endian 16-bit words of bytes [start, stop) of every frame."""
    block = frames[:, start:stop].astype(np.uint64)
    return (block[:, 0::2] << np.uint64(8)).sum(axis=1) + block[:, 1::2].sum(axis=1)


def _put16(frames: np.ndarray, at: int, values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.uint64)
    frames[:, at] = (values >> np.uint64(8)) & np.uint64(0xFF)
    frames[:, at + 1] = values & np.uint64(0xFF)


def _put32(frames: np.ndarray, at: int, values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.uint64)
    for k in range(4):
        frames[:, at + k] = (values >> np.uint64(24 - 8 * k)) & np.uint64(0xFF)


def frames(meta: np.ndarray, destination: bytes = MAC_ELSEWHERE,
           source: bytes = MAC_HOST) -> np.ndarray:
    """Packets' metadata records as Ethernet frames, one 60-byte row each (zero padded).

    The workload's traffic is metadata only (``bench.classify.make_traffic``):
    IPv4, TCP or UDP, addresses and ports. TCP segments here are SYNs with no
    payload, UDP datagrams are empty; IPv4 header and transport checksums are
    valid, so an IP stack takes them as they are.
    """
    if np.any(meta["ip_version"] != 4) or np.any(~np.isin(meta["protocol"], (6, 17))):
        raise ValueError("the kernel peers send IPv4 TCP and UDP packets only")
    count = len(meta)
    tcp = meta["protocol"] == 6
    out = np.zeros((count, FRAME_BYTES), dtype=np.uint8)
    out[:, 0:6] = np.frombuffer(destination, dtype=np.uint8)
    out[:, 6:12] = np.frombuffer(source, dtype=np.uint8)
    out[:, 12:14] = (0x08, 0x00)
    l4_length = np.where(tcp, 20, 8).astype(np.uint64)
    out[:, 14] = 0x45
    _put16(out, 16, 20 + l4_length)
    out[:, 20] = 0x40  # don't fragment
    out[:, 22] = 64
    out[:, 23] = meta["protocol"]
    _put32(out, 26, meta["src4"])
    _put32(out, 30, meta["dst4"])
    _put16(out, 24, _fold(_words(out, 14, 34)))
    _put16(out, 34, meta["sport"])
    _put16(out, 36, meta["dport"])
    out[tcp, 46] = 0x50  # data offset: 5 words
    out[tcp, 47] = 0x02  # SYN
    out[tcp, 48:50] = 0xFF  # window
    out[~tcp, 39] = 8  # UDP length: the header alone
    # The transport checksum: pseudo-header plus the header (the padding is zeros).
    pseudo = (_words(out, 26, 34) + meta["protocol"].astype(np.uint64) + l4_length)
    l4_sum = _fold(pseudo + _words(out, 34, 54))
    l4_sum = np.where(~tcp & (l4_sum == 0), 0xFFFF, l4_sum)  # UDP sends 0 as 0xFFFF
    at = np.where(tcp, 50, 40)
    rows = np.arange(count)
    out[rows, at] = (l4_sum >> 8) & 0xFF
    out[rows, at + 1] = l4_sum & 0xFF
    return out


# ---------------------------------------------------------------- sending
class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


class Sender:
    """Every row of a frames array, sent on one interface with ``sendmmsg`` (AF_PACKET).

    The message headers point into ``rows`` (kept alive here), built once, so a
    pass costs a handful of ctypes calls and the kernel's work per frame.
    """

    def __init__(self, interface: str, rows: np.ndarray) -> None:
        self.rows = np.ascontiguousarray(rows, dtype=np.uint8)
        self.count, width = self.rows.shape
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._iov = (_Iovec * self.count)()
        self._messages = (_Mmsghdr * self.count)()
        base = self.rows.ctypes.data
        for i in range(self.count):
            self._iov[i].iov_base = base + width * i
            self._iov[i].iov_len = width
            self._messages[i].msg_hdr.msg_iov = ctypes.pointer(self._iov[i])
            self._messages[i].msg_hdr.msg_iovlen = 1
        self.socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.socket.bind((interface, 0))

    def send(self) -> None:
        """Send every frame once; raises OSError if the kernel refuses one."""
        size = ctypes.sizeof(_Mmsghdr)
        sent = 0
        for _ in range(self.count):  # each call sends at least one frame, or raises
            if sent == self.count:
                return
            done = self._libc.sendmmsg(self.socket.fileno(),
                                       ctypes.byref(self._messages, sent * size),
                                       min(SEND_CHUNK, self.count - sent), 0)
            if done <= 0:
                error = ctypes.get_errno()
                raise OSError(error, f"sendmmsg: {os.strerror(error)}")
            sent += done
        if sent != self.count:
            raise OSError(f"sendmmsg: {sent} of {self.count} frames sent")

    def close(self) -> None:
        self.socket.close()


# ---------------------------------------------------------------- the lab
def _run(command: Sequence[str], stdin: str | None = None) -> str:
    """Run a command, bounded in time; its stdout, or CalledProcessError with its stderr."""
    done = subprocess.run(list(command), input=stdin, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, list(command), done.stdout,
                                            done.stderr)
    return done.stdout


class Lab:
    """A network namespace and a veth pair into it; removed on exit, whatever happened.

    ``host`` is the end in the caller's namespace (frames are sent there),
    ``inside`` the end in the namespace (its ingress hook sees them).
    """

    def __init__(self, tag: str = "nft") -> None:
        pid = os.getpid()
        self.namespace = f"portico-{tag}-{pid}"
        self.host = f"p{tag[:3]}{pid}h"[:15]
        self.inside = f"p{tag[:3]}{pid}n"[:15]
        self._made: list[str] = []

    def __enter__(self) -> Lab:
        try:
            self._made.append("namespace")  # first: Ctrl-C may land as soon as it exists
            _run(["ip", "netns", "add", self.namespace])
            self._made.append("veth")
            _run(["ip", "link", "add", self.host, "address", MAC_HOST.hex(":"), "type", "veth",
                  "peer", "name", self.inside, "address", MAC_LAB.hex(":"),
                  "netns", self.namespace])
            # No IPv6 (router and neighbour solicitations would cross the hook too).
            Path(f"/proc/sys/net/ipv6/conf/{self.host}/disable_ipv6").write_text("1")
            self.run("sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{self.inside}/disable_ipv6")
            _run(["ip", "link", "set", self.host, "up"])
            self.run("ip", "link", "set", self.inside, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def run(self, *command: str, stdin: str | None = None) -> str:
        """Run a command inside the namespace."""
        return _run(["ip", "netns", "exec", self.namespace, *command], stdin)

    def close(self) -> None:
        """Remove the veth pair and the namespace; Ctrl-C waits until both are gone."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            if "veth" in self._made:
                subprocess.run(["ip", "link", "del", self.host], capture_output=True,
                               timeout=COMMAND_TIMEOUT_S, check=False)
            if "namespace" in self._made:
                subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True,
                               timeout=COMMAND_TIMEOUT_S, check=False)
            self._made = []
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


# ---------------------------------------------------------------- the peers in the lab
@dataclass
class _Policy:
    """How one peer writes and loads its policy, picks the hook's chain, reads counters.

    ``write`` makes the texts (untimed), ``load`` hands them to the kernel's
    tools (the load time), ``chains`` names the chain of each role: the
    policy (``rules``) and the two baselines (``accept``, ``drop``).
    """

    lab: Lab
    store: Any
    ordered: Sequence[Any]
    texts: list[str] = field(default_factory=list)
    chains: ClassVar[dict[str, str]]
    destination: ClassVar[bytes] = MAC_ELSEWHERE  # the frames' destination MAC

    def write(self) -> None:
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def select(self, role: str) -> None:
        raise NotImplementedError

    def counts(self, role: str) -> list[int]:
        raise NotImplementedError


class _Nftables(_Policy):
    chains: ClassVar[dict[str, str]] = {"rules": POLICY, "accept": "base_accept",
                                        "drop": "base_drop"}

    def write(self) -> None:
        self.texts = [nft_text(self.store, self.ordered, self.lab.inside)]

    def load(self) -> None:
        self.lab.run("nft", "-f", "-", stdin=self.texts[0])

    def select(self, role: str) -> None:
        self.lab.run("nft", "-f", "-", stdin=f"flush chain netdev {TABLE} ingress\n"
                     f"add rule netdev {TABLE} ingress jump {self.chains[role]}\n")

    def counts(self, role: str) -> list[int]:
        listing = json.loads(self.lab.run("nft", "-j", "list", "chain", "netdev", TABLE,
                                          self.chains[role]))
        counts = []
        for item in listing["nftables"]:
            if "rule" in item:
                counted = [e["counter"]["packets"] for e in item["rule"]["expr"]
                           if "counter" in e]
                counts.append(int(counted[0]) if counted else -1)
        return counts


_COUNTED = re.compile(r"^\[(\d+):\d+\] -A (\S+) ")


class _Ipset(_Policy):
    destination: ClassVar[bytes] = MAC_LAB  # an IP stack takes only its own frames

    chains: ClassVar[dict[str, str]] = {"rules": IPT_POLICY, "accept": "BASE_ACCEPT",
                                        "drop": "BASE_DROP"}

    def write(self) -> None:
        self.texts = [ipset_text(self.store), iptables_text(self.ordered, self.lab.inside)]

    def load(self) -> None:
        self.lab.run("ipset", "restore", "-exist", stdin=self.texts[0])
        self.lab.run("iptables-legacy-restore", stdin=self.texts[1])

    def select(self, role: str) -> None:
        self.lab.run("iptables-legacy", "-t", "raw", "-R", "PREROUTING", "1", "-i",
                     self.lab.inside, "-j", self.chains[role])

    def counts(self, role: str) -> list[int]:
        listing = self.lab.run("iptables-legacy-save", "-c", "-t", "raw")
        chain = self.chains[role]
        return [int(m.group(1)) for line in listing.splitlines()
                if (m := _COUNTED.match(line)) and m.group(2) == chain]


_POLICIES: dict[str, type[_Policy]] = {"nftables": _Nftables, "ipset": _Ipset}


def _ksoftirqd(cpu: int) -> Path | None:
    """The schedstat file of the softirq thread of ``cpu``, if there is one."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == f"ksoftirqd/{cpu}":
                    return entry / "schedstat"
            except OSError:
                continue
    return None


def _ksoftirqd_ns(ksoftirqd: Path | None) -> int:
    """The CPU time (ns) ksoftirqd has used, 0 if there is none to read."""
    if ksoftirqd is None:
        return 0
    try:
        return int(ksoftirqd.read_text().split()[0])
    except OSError:
        return 0


def _check(peer: str, counted: Sequence[int], expected: Sequence[int],
           ordered: Sequence[Any], when: str) -> None:
    from bench.workloads import MismatchError

    if len(counted) != len(ordered):
        raise MismatchError(f"{peer}: {len(counted)} rules listed, {len(ordered)} loaded")
    for index, (got, want) in enumerate(zip(counted, expected, strict=True)):
        if got != want:
            raise MismatchError(
                f"{peer} {when}: rule {index} ({ordered[index].id}): the kernel counted "
                f"{got} packets, Portico's classifier chose it for {want}")


def measure(peer: str, store: Any, ruleset: Any, traffic: Batch, *,
            packets: int | None = None, repeats: int = 3, chosen: np.ndarray | None = None,
            status: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Load ``peer``'s policy, check it against Portico's classifier, time it (module doc).

    The first ``packets`` packets of ``traffic`` (all by default) are sent.
    ``chosen`` is Portico's answer for them (indices into ``ruleset.ordered()``),
    computed here with a ``Classifier`` when not given. Raises
    ``PeerUnavailable`` when the peer cannot run here, ``MismatchError`` when
    the kernel and Portico disagree, ``ValueError`` for a policy outside the
    translation, and ``OSError``/``subprocess.SubprocessError`` when the lab
    fails. The result::

        {"peer": "nftables", "ns_per_packet": X, "pps": X, "packets": N,
         "repeats": R, "load_s": X, "accepted_share": X,
         "pass_ns_per_packet": {"rules": X, "accept": X, "drop": X},
         "pass_wall_ns_per_packet": {...}, "ksoftirqd_ns_per_packet": {...},
         "rules_walked": X, "ns_per_rule_walked": X,
         "rules": N, "sets": N, "timing": "...", "elements": N, "cpu": C}

    ``pass_*`` are the three passes' medians per packet: CPU time (what the
    figure is made of), wall time and the part of the CPU time ksoftirqd spent
    (near 0 when the softirq runs in the sender's system call, as it should).
    ``rules_walked`` is the mean number of rules a packet is tested against
    (its match's position, 1-based). ``ns_per_packet``, ``pps`` and
    ``ns_per_rule_walked`` are None when the difference is not positive (a
    policy too small to tell from the noise).
    """
    from bench.workloads import MismatchError
    from portico.classify.rules import Action

    reason = unavailable(peer)
    if reason is not None:
        raise PeerUnavailable(reason)
    ordered = ruleset.ordered()
    count = traffic.count if packets is None else min(packets, traffic.count)
    if chosen is None:
        from portico.classify.classifier import Classifier

        classifier = Classifier(store, ruleset)
        try:
            chosen = classifier.classify(traffic, np.arange(count))
        finally:
            classifier.close()
    chosen = np.asarray(chosen, dtype=np.int64)[:count]
    if len(chosen) != count or np.any(chosen < 0):
        raise ValueError("chosen: one rule index per packet sent, every packet meeting a rule")
    expected = np.bincount(chosen, minlength=len(ordered))
    allowed_rules = np.array([rule.action == Action.ALLOW for rule in ordered])
    accepted = float(expected[allowed_rules].sum() / count)
    policy_type = _POLICIES[peer]
    allowed_cpus = os.sched_getaffinity(0)
    cpu = min(allowed_cpus)
    with Lab(peer[:3]) as lab:
        policy = policy_type(lab, store, ordered)
        policy.write()
        status(f"{peer}: loading {len(ordered)} rules and {len(store.containers)} sets")
        began = time.perf_counter()
        policy.load()
        load_s = time.perf_counter() - began
        sender = Sender(lab.host, frames(traffic.meta[:count], policy.destination))
        passes: dict[str, list[int]] = {"rules": [], "accept": [], "drop": []}
        walls: dict[str, list[int]] = {"rules": [], "accept": [], "drop": []}
        deferred: dict[str, list[int]] = {"rules": [], "accept": [], "drop": []}
        try:
            os.sched_setaffinity(0, {cpu})
            ksoftirqd = _ksoftirqd(cpu)
            status(f"{peer}: checking the kernel's choices against the classifier")
            policy.select("rules")
            sender.send()
            _check(peer, policy.counts("rules"), expected.tolist(), ordered, "first pass")
            for repeat in range(repeats):
                status(f"{peer}: timing, pass {repeat + 1} of {repeats}")
                for role in passes:
                    policy.select(role)
                    soft, wall = _ksoftirqd_ns(ksoftirqd), time.perf_counter_ns()
                    own = time.thread_time_ns()
                    sender.send()
                    own = time.thread_time_ns() - own
                    soft = _ksoftirqd_ns(ksoftirqd) - soft
                    walls[role].append(time.perf_counter_ns() - wall)
                    passes[role].append(own + soft)
                    deferred[role].append(soft)
            _check(peer, policy.counts("rules"), (expected * (1 + repeats)).tolist(), ordered,
                   "after the timed passes")
            for role in ("accept", "drop"):
                if policy.counts(role) != [count * repeats]:
                    raise MismatchError(f"{peer}: the {role} baseline counted "
                                        f"{policy.counts(role)}, not {count * repeats}")
        finally:
            sender.close()
            os.sched_setaffinity(0, allowed_cpus)
    per_packet = {role: statistics.median(times) / count for role, times in passes.items()}
    baseline = accepted * per_packet["accept"] + (1 - accepted) * per_packet["drop"]
    cost = per_packet["rules"] - baseline
    walked = float(np.mean(chosen + 1))
    members = _members(store)
    return {
        "peer": peer, "ns_per_packet": round(cost, 1) if cost > 0 else None,
        "pps": round(1e9 / cost) if cost > 0 else None,
        "packets": count, "repeats": repeats, "load_s": round(load_s, 2),
        "accepted_share": round(accepted, 3),
        "pass_ns_per_packet": {role: round(value, 1) for role, value in per_packet.items()},
        "pass_wall_ns_per_packet": {role: round(statistics.median(times) / count, 1)
                                    for role, times in walls.items()},
        "ksoftirqd_ns_per_packet": {role: round(statistics.median(times) / count, 1)
                                    for role, times in deferred.items()},
        "rules_walked": round(walked, 1),
        "ns_per_rule_walked": round(cost / walked, 2) if cost > 0 else None,
        "rules": len(ordered), "sets": len(members),
        "timing": "CPU time (sender + ksoftirqd) of a pass through the policy less the "
                  "baselines', median of the repeats, per packet",
        "elements": sum(len(held) for held in members.values()), "cpu": cpu,
    }


def lab_namespaces(pid: int | None = None) -> list[str]:
    """The namespaces of the labs process ``pid`` (this one by default) has open.

    After a measurement there should be none. Other processes' labs (a bench
    running beside the tests) are theirs, and are left out.
    """
    pid = os.getpid() if pid is None else pid
    listing = _run(["ip", "netns", "list"])
    return [words[0] for words in map(str.split, listing.splitlines())
            if words and any(words[0] == f"portico-{peer[:3]}-{pid}" for peer in PEERS)]
