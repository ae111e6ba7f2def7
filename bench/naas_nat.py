"""Workload ``naas-nat``: the NaaS port-range NAT, against issue 4's NAT and against the kernel.

Issue 7 asks for the datapath's packets per second with port-range NAT,
beside issue 4's NAT stage and beside the nftables back-end, in one run. All
three get the same traffic:

*Traffic.* ``pods`` pods (64) share 198.51.100.2, each with a block of
``block`` ports (1000) from port 1024; half their addresses in 10.20.0.0/24,
half in 10.21.0.0/24. ``flows`` flows (4096), half inbound (a peer among
192.0.2.1-16 to the shared address, on a port of a pod's block), half
outbound (a pod, from a port of its block, to a peer), TCP/UDP 50/50;
``packets`` 60-byte frames (16,384) drawn uniformly from the flows
(``bench.nftables.frames``: valid checksums, TCP segments are SYNs).

Contenders, each one CPU:

* ``portnat``: ``parse`` then ``PortNat.process`` (``datapath/stages/portnat.py``)
  over Batches of ``batch`` (256) frames; and ``portnat + policing``: every pod
  with an allow list (192.0.2.0/24, which admits every peer here), so the
  classifier runs on every inbound row.
* ``nat (#4)``: the same frames through issue 4's NAT as its stage uses it:
  ``parse``, the tenant column set, the rows split by direction,
  ``NatTable.translate_in`` / ``translate_out`` (its binding kernels), each
  binding's interned action looked up and ``actions.apply_kernel`` (the
  rewrite the flow cache also uses). The NAT has no port ranges: it holds a
  static forward per inbound flow's (protocol, port) and the dynamic bindings
  the outbound flows made in an untimed first pass (port preserving, so the
  ports stay in the blocks). A whole block as static forwards would be 2 x
  1000 bindings per pod.
* ``nftables``: the kernel back-end (``services/naas/nftables.py``) programmed
  into a ``router`` namespace between an ``outside`` namespace and two pod
  namespaces (``portico.lab.Lab``), veth pairs with offloads off. The same
  frames are sent as they are with ``sendmmsg`` on AF_PACKET sockets (inbound
  from ``outside``, outbound from the pods' namespaces, in turn, for
  ``kernel_seconds``); what arrives is counted by an nftables counter on the
  receiving veth's ingress hook (which then drops it, so no socket or ICMP
  work is added). veth hands a frame to the other end's backlog and the
  softirq runs it in the sender's system call, so the figure is one CPU doing
  the sender's system calls, the AF_PACKET and veth paths twice, the
  router's IP forwarding, conntrack and the NAT: it is **not** the NAT alone,
  and a ratio against it says how Portico's stage compares with the whole
  kernel path. ``kernel routing`` is the same path with the table removed
  (frames addressed to the pods directly, no conntrack): the difference is
  what conntrack and the NAT cost the kernel. ``pps`` is delivered frames
  over wall time; ``pps (cpu)`` over the sender's CPU time (thread time,
  which holds the softirq work run in its context), steadier on a shared
  machine.

The check, before a figure is kept: every frame out of ``portnat`` is the
expected translation (destination the pod for inbound, source the shared
address for outbound, ports kept); the NAT's output equals it byte for byte;
policing drops nothing; the kernel delivers at least 99% of what was sent in
its warm-up pass. Frames are rewritten in place, so each timed pass is
preceded by an untimed restore from a pristine copy.
"""

from __future__ import annotations

import gc
import ipaddress
import secrets
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.workloads import MismatchError

SHARED = "198.51.100.2"
PEERS = 16  # 192.0.2.1-16
POD_NETS = ("10.20.0", "10.21.0")
FIRST_PORT = 1024
NOW = 1_000 * 1_000_000_000  # the NAT's clock: constant, so nothing expires
MACS = {"o0": "02:50:4e:00:00:01", "r0": "02:50:4e:00:00:02", "a0": "02:50:4e:00:00:03",
        "ra": "02:50:4e:00:00:04", "b0": "02:50:4e:00:00:05", "rb": "02:50:4e:00:00:06"}
