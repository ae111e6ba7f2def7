"""Workloads ``config-apply`` and ``api-writes``: the control plane (issue 5).

Both run the real daemon, ``portico.control.daemon.Daemon``, over a real store,
started as ``portico daemon`` starts it: its watcher thread on (the thread that
follows other writers; it skips the daemon's own commits). The store's files live
under ``/var/tmp`` when it exists (a disk, not a tmpfs: SQLite writes every commit
to its log, etcd fsyncs it), and the report names their filesystem.

* ``config-apply``: from a config change to its effect in the datapath. The
  config is ``examples/two-tenants.yaml`` with tenant a's egress rules grown to
  ``rules`` (``make_document``): a ``probe`` rule (deny UDP from 10.0.0.5 to
  8.8.8.8 at one port), a ``block`` rule (deny to the container ``dst0``), the
  bulk rules over the containers ``inside``, ``src0..3`` and ``dst0..7`` and
  literal prefixes (TCP and UDP to service ports and port ranges, allow and
  deny, distinct ids; none matches the probes' addresses), and the example's
  ``out`` (allow everything from inside) moved last. A change is one
  ``Daemon.apply(document)`` on SQLite: it finds the changed objects, validates
  them and the checks across objects (what validating the whole document would
  say), commits them (durable), and brings the gateway to them before it
  returns, so its wall time is the change's time to effect. Each document is a
  new one, sharing the unchanged parts with the last (as a program editing its
  config would); the daemon may not rely on that (it compares what it stored).
  Three kinds, each a median over ``changes`` changes:

  - ``rule``: the probe rule's destination port moved (applied in place);
  - ``container``: one prefix added to ``dst0`` (used by ``block`` and an
    eighth of the bulk rules; in place);
  - ``recompile``: tenant b's SNAT pool moved to another address (a new
    generation of the tables).

  Each change is checked with packets through ``daemon.gateway.process``
  (Scapy frames from tenant a's host 10.0.0.5 on port 1 VLAN 10, or tenant b's
  on VLAN 20, to their router's MAC; an ARP from each host first): before the
  change (untimed) the packet it is about passes, after it that same packet is
  denied (rule, container), the one the old rule decided passes again (rule),
  and tenant b's packets leave with the new pool address as their source
  (recompile). A packet decided the old way fails the run. ``path`` says how
  the gateway took the change (``in place``: the same table generation;
  ``recompile``: a new one).

* ``api-writes``: API writes per second through real HTTP. uvicorn serves
  ``make_app(daemon, token)`` in a thread of this process (on the bench's pinned
  CPU) on a loopback port; the clients are another process (``client_main``, on the
  other CPUs when there are any: a load generator should not take the server's CPU
  and interpreter, and the API's clients are other programs anyway), each of its
  ``clients`` threads one keep-alive ``http.client`` connection sending ``PUT
  /api/v1/tenants/b``, each tenant b with its ``out`` egress rule's priority flipped
  (10, 11, 10, ...), back to back for ``seconds``. One run per count of clients: one
  client gives the latency of a lone writer, several the rate the server sustains
  (the writes queue in the daemon, which commits them one at a time). Every answer
  must be 200, the revisions answered must be exactly the ones after the initial
  one, one each, the store and the daemon must be at the last of them, and the
  gateway's classifier must hold the priority of the write that got it. Run on
  SQLite and on a real etcd the bench starts (Debian's ``etcd`` on free loopback
  ports, a data directory of its own, killed at the end; not pinned to the bench's
  CPU); without the ``etcd`` binary that row says so and the rest goes on.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workloads import MismatchError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "two-tenants.yaml"
TARGET_APPLY_MS = (10_000, 50.0)  # issue 5: a change in effect <= 50 ms median with 10k rules
TARGET_WRITES = 1_000.0  # issue 5: API writes >= 1,000/s on SQLite (etcd reported beside)
CONTROL_WORKLOADS = ("config-apply", "api-writes")
CHANGE_KINDS = ("rule", "container", "recompile")
CHANGE_TEXT = {"rule": "one rule (its dport)", "container": "a container (+1 prefix)",
               "recompile": "tenant b's SNAT pool"}

# The hosts the checks send from, and the packets' clock.
HOSTS = {"a": ("02:00:00:00:0a:05", "02:00:00:00:0a:01", 10),  # host MAC, router MAC, VLAN
         "b": ("02:00:00:00:0b:05", "02:00:00:00:0b:01", 20)}
HOST_IP, OUTSIDE_IP = "10.0.0.5", "8.8.8.8"
ACCESS_PORT, UPLINK_PORT = 1, 0
PROBE_PORT = 10_000  # the probe rule's first dport; change k moves it to PROBE_PORT + k + 1
START_NS, STEP_NS = 1_000 * 1_000_000_000, 1_000_000
TOKEN = "portico-bench-token"


@dataclass(frozen=True)
class ApplySettings:
    rules: tuple[int, ...] = (1_000, 10_000)  # tenant a's egress rules, one run each
    changes: int = 20  # changes of each kind; the figure is their median
    kinds: tuple[str, ...] = CHANGE_KINDS


@dataclass(frozen=True)
class WritesSettings:
    seconds: float = 2.0  # how long each store is written to, per count of clients
    stores: tuple[str, ...] = ("sqlite", "etcd")
    clients: tuple[int, ...] = (1, 4)  # concurrent connections, one run each
    warmup: int = 10  # untimed writes per connection first (they count in the revision check)
    max_writes: int | None = None  # stop a run sooner (tests)


FULL_APPLY = ApplySettings()
QUICK_APPLY = ApplySettings(changes=5)
FULL_WRITES = WritesSettings()
QUICK_WRITES = WritesSettings(seconds=0.5)


# ---------------------------------------------------------------- the config
def example() -> dict[str, Any]:
    import yaml

    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return document


SERVICES = (22, 25, 53, 80, 110, 123, 143, 389, 443, 445, 587, 993, 1433, 3306, 3389, 5432,
            6379, 8080, 8443, 9200)


def bulk_rule(i: int) -> dict[str, Any]:
    """The i-th bulk rule: containers and literal prefixes, never the probes' addresses
    (sources in 10.0.0.0/24, destinations in 172.16.0.0/13 and 192.168.0.0/16)."""
    sources = ("container:inside", "container:src0", "container:src1", "container:src2",
               "container:src3", f"10.0.0.{i % 256}/32", f"10.0.0.{(i * 16) % 256}/28")
    dst = (f"192.168.{(i // 5) % 256}.{(i * 8) % 256}/29" if i % 5 == 4
           else f"container:dst{i % 8}")
    rule: dict[str, Any] = {"id": f"bulk{i}", "priority": 100 + i,
                            "action": "deny" if i % 4 == 0 else "allow",
                            "src": sources[i % len(sources)], "dst": dst,
                            "protocol": "tcp" if i % 2 else "udp"}
    if i % 3 == 2:
        low = 1024 + (i * 37) % 60_000
        rule["dport"] = f"{low}-{low + 100}"
    else:
        rule["dport"] = SERVICES[i % len(SERVICES)]
    return rule


def make_document(rules: int) -> dict[str, Any]:
    """The example with tenant a holding ``rules`` egress rules (see the module's docstring)."""
    document = example()
    firewall = document["tenants"]["a"]["router"]["firewall"]
    containers = firewall["containers"]
    for k in range(4):
        containers[f"src{k}"] = [f"10.0.0.{64 * k}/26"]
    for k in range(8):
        containers[f"dst{k}"] = [f"172.{16 + k}.{j}.0/24" for j in range(4)]
    (out,) = [rule for rule in firewall["egress"] if rule["id"] == "out"]
    bulk = max(0, rules - 3)
    firewall["egress"] = [
        {"id": "probe", "priority": 5, "action": "deny", "src": f"{HOST_IP}/32",
         "dst": f"{OUTSIDE_IP}/32", "protocol": "udp", "dport": PROBE_PORT},
        {"id": "block", "priority": 6, "action": "deny", "src": "container:inside",
         "dst": "container:dst0"},
        *(bulk_rule(i) for i in range(bulk)),
        {**out, "priority": 100 + bulk + 10},
    ]
    return document


def with_firewall(document: Mapping[str, Any], tenant: str, **fields: Any) -> dict[str, Any]:
    """``document`` with some of ``tenant``'s firewall fields replaced (copies along the
    path only: the rules not changed are shared)."""
    firewall = {**document["tenants"][tenant]["router"]["firewall"], **fields}
    return with_router(document, tenant, firewall=firewall)


def with_router(document: Mapping[str, Any], tenant: str, **fields: Any) -> dict[str, Any]:
    old = document["tenants"][tenant]
    return {**document, "tenants": {**document["tenants"],
                                    tenant: {**old, "router": {**old["router"], **fields}}}}


def rule_change(document: Mapping[str, Any], k: int) -> dict[str, Any]:
    egress = document["tenants"]["a"]["router"]["firewall"]["egress"]
    probe = {**egress[0], "dport": PROBE_PORT + k + 1}
    return with_firewall(document, "a", egress=[probe, *egress[1:]])


def container_change(document: Mapping[str, Any], k: int) -> dict[str, Any]:
    containers = document["tenants"]["a"]["router"]["firewall"]["containers"]
    return with_firewall(document, "a", containers={
        **containers, "dst0": [*containers["dst0"], f"9.9.{k}.0/24"]})


def pool_address(k: int) -> str:
    return f"198.51.100.{30 + k % 200}"


def recompile_change(document: Mapping[str, Any], k: int) -> dict[str, Any]:
    nat = document["tenants"]["b"]["router"]["nat"]
    snat = [{**entry, "pool": [f"{pool_address(k)}/32"]} for entry in nat["snat"]]
    return with_router(document, "b", nat={**nat, "snat": snat})


# ---------------------------------------------------------------- packets
class Probe:
    """Packets through the daemon's gateway, as its port would deliver them."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.now = START_NS
        self.sport = 20_000
        self.sent = 0

    def _run(self, frame: bytes) -> Any:
        from portico.batch import Batch

        batch = Batch.from_packets([frame], port=ACCESS_PORT)
        self.now += STEP_NS
        batch.meta["timestamp"][:1] = self.now
        with self.daemon.lock:
            self.daemon.gateway.process(batch, self.now)
        self.sent += 1
        return batch

    def hello(self, tenant: str) -> None:
        """An ARP from the tenant's host to its router: the host is known from then on."""
        from scapy.layers.l2 import ARP, Dot1Q, Ether

        mac, _, vlan = HOSTS[tenant]
        self._run(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=vlan)
                        / ARP(op=1, hwsrc=mac, psrc=HOST_IP, pdst="10.0.0.1")))

    def udp(self, tenant: str, dst: str, dport: int) -> tuple[bool, str | None]:
        """One UDP datagram of a new flow from the tenant's host: (left by the uplink,
        its source address as it left)."""
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Dot1Q, Ether

        mac, router, vlan = HOSTS[tenant]
        self.sport += 1
        batch = self._run(bytes(Ether(src=mac, dst=router) / Dot1Q(vlan=vlan)
                                / IP(src=HOST_IP, dst=dst)
                                / UDP(sport=self.sport, dport=dport) / b"probe"))
        meta = batch.meta
        if int(meta["out_port"][0]) != UPLINK_PORT or int(meta["drop"][0]) != 0:
            return False, None
        return True, str(Ether(batch.packet(0))[IP].src)

    def expect(self, tenant: str, dst: str, dport: int, passes: bool, what: str) -> str | None:
        left, source = self.udp(tenant, dst, dport)
        if left != passes:
            raise MismatchError(f"config-apply: {what}: UDP {HOST_IP} -> {dst}:{dport} from "
                                f"tenant {tenant} {'was dropped' if passes else 'passed'}")
        return source


