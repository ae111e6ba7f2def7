"""Workload ``naas-alloc``: NaaS allocations per second, on SQLite and on etcd (issue 7).

Each run fills a fresh store (a new SQLite file under ``/var/tmp`` when it
exists, a disk and not a tmpfs, since SQLite fsyncs every claim; a new key
prefix on a real etcd the bench starts, Debian's ``etcd`` on free loopback
ports, killed at the end) from one pool, ``10.96.0.0/22`` cut into blocks of
1024 ports (1,021 addresses x 63 blocks = 64,323 slots, more than any run
takes). Every allocation is one claim, durable when answered (SQLite: its
transaction's WAL fsynced; etcd: its transaction in the raft log). The ways
in, each timed for ``seconds`` after ``warmup`` untimed claims:

* ``direct``: ``Allocator.allocate`` called in a loop in this process;
* ``direct x4``: four threads sharing one allocator (SQLite serializes them on
  its write lock; etcd takes their round trips side by side);
* ``socket``: ``PUT /v1/allocations/{container}/eth0`` over the daemon's Unix
  socket (uvicorn in a thread, one httpx client): what a CNI call costs
  without the process;
* ``portico-cni``: the plugin itself, a new process per ADD with the CNI_*
  environment, as a runtime runs it (``cni_calls`` calls, not timed by
  ``seconds``): Python's start-up dominates.

Every run checks itself: each answer is a new allocation for its container;
the store then holds exactly the allocations answered (container, address,
block, id); no two share a port (by port runs, not slot numbers); and
releasing the timed ones (timed too: ``releases_per_s``) leaves only the
warm-up's. A mismatch fails the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.control import EtcdUnavailable, etcd_running, filesystem
from bench.workloads import MismatchError

POOL = "bench=10.96.0.0/22"
BLOCK_SIZE = 1024
PATHS = ("direct", "direct x4", "socket", "portico-cni")


def disk_dir() -> str | None:
    """Where SQLite files go: /var/tmp (a disk by convention) when writable."""
    return "/var/tmp" if os.access("/var/tmp", os.W_OK) else None


def etcd_version() -> str | None:
    try:
        said = subprocess.run(["etcd", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return said[2] if len(said) > 2 else None


@dataclass(frozen=True)
class NaasSettings:
    seconds: float = 2.0  # timed per store and way in
    stores: tuple[str, ...] = ("sqlite", "etcd")
    paths: tuple[str, ...] = PATHS
    warmup: int = 10
    cni_calls: int = 20  # portico-cni processes per store
    max_allocations: int | None = None  # stop sooner (tests)


FULL_NAAS = NaasSettings()
QUICK_NAAS = NaasSettings(seconds=0.5, cni_calls=5)


def run_naas_alloc(settings: NaasSettings,
                   status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Allocations per second on each store, each way in; each run checked."""
    entries = []
    for store in settings.stores:
        with tempfile.TemporaryDirectory(prefix="portico-bench-naas-", dir=disk_dir()) as tmp:
            folder = Path(tmp)
            if store == "sqlite":
                for n, path in enumerate(settings.paths):
                    entries.append(_run(f"sqlite:{folder / f'naas{n}.db'}", store, path,
                                        settings, folder, status))
            elif store == "etcd":
                if shutil.which("etcd") is None:
                    entries.append(_unmeasured(store, "etcd is not installed (apt-get install "
                                                      "etcd-server)"))
                    continue
                status("naas-alloc: starting etcd")
                try:
                    with etcd_running(folder) as address:
                        version = etcd_version()
                        for n, path in enumerate(settings.paths):
                            entry = _run(f"etcd://{address}/portico-bench-naas-{n}/", store,
                                         path, settings, folder, status)
                            entry["etcd_version"] = version
                            entries.append(entry)
                except EtcdUnavailable as error:
                    entries.append(_unmeasured(store, str(error)))
            else:
                raise ValueError(f"naas-alloc: {store!r} is not a store (sqlite, etcd)")
    return entries


def _unmeasured(store: str, reason: str) -> dict[str, Any]:
    return {"name": "naas-alloc", "store": store, "path": None, "allocs_per_s": None,
            "reason": reason}


# ---------------------------------------------------------------- the ways in
Ask = Callable[[str], dict[str, Any]]  # container -> the allocation's JSON (to_json)
Release = Callable[[str], None]