SINK = "sink"  # the receiving namespaces' netdev table: counts IPv4 frames, drops them


@dataclass(frozen=True)
class NaasNatSettings:
    batches: tuple[int, ...] = (256,)
    pods: int = 64
    block: int = 1000
    flows: int = 4096
    packets: int = 1 << 14
    repeats: int = 7
    kernel: bool = True
    kernel_seconds: float = 2.0
    seed: int = 7


FULL_NAAS_NAT = NaasNatSettings()
QUICK_NAAS_NAT = NaasNatSettings(packets=1 << 12, repeats=3, kernel_seconds=0.5)


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


# ---------------------------------------------------------------- traffic
@dataclass
class Traffic:
    meta: np.ndarray  # per packet: protocol, addresses, ports (META_DTYPE)
    inbound: np.ndarray  # per packet
    pod_of: np.ndarray  # per packet: the pod's index
    pods: list[str]
    expected: np.ndarray  # per packet: (src4, sport, dst4, dport) after translation


def pod_address(k: int, pods: int) -> str:
    half = (pods + 1) // 2
    return f"{POD_NETS[k // half]}.{2 + k % half}"


def make_traffic(settings: NaasNatSettings) -> Traffic:
    from portico.batch import META_DTYPE

    if settings.pods * settings.block > 0x10000 - FIRST_PORT:
        raise ValueError(f"naas-nat: {settings.pods} blocks of {settings.block} ports do not "
                         "fit in one address")
    rng = np.random.default_rng(settings.seed)
    pods = [pod_address(k, settings.pods) for k in range(settings.pods)]
    addresses = np.array([_ip(p) for p in pods], dtype=np.int64)
    n = settings.flows
    inbound = np.arange(n) % 2 == 0
    pod = rng.integers(0, settings.pods, n)
    port = FIRST_PORT + pod * settings.block + rng.integers(0, settings.block, n)
    peer = _ip("192.0.2.0") + rng.integers(1, PEERS + 1, n)
    peer_port = rng.integers(1024, 65536, n)
    protocol = np.where(rng.random(n) < 0.5, 6, 17)
    shared = _ip(SHARED)
    pick = rng.integers(0, n, settings.packets)
    meta = np.zeros(settings.packets, dtype=META_DTYPE)
    meta["ip_version"] = 4
    meta["protocol"] = protocol[pick]
    meta["src4"] = np.where(inbound, peer, addresses[pod])[pick]
    meta["dst4"] = np.where(inbound, shared, peer)[pick]
    meta["sport"] = np.where(inbound, peer_port, port)[pick]
    meta["dport"] = np.where(inbound, port, peer_port)[pick]
    expected = np.stack([np.where(inbound, peer, shared), np.where(inbound, peer_port, port),
                         np.where(inbound, addresses[pod], peer),
                         np.where(inbound, port, peer_port)], axis=1)[pick]
    return Traffic(meta, inbound[pick], pod[pick], pods, expected)


def make_table(traffic: Traffic, settings: NaasNatSettings, *, policed: bool = False) -> Any:
    from portico.datapath.portnat import PodMapping, PortNatTable

    allow = ["192.0.2.0/24"] if policed else None
    return PortNatTable([
        PodMapping.block(shared=SHARED, address=address, first=FIRST_PORT + k * settings.block,
                         last=FIRST_PORT + (k + 1) * settings.block - 1, allow=allow)
        for k, address in enumerate(traffic.pods)], capacity=settings.pods)