# ---------------------------------------------------------------- config-apply
def _disk_dir() -> str | None:
    """Where the stores' files go: /var/tmp (a disk by convention) when writable."""
    return "/var/tmp" if os.access("/var/tmp", os.W_OK) else None


def filesystem(path: str | Path) -> str | None:
    """The type of the filesystem ``path`` is on (``/proc/mounts``), None if unknown."""
    real = os.path.realpath(path)
    best, kind = "", None
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def timed(call: Callable[[], object]) -> float:
    """Wall seconds of one call, the garbage collector off (as ``bench.timing``)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        began = time.perf_counter()
        call()
        return time.perf_counter() - began
    finally:
        if enabled:
            gc.enable()


def run_config_apply(settings: ApplySettings,
                     status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Time each kind of change at each rule count; every change checked by packets."""
    entries = []
    for rules in settings.rules:
        with tempfile.TemporaryDirectory(prefix="portico-bench-", dir=_disk_dir()) as folder:
            entries += _apply_at(rules, settings, Path(folder), status)
    return entries


def _apply_at(rules: int, settings: ApplySettings, folder: Path,
              status: Callable[[str], None]) -> list[dict[str, Any]]:
    from portico.control.daemon import Daemon
    from portico.control.store import open_store

    status(f"config-apply: a daemon with {rules:,} rules")
    document = make_document(rules)
    began = time.perf_counter()
    daemon = Daemon(open_store(f"sqlite:{folder / 'state.db'}"), initial=document, seed=1)
    start_s = time.perf_counter() - began
    daemon.start_watching()
    entries = []
    try:
        probe = Probe(daemon)
        probe.hello("a")
        probe.hello("b")
        first_revision = daemon.revision
        for kind in settings.kinds:
            status(f"config-apply: {rules:,} rules, {kind} changes")
            seconds, generations, checked = [], 0, 0
            for k in range(settings.changes):
                new = CHANGES[kind](document, k)
                before = _check_before(probe, kind, k)
                generation = daemon.gateway.topology.generation
                seconds.append(timed(functools.partial(daemon.apply, new)))
                generations += daemon.gateway.topology.generation != generation
                checked += before + _check_after(probe, kind, k)
                document = new
            entries.append({
                "name": "config-apply", "rules": rules, "change": kind,
                "changes": settings.changes,
                "median_ms": round(statistics.median(seconds) * 1e3, 2),
                "min_ms": round(min(seconds) * 1e3, 2), "max_ms": round(max(seconds) * 1e3, 2),
                "path": ("recompile" if generations == settings.changes
                         else "in place" if generations == 0 else "mixed"),
                "checked_packets": checked, "daemon_start_s": round(start_s, 2),
                "store": "sqlite", "filesystem": filesystem(folder)})
        _check_revision(daemon, first_revision + settings.changes * len(settings.kinds),
                        "config-apply")
    finally:
        daemon.stop()
    return entries


