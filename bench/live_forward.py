"""Workload ``live-forward``: forwarding on live ports, Portico beside the kernel (issue 6).

The issue's figures, measured side by side in one run: a C generator
(``bench/live_gen.c``) in a ``client`` namespace offers 60-byte IPv4/UDP
frames of ``flows`` distinct flows (UDP source ports 10000..10000+flows-1)
as fast as one CPU can send them; a ``gw`` namespace forwards them to a
``server`` namespace, whose kernel counts what arrives. The contenders in
``gw``:

* ``kernel``: plain IPv4 routing (``ip_forward=1``);
* ``nftables``: the same plus an nftables masquerade on the server side
  (SNAT, so conntrack tracks every flow);
* ``portico``: ``portico up`` as a process, a config derived from
  ``tests/test_up.py``'s: one tenant port and an uplink, SNAT of the tenant's
  10.0.0.0/24 to 198.51.100.10, an egress allow rule and a default-deny
  ingress rule in the firewall;
* ``portico-nice``: ``portico`` with the kernel's receive thread at nice 10
  (see CPUs below);
* ``portico-route``: the same gateway without NAT and firewall, so the
  difference is what those stages cost on the wire;
* ``portico-split``: ``portico`` with the kernel's receive of its frames left
  on the generator's core (see CPUs below).

The lab (``portico.lab``, names with a short random prefix, removed whatever
happens; veth offloads off, as the lab makes them) is ``bench.live``'s shape
with routed addresses::

    client c0 10.0.0.7/24 --- gc [gw] gs --- s0 203.0.113.1/24 server
                      (gw: 10.0.0.1, 203.0.113.2; Portico's config uses the same
                       addresses and MACs, so the generator's frames suit all)

Theory of operation. A trial builds a fresh lab, sets a contender up,
measures, and takes it all down; each contender runs ``repeats`` trials,
interleaved round by round (kernel, nftables, portico, ..., then again), so a
change in the machine's other load falls on every contender alike; the
figures are the medians over the trials. In a trial:

1. Round trip: ``bench.live.round_trips`` (ICMP echo from the client's raw
   socket to the server, one at a time, ``interval`` apart, the server's
   kernel answering), p50 and p99 in ms. This is the low-rate latency the
   issue asks for beside throughput; the five untimed echoes it starts with
   also resolve the gateway's neighbour before the rate test. portico-route
   has none: without NAT the provider has no route back to the tenant's
   inside addresses, so only the untimed echoes go (they still resolve).
2. Rate: the generator runs ``seconds``; ``offered_pps`` is what it handed to
   its veth (its own count and clock), ``delivered_pps`` the growth of the
   server interface's ``rx_packets`` (the kernel's counter, read from
   ``/sys/class/net``, 0.3 s after the generator stopped, over the
   generator's time), ``loss`` the part of the offered frames that did not
   arrive (``gw_rx``, the gw end's own receive counter, says whether they
   were lost on the way into gw or inside it). The server drops the
   generator's datagrams at its netdev ingress hook after its interface
   counted them, so its stack neither works on them nor answers with ICMP
   errors, and counts them there by source address: every contender's
   datagrams must arrive from the source it claims to make (the client's
   address, gw's masquerade address, Portico's SNAT address), or the run
   fails (``MismatchError``). A veth receiving through NAPI pushes back on
   a full receive ring: the generator's sendmmsg then gets ENOBUFS and
   retries (``backpressure_retries``), so a forwarder that keeps up with its
   ring shows as a lower offered rate, not as loss; one that does not (a
   user-space ring overflowing behind the NAPI thread) shows as loss.

CPUs. The generator pins itself to ``generator_cpu`` (sched_setaffinity),
the gateway gets ``gateway_cpu`` (the other one of a 2-core machine):

* the gw namespace's receive: a veth receives through NAPI only with GRO on
  (or an XDP program), so the gw end facing the client gets ``gro on`` (its
  checksum and segmentation offloads stay off, and forwarded UDP is not
  merged by GRO); then ``threaded`` NAPI makes that receive a kernel thread,
  which is pinned to the gateway CPU. Where threaded NAPI cannot be had, RPS
  steers the receive to the gateway CPU instead (``gateway_pinning`` says
  which was done).
* kernel and nftables: the gateway *is* that thread: routing, conntrack and
  NAT, the transmit to the server and the server's receive all run in it,
  on the gateway CPU.
* portico and portico-route: ``portico up`` runs under ``taskset`` on the
  gateway CPU, beside the NAPI thread that copies frames into its TPACKET_V3
  ring; the server's receive runs in its ``sendmmsg``. All of the gateway's
  work is on one core, as for the kernel: the like-for-like comparison. The
  two share the core as the scheduler sees fit, and at equal priority the
  NAPI thread, woken for every burst, fills the ring faster than Portico
  empties it: the ring overflows (loss) while Portico gets the smaller share
  (``cpu_share``). portico-nice runs the NAPI thread at nice 10, so Portico
  drains its ring first; the NAPI thread then falls behind, its veth ring
  fills, and the veth pushes back on the generator instead of dropping.
* portico-split: the same process, but gw's veth ends keep the lab's default
  (GRO off, no NAPI), so the kernel's receive of a frame, with the copy into
  Portico's ring, runs in the generator's own softirq on the generator CPU:
  that part of the gateway's cost is borne by the other core (as, presumably,
  in the issue's prototype measurement), and with no NAPI ring there is no
  backpressure: what the generator's softirq cannot keep up with is lost.
* the bench itself moves to the generator CPU while it runs (the harness
  pins it to the last CPU, the gateway's), so the pings and the lab commands
  do not run on the gateway's core. The machine's other work is not pinned
  and shares both cores: the load average around each trial is recorded.

``generator`` (when ``ceiling`` is set, first in each round) is not a
contender: gw drops every frame at the netdev ingress hook of its NAPI
thread, on the gateway CPU, so it says how fast the generator can offer on
this machine when the gateway costs it nothing.

The generator is compiled at bench time (``gcc -O2`` into a temporary
directory); without gcc, or without root (namespaces, AF_PACKET), the
workload is not measured and says why.

Usage: ``python -m bench.live_forward [--quick] [--seconds S] [--repeats N]
[--contender NAME ...] [--json]``, or ``portico bench --workload live-forward``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bench.live import interface_counter, round_trips
from bench.workloads import MismatchError
from portico.lab import Lab, LabError

CONTENDERS = ("kernel", "nftables", "portico", "portico-nice", "portico-route",
              "portico-split")
NAPI_NICE = 10  # portico-nice: the receive thread's nice value
ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(__file__).with_name("live_gen.c")

CLIENT_IP, GW_CLIENT_IP = "10.0.0.7", "10.0.0.1"
SERVER_IP, GW_SERVER_IP = "203.0.113.1", "203.0.113.2"
PUBLIC_IP = "198.51.100.10"  # Portico's SNAT address (nftables masquerades to gw's own)
CLIENT_MAC, GW_CLIENT_MAC = "02:00:00:00:00:77", "02:00:00:00:0a:01"
SERVER_MAC, GW_SERVER_MAC = "02:00:00:00:00:fe", "02:00:00:00:00:01"
DPORT = 9  # discard: the server drops these at its ingress hook, after counting them
API_PORT = 18080  # Portico's API, on the gw namespace's own loopback
SETTLE = 0.3  # seconds after the generator stops before the server's counter is read
START_TIMEOUT = 120.0  # portico up's first start may compile Numba kernels


@dataclass(frozen=True)
class LiveForwardSettings:
    seconds: float = 5.0  # generator run per trial
    repeats: int = 3  # trials per contender; figures are their medians
    contenders: tuple[str, ...] = CONTENDERS
    pings: int = 300  # round trips per trial (0: none)
    interval: float = 0.005  # seconds between pings: a low rate
    flows: int = 1024
    batch: int = 256  # frames per sendmmsg
    ceiling: bool = True  # also measure the generator alone (gw drops at the door)
    cpus: tuple[int, int] | None = None  # (generator, gateway); None: the first and last


FULL_LIVE_FORWARD = LiveForwardSettings()
QUICK_LIVE_FORWARD = LiveForwardSettings(seconds=1.0, repeats=1, pings=50)


class Unavailable(RuntimeError):
    """The workload cannot run here (not root, no gcc, ...): the message says why."""


# ---------------------------------------------------------------- the lab
def topology() -> dict[str, Any]:
    return {
        "name": "lf",
        "namespaces": ["client", "gw", "server"],
        "links": [
            {"name": "gc", "namespace": "gw", "ipv6": False, "mac": GW_CLIENT_MAC,
             "peer": {"name": "c0", "namespace": "client", "ipv6": False,
                      "mac": CLIENT_MAC, "addresses": [f"{CLIENT_IP}/24"]}},
            {"name": "gs", "namespace": "gw", "ipv6": False, "mac": GW_SERVER_MAC,
             "peer": {"name": "s0", "namespace": "server", "ipv6": False,
                      "mac": SERVER_MAC, "addresses": [f"{SERVER_IP}/24"]}},
        ],
        "routes": [
            {"namespace": "client", "to": "default", "via": GW_CLIENT_IP},
            # Back to the client as routed, as masqueraded (on-link) and as Portico's SNAT.
            {"namespace": "server", "to": "10.0.0.0/24", "via": GW_SERVER_IP},
            {"namespace": "server", "to": "198.51.100.0/24", "via": GW_SERVER_IP},
        ],
    }


def _nft(lab: Lab, namespace: str, ruleset: str) -> None:
    lab.run(namespace, "nft", "-f", "-", input=ruleset)


# Who the server sees the generator's datagrams from: the check that each contender did
# what it claims (routed as they are, masqueraded to gw's address, or SNAT to Portico's).
# (Names of nftables counters, which must not be nft keywords such as "snat".)
SOURCES = {"as_sent": CLIENT_IP, "masqueraded": GW_SERVER_IP, "translated": PUBLIC_IP}
# Without NAT the provider has no route back to the tenant's inside addresses, so
# echo replies cannot return through portico-route: it gets no round trips.
NO_WAY_BACK = ("portico-route",)
EXPECTED_SOURCE = {"kernel": "as_sent", "nftables": "masqueraded", "portico": "translated",
                   "portico-nice": "translated", "portico-route": "as_sent",
                   "portico-split": "translated"}


def _sink(lab: Lab) -> None:
    """The server drops the generator's datagrams at ingress (after its interface counted
    them), counting them by source address."""
    lines = ["table netdev sink {", *(f"  counter {name} {{}}" for name in SOURCES),
             "  counter other {}", "  chain s0 {",
             '    type filter hook ingress device "s0" priority 0;']
    lines += [f'    udp dport {DPORT} ip saddr {address} counter name "{name}" drop'
              for name, address in SOURCES.items()]
    lines += [f'    udp dport {DPORT} counter name "other" drop', "  }", "}", ""]
    _nft(lab, "server", "\n".join(lines))


def _sink_counts(lab: Lab) -> dict[str, int]:
    listed = json.loads(lab.run("server", "nft", "-j", "list", "counters", "table", "netdev",
                                "sink").stdout)
    return {item["counter"]["name"]: item["counter"]["packets"]
            for item in listed["nftables"] if "counter" in item}


def _check_sources(name: str, counts: dict[str, int], arrived: int) -> None:
    """MismatchError unless the datagrams the server got came from the expected source."""
    want = EXPECTED_SOURCE.get(name)
    if want is None:
        return
    wrong = {source: n for source, n in counts.items() if source != want and n}
    if wrong or counts.get(want, 0) < arrived * 0.99:  # the interface also counts ARP
        raise MismatchError(f"live-forward: {name}: the server got the generator's datagrams "
                            f"from {counts} (by source), expected all from {want} "
                            f"({SOURCES[want]}); {arrived} arrived")


def _napi_threads() -> dict[int, str]:
    """Kernel threads named ``napi/...``, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name.startswith("napi/"):
                found[int(entry.name)] = name
    return found