@contextlib.contextmanager
def _way_in(path: str, allocator: Any, folder: Path) -> Iterator[tuple[Ask, Release, int]]:
    """How ``path`` asks and releases, and how many threads ask at once."""
    if path in ("direct", "direct x4"):
        def ask(container: str) -> dict[str, Any]:
            allocation, created = allocator.allocate(pool="bench", container_id=container)
            if not created:
                raise MismatchError(f"naas-alloc: {container} was not a new allocation")
            result: dict[str, Any] = allocation.to_json()
            return result

        def release(container: str) -> None:
            allocator.release(container)

        yield ask, release, 4 if path == "direct x4" else 1
    elif path == "socket":
        import httpx

        from portico.services.naas.server import serving

        with serving(allocator, folder / "naas.sock") as socket_path, httpx.Client(
                transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://naas",
                timeout=30) as client:
            def ask_api(container: str) -> dict[str, Any]:
                answer = client.put(f"/v1/allocations/{container}/eth0", json={"pool": "bench"})
                if answer.status_code != 201:
                    raise MismatchError(f"naas-alloc: PUT for {container} answered "
                                        f"{answer.status_code} {answer.text[:200]}")
                result: dict[str, Any] = answer.json()["allocation"]
                return result

            def release_api(container: str) -> None:
                client.delete(f"/v1/allocations/{container}").raise_for_status()

            yield ask_api, release_api, 1
    elif path == "portico-cni":
        from portico.services.naas.server import serving

        with serving(allocator, folder / "naas.sock") as socket_path:
            plugin = folder / "portico-cni"
            plugin.write_text(f"#!{sys.executable}\nimport sys\n"
                              "from portico.services.naas.cni import main\nsys.exit(main())\n")
            plugin.chmod(0o755)
            network = json.dumps({"cniVersion": "1.1.0", "name": "bench", "type": "portico-cni",
                                  "socket": str(socket_path), "pool": "bench"}).encode()

            def cni(command: str, container: str) -> dict[str, Any] | None:
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
                       "CNI_CONTAINERID": container, "CNI_NETNS": "/var/run/netns/bench",
                       "CNI_IFNAME": "eth0", "CNI_PATH": str(folder)}
                run = subprocess.run([str(plugin)], input=network, env=env,
                                     capture_output=True, timeout=60)
                out = run.stdout.decode().strip()
                if run.returncode != 0:
                    raise MismatchError(f"naas-alloc: portico-cni {command} {container} failed: "
                                        f"{out or run.stderr.decode()[-300:]}")
                return json.loads(out) if out else None

            def ask_cni(container: str) -> dict[str, Any]:
                result = cni("ADD", container)
                if result is None:
                    raise MismatchError(f"naas-alloc: portico-cni ADD {container}: no result")
                found = allocator.get(container)
                if found is None or result["portico"]["allocation"] != found.id:
                    raise MismatchError(f"naas-alloc: portico-cni ADD {container} answered "
                                        f"{result}, the store holds {found}")
                answer: dict[str, Any] = found.to_json()
                return answer

            def release_cni(container: str) -> None:
                cni("DEL", container)

            yield ask_cni, release_cni, 1
    else:
        raise ValueError(f"naas-alloc: {path!r} is not a way in ({', '.join(PATHS)})")


# ---------------------------------------------------------------- a run
def _run(url: str, store: str, path: str, settings: NaasSettings, folder: Path,
         status: Callable[[str], None]) -> dict[str, Any]:
    from portico.services.naas.allocator import open_allocator
    from portico.services.naas.pools import BlockLayout, parse_pool

    status(f"naas-alloc: {store}, {path}")
    pool = parse_pool(POOL, BlockLayout(BLOCK_SIZE))
    allocator = open_allocator(url, [pool])
    answered: dict[str, dict[str, Any]] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    try:
        with _way_in(path, allocator, folder) as (ask, release, threads):
            for n in range(settings.warmup):
                answered[f"warm-{n}"] = ask(f"warm-{n}")
            limit = settings.cni_calls if path == "portico-cni" else settings.max_allocations
            seconds = None if path == "portico-cni" else settings.seconds
            timed = _ask_timed(ask, threads, seconds, limit, answered, latencies, lock)
            elapsed, count = timed
            _check(allocator, answered, f"{store}, {path}")
            began = time.perf_counter()
            for container in [c for c in answered if not c.startswith("warm-")]:
                release(container)
            released_in = time.perf_counter() - began
            left = {a.owner.container_id for a in allocator.allocations()}
            if left != {f"warm-{n}" for n in range(settings.warmup)}:
                raise MismatchError(f"naas-alloc ({store}, {path}): after the releases the "
                                    f"store holds {len(left)} allocations, not the "
                                    f"{settings.warmup} of the warm-up")
    finally:
        allocator.close()
    ordered = sorted(latencies)
    return {"name": "naas-alloc", "store": store, "path": path, "threads": threads,
            "allocations": count, "seconds": round(elapsed, 3),
            "allocs_per_s": round(count / elapsed, 1) if elapsed else None,
            "p50_ms": round(statistics.median(ordered) * 1e3, 2) if ordered else None,
            "p99_ms": round(_percentile(ordered, 0.99) * 1e3, 2) if ordered else None,
            "releases_per_s": round(count / released_in, 1) if released_in else None,
            "pool_slots": pool.slots, "filesystem": filesystem(folder), "checked": True,
            "reason": None}