def _check_before(probe: Probe, kind: str, k: int) -> int:
    """The packet change ``k`` is about, decided the old way; packets checked."""
    if kind == "rule":
        probe.expect("a", OUTSIDE_IP, PROBE_PORT + k + 1, True, f"before rule change {k}")
    elif kind == "container":
        probe.expect("a", f"9.9.{k}.1", 53, True, f"before container change {k}")
    else:
        return 0  # a new pool: checked after, by the source address the packets leave with
    return 1


def _check_after(probe: Probe, kind: str, k: int) -> int:
    """The same packets after change ``k`` returned: decided the new way."""
    if kind == "rule":
        probe.expect("a", OUTSIDE_IP, PROBE_PORT + k + 1, False, f"after rule change {k}")
        probe.expect("a", OUTSIDE_IP, PROBE_PORT + k, True, f"after rule change {k}")
        return 2
    if kind == "container":
        probe.expect("a", f"9.9.{k}.1", 53, False, f"after container change {k}")
        return 1
    source = probe.expect("b", OUTSIDE_IP, 53, True, f"after pool change {k}")
    if source != pool_address(k):
        raise MismatchError(f"config-apply: after pool change {k}, tenant b's packet left "
                            f"from {source}, not the new pool address {pool_address(k)}")
    return 1