def _pin_gw_receive(lab: Lab, interface: str, cpu: int) -> tuple[str, list[int]]:
    """Put the gw namespace's receive on ``interface`` (and what follows it) on ``cpu``.

    Threaded NAPI, its thread pinned, where the kernel allows; RPS otherwise.
    Returns what was done, for the report, and the NAPI threads' pids.
    """
    lab.run("gw", "ethtool", "-K", interface, "gro", "on")  # veth uses NAPI only with GRO
    before = _napi_threads()
    done = lab.run("gw", "sh", "-c", f"echo 1 > /sys/class/net/{interface}/threaded",
                   check=False)
    if done.returncode == 0:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            new = {pid: name for pid, name in _napi_threads().items()
                   if pid not in before and name.startswith(f"napi/{interface}-")}
            if new:
                for pid in new:
                    os.sched_setaffinity(pid, {cpu})
                return (f"threaded NAPI on gw/{interface} (GRO on), thread "
                        f"{', '.join(sorted(new.values()))} pinned to CPU {cpu}", list(new))
            time.sleep(0.05)
    lab.run("gw", "sh", "-c",
            f"echo {1 << cpu:x} > /sys/class/net/{interface}/queues/rx-0/rps_cpus")
    return (f"no threaded NAPI thread appeared ({done.stderr.strip() or 'none made'}); "
            f"RPS steers gw/{interface}'s receive to CPU {cpu}", [])