def batches_of(frames: np.ndarray, size: int) -> list[Any]:
    from portico.batch import Batch

    cut = []
    for first in range(0, len(frames), size):
        rows = frames[first : first + size]
        batch = Batch(size, slot_size=256, headroom=64)
        batch.reset(len(rows))
        batch.data[: len(rows), 64 : 64 + rows.shape[1]] = rows
        batch.meta["length"][: len(rows)] = rows.shape[1]
        batch.meta["wire_length"][: len(rows)] = rows.shape[1]
        cut.append(batch)
    return cut


def _timed(restore: Callable[[], None], work: Callable[[], None], repeats: int) -> float:
    """Median wall time of ``work`` over ``repeats`` passes, each after an untimed restore."""
    times = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            restore()
            began = time.perf_counter()
            work()
            times.append(time.perf_counter() - began)
    finally:
        if enabled:
            gc.enable()
    return statistics.median(times)


def _output(batches: Sequence[Any]) -> bytes:
    return b"".join(bytes(b.data[i, 64:124]) for b in batches for i in range(b.count))


def _check_portnat(batches: Sequence[Any], traffic: Traffic, what: str) -> None:
    meta = np.concatenate([b.meta[: b.count] for b in batches])
    dropped = np.flatnonzero(meta["drop"])
    if len(dropped):
        raise MismatchError(f"naas-nat ({what}): {len(dropped)} packets dropped, the first "
                            f"with reason {int(meta['drop'][dropped[0]])}")
    got = np.stack([meta["src4"], meta["sport"], meta["dst4"], meta["dport"]], axis=1)
    wrong = np.flatnonzero((got != traffic.expected).any(axis=1))
    if len(wrong):
        raise MismatchError(f"naas-nat ({what}): packet {int(wrong[0])} left as "
                            f"{got[wrong[0]].tolist()}, expected "
                            f"{traffic.expected[wrong[0]].tolist()}")
    from portico.datapath.stages.parse import parse  # the bytes say the same as the columns

    for batch in batches:
        parse(batch)
    again = np.concatenate([b.meta[: b.count] for b in batches])
    if not np.array_equal(np.stack([again["src4"], again["sport"], again["dst4"],
                                    again["dport"]], axis=1), traffic.expected):
        raise MismatchError(f"naas-nat ({what}): the rewritten bytes disagree with the columns")


# ---------------------------------------------------------------- Portico's two NATs
class _Frames:
    """The frames cut into Batches of one size, and the untimed restore between passes."""

    def __init__(self, frames: np.ndarray, size: int) -> None:
        self.batches = batches_of(frames, size)
        self.pristine = [b.data.copy() for b in self.batches]
        self.count = len(frames)

    def restore(self) -> None:
        for batch, data in zip(self.batches, self.pristine, strict=True):
            batch.data[:] = data


def _portnat(settings: NaasNatSettings, traffic: Traffic, cut: _Frames, size: int,
             policed: bool) -> tuple[dict[str, Any], bytes]:
    from portico.datapath.stages.parse import parse
    from portico.datapath.stages.portnat import PortNat

    contender = "portnat + policing" if policed else "portnat"
    table = make_table(traffic, settings, policed=policed)
    stage = PortNat(table)

    def one_pass() -> None:
        for batch in cut.batches:
            parse(batch)
            stage.process(batch)

    cut.restore()
    one_pass()
    _check_portnat(cut.batches, traffic, contender)
    output = _output(cut.batches)
    seconds = _timed(cut.restore, one_pass, settings.repeats)
    return ({"name": "naas-nat", "contender": contender, "batch": size, "packets": cut.count,
             "pps": round(cut.count / seconds), "table_bytes": table.memory_bytes(),
             "counters": table.counters()}, output)