def _ask_timed(ask: Ask, threads: int, seconds: float | None, limit: int | None,
               answered: dict[str, dict[str, Any]], latencies: list[float],
               lock: threading.Lock) -> tuple[float, int]:
    """Ask from ``threads`` threads until ``seconds`` pass or ``limit`` answers; (elapsed,
    answers)."""
    counter = iter(range(10**9))
    errors: list[BaseException] = []
    began = time.perf_counter()

    def worker() -> None:
        while not errors:
            with lock:
                n = next(counter)
            if limit is not None and n >= limit:
                return
            if seconds is not None and time.perf_counter() - began >= seconds:
                return
            container = f"b-{n}"
            start = time.perf_counter()
            try:
                allocation = ask(container)
            except BaseException as error:  # noqa: BLE001 (re-raised below)
                errors.append(error)
                return
            with lock:
                latencies.append(time.perf_counter() - start)
                answered[container] = allocation

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return elapsed, len(latencies)


def _check(allocator: Any, answered: dict[str, dict[str, Any]], where: str) -> None:
    """The store holds exactly what was answered, and no two allocations share a port."""
    stored = {a.owner.container_id: a for a in allocator.allocations()}
    if set(stored) != set(answered):
        raise MismatchError(f"naas-alloc ({where}): the store holds {len(stored)} allocations, "
                            f"{len(answered)} were answered")
    runs_by_address: dict[str, list[tuple[int, int]]] = {}
    for container, answer in answered.items():
        held = stored[container]
        if (str(held.address), held.block, held.id) != (answer["address"], answer["block"],
                                                        answer["id"]):
            raise MismatchError(f"naas-alloc ({where}): {container} was answered {answer}, "
                                f"the store holds {held}")
        runs_by_address.setdefault(answer["address"], []).extend(
            tuple(run) for run in answer["ports"]["ranges"])
    for address, runs in runs_by_address.items():
        runs.sort()
        for (_, last), (first, _) in zip(runs, runs[1:], strict=False):
            if first <= last:
                raise MismatchError(f"naas-alloc ({where}): two allocations of {address} "
                                    f"share port {first}")


def _percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


# ---------------------------------------------------------------- reporting
def format_naas(entries: Sequence[dict[str, Any]]) -> list[str]:
    rows = [e for e in entries if e["name"] == "naas-alloc"]
    if not rows:
        return []
    network = POOL.partition("=")[2]
    lines = ["", f"naas-alloc: NaaS allocations per second, pool {network} in blocks of "
             f"{BLOCK_SIZE} ports; each durable when answered; each run checked (the store "
             "holds what was answered, no port shared, releases leave nothing)",
             f"{'store':<8}{'way in':<13}{'allocs':>8}{'seconds':>9}{'allocs/s':>10}"
             f"{'p50 ms':>9}{'p99 ms':>9}{'releases/s':>12}  where"]
    for e in rows:
        if e["allocs_per_s"] is None:
            lines.append(f"{e['store']:<8}  not measured: {e['reason']}")
            continue
        where = e["filesystem"] or "?"
        if e.get("etcd_version"):
            where = f"etcd {e['etcd_version']}, one member, data on {where}"
        lines.append(f"{e['store']:<8}{e['path']:<13}{e['allocations']:>8,}"
                     f"{e['seconds']:>9.2f}{e['allocs_per_s']:>10,.0f}{e['p50_ms']:>9.2f}"
                     f"{e['p99_ms']:>9.2f}{e['releases_per_s']:>12,.0f}  {where}")
    return lines