def _cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU time (user + system) used so far by each role's processes or threads."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for role, members in pids.items():
        total = 0
        for pid in members:
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        used[role] = total / tick
    return used


# ---------------------------------------------------------------- the contenders
@dataclass
class Setup:
    """A contender, up: what was pinned where, and its counters after the trial."""

    description: str
    gateway_pinning: str
    counters: Callable[[], dict[str, Any]] = field(default=lambda: {})
    pids: dict[str, list[int]] = field(default_factory=dict)  # role -> pids, for CPU time


@contextlib.contextmanager
def kernel(lab: Lab, cpu: int, *, masquerade: bool) -> Iterator[Setup]:
    lab.run("gw", "ip", "address", "add", f"{GW_CLIENT_IP}/24", "dev", "gc")
    lab.run("gw", "ip", "address", "add", f"{GW_SERVER_IP}/24", "dev", "gs")
    lab.run("gw", "sysctl", "-qw", "net.ipv4.ip_forward=1")
    description = "ip_forward=1"
    if masquerade:
        _nft(lab, "gw", "table ip bench_nat {\n"
                        "  chain post {\n"
                        "    type nat hook postrouting priority srcnat; policy accept;\n"
                        '    oifname "gs" masquerade\n'
                        "  }\n"
                        "}\n")
        description += ", nftables masquerade out of gs (conntrack)"
    pinning, napi = _pin_gw_receive(lab, "gc", cpu)

    def counters() -> dict[str, Any]:
        found = lab.run("gw", "sh", "-c", "cat /proc/sys/net/netfilter/nf_conntrack_count",
                        check=False)
        return {"conntrack_entries": int(found.stdout)} if found.stdout.strip() else {}

    yield Setup(description, pinning, counters if masquerade else (lambda: {}), {"napi": napi})