def _nat(settings: NaasNatSettings, traffic: Traffic, cut: _Frames, size: int
         ) -> tuple[dict[str, Any], bytes]:
    from bench.pipeline import _array_bytes
    from portico.datapath.actions import ActionTable, apply_kernel
    from portico.datapath.nat import Direction, Filtering, NatTable, Pool, StaticMapping
    from portico.datapath.stages.parse import parse

    shared = _ip(SHARED)
    inbound = traffic.meta[traffic.inbound]
    pod_addresses = np.array([_ip(traffic.pods[k]) for k in traffic.pod_of[traffic.inbound]])
    forwards = {(int(p), int(d), int(a)) for p, d, a in
                zip(inbound["protocol"], inbound["dport"], pod_addresses, strict=True)}
    nat = NatTable([Pool(tenant=1, addresses=[SHARED], ports=(FIRST_PORT, 65535),
                         filtering=Filtering.ENDPOINT_INDEPENDENT)],
                   statics=[StaticMapping(tenant=1, protocol=p, internal=a, internal_port=d,
                                          external=SHARED, external_port=d)
                            for p, d, a in sorted(forwards)],
                   capacity=max(1024, 2 * settings.flows))
    actions = ActionTable(4 * settings.flows)
    in_action = np.full(nat.capacity, -1, dtype=np.int64)
    out_action = np.full(nat.capacity, -1, dtype=np.int64)
    ids = np.empty(size, dtype=np.int64)
    every_row = np.arange(size, dtype=np.int64)

    def one_pass() -> None:
        for batch in cut.batches:
            parse(batch)
            n = batch.count
            meta = batch.meta
            meta["tenant"][:n] = 1
            towards = meta["dst4"][:n] == shared
            rows_in = np.flatnonzero(towards)
            rows_out = np.flatnonzero(~towards)
            ids[rows_in] = in_action[nat.translate_in(meta, rows_in, NOW)]
            ids[rows_out] = out_action[nat.translate_out(meta, rows_out, NOW)]
            apply_kernel(batch.data, meta, every_row, ids, actions.records, n)

    cut.restore()
    for batch in cut.batches:  # the outbound flows' bindings, made untimed
        parse(batch)
        batch.meta["tenant"][: batch.count] = 1
        nat.translate_out(batch.meta, np.flatnonzero(batch.meta["dst4"][: batch.count]
                                                     != shared), NOW)
    for binding in nat.live():  # each binding's action, both ways, as the cache holds them
        in_action[binding.id] = actions.add(nat.action(binding.id, Direction.IN))
        out_action[binding.id] = actions.add(nat.action(binding.id, Direction.OUT))
    cut.restore()
    one_pass()
    output = _output(cut.batches)
    seconds = _timed(cut.restore, one_pass, settings.repeats)
    return ({"name": "naas-nat", "contender": "nat (#4)", "batch": size, "packets": cut.count,
             "pps": round(cut.count / seconds),
             "table_bytes": _array_bytes(nat) + int(actions.records.nbytes),
             "bindings": len(nat)}, output)


def run_datapath(settings: NaasNatSettings, traffic: Traffic, frames: np.ndarray,
                 status: Callable[[str], None]) -> list[dict[str, Any]]:
    entries = []
    for size in settings.batches:
        cut = _Frames(frames, size)
        status(f"naas-nat: portnat at batch {size}")
        entry, expected = _portnat(settings, traffic, cut, size, policed=False)
        entries.append(entry)
        status(f"naas-nat: portnat + policing at batch {size}")
        entry, output = _portnat(settings, traffic, cut, size, policed=True)
        if output != expected:
            raise MismatchError("naas-nat: portnat with and without policing disagree on the "
                                "output frames")
        entries.append(entry)
        status(f"naas-nat: nat (#4) at batch {size}")
        entry, output = _nat(settings, traffic, cut, size)
        if output != expected:
            raise MismatchError("naas-nat: issue 4's NAT and the port-range NAT disagree on "
                                "the output frames")
        entries.append(entry)
    return entries