CHANGES: dict[str, Callable[[Mapping[str, Any], int], dict[str, Any]]] = {
    "rule": rule_change, "container": container_change, "recompile": recompile_change}


def _check_revision(daemon: Any, want: int, workload: str) -> int:
    stored = daemon.store.read().revision
    if stored != want or daemon.revision != want:
        raise MismatchError(f"{workload}: the store is at revision {stored} and the daemon at "
                            f"{daemon.revision}, not {want}")
    return stored


# ---------------------------------------------------------------- api-writes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def unpinned() -> Iterator[None]:
    """The calling thread on every CPU meanwhile, so that a child it starts (etcd) is not
    confined to the one CPU the bench pinned itself to."""
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except (AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def start_etcd(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """etcd on free loopback ports, healthy; (the process, "127.0.0.1:PORT"). The
    control-plane tests start theirs with this too (``tests/control/conftest.py``)."""
    import httpx

    client, peer = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    log = open(data_dir.with_suffix(".log"), "wb")  # noqa: SIM115 (outlives this function)
    with unpinned():
        proc = subprocess.Popen(
            ["etcd", "--name", "default", "--data-dir", str(data_dir),
             "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"default={peer_url}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{client_url}/health", timeout=0.5).json().get("health") == "true":
                return proc, f"127.0.0.1:{client}"
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    tail = data_dir.with_suffix(".log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"etcd did not become healthy on {client_url}:\n{tail}")


class EtcdUnavailable(RuntimeError):
    """etcd could not be started here (the message says why)."""


@contextlib.contextmanager
def etcd_running(folder: Path) -> Iterator[str]:
    """A running etcd's "HOST:PORT" (three tries: a free port may be taken before etcd
    binds it); killed on the way out. EtcdUnavailable if it never comes up."""
    for attempt in range(3):
        try:
            proc, address = start_etcd(folder / f"etcd{attempt}")
            break
        except (RuntimeError, OSError) as error:
            if attempt == 2:
                said = str(error).strip().splitlines()
                raise EtcdUnavailable(said[0] if said else "etcd did not start") from None
    try:
        yield address
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a loopback port bound here; its base url."""
    import httpx
    import uvicorn

    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # accepted sockets inherit this one's (proto 0 would leave Nagle on: +40 ms an answer).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="portico-bench-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the API did not come up on {base}")
            time.sleep(0.02)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def run_api_writes(settings: WritesSettings,
                   status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Writes per second through the API, on each store and count of clients; each run
    checked."""
    entries: list[dict[str, Any]] = []
    for store in settings.stores:
        with tempfile.TemporaryDirectory(prefix="portico-bench-", dir=_disk_dir()) as folder:
            path = Path(folder)
            if store == "sqlite":
                entries += _writes(f"sqlite:{path / 'state.db'}", "sqlite", settings, status,
                                   filesystem(path))
            elif store == "etcd":
                if shutil.which("etcd") is None:
                    entries.append({"name": "api-writes", "store": "etcd", "writes_per_s": None,
                                    "reason": "etcd is not installed (apt-get install "
                                              "etcd-server)"})
                    continue
                status("api-writes: starting etcd")
                try:
                    with etcd_running(path) as address:
                        version = _etcd_version()
                        entries += [{**entry, "etcd_version": version} for entry in _writes(
                            f"etcd://{address}/portico-bench/", "etcd", settings, status,
                            filesystem(path))]
                except EtcdUnavailable as error:
                    entries.append({"name": "api-writes", "store": "etcd",
                                    "writes_per_s": None, "reason": str(error)})
            else:
                raise ValueError(f"api-writes: {store!r} is not a store (sqlite, etcd)")
    return entries


def _etcd_version() -> str | None:
    try:
        said = subprocess.run(["etcd", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return said[2] if len(said) > 2 else None


def _writes(url: str, store: str, settings: WritesSettings, status: Callable[[str], None],
            fs: str | None) -> list[dict[str, Any]]:
    """One daemon on ``url`` behind the API; a run per count of clients."""
    from portico.control.api import make_app
    from portico.control.daemon import Daemon
    from portico.control.store import open_store

    daemon = Daemon(open_store(url), initial=example(), seed=1)
    daemon.start_watching()
    tenant = example()["tenants"]["b"]
    egress = tenant["router"]["firewall"]["egress"]
    bodies = [with_priority(tenant, egress, priority) for priority in (11, 10)]
    entries = []
    try:
        with serving(make_app(daemon, TOKEN)) as base:
            for clients in settings.clients:
                status(f"api-writes: {store}, {clients} client{'s' * (clients > 1)}")
                initial = daemon.revision
                said = drive(base, bodies, clients, settings)
                entry = _check_writes(daemon, base, said, initial, bodies, f"{store}, "
                                      f"{clients} client{'s' * (clients > 1)}")
                entries.append({"name": "api-writes", "store": store, "clients": clients,
                                **entry, "filesystem": fs, "reason": None})
    finally:
        daemon.stop()
    return entries


def _other_cpus() -> set[int] | None:
    """The CPUs this process is not pinned to (all of them when it is on every one)."""
    try:
        mine = os.sched_getaffinity(0)
    except AttributeError:
        return None
    every = set(range(os.cpu_count() or 1))
    return (every - mine) or every


def drive(base: str, bodies: Sequence[Mapping[str, Any]], clients: int,
          settings: WritesSettings) -> dict[str, Any]:
    """Run the clients (``bench.api_client``, a process of its own on the other CPUs) against
    the API at ``base``; what they were answered."""
    import json
    import sys

    job = {"base": base, "token": TOKEN, "path": "/api/v1/tenants/b", "bodies": list(bodies),
           "clients": clients, "warmup": settings.warmup, "seconds": settings.seconds,
           "max_writes": settings.max_writes}
    proc = subprocess.Popen([sys.executable, "-m", "bench.api_client"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    cpus = _other_cpus()
    if cpus is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(proc.pid, cpus)
    try:
        out, err = proc.communicate(json.dumps(job), timeout=settings.seconds + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"api-writes: the client process failed:\n{err[-2000:]}")
    said: dict[str, Any] = json.loads(out)
    return said


def _check_writes(daemon: Any, base: str, said: Mapping[str, Any], initial: int,
                  bodies: Sequence[Mapping[str, Any]], what: str) -> dict[str, Any]:
    """Check a run's answers against the daemon and the gateway; its figures."""
    import httpx

    from portico.classify.rules import Direction

    if said["failures"]:
        raise MismatchError(f"api-writes ({what}): {said['failures'][0]}")
    answers = said["answers"]
    refused = [a for a in answers if a[0] != 200]
    if refused:
        raise MismatchError(f"api-writes ({what}): a write answered {refused[0][0]} "
                            f"{refused[0][1]}, not 200")
    revisions = sorted(a[1] for a in answers)
    if revisions != list(range(initial + 1, initial + len(answers) + 1)):
        raise MismatchError(f"api-writes ({what}): the {len(answers)} writes were answered "
                            f"revisions {revisions[:3]}...{revisions[-3:]}, not each of "
                            f"{initial + 1}..{initial + len(answers)} once")
    final = _check_revision(daemon, initial + len(answers), f"api-writes ({what})")
    health = httpx.get(f"{base}/healthz", timeout=30).json()
    if health.get("revision") != final:
        raise MismatchError(f"api-writes ({what}): /healthz says revision "
                            f"{health.get('revision')}, not {final}")
    last = max(answers, key=lambda a: a[1])
    rule = bodies[last[2]]["router"]["firewall"]["egress"][0]
    with daemon.lock:
        rules = daemon.gateway.firewalls.tenants[daemon.config.tenants["b"].id].rules
        running = [r.priority for r in rules[Direction.EGRESS].ordered() if r.id == rule["id"]]
    if running != [rule["priority"]]:
        raise MismatchError(f"api-writes ({what}): the gateway's rule {rule['id']!r} has "
                            f"priority {running}, the last write said {rule['priority']}")
    timed = sorted(a[3] for a in answers if a[4])
    seconds = said["seconds"]
    return {"writes": len(timed), "seconds": round(seconds, 3),
            "writes_per_s": round(len(timed) / seconds, 1) if seconds else None,
            "p50_ms": round(percentile(timed, 0.5) * 1e3, 2),
            "p99_ms": round(percentile(timed, 0.99) * 1e3, 2),
            "warmup_writes": len(answers) - len(timed), "initial_revision": initial,
            "final_revision": final, "checked": True}


def with_priority(tenant: Mapping[str, Any], egress: Sequence[Mapping[str, Any]],
                  priority: int) -> dict[str, Any]:
    """Tenant b with its first egress rule at ``priority``."""
    firewall = {**tenant["router"]["firewall"],
                "egress": [{**egress[0], "priority": priority}, *egress[1:]]}
    return {**tenant, "router": {**tenant["router"], "firewall": firewall}}


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted values (nearest rank); 0 for none."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# ---------------------------------------------------------------- reporting
def format_control(entries: Sequence[dict[str, Any]]) -> list[str]:
    return _format_apply(entries) + _format_writes(entries)


def _format_apply(entries: Sequence[dict[str, Any]]) -> list[str]:
    rows = [e for e in entries if e["name"] == "config-apply"]
    if not rows:
        return []
    first = rows[0]
    lines = ["", "config-apply: Daemon.apply of a changed config on SQLite "
             f"({first['filesystem'] or 'unknown filesystem'}), validated, committed and in "
             "effect when it returns; tenant a holds the rules; each change checked by packets "
             "before and after",
             f"{'rules':>8}  {'change':<25}{'path':<11}{'changes':>8}{'median ms':>11}"
             f"{'min ms':>9}{'max ms':>9}{'checked':>9}"]
    for e in rows:
        lines.append(f"{e['rules']:>8,}  {CHANGE_TEXT[e['change']]:<25}{e['path']:<11}"
                     f"{e['changes']:>8}{e['median_ms']:>11.1f}{e['min_ms']:>9.1f}"
                     f"{e['max_ms']:>9.1f}{e['checked_packets']:>9}")
    starts = {e["rules"]: e["daemon_start_s"] for e in rows}
    lines.append("daemon start (store seeded, gateway compiled): " + ", ".join(
        f"{seconds} s at {rules:,} rules" for rules, seconds in starts.items()))
    return lines


def _format_writes(entries: Sequence[dict[str, Any]]) -> list[str]:
    rows = [e for e in entries if e["name"] == "api-writes"]
    if not rows:
        return []
    lines = ["", "api-writes: PUT /api/v1/tenants/b over HTTP, back to back on keep-alive "
             "connections from a client process (uvicorn in a thread of the bench, on its "
             "CPU); each write durable and in effect when answered",
             f"{'store':<8}{'clients':>8}{'writes':>8}{'seconds':>9}{'writes/s':>10}"
             f"{'p50 ms':>8}{'p99 ms':>8}{'revision':>10}  where"]
    for e in rows:
        if e["writes_per_s"] is None:
            lines.append(f"{e['store']:<8}  not measured: {e['reason']}")
            continue
        where = e["filesystem"] or "?"
        if e.get("etcd_version"):
            where = f"etcd {e['etcd_version']}, one member, data on {where}"
        lines.append(f"{e['store']:<8}{e.get('clients', 1):>8}{e['writes']:>8,}"
                     f"{e['seconds']:>9.2f}{e['writes_per_s']:>10,.0f}{e['p50_ms']:>8.2f}"
                     f"{e['p99_ms']:>8.2f}{e['final_revision']:>10}  {where}")
    lines.append("checked: every answer 200, the revisions answered each one after the initial "
                 "once; the store, the daemon and /healthz at the last; the gateway holds the "
                 "write answered last")
    return lines


def control_target_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    rules_target, ms = TARGET_APPLY_MS
    applied = [e for e in entries if e["name"] == "config-apply" and e["change"] == "rule"]
    if applied:
        e = max(applied, key=lambda e: e["rules"])
        here = "" if e["rules"] == rules_target else f" ({e['rules']:,} here)"
        lines.append(f"config-apply <= {ms:g} ms median from a change to its effect with "
                     f"{rules_target:,} rules{here}: {e['median_ms']:.1f} ms, "
                     f"{'met' if e['median_ms'] <= ms else 'MISSED'}")
    # Per store, the run that wrote fastest (the rate the server sustains).
    writes: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["name"] == "api-writes":
            best = writes.get(e["store"])
            if best is None or (best["writes_per_s"] or 0) < (e["writes_per_s"] or 0):
                writes[e["store"]] = e
    if writes:
        sqlite = writes.get("sqlite")
        if sqlite is not None and sqlite["writes_per_s"] is not None:
            got = sqlite["writes_per_s"]
            text = (f"{got:,.0f}/s{_clients_text(sqlite)}, "
                    f"{'met' if got >= TARGET_WRITES else 'MISSED'}")
        else:
            text = "not measured"
        etcd = writes.get("etcd")
        if etcd is None:
            beside = "not run"
        elif etcd["writes_per_s"] is None:
            beside = f"not measured ({etcd['reason']})"
        else:
            beside = f"{etcd['writes_per_s']:,.0f}/s{_clients_text(etcd)}"
        lines.append(f"api-writes >= {TARGET_WRITES:,.0f}/s on SQLite: {text}; "
                     f"on etcd beside it: {beside}")
    return lines


def _clients_text(entry: Mapping[str, Any]) -> str:
    clients = entry.get("clients")
    return "" if clients is None else f" ({clients} client{'s' * (clients > 1)})"