def portico_config(*, route_only: bool) -> dict[str, Any]:
    """tests/test_up.py's tenant, cut to one port (and, ``route_only``, to routing)."""
    router: dict[str, Any] = {"interfaces": [{"switch": "lan", "addresses": [f"{GW_CLIENT_IP}/24"],
                                              "mac": GW_CLIENT_MAC}]}
    if not route_only:
        router["nat"] = {"snat": [{"source": "10.0.0.0/24", "pool": [f"{PUBLIC_IP}/32"]}]}
        router["firewall"] = {
            "containers": {"lan": ["10.0.0.0/24"]},
            "egress": [{"id": "out", "priority": 10, "action": "allow", "src": "container:lan"}],
            "ingress": [{"id": "default-in", "priority": 1000, "action": "deny"}]}
    return {
        "ports": {"uplink": {"id": 0}, "a": {"id": 1}},
        "provider": {"router": {
            "uplinks": [{"port": "uplink", "addresses": [f"{GW_SERVER_IP}/24"],
                         "mac": GW_SERVER_MAC}],
            "routes": [{"prefix": "0.0.0.0/0", "via": SERVER_IP}]}},  # resolved on the wire
        "tenants": {"a": {"id": 1, "switches": {"lan": {"attach": [{"port": "a"}]}},
                          "router": router}},
    }