# ---------------------------------------------------------------- the kernel
def kernel_topology(pods: Sequence[str]) -> dict[str, Any]:
    peers = [f"192.0.2.{k}/24" for k in range(1, PEERS + 1)]
    ends = {net: [f"{p}/24" for p in pods if p.startswith(net + ".")] for net in POD_NETS}

    def end(name: str, namespace: str, addresses: list[str]) -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "addresses": addresses,
                "mac": MACS[name], "ipv6": False}

    return {
        "name": "nat",
        "namespaces": {"outside": {}, "router": {"forwarding": True}, "poda": {}, "podb": {}},
        "links": [
            {**end("o0", "outside", peers), "peer": end("r0", "router", ["192.0.2.254/24"])},
            {**end("a0", "poda", ends[POD_NETS[0]]),
             "peer": end("ra", "router", [f"{POD_NETS[0]}.1/24"])},
            {**end("b0", "podb", ends[POD_NETS[1]]),
             "peer": end("rb", "router", [f"{POD_NETS[1]}.1/24"])},
        ],
        "routes": [{"namespace": "outside", "to": f"{SHARED}/32", "via": "192.0.2.254"},
                   {"namespace": "poda", "to": "default", "via": f"{POD_NETS[0]}.1"},
                   {"namespace": "podb", "to": "default", "via": f"{POD_NETS[1]}.1"}],
    }


def _sink(device: str) -> str:
    return (f"table netdev {SINK} {{\n    counter arrived {{\n    }}\n"
            f"    chain ingress {{\n        type filter hook ingress device \"{device}\" "
            "priority 0; policy accept;\n"
            "        meta protocol ip counter name arrived drop\n    }\n}\n")


def _arrived(lab: Any, namespaces: Sequence[str]) -> int:
    import json

    total = 0
    for namespace in namespaces:
        listed = json.loads(lab.run(namespace, "nft", "-j", "list", "counter", "netdev", SINK,
                                    "arrived").stdout)
        total += sum(int(item["counter"]["packets"]) for item in listed["nftables"]
                     if "counter" in item)
    return total


def _settled(lab: Any, namespaces: Sequence[str]) -> int:
    """The arrivals once two reads agree (the softirq may lag the last send a little)."""
    seen = _arrived(lab, namespaces)
    for _ in range(40):
        time.sleep(0.05)
        now = _arrived(lab, namespaces)
        if now == seen:
            break
        seen = now
    return seen


def run_kernel(settings: NaasNatSettings, traffic: Traffic,
               status: Callable[[str], None]) -> list[dict[str, Any]]:
    from bench.nftables import Sender, frames
    from portico.lab import Lab
    from portico.services.naas.nftables import NftablesBackend, unavailable

    reason = unavailable()
    if reason is None:
        for command in ("ip", "ethtool"):
            if subprocess.run(["which", command], capture_output=True, check=False).returncode:
                reason = f"{command} is missing"
    if reason is not None:
        return [{"name": "naas-nat", "contender": contender, "pps": None, "reason": reason}
                for contender in ("nftables", "kernel routing")]
    mac = {name: bytes.fromhex(value.replace(":", "")) for name, value in MACS.items()}
    meta = traffic.meta
    inbound = traffic.inbound
    from_a = ~inbound & np.array([traffic.pods[k].startswith(POD_NETS[0] + ".")
                                  for k in traffic.pod_of])
    from_b = ~inbound & ~from_a
    routed = meta.copy()  # routing only: the inbound frames sent to the pods themselves
    routed["dst4"][inbound] = traffic.expected[inbound, 2]
    entries = []
    tag = f"bn{secrets.token_hex(2)}"
    with Lab(kernel_topology(traffic.pods), prefix=tag) as lab:
        for namespace, device in (("outside", "o0"), ("poda", "a0"), ("podb", "b0")):
            lab.run(namespace, "nft", "-f", "-", input=_sink(device))
        kernel = NftablesBackend(namespace=lab.namespace("router"))
        for contender, sent_meta in (("nftables", meta), ("kernel routing", routed)):
            status(f"naas-nat: {contender}")
            if contender == "nftables":
                kernel.apply(make_table(traffic, settings))
            else:
                kernel.remove()
            senders = []
            for namespace, device, rows, to in (("outside", "o0", inbound, "r0"),
                                                ("poda", "a0", from_a, "ra"),
                                                ("podb", "b0", from_b, "rb")):
                with lab.inside(namespace):
                    senders.append(Sender(device, frames(sent_meta[rows], mac[to],
                                                         mac[device])))
            try:
                receivers = ("outside", "poda", "podb")
                sent = len(meta)
                for sender in senders:  # warm-up: neighbours resolved, connections made
                    sender.send()
                before = _settled(lab, receivers)
                for sender in senders:  # checked: everything arrives now
                    sender.send()
                warm = _settled(lab, receivers) - before
                if warm < 0.99 * sent:
                    raise MismatchError(f"naas-nat ({contender}): {warm} of {sent} frames "
                                        "arrived in the warm-up pass")
                before = _settled(lab, receivers)
                passes = 0
                began, cpu = time.perf_counter(), time.thread_time()
                while time.perf_counter() - began < settings.kernel_seconds:
                    for sender in senders:
                        sender.send()
                    passes += 1
                wall, cpu = time.perf_counter() - began, time.thread_time() - cpu
                delivered = _settled(lab, receivers) - before
            finally:
                for sender in senders:
                    sender.close()
            entries.append({"name": "naas-nat", "contender": contender, "packets": sent,
                            "sent": passes * sent, "delivered": delivered,
                            "seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
                            "pps": round(delivered / wall), "pps_cpu": round(delivered / cpu),
                            "reason": None})
    return entries