def _api(lab: Lab, path: str, token: str | None = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{API_PORT}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with lab.inside("gw"), urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
        return json.loads(answer.read())


@contextlib.contextmanager
def portico(lab: Lab, cpu: int, folder: Path, *, route_only: bool, split: bool = False,
            napi_nice: int = 0) -> Iterator[Setup]:
    """``portico up`` in gw, pinned to ``cpu``, until the block ends.

    The veth receive into its ring runs in a NAPI thread pinned to ``cpu`` too
    (at ``napi_nice``), or, ``split``, where the lab's default veth runs it: in
    the sender's softirq.
    """
    tag = secrets.token_hex(3)
    config = folder / f"gw-{tag}.yaml"
    config.write_text(yaml.safe_dump(portico_config(route_only=route_only)), encoding="utf-8")
    token = secrets.token_hex(8)
    argv = ["taskset", "-c", str(cpu), *lab.exec_args(
        "gw", sys.executable, "-m", "portico", "up", str(config),
        "--store", f"sqlite:{folder / f'state-{tag}.db'}", "--listen", f"127.0.0.1:{API_PORT}",
        "--bind", "uplink=gs", "--bind", "a=gc")]
    log_path = folder / f"up-{tag}.log"
    pinning, napi = (("the veth receive into its ring left where the lab's default veth "
                      "does it (GRO off, no NAPI): in the generator's softirq, on the "
                      "generator's CPU", []) if split else _pin_gw_receive(lab, "gc", cpu))
    if napi and napi_nice:
        for pid in napi:
            os.setpriority(os.PRIO_PROCESS, pid, napi_nice)
        pinning += f", at nice {napi_nice}"
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PORTICO_TOKEN": token,
                                     "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"portico up exited ({proc.returncode}):\n"
                                       + log_path.read_text()[-2000:])
                with contextlib.suppress(OSError):
                    if _api(lab, "/healthz").get("status") == "ok":
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"portico up did not answer in {START_TIMEOUT:g} s:\n"
                                       + log_path.read_text()[-2000:])
                time.sleep(0.2)

            def counters() -> dict[str, Any]:
                stats = _api(lab, "/api/v1/stats", token)
                live = stats.get("live", {})
                return {"datapath": stats.get("datapath", {}),
                        "live": {k: v for k, v in live.items()
                                 if k in ("turns", "received", "sent", "errors", "no_port")
                                 or "kernel_drops" in k}}

            stages = "routing" if route_only else "routing, SNAT, firewall (egress allow)"
            yield Setup(f"portico up, {stages} (answered in {time.monotonic() - started:.1f} s)",
                        f"taskset -c {cpu} (the whole process, API thread included); "
                        f"{pinning}", counters,
                        {"napi": napi, "portico": [proc.pid]} if napi else {"portico": [proc.pid]})
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)


@contextlib.contextmanager
def door_closed(lab: Lab, cpu: int) -> Iterator[Setup]:
    """Not a contender: gw drops every frame as it arrives (the generator's ceiling)."""
    _nft(lab, "gw", "table netdev door {\n"
                    "  chain gc {\n"
                    '    type filter hook ingress device "gc" priority 0; policy drop;\n'
                    "  }\n"
                    "}\n")
    pinning, napi = _pin_gw_receive(lab, "gc", cpu)
    yield Setup("gw drops every frame at gc's netdev ingress hook", pinning,
                pids={"napi": napi})