# ---------------------------------------------------------------- the workload
def run_naas_nat(settings: NaasNatSettings = FULL_NAAS_NAT,
                 status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    from bench.nftables import frames as make_frames

    traffic = make_traffic(settings)
    frames = make_frames(traffic.meta)
    entries = run_datapath(settings, traffic, frames, status)
    if settings.kernel:
        entries += run_kernel(settings, traffic, status)
    return entries


def _rate(pps: float) -> str:
    return f"{pps / 1e6:.2f} M" if pps >= 1e6 else f"{pps / 1e3:.0f} k"


def format_naas_nat(entries: Sequence[dict[str, Any]]) -> list[str]:
    rows = [e for e in entries if e["name"] == "naas-nat"]
    if not rows:
        return []
    lines = ["", "naas-nat: port-range NAT, 64 pods sharing one address (blocks of 1000 ports), "
             "half inbound, half outbound, TCP/UDP, 60-byte frames; one CPU; outputs checked",
             f"{'contender':<20}{'batch':>6}{'pps':>11}{'pps (cpu)':>11}{'portnat x':>11}"
             f"{'table':>12}  notes"]
    best = {e["batch"]: e["pps"] for e in rows if e["contender"] == "portnat"}
    reference = next(iter(best.values()), None)
    for e in rows:
        if e["pps"] is None:
            lines.append(f"{e['contender']:<20}  not measured: {e['reason']}")
            continue
        base = best.get(e.get("batch"), reference)
        ratio = f"{base / e['pps']:.2f}" if base else "-"
        batch = str(e.get("batch", "-"))
        cpu = _rate(e["pps_cpu"]) if "pps_cpu" in e else "-"
        table = f"{e['table_bytes'] / 1024:,.0f} KiB" if "table_bytes" in e else "-"
        notes = (f"{e['delivered']:,} of {e['sent']:,} frames delivered in {e['seconds']} s "
                 "(veth, AF_PACKET sender, forwarding included)" if "delivered" in e else "")
        if "bindings" in e:
            notes = f"{e['bindings']:,} bindings"
        lines.append(f"{e['contender']:<20}{batch:>6}{_rate(e['pps']):>11}{cpu:>11}{ratio:>11}"
                     f"{table:>12}  {notes}")
    return lines