def contender(name: str, lab: Lab, cpu: int,
              folder: Path) -> contextlib.AbstractContextManager[Setup]:
    """The set-up of contender ``name`` (or of ``generator``, the ceiling), as a context."""
    if name == "kernel":
        return kernel(lab, cpu, masquerade=False)
    if name == "nftables":
        return kernel(lab, cpu, masquerade=True)
    if name == "portico":
        return portico(lab, cpu, folder, route_only=False)
    if name == "portico-nice":
        return portico(lab, cpu, folder, route_only=False, napi_nice=NAPI_NICE)
    if name == "portico-route":
        return portico(lab, cpu, folder, route_only=True)
    if name == "portico-split":
        return portico(lab, cpu, folder, route_only=False, split=True)
    if name == "generator":
        return door_closed(lab, cpu)
    raise ValueError(f"no contender {name!r} (known: {', '.join(CONTENDERS)}, generator)")


# ---------------------------------------------------------------- measuring
def compile_generator(folder: Path) -> Path:
    """``bench/live_gen.c`` built with ``gcc -O2`` into ``folder``; Unavailable without gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise Unavailable("gcc not found: the C generator bench/live_gen.c is compiled at "
                          "bench time (apt-get install gcc)")
    binary = folder / "live_gen"
    done = subprocess.run([gcc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise Unavailable(f"gcc could not build {SOURCE.name}:\n{done.stderr.strip()}")
    return binary


def generate(lab: Lab, binary: Path, settings: LiveForwardSettings, cpu: int) -> dict[str, Any]:
    """Run the generator in the client namespace; its JSON report."""
    argv = lab.exec_args("client", str(binary), "-i", "c0", "-d", GW_CLIENT_MAC,
                         "-s", CLIENT_MAC, "-S", CLIENT_IP, "-D", SERVER_IP,
                         "-p", str(DPORT), "-f", str(settings.flows), "-t", str(settings.seconds),
                         "-b", str(settings.batch), "-c", str(cpu))
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=settings.seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"live_gen failed ({done.returncode}): {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def trial(name: str, settings: LiveForwardSettings, binary: Path, folder: Path,
          cpus: tuple[int, int]) -> dict[str, Any]:
    """One contender, once, in a lab of its own."""
    generator_cpu, gateway_cpu = cpus
    load_before = _load()
    with Lab(topology(), prefix="lf" + secrets.token_hex(2)) as lab:
        _sink(lab)
        with contender(name, lab, gateway_cpu, folder) as setup:
            times: list[float] = []
            if name in NO_WAY_BACK:  # the untimed echoes only: they resolve the neighbour
                round_trips(lab, pings=0, interval=0, target=SERVER_IP, timeout=0.05)
            elif name != "generator":
                times = round_trips(lab, pings=settings.pings, interval=settings.interval,
                                    target=SERVER_IP)
            before = interface_counter(lab, "server", "s0", "rx_packets")
            entered = interface_counter(lab, "gw", "gc", "rx_packets")
            cpu_before = _cpu_seconds(setup.pids)
            sent = generate(lab, binary, settings, generator_cpu)
            cpu_used = {role: round(spent - cpu_before[role], 2)
                        for role, spent in _cpu_seconds(setup.pids).items()}
            time.sleep(SETTLE)
            arrived = interface_counter(lab, "server", "s0", "rx_packets") - before
            entered = interface_counter(lab, "gw", "gc", "rx_packets") - entered
            by_source = _sink_counts(lab)
            counters = setup.counters()
    _check_sources(name, by_source, arrived)
    seconds = sent["seconds"]
    result: dict[str, Any] = {
        "offered_pps": round(sent["sent"] / seconds), "delivered_pps": round(arrived / seconds),
        "sent": sent["sent"], "gw_rx": entered, "arrived": arrived, "by_source": by_source,
        "seconds": round(seconds, 3),
        # max: the server's counter also counts the odd ARP frame.
        "loss": round(max(0.0, 1 - arrived / sent["sent"]), 4) if sent["sent"] else None,
        # CPU seconds the gateway's parts used while the generator ran (a process
        # counts all its threads).
        "cpu_seconds": cpu_used,
        "backpressure_retries": sent["errors"], "pings": len(times),
        "load_before": load_before, "load_after": _load(),
        "setup": setup.description, "gateway_pinning": setup.gateway_pinning}
    if times:
        ordered = sorted(times)
        result.update(rtt_p50_ms=round(statistics.median(ordered), 4),
                      rtt_p99_ms=round(_percentile(ordered, 0.99), 4))
    if counters:
        result["counters"] = counters
    return result


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _summary(name: str, trials: list[dict[str, Any]], settings: LiveForwardSettings,
             cpus: tuple[int, int]) -> dict[str, Any]:
    def med(key: str) -> float | None:
        return _median([t.get(key) for t in trials])

    loads = [t[k] for t in trials for k in ("load_before", "load_after")]
    delivered = med("delivered_pps")
    return {
        "name": "live-forward", "contender": name, "reason": None,
        "offered_pps": round(med("offered_pps") or 0),
        "delivered_pps": None if name == "generator" else round(delivered or 0),
        "loss": None if name == "generator" else med("loss"),
        "rtt_p50_ms": med("rtt_p50_ms"), "rtt_p99_ms": med("rtt_p99_ms"),
        "repeats": len(trials), "seconds": settings.seconds, "flows": settings.flows,
        "frame_bytes": 60, "generator_cpu": cpus[0], "gateway_cpu": cpus[1],
        "setup": trials[0]["setup"], "gateway_pinning": trials[0]["gateway_pinning"],
        "load_range": [min(loads), max(loads)],
        # Of the gateway CPU's time, how much each part took while the generator ran.
        "cpu_share": {role: round(statistics.median(t["cpu_seconds"][role] / t["seconds"]
                                                    for t in trials), 2)
                      for role in trials[0]["cpu_seconds"]},
        "trials": trials,
    }


def _not_measured(reason: str, name: str | None = None) -> dict[str, Any]:
    return {"name": "live-forward", "contender": name, "reason": reason}


def _cpus(settings: LiveForwardSettings) -> tuple[int, int]:
    if settings.cpus is not None:
        return settings.cpus
    allowed = list(range(os.cpu_count() or 1))
    return allowed[0], allowed[-1]


def run_live_forward(settings: LiveForwardSettings,
                     status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Every contender ``repeats`` times, round by round; one entry per contender.

    Unavailable (not root, no gcc) gives a single entry with the ``reason``; a
    contender that fails gives its entry a ``reason`` and the others go on.
    """
    if os.geteuid() != 0:
        return [_not_measured("needs root: network namespaces, veth pairs, AF_PACKET")]
    missing = [tool for tool in ("ip", "nft", "ethtool", "taskset") if shutil.which(tool) is None]
    if missing:
        return [_not_measured(f"needs {', '.join(missing)} (not found)")]
    cpus = _cpus(settings)
    names = (("generator",) if settings.ceiling else ()) + tuple(settings.contenders)
    affinity = os.sched_getaffinity(0)
    trials: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="portico-live-forward-") as scratch:
        folder = Path(scratch)
        try:
            binary = compile_generator(folder)
        except Unavailable as error:
            return [_not_measured(str(error))]
        # Off the gateway's core: the harness pinned the bench to the last CPU.
        os.sched_setaffinity(0, {cpus[0]})
        try:
            for round_ in range(settings.repeats):
                for name in names:
                    if name in failed:
                        continue
                    status(f"live-forward: {name}, round {round_ + 1} of {settings.repeats}")
                    try:
                        trials[name].append(trial(name, settings, binary, folder, cpus))
                    except (LabError, RuntimeError, OSError, subprocess.SubprocessError,
                            ValueError) as error:
                        failed[name] = f"{type(error).__name__}: {error}"
        finally:
            os.sched_setaffinity(0, affinity)
    entries = [_not_measured(failed[name], name) if name in failed
               else _summary(name, trials[name], settings, cpus) for name in names]
    reference = next((e for e in entries if e["contender"] == "kernel" and not e["reason"]), None)
    for entry in entries:
        if entry["reason"] or entry["delivered_pps"] is None or reference is None:
            continue
        entry["x_kernel"] = round(entry["delivered_pps"] / max(reference["delivered_pps"], 1), 3)
        if entry["rtt_p50_ms"] and reference["rtt_p50_ms"]:
            entry["rtt_p50_x_kernel"] = round(entry["rtt_p50_ms"] / reference["rtt_p50_ms"], 2)
    return entries


# ---------------------------------------------------------------- reporting
def _mpps(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.3f} M"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_live_forward(entries: Sequence[dict[str, Any]]) -> list[str]:
    mine = [e for e in entries if e.get("name") == "live-forward"]
    if not mine:
        return []
    measured = [e for e in mine if not e["reason"]]
    if not measured:
        return ["", f"live-forward: not measured: {mine[0]['reason']}"]
    first = measured[0]
    loads = [x for e in measured for x in e["load_range"]]
    lines = ["", f"live-forward (issue 6): {first['frame_bytes']}-byte UDP, {first['flows']} "
             f"flows, client -> gw -> server namespaces; generator on CPU "
             f"{first['generator_cpu']}, gateway on CPU {first['gateway_cpu']}; median of "
             f"{first['repeats']} x {first['seconds']:g} s; load average "
             f"{min(loads):.2f}-{max(loads):.2f}",
             f"{'contender':<15}{'offered':>11}{'delivered':>11}{'loss':>8}{'x kernel':>10}"
             f"{'RTT p50':>9}{'p99 ms':>9}{'x kernel':>10}"]
    for e in mine:
        if e["reason"]:
            lines.append(f"{e['contender'] or '':<15}not measured: {e['reason']}")
            continue
        loss = "-" if e["loss"] is None else f"{e['loss'] * 100:.1f}%"
        ratio = f"{e['x_kernel']:.2f}" if "x_kernel" in e else "-"
        rtt_ratio = f"{e['rtt_p50_x_kernel']:.1f}" if "rtt_p50_x_kernel" in e else "-"
        lines.append(f"{e['contender']:<15}{_mpps(e['offered_pps']):>11}"
                     f"{_mpps(e['delivered_pps']):>11}{loss:>8}{ratio:>10}"
                     f"{_ms(e['rtt_p50_ms']):>9}{_ms(e['rtt_p99_ms']):>9}{rtt_ratio:>10}")
    lines.append("offered: what the generator handed its veth; delivered: the server's "
                 "rx_packets; generator: gw drops at the door (the offer's ceiling)")
    for e in measured:
        share = ", ".join(f"{role} {value:.0%}" for role, value in e["cpu_share"].items())
        lines.append(f"  {e['contender']}: {e['setup']}; gateway: {e['gateway_pinning']}"
                     + (f"; CPU while sending: {share}" if share else ""))
    return lines


# ---------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live_forward",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 trial of 1 s per contender")
    parser.add_argument("--seconds", type=float, help="generator run per trial")
    parser.add_argument("--repeats", type=int, help="trials per contender")
    parser.add_argument("--pings", type=int, help="round trips per trial (0: none)")
    parser.add_argument("--contender", action="append", choices=CONTENDERS)
    parser.add_argument("--no-ceiling", action="store_true",
                        help="skip the generator-alone measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    settings = QUICK_LIVE_FORWARD if args.quick else FULL_LIVE_FORWARD
    changes: dict[str, Any] = {}
    for key in ("seconds", "repeats", "pings"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.contender:
        changes["contenders"] = tuple(dict.fromkeys(args.contender))
    if args.no_ceiling:
        changes["ceiling"] = False
    entries = run_live_forward(replace(settings, **changes),
                               lambda text: print(text, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({"workloads": entries}, indent=2))
    else:
        print("\n".join(format_live_forward(entries)).lstrip("\n"))
    return 1 if any(e["reason"] for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
